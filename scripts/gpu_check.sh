#!/usr/bin/env bash
# GPU check, for a host with an NVIDIA GPU: a short bf16 distill on CUDA, export to ONNX and GGUF, then a
# bench of the student on the GPU (torch on cuda; onnxruntime's CUDA provider when onnxruntime-gpu is
# installed, else its CPU provider, said so). Prints one PASS/FAIL line per stage with its figures and
# exits non-zero if any stage failed. Everything goes to runs/gpu-check/ (MLflow off).
#
#   bash scripts/setup.sh && bash scripts/gpu_check.sh        # setup installs CUDA torch + the gpu extra there
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${GPU_CHECK_OUT:-runs/gpu-check}
CONFIG=configs/quickstart.yaml
failed=0
report() {  # $1 = stage, $2 = exit code, $3 = figures
  if [ "$2" = 0 ]; then echo "PASS $1 $3"; else echo "FAIL $1 (exit $2) $3"; failed=1; fi
}

$BIN/python - 2>/dev/null <<'EOF' || { echo "FAIL cuda: torch sees no GPU (CPU torch installed? run scripts/setup.sh on the GPU host)"; exit 1; }
import torch
assert torch.cuda.is_available()
print(f"PASS cuda {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 {torch.cuda.is_bf16_supported()}")
EOF
rm -rf "$OUT"
mkdir -p "$OUT"

# 1. distill: both packaged teachers (llama.cpp, on the CPU) explain 32 demo questions; the student trains in bf16 on CUDA.
$BIN/tinyllm-distill run "$CONFIG" output_dir="$OUT" data.max_train=32 train.precision=bf16 train.epochs=2 \
  train.log_every=1 train.eval_method=both rationales.cache_dir="$OUT/cache" --no-mlflow >"$OUT/distill.json" 2>"$OUT/distill.log"
rc=$?
tps=$(grep -o '[0-9]* tok/s' "$OUT/distill.log" | tail -n 3 | awk '{s+=$1} END {if (NR) printf "%.0f", s/NR}')
acc=$($BIN/python -c "import json; d=json.load(open('$OUT/distill.json')); print(f\"em {d.get('accuracy_em', 0):.3f}, loglik {d.get('accuracy_loglik', 0):.3f} on {d.get('n')}\")" 2>/dev/null)
report distill "$rc" "(bf16 on cuda: ${tps:-?} train tok/s over the last steps; $acc)"

# 2. export: ONNX fp32 and GGUF q8_0, each parity-checked against the torch student.
for spec in "onnx none" "gguf q8_0"; do
  set -- $spec
  $BIN/tinyllm-export "$OUT/student" --format "$1" --quant "$2" -c "$CONFIG" --overwrite --no-mlflow \
    >"$OUT/export-$1.json" 2>"$OUT/export-$1.log"
  rc=$?
  figs=$($BIN/python -c "import json; d=json.load(open('$OUT/exports/$1-$2/parity.json')); print(f\"top1 {d['top1_agreement']:.3f}, max|dlogit| {d['max_abs_logit_diff']:.2g}\")" 2>/dev/null)
  report "export-$1-$2" "$rc" "($figs)"
done

# 3. bench: the student in every form on 20 test questions, torch and ONNX on the GPU.
ort=$($BIN/python -c "import onnxruntime; print('cuda' if 'CUDAExecutionProvider' in onnxruntime.get_available_providers() else 'cpu')")
[ "$ort" = cuda ] || echo "NOTE onnxruntime has no CUDA provider here (pip install onnxruntime-gpu): the ONNX student runs on the CPU"
$BIN/tinyllm-bench -c "$CONFIG" output_dir="$OUT" bench.device=auto --limit 20 \
  --contestants student-torch,student-onnx-none,student-gguf-q8_0 --no-mlflow >"$OUT/bench.out" 2>"$OUT/bench.log"
rc=$?
$BIN/python - "$OUT/bench/report.json" <<'EOF' || rc=1
import json, sys
for r in json.load(open(sys.argv[1]))["contestants"]:
    ok = r["status"] == "ok"
    print(f"{'PASS' if ok else 'FAIL'} bench-{r['name']} ({r['status']}; decode {r.get('decode_tok_s_p50', float('nan')):.1f} tok/s, "
          f"p50 {r.get('p50_s', float('nan')):.3f} s, EM {r.get('accuracy_generate', float('nan')):.3f})")
    if not ok:
        sys.exit(1)
EOF
report bench "$rc" "(onnxruntime provider: $ort; report $OUT/bench/report.md)"

[ "$failed" = 0 ] && echo "GPU CHECK PASSED" || echo "GPU CHECK FAILED (logs in $OUT/)"
exit "$failed"
