#!/usr/bin/env bash
# An MLflow tracking server for TinyLLM runs. Bound to 127.0.0.1 unless HOST says otherwise.
#
#   mlflow/serve.sh                        # local: sqlite runs/mlflow.db + artifacts in runs/mlartifacts
#   MLFLOW_BACKEND_URI=postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow \
#   MLFLOW_ARTIFACTS=/shared/mlflow-artifacts mlflow/serve.sh   # a team server on PostgreSQL
#
# Then point every machine at it: export MLFLOW_TRACKING_URI=http://<host>:<port>
# Environment: HOST (127.0.0.1), PORT (5000), MLFLOW_BACKEND_URI, MLFLOW_ARTIFACTS, WORKERS (1).
# Keep database passwords out of the URI (and so out of `ps`): use ~/.pgpass or PGPASSWORD.
set -euo pipefail
cd "$(dirname "$0")/.."
MLFLOW=${MLFLOW:-$(command -v .venv/bin/mlflow || command -v mlflow)}
mkdir -p runs
BACKEND=${MLFLOW_BACKEND_URI:-sqlite:///$(pwd)/runs/mlflow.db}
ARTIFACTS=${MLFLOW_ARTIFACTS:-$(pwd)/runs/mlartifacts}
case "$BACKEND" in
  postgresql*) .venv/bin/python -c "import psycopg2" 2>/dev/null || {
    echo "the PostgreSQL backend needs: .venv/bin/pip install psycopg2-binary (or pip install -e '.[postgres]')" >&2; exit 2; } ;;
esac
echo "[mlflow] backend ${BACKEND%%://*}://…  artifacts $ARTIFACTS  http://${HOST:-127.0.0.1}:${PORT:-5000}" >&2
exec "$MLFLOW" server --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-5000}" --workers "${WORKERS:-1}"
