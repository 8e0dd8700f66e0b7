#!/usr/bin/env bash
# The trainer at GPU speed (issue #36), one prepared run of at most 8 minutes on one GPU host: TinyLLM's
# trainer in bf16 as it is, with train.attention=flex, with train.ce_chunk_tokens, and with those two and
# train.compile together (each at most 75 s), against the Hugging Face Trainer (three padded passes per
# batch). The SmolLM2-135M architecture with random weights (the host need not hold the packaged GGUF), the paper's batch of 64 OBQA
# questions with both teachers' released rationales, 20 steps, the first 4 untimed (CUDA and compile
# warm-up). It first checks that FlexAttention's and the chunked loss's gradients equal the dense ones there.
# Prints tok/s, model-FLOPs utilisation and peak GPU memory per implementation and writes a JSON.
#
#   bash scripts/gpu_train_bench.sh --prepare     # here, once: .dev/ (git-ignored) gets what the host needs
#                                                 # (also what scripts/gpu_check.sh needs on a bare host)
#   bash scripts/gpu_train_bench.sh [OUT.json]    # on the GPU host (plain python3 with torch + transformers,
#                                                 # pytest; no install of this project needed)
# Through the device tool: run(command="bash scripts/gpu_train_bench.sh $OUT/train_throughput_h200_kernels.json",
# carry=[".dev"], timeout_s=540), then copy the JSON to benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --prepare ]; then
  mkdir -p .dev/data/obqa
  cp -r ../shared/data/obqa/tinyllm .dev/data/obqa/
  .venv/bin/python -c "from distill.models import load_causal_lm; m, t, _ = load_causal_lm('smollm2-135m-instruct'); \
m.config.save_pretrained('.dev/smollm2-arch'); t.save_pretrained('.dev/smollm2-arch')"
  # scripts/gpu_check.sh's student on a host without the packaged models: SmolLM2's tokenizer, a small random
  # llama (128 wide, 2 layers; 14 MB in bf16), enough to run every stage, not to learn.
  .venv/bin/python - <<'PY'
import torch, transformers
tok = transformers.AutoTokenizer.from_pretrained(".dev/smollm2-arch")
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(".dev/small-student")
tok.save_pretrained(".dev/small-student")
PY
  du -sh .dev
  exit 0
fi
OUT=${1:-benchmarks/results/train_throughput_gpu_kernels.json}
PY=${PYTHON:-python3}
[ -d .dev/smollm2-arch ] && [ -d .dev/data/obqa/tinyllm ] || { echo "no .dev/: run 'bash scripts/gpu_train_bench.sh --prepare' where ../shared/data is, and carry .dev"; exit 2; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
$PY - <<'PY'
import torch, transformers
assert torch.cuda.is_available(), "torch sees no GPU"
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
# Equality on the GPU first (FlexAttention has no backward on CPU, so CI cannot check its gradients).
timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_train.py -k "flex_attention_gives_the_same_gradients_on_cuda" \
  -o addopts="" || echo "EQUALITY CHECK FAILED (the figures below are still measured)"
timeout 400 $PY benchmarks/train_throughput.py --device cuda --random-init --student .dev/smollm2-arch --data .dev/data/obqa \
  --questions 1280 --batch-size 64 --warmup-steps 4 --micro-batch-tokens 16384 --ce-chunk-tokens 4096 --precision bf16 \
  --impls hf,tinyllm,tinyllm-flex,tinyllm-chunked,tinyllm-fused --impl-timeout 75 --out "$OUT"
echo "wrote $OUT"
