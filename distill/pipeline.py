"""The distill stage as functions the CLI calls: generate rationales, then (next) train the student."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from distill.config import Config, write_resolved
from distill.data import Dataset, load_dataset


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def training_examples(cfg: Config) -> tuple[Dataset, list]:
    ds = load_dataset(cfg.data.name, cfg.data.path)
    train = ds.split(cfg.data.train_split)
    if cfg.data.max_train is not None:
        train = train[: cfg.data.max_train]
    return ds, train


def generate(cfg: Config, track: bool = True, teacher_factory=None) -> dict:
    """`tinyllm-distill generate`: fill the rationale cache for every teacher and training question."""
    from distill.rationales import generate_rationales
    from distill.tracking import mlflow_run

    out = Path(cfg.output_dir)
    write_resolved(cfg, out)
    ds, train = training_examples(cfg)
    log(f"[generate] {ds.name}: {len(train)} training questions x {len(cfg.teachers)} teacher(s)")
    with mlflow_run(cfg, "generate", run_name=f"generate-{ds.name}", enabled=track,
                    tags={"tinyllm.dataset": ds.name}) as run:
        run.log_params({"data.fingerprint.train": ds.fingerprint(cfg.data.train_split)})
        stats, accepted = generate_rationales(cfg, ds, train, ds.split(cfg.data.train_split), log=log,
                                              teacher_factory=teacher_factory)
        report = log_generation(run, stats, accepted, out)
    return report


def log_generation(run, stats, accepted, out: Path) -> dict:
    """Per-teacher statistics and a sample of accepted rationales: to MLflow and to out/generation.json."""
    report = {name: {**st.as_metrics(), "rejected": st.rejected} for name, st in stats.items()}
    for name, st in stats.items():
        run.log_metrics({f"gen.{name}.{k}": v for k, v in st.as_metrics().items()})
        run.log_metrics({f"gen.{name}.rejected.{reason.replace(' ', '_')}": n for reason, n in st.rejected.items()})
    sample = [{"teacher": t, "example_id": i, "text": text}
              for t, texts in accepted.items() for i, text in list(texts.items())[:10]]
    (out / "generation.json").write_text(json.dumps(report, indent=2))
    run.log_dict(report, "generation/stats.json")
    run.log_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sample), "generation/sample.jsonl")
    return report
