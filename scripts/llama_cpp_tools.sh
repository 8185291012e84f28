#!/usr/bin/env bash
# llama.cpp's converter, its quantization tools and llama-perplexity (the community's reference for KL divergence)
# for the llamacpp target, from llama-cpp-python's source archive (the version the venv's binding was built from),
# into VENV/share/llama.cpp. Skipped when already there.
set -euo pipefail
VENV=$(cd "${1:-.venv}" && pwd)
DEST="$VENV/share/llama.cpp"
VERSION=$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('llama_cpp_python'))")
if [ -x "$DEST/bin/llama-quantize" ] && [ -x "$DEST/bin/llama-imatrix" ] && [ -x "$DEST/bin/llama-perplexity" ] \
   && [ -f "$DEST/convert_hf_to_gguf.py" ] \
   && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION ${LLAMA_CFLAGS:-}" ]; then
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$VENV/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" 2>/dev/null
tar xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)
# LLAMA_CFLAGS (setup.sh): the same flags as the binding's build (llama.cpp's AMX kernels left out on x86_64)
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_C_FLAGS="${LLAMA_CFLAGS:-}" -DCMAKE_CXX_FLAGS="${LLAMA_CFLAGS:-}" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
# the compiler's warnings go to a log, shown only when the build fails
cmake --build "$WORK/build" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  --target llama-quantize llama-imatrix llama-perplexity \
  >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; echo "llama.cpp's tools failed to build" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/bin"
cp -r "$SRC/convert_hf_to_gguf.py" "$SRC/conversion" "$SRC/gguf-py" "$DEST/"
cp "$WORK/build/bin/llama-quantize" "$WORK/build/bin/llama-imatrix" "$WORK/build/bin/llama-perplexity" "$DEST/bin/"
echo "$VERSION ${LLAMA_CFLAGS:-}" > "$DEST/VERSION"
