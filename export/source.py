"""The student being exported: where it comes from (a folder, runs:/, models:/) and the data it was trained on.

Both the export pipeline and `--quant auto` need it, so it lives apart from either.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from distill import layout
from distill.config import Config
from distill.errors import UserError
from distill.progress import log


def resolve_source(source: str | None, run_id: str | None, cfg: Config) -> tuple[Path, str | None]:
    """(local student folder, MLflow run id to log back to, if any)."""
    if run_id:
        source = f"runs:/{run_id}/student"
    if source.startswith(("runs:/", "models:/")):
        import mlflow

        from distill.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(cfg))
        # Into a folder of our own, so the run's resolved config can sit beside the student as in a run folder.
        dst = Path(tempfile.mkdtemp(prefix="tinyllm-student-"))
        try:
            local = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(dst)))
        except Exception as exc:  # MLflow raises several types for a bad URI
            raise UserError(f"cannot fetch {source} from {tracking_uri(cfg)} ({exc}); check the run id or model "
                            "name.") from None
        src_run = source.split("/")[1] if source.startswith("runs:/") else None
        if source.startswith("models:/"):
            name, version = source[len("models:/"):].split("/", 1)
            mv = mlflow.MlflowClient().get_model_version(name, version)
            src_run = mv.run_id
        if local.parent != dst:  # a folder of its own for the student, its run's config beside it
            local = Path(shutil.move(str(local), str(dst / layout.STUDENT)))
        if src_run:
            try:
                mlflow.artifacts.download_artifacts(run_id=src_run, artifact_path=layout.RESOLVED_CONFIG,
                                                    dst_path=str(dst))
            except Exception:  # a run logged without its config: the student's data falls back to the config's
                log(f"[export] run {src_run} has no {layout.RESOLVED_CONFIG}; using this config's data section")
        return local, src_run
    folder = Path(source)
    if not (folder / "config.json").exists():
        raise UserError(f"{folder} is not a student folder (no config.json); give the 'student' folder a distill run "
                        "saved.")
    return folder, None


def student_data(student: Path, cfg: Config):
    """The data section the student was trained with (its run's resolved config), else the config's own.
    Only that section is read: an older run's other sections need not match today's schema."""
    from distill.config import DataConfig, load_section

    resolved = layout.run_of(student) / layout.RESOLVED_CONFIG
    return load_section(resolved, "data", DataConfig) if resolved.exists() else cfg.data


def for_student(student: Path, cfg: Config) -> Config:
    """The config with the data section the student was trained on, whatever the source (folder, runs:/,
    --run, models:/): parity prompts, --quant auto and the importance matrix all read the student's data."""
    return dataclasses.replace(cfg, data=student_data(student, cfg))


def training_pairs(student: Path, data, n: int | None = None) -> tuple[list[tuple[str, str]], str]:
    """(answer prompt, gold answer) for the first `n` of the questions the student was trained on (its
    `data.max_train` respected), and where they came from. Raises UserError when the data is not found."""
    from distill.data import load_dataset
    from distill.student import PromptFormat

    exs = load_dataset(data.name, data.path).split(data.train_split)
    if data.max_train:
        exs = exs[: data.max_train]
    fmt = PromptFormat.load(student)
    return [(fmt.answer_prompt(ex), fmt.answer_target(ex)) for ex in exs[:n]], f"{data.name}/{data.train_split}"


def task_prompts(student: Path, cfg: Config, n: int) -> tuple[list[str], str]:
    """Answer prompts plus gold answers from the student's own test set (else the demo set)."""
    from distill.data import load_dataset
    from distill.student import PromptFormat

    fmt = PromptFormat.load(student)
    data = student_data(student, cfg)
    try:
        ds = load_dataset(data.name, data.path)
        exs, where = ds.split(data.test_split), f"{ds.name}/{data.test_split}"
    except UserError:
        ds = load_dataset("demo")
        exs, where = ds.split("test"), "demo/test (the student's own data was not found)"
    return [fmt.answer_prompt(ex) + fmt.answer_target(ex) for ex in exs[:n]], where
