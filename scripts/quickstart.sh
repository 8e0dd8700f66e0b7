#!/usr/bin/env bash
# The quick start: distill -> export (GGUF q4_k_m, ONNX) -> bench, offline on CPU with packaged models.
# Everything goes to runs/quickstart/ and the local MLflow store runs/mlflow.db. A second run reuses
# the rationale cache (runs/cache/) and the converted models (~/.cache/tinyllm/).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
CONFIG=${1:-configs/quickstart.yaml}
OUT=$($BIN/python -c "from distill.config import load_config; print(load_config('$CONFIG').output_dir)")
start=$(date +%s)

# A checkpoint newer than the last finished run means the last run was killed: resume it.
RESUME=()
latest=$(ls -d "$OUT"/checkpoints/step-*[0-9] 2>/dev/null | tail -n 1 || true)  # not step-N.tmp: a partial write
if [ -n "$latest" ] && { [ ! -f "$OUT/summary.json" ] || [ "$latest" -nt "$OUT/summary.json" ]; }; then
  echo "== resuming the interrupted training from $latest"
  RESUME=(--resume)
fi

echo "== 1/4 distill: rationales from both teachers, then the multi-task student"
$BIN/tinyllm-distill run "$CONFIG" "${RESUME[@]}"
echo "== 2/4 export: GGUF q4_k_m for llama.cpp"
$BIN/tinyllm-export "$OUT/student" --format gguf --quant q4_k_m -c "$CONFIG" --overwrite
echo "== 3/4 export: ONNX for onnxruntime"
$BIN/tinyllm-export "$OUT/student" --format onnx -c "$CONFIG" --overwrite
echo "== 4/4 bench: the student in every form against its teachers"
$BIN/tinyllm-bench -c "$CONFIG"

EXP_ID=$($BIN/python -c "
import mlflow
from distill.config import load_config
from distill.tracking import tracking_uri
cfg = load_config('$CONFIG')
mlflow.set_tracking_uri(tracking_uri(cfg))
print(mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id)" 2>/dev/null || echo 0)
echo
echo "quick start done in $(( $(date +%s) - start ))s. Compare the runs in the MLflow UI:"
echo "  $BIN/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port 5000"
# MLflow 3.17's UI opens in its GenAI mode unless told otherwise; workflowType=machine_learning shows runs.
echo "  then open http://127.0.0.1:5000/#/experiments/$EXP_ID/runs?workflowType=machine_learning"
