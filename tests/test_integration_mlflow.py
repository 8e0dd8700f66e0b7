"""Real services: mlflow/serve.sh on a real PostgreSQL, and the MLflow UI in headless Chromium.

Run: pytest -m integration tests/test_integration_mlflow.py
(.ci/run installs Debian's postgresql and chromium first; without them these skip with the reason.)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the MLflow server exited"
        try:
            if urllib.request.urlopen(url + "/health", timeout=2).read().strip() == b"OK":
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} was not healthy after {timeout}s")


def start_server(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["bash", str(REPO / "mlflow" / "serve.sh")], env={**os.environ, **env, "PORT": str(port)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def api(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def tiny_run(tmp_path: Path, tiny_student: Path, uri: str, name: str, lr: str) -> None:
    from test_train import write_run_config

    folder = tmp_path / name
    folder.mkdir()
    cfg = write_run_config(folder, tiny_student, teachers=("a",), from_env=True, max_steps=2, lr=lr)
    r = subprocess.run([str(BIN / "tinyllm-distill"), "run", str(cfg)], capture_output=True, text=True, cwd=folder,
                       env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


# ---------------------------------------------------------------------------------------------


@pytest.fixture
def postgres():
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not pg_bin or shutil.which("runuser") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's postgresql package and root (to run initdb as the postgres user)")
    pytest.importorskip("psycopg2", reason="needs psycopg2-binary (the [postgres] extra)")
    bindir = pg_bin[-1]
    data = Path(tempfile.mkdtemp(prefix="tinyllm-pg-"))
    shutil.chown(data, "postgres", "postgres")
    data.chmod(0o700)
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_pg + [str(bindir / "initdb"), "-D", str(data / "db"), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w",
                            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {data}", "start"], check=True, capture_output=True)
    try:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE mlflow"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_tracking_server_on_postgresql(postgres, tmp_path, tiny_student):
    proc, url = start_server({"MLFLOW_BACKEND_URI": postgres, "MLFLOW_ARTIFACTS": str(tmp_path / "artifacts")})
    try:
        tiny_run(tmp_path, tiny_student, url, "pg", "1e-3")
        exp = api(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=test")["experiment"]
        runs = api(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
        assert {"loss_answer", "loss_a", "eval_accuracy_loglik"} <= metrics and params["train.lr"] == "0.001"
        assert any((tmp_path / "artifacts").rglob("model.safetensors")), "the student reached the artifact destination"
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------


def test_run_comparison_in_headless_chromium(tmp_path, tiny_student):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    proc, url = start_server({"MLFLOW_BACKEND_URI": f"sqlite:///{tmp_path / 'ui.db'}", "MLFLOW_ARTIFACTS": str(tmp_path / "art")})
    try:
        tiny_run(tmp_path, tiny_student, url, "lr-high", "1e-3")
        tiny_run(tmp_path, tiny_student, url, "lr-low", "1e-4")
        exp = api(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=test")["experiment"]
        runs = api(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        ids = [r["info"]["run_id"] for r in runs]
        assert len(ids) == 2
        # A bench of the first student, logged to the same experiment.
        r = subprocess.run([str(BIN / "tinyllm-bench"), "-c", str(tmp_path / "lr-high" / "run.yaml"), "--limit", "2",
                            "--contestants", "student-torch", "--threads", "1"], capture_output=True, text=True,
                           cwd=tmp_path / "lr-high", env={**os.environ, "MLFLOW_TRACKING_URI": url}, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        (bench_run,) = [x for x in api(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
                        if x["info"]["run_id"] not in ids]
        # The bench run spans the bench: it starts before the contestant runs and ends after the report is written.
        bench_out = tmp_path / "lr-high" / "out" / "bench"
        info = bench_run["info"]
        assert int(info["start_time"]) <= (bench_out / "contestants" / "student-torch" / "spec.json").stat().st_mtime * 1000
        assert int(info["end_time"]) >= (bench_out / "report.json").stat().st_mtime * 1000 - 1
        inputs = {d["dataset"]["name"] for d in bench_run["inputs"]["dataset_inputs"]}
        assert inputs == {"demo/test"}
        # Our experiments are model-training experiments: the UI opens them on their runs, not a GenAI overview.
        tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
        assert tags.get("mlflow.experimentKind") == "custom_model_development"
        # A bench plot attached to the first run, as tinyllm-bench attaches its plots.
        import mlflow

        from bench.report import plot

        plot([{"name": "student-torch", "role": "student", "p50_s": 0.3, "size_bytes": 5e6, "accuracy_option_match": 0.4,
               "ci95_option_match": [0.3, 0.5]}], tmp_path)
        mlflow.set_tracking_uri(url)
        with mlflow.start_run(run_id=ids[0]):
            mlflow.log_artifact(str(tmp_path / "accuracy_vs_latency.png"), "bench")

        def page(fragment: str, screenshot: Path | None = None) -> str:
            flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
                     f"--user-data-dir={tempfile.mkdtemp(prefix='tinyllm-chrome-')}", "--window-size=1600,1000",
                     "--virtual-time-budget=8000"]
            target = f"{url}/#{fragment}"
            if screenshot:
                subprocess.run(flags + [f"--screenshot={screenshot}", target], capture_output=True, timeout=120)
            return subprocess.run(flags + ["--dump-dom", target], capture_output=True, text=True, timeout=120).stdout

        run_list = json.dumps(ids).replace(" ", "")
        shots = REPO / "runs" / "test-artifacts"
        shots.mkdir(parents=True, exist_ok=True)
        compare = page(f'/compare-runs?runs={run_list}&experiments=["{exp["experiment_id"]}"]', shots / "mlflow-compare.png")
        assert all(i in compare for i in ids), "both runs are on the comparison page"
        assert "eval_accuracy_loglik" in compare and "train.lr" in compare
        artifacts = page(f"/experiments/{exp['experiment_id']}/runs/{ids[0]}/artifacts/bench/accuracy_vs_latency.png",
                         shots / "mlflow-bench-plot.png")
        assert "accuracy_vs_latency.png" in artifacts
        assert (shots / "mlflow-compare.png").stat().st_size > 10_000
        # The runs page lists the distill runs and the bench run, each with the dataset it used.
        # (MLflow 3.17 picks GenAI vs model-training pages from the URL or browser storage; the experiment
        # tag is what later versions and the flag-off UI read. The quick start prints this URL.)
        listing = page(f"/experiments/{exp['experiment_id']}/runs?workflowType=machine_learning", shots / "mlflow-runs.png")
        assert "Model registry" in listing  # the model-training side bar, not the GenAI one
        assert listing.count("distill-demo") >= 2 and "bench-demo" in listing
        assert "demo/train" in listing and "demo/test" in listing
    finally:
        stop(proc)
