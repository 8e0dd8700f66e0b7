"""MLflow, the way every stage uses it: one run per command, on rank 0 only, always ended.

The default store is local (sqlite under runs/, no server to start); MLFLOW_TRACKING_URI or
tracking.uri points it anywhere (a team server on PostgreSQL, see mlflow/README.md).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import threading
from pathlib import Path

from distill import layout
from distill.errors import UserError, require

DEFAULT_DIR = Path("runs")
# MLflow 3's UI opens a "GenAI" experiment on a traces overview; ours are model training: runs first.
# (3.17 reads the kind from the URL's ?workflowType=machine_learning or the browser's last choice, which
# is the URL the quick start prints; the tag is what the UI reads without that switch.)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def tracking_uri(cfg) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def artifact_location(cfg, uri: str, local_store: bool) -> str | None:
    """Where a new experiment's artifacts go: where the user pointed the store, never the current directory's
    ./mlruns (MLflow's own default for a database store without a server)."""
    if cfg.tracking.artifact_location:
        return cfg.tracking.artifact_location
    if local_store:
        return (DEFAULT_DIR / "mlartifacts").resolve().as_uri()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else "file"
    if scheme == "sqlite":
        db = uri.split(":///", 1)[1] if ":///" in uri else ""
        if not db or db == ":memory:":
            raise UserError(f"tracking.uri {uri}: an in-memory sqlite store has no folder for artifacts; set "
                            "tracking.artifact_location.")
        return (Path(db).parent / "mlartifacts").resolve().as_uri()
    if scheme in ("http", "https", "databricks", "file") or len(scheme) == 1:  # len 1: a Windows drive letter
        return None  # a server proxies to its own artifact root; a file store keeps artifacts under itself
    raise UserError(f"tracking.uri {uri}: a database store without a server needs tracking.artifact_location (a "
                    "folder or s3://… URI), or serve it with mlflow/serve.sh and use its http:// address.")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                out.update(_flatten(item, f"{key}.{i}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else v
    return out


def provenance() -> dict:
    """What ran: git commit, Python and key package versions."""
    info = {"python": platform.python_version()}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        info["git_commit"] = "unknown"
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "transformers", "llama-cpp-python", "mlflow", "optimum-onnx", "onnxruntime"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return info


class NullRun:
    """Stands in on non-zero ranks and with tracking off: every call does nothing."""

    run_id = None

    def __getattr__(self, name):
        return lambda *a, **k: None


class Run:
    def __init__(self, mlflow, run):
        self.mlflow, self.run_id = mlflow, run.info.run_id

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params: dict) -> None:
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def set_tags(self, tags: dict) -> None:
        self.mlflow.set_tags(tags)

    def log_text(self, text: str, path: str) -> None:
        self.mlflow.log_text(text, path)

    def log_dict(self, d: dict, path: str) -> None:
        self.mlflow.log_dict(d, path)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(path, artifact_path)

    def log_artifacts(self, path: str, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifacts(path, artifact_path)

    def log_dataset(self, ds, split: str, examples: list, context: str) -> None:
        """The split a run used, in the run's Datasets (name, split, fingerprint, rows; one row per question)."""
        import pandas as pd

        from distill.data import fingerprint_rows

        digest = fingerprint_rows(examples)  # of the rows used: a max_train prefix has its own
        df = pd.DataFrame([{"id": ex.id, "question": ex.question, "choices": " | ".join(ex.choices),
                            "answer": ex.answer_text} for ex in examples])
        where = str(Path(ds.path).resolve()) if ds.path and Path(ds.path).exists() else ds.name
        # A source object, not a string: MLflow registers LocalArtifactDatasetSource twice, so resolving a
        # string warns "can be interpreted in multiple ways" on every run.
        local = next(s for s in self.mlflow.data.get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
        dataset = self.mlflow.data.from_pandas(df, source=local(where), name=f"{ds.name}/{split}", digest=digest)
        self.mlflow.log_input(dataset, context=context,
                              tags={"split": split, "rows": str(len(examples)), "fingerprint": digest})


@contextlib.contextmanager
def mlflow_run(cfg, stage: str, run_name: str | None = None, tags: dict | None = None, enabled: bool = True):
    """Start a run, log the resolved config and provenance, and always end it: FINISHED on success,
    KILLED on Ctrl-C, FAILED on any error, so no run is left RUNNING."""
    if not enabled or not is_main_process():
        yield NullRun()
        return
    from distill.config import dump_yaml, to_dict

    mlflow = require("mlflow")
    # Decide before set_tracking_uri, which itself sets MLFLOW_TRACKING_URI in the environment.
    local_store = not cfg.tracking.uri and not os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        location = artifact_location(cfg, uri, local_store)
        exp_id = mlflow.create_experiment(cfg.tracking.experiment, artifact_location=location,
                                          tags=dict([EXPERIMENT_KIND]))
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND[0] not in exp.tags:  # made by an older TinyLLM, or by hand
            mlflow.MlflowClient().set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    out_dir = str(Path(cfg.output_dir).resolve())
    _end_stale_runs(mlflow, exp_id, stage, out_dir)
    run = mlflow.start_run(experiment_id=exp_id, run_name=run_name,
                           tags={"tinyllm.stage": stage, "tinyllm.output_dir": out_dir, **(tags or {}),
                                 **cfg.tracking.tags},
                           log_system_metrics=cfg.tracking.system_metrics)
    status = "FAILED"
    previous = _raise_on_sigterm()
    try:
        r = Run(mlflow, run)
        r.log_params(_flatten(to_dict(cfg)))
        r.log_text(dump_yaml(cfg), layout.RESOLVED_CONFIG)
        r.set_tags({f"tinyllm.{k}": v for k, v in provenance().items()})
        yield r
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status=status)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm():
    """SIGTERM (a scheduler's kill, `timeout`) becomes an exception, so the run is ended, not left RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def _end_stale_runs(mlflow, exp_id: str, stage: str, out_dir: str) -> None:
    """A run killed with SIGKILL cannot end itself; the next run writing the same output folder marks it KILLED."""
    client = mlflow.MlflowClient()
    stale = client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING' and tags.`tinyllm.stage` = "
                                                       f"'{stage}'")
    for r in stale:
        if r.data.tags.get("tinyllm.output_dir") == out_dir:
            client.set_terminated(r.info.run_id, status="KILLED")
