"""Parameter counts of well-known causal LMs (from their model cards), used when neither local files nor the Hub
answer. Values are billions of parameters; the family is the architecture family."""

_TABLE = """
gpt2 0.124 gpt2
gpt2-medium 0.355 gpt2
gpt2-large 0.774 gpt2
gpt2-xl 1.558 gpt2
distilgpt2 0.082 gpt2
EleutherAI/gpt-neo-125m 0.125 gpt_neo
EleutherAI/gpt-neo-1.3B 1.3 gpt_neo
EleutherAI/gpt-neo-2.7B 2.7 gpt_neo
EleutherAI/gpt-j-6b 6.05 gptj
EleutherAI/gpt-neox-20b 20.6 gpt_neox
EleutherAI/pythia-70m 0.07 gpt_neox
EleutherAI/pythia-160m 0.16 gpt_neox
EleutherAI/pythia-410m 0.41 gpt_neox
EleutherAI/pythia-1b 1.0 gpt_neox
EleutherAI/pythia-1.4b 1.4 gpt_neox
EleutherAI/pythia-2.8b 2.8 gpt_neox
EleutherAI/pythia-6.9b 6.9 gpt_neox
EleutherAI/pythia-12b 12.0 gpt_neox
facebook/opt-125m 0.125 opt
facebook/opt-350m 0.35 opt
facebook/opt-1.3b 1.3 opt
facebook/opt-2.7b 2.7 opt
facebook/opt-6.7b 6.7 opt
facebook/opt-13b 13.0 opt
facebook/opt-30b 30.0 opt
facebook/opt-66b 66.0 opt
bigscience/bloom-560m 0.56 bloom
bigscience/bloom-1b1 1.1 bloom
bigscience/bloom-3b 3.0 bloom
bigscience/bloom-7b1 7.1 bloom
bigscience/bloom 176.0 bloom
meta-llama/Llama-2-7b-hf 6.74 llama
meta-llama/Llama-2-7b-chat-hf 6.74 llama
meta-llama/Llama-2-13b-hf 13.0 llama
meta-llama/Llama-2-13b-chat-hf 13.0 llama
meta-llama/Llama-2-70b-hf 69.0 llama
meta-llama/Llama-2-70b-chat-hf 69.0 llama
meta-llama/Meta-Llama-3-8B 8.03 llama
meta-llama/Meta-Llama-3-8B-Instruct 8.03 llama
meta-llama/Meta-Llama-3-70B 70.6 llama
meta-llama/Meta-Llama-3-70B-Instruct 70.6 llama
meta-llama/Llama-3.1-8B 8.03 llama
meta-llama/Llama-3.1-8B-Instruct 8.03 llama
meta-llama/Llama-3.1-70B 70.6 llama
meta-llama/Llama-3.1-70B-Instruct 70.6 llama
meta-llama/Llama-3.1-405B 405.0 llama
meta-llama/Llama-3.2-1B 1.24 llama
meta-llama/Llama-3.2-1B-Instruct 1.24 llama
meta-llama/Llama-3.2-3B 3.21 llama
meta-llama/Llama-3.2-3B-Instruct 3.21 llama
meta-llama/Llama-3.3-70B-Instruct 70.6 llama
huggyllama/llama-7b 6.74 llama
huggyllama/llama-13b 13.0 llama
huggyllama/llama-30b 32.5 llama
huggyllama/llama-65b 65.2 llama
TinyLlama/TinyLlama-1.1B-Chat-v1.0 1.1 llama
TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T 1.1 llama
HuggingFaceTB/SmolLM-135M 0.135 llama
HuggingFaceTB/SmolLM-360M 0.362 llama
HuggingFaceTB/SmolLM-1.7B 1.71 llama
HuggingFaceTB/SmolLM2-135M 0.135 llama
HuggingFaceTB/SmolLM2-135M-Instruct 0.135 llama
HuggingFaceTB/SmolLM2-360M 0.362 llama
HuggingFaceTB/SmolLM2-360M-Instruct 0.362 llama
HuggingFaceTB/SmolLM2-1.7B 1.71 llama
HuggingFaceTB/SmolLM2-1.7B-Instruct 1.71 llama
HuggingFaceTB/SmolLM3-3B 3.08 smollm3
mistralai/Mistral-7B-v0.1 7.24 mistral
mistralai/Mistral-7B-Instruct-v0.1 7.24 mistral
mistralai/Mistral-7B-Instruct-v0.2 7.24 mistral
mistralai/Mistral-7B-v0.3 7.25 mistral
mistralai/Mistral-7B-Instruct-v0.3 7.25 mistral
mistralai/Mistral-Nemo-Instruct-2407 12.2 mistral
mistralai/Mistral-Small-24B-Instruct-2501 23.6 mistral
mistralai/Mixtral-8x7B-v0.1 46.7 mixtral
mistralai/Mixtral-8x7B-Instruct-v0.1 46.7 mixtral
mistralai/Mixtral-8x22B-v0.1 141.0 mixtral
microsoft/phi-1 1.42 phi
microsoft/phi-1_5 1.42 phi
microsoft/phi-2 2.78 phi
microsoft/Phi-3-mini-4k-instruct 3.82 phi3
microsoft/Phi-3-mini-128k-instruct 3.82 phi3
microsoft/Phi-3-small-8k-instruct 7.39 phi3
microsoft/Phi-3-medium-4k-instruct 14.0 phi3
microsoft/Phi-3.5-mini-instruct 3.82 phi3
microsoft/phi-4 14.7 phi3
Qwen/Qwen-7B 7.72 qwen
Qwen/Qwen1.5-0.5B 0.62 qwen2
Qwen/Qwen1.5-1.8B 1.84 qwen2
Qwen/Qwen1.5-4B 3.95 qwen2
Qwen/Qwen1.5-7B 7.72 qwen2
Qwen/Qwen1.5-14B 14.2 qwen2
Qwen/Qwen2-0.5B 0.49 qwen2
Qwen/Qwen2-1.5B 1.54 qwen2
Qwen/Qwen2-7B 7.62 qwen2
Qwen/Qwen2-72B 72.7 qwen2
Qwen/Qwen2.5-0.5B 0.49 qwen2
Qwen/Qwen2.5-0.5B-Instruct 0.49 qwen2
Qwen/Qwen2.5-1.5B 1.54 qwen2
Qwen/Qwen2.5-1.5B-Instruct 1.54 qwen2
Qwen/Qwen2.5-3B 3.09 qwen2
Qwen/Qwen2.5-3B-Instruct 3.09 qwen2
Qwen/Qwen2.5-7B 7.62 qwen2
Qwen/Qwen2.5-7B-Instruct 7.62 qwen2
Qwen/Qwen2.5-14B-Instruct 14.7 qwen2
Qwen/Qwen2.5-32B-Instruct 32.8 qwen2
Qwen/Qwen2.5-72B-Instruct 72.7 qwen2
Qwen/Qwen3-0.6B 0.6 qwen3
Qwen/Qwen3-1.7B 1.7 qwen3
Qwen/Qwen3-4B 4.0 qwen3
Qwen/Qwen3-8B 8.2 qwen3
Qwen/Qwen3-14B 14.8 qwen3
Qwen/Qwen3-32B 32.8 qwen3
google/gemma-2b 2.51 gemma
google/gemma-7b 8.54 gemma
google/gemma-2-2b 2.61 gemma2
google/gemma-2-2b-it 2.61 gemma2
google/gemma-2-9b 9.24 gemma2
google/gemma-2-27b 27.2 gemma2
google/gemma-3-1b-it 1.0 gemma3
google/gemma-3-4b-it 4.3 gemma3
google/gemma-3-12b-it 12.2 gemma3
google/gemma-3-27b-it 27.4 gemma3
tiiuae/falcon-7b 7.22 falcon
tiiuae/falcon-40b 41.8 falcon
tiiuae/falcon-180B 180.0 falcon
mosaicml/mpt-7b 6.65 mpt
mosaicml/mpt-30b 30.0 mpt
bigcode/starcoder 15.5 gpt_bigcode
bigcode/starcoder2-3b 3.03 starcoder2
bigcode/starcoder2-7b 7.17 starcoder2
bigcode/starcoder2-15b 16.0 starcoder2
bigcode/tiny_starcoder_py 0.164 gpt_bigcode
codellama/CodeLlama-7b-hf 6.74 llama
codellama/CodeLlama-13b-hf 13.0 llama
codellama/CodeLlama-34b-hf 33.7 llama
deepseek-ai/deepseek-llm-7b-base 6.91 llama
deepseek-ai/deepseek-coder-1.3b-base 1.35 llama
deepseek-ai/deepseek-coder-6.7b-base 6.74 llama
deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B 1.78 qwen2
deepseek-ai/DeepSeek-R1-Distill-Qwen-7B 7.62 qwen2
deepseek-ai/DeepSeek-R1-Distill-Llama-8B 8.03 llama
01-ai/Yi-6B 6.06 llama
01-ai/Yi-34B 34.4 llama
internlm/internlm2-7b 7.74 internlm2
stabilityai/stablelm-2-1_6b 1.64 stablelm
stabilityai/stablelm-3b-4e1t 2.8 stablelm
allenai/OLMo-1B-hf 1.18 olmo
allenai/OLMo-7B-hf 6.89 olmo
allenai/OLMo-2-1124-7B 7.3 olmo2
Salesforce/codegen-350M-mono 0.35 codegen
cerebras/Cerebras-GPT-111M 0.111 gpt2
databricks/dolly-v2-3b 2.78 gpt_neox
lmsys/vicuna-7b-v1.5 6.74 llama
HuggingFaceH4/zephyr-7b-beta 7.24 mistral
openai-community/gpt2 0.124 gpt2
openai/gpt-oss-20b 20.9 gpt_oss
ibm-granite/granite-3.0-2b-instruct 2.63 granite
ibm-granite/granite-3.0-8b-instruct 8.17 granite
"""


def _parse(table: str) -> dict[str, tuple[float, str]]:
    out = {}
    for line in table.strip().splitlines():
        name, billions, family = line.split()
        out[name.lower()] = (float(billions), family)
    return out


MODEL_SIZE_DB: dict[str, tuple[float, str]] = _parse(_TABLE)


def lookup(name: str) -> tuple[int, str] | None:
    """Parameter count and family by full id, or by the part after the organisation."""
    key = name.lower().rstrip("/")
    hit = MODEL_SIZE_DB.get(key)
    if hit is None:
        short = key.rsplit("/", 1)[-1]
        hit = next((v for k, v in MODEL_SIZE_DB.items() if k.rsplit("/", 1)[-1] == short), None)
    return (int(hit[0] * 1e9), hit[1]) if hit else None
