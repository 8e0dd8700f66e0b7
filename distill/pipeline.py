"""The distill stage as functions the CLI calls: generate rationales, then (next) train the student."""
from __future__ import annotations

import json
from pathlib import Path

from distill import layout
from distill.config import Config, write_resolved
from distill.data import Dataset, load_dataset
from distill.errors import UserError
from distill.progress import log


def training_examples(cfg: Config) -> tuple[Dataset, list]:
    ds = load_dataset(cfg.data.name, cfg.data.path)
    train = ds.split(cfg.data.train_split)
    if cfg.data.max_train is not None:
        train = train[: cfg.data.max_train]
    return ds, train


def fingerprint_params(ds, cfg: Config, train: list) -> dict:
    """`data.fingerprint.train`: the training rows this run used (what the Dataset input's fingerprint also
    covers); `data.fingerprint.train_split`: the whole split they were taken from."""
    from distill.data import fingerprint_rows

    return {"data.fingerprint.train": fingerprint_rows(train),
            "data.fingerprint.train_split": ds.fingerprint(cfg.data.train_split)}


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
        run.log_params(fingerprint_params(ds, cfg, train))
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
    (out / layout.GENERATION).write_text(json.dumps(report, indent=2))
    run.log_dict(report, "generation/stats.json")
    run.log_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sample), "generation/sample.jsonl")
    return report


def check_resumable(cfg: Config, out: Path) -> None:
    """--resume needs a checkpoint (a partial one a kill left restarts from step 0, as before)."""
    from distill.checkpoints import latest_checkpoint

    folder = out / layout.CHECKPOINTS
    if latest_checkpoint(out) is None and not list(folder.glob("step-*.tmp")):
        every = cfg.train.save_every
        how = (f"this config saves every {every} steps, and the run that used {out} wrote none (it was shorter, or "
               "not started)" if every else "this config sets train.save_every: 0, which writes none")
        raise UserError(f"--resume: no checkpoint under {folder} to resume from: {how}; run without --resume, and "
                        "to make a run resumable set train.save_every below its number of steps.")


def distill(cfg: Config, resume: bool = False, track: bool = True) -> dict:
    """`tinyllm-distill run`: rationales from every teacher, then the multi-task student, one MLflow run."""
    from distill.rationales import generate_rationales
    from distill.tracking import is_main_process, mlflow_run
    from distill.train import on_cpu, train_student

    from accelerate import PartialState

    state = PartialState(cpu=on_cpu())  # joins the process group under torchrun
    out = Path(cfg.output_dir)
    if resume:  # before any rationale is generated or any MLflow run is started
        check_resumable(cfg, out)
    if is_main_process():
        write_resolved(cfg, out)
    ds, train = training_examples(cfg)
    evals = ds.splits.get(cfg.data.eval_split, [])
    if cfg.data.max_eval is not None:
        evals = evals[: cfg.data.max_eval]
    from distill.evaluation import check_method

    check_method(evals, cfg.train.eval_method)  # before any rationale is generated or any step trained
    tags = {"tinyllm.dataset": ds.name, "tinyllm.student": cfg.student.model,
            "tinyllm.method": "answer-only" if not cfg.teachers else "step-by-step" if len(cfg.teachers) == 1 else "tinyllm"}
    with mlflow_run(cfg, "distill", run_name=f"distill-{ds.name}", tags=tags, enabled=track) as run:
        run.log_params({**fingerprint_params(ds, cfg, train), "data.n_train": len(train),
                        "data.n_eval": len(evals), "teacher_names": ",".join(t.name for t in cfg.teachers) or "none"})
        run.log_dataset(ds, cfg.data.train_split, train, "training")
        if evals:
            run.log_dataset(ds, cfg.data.eval_split, evals, "evaluation")
        rationales: dict[str, dict[str, str]] = {}
        if cfg.teachers:
            # Rank 0 talks to the teachers; the other ranks read the rationales it settled on.
            shared = out / layout.RATIONALES_USED
            if is_main_process():
                stats, rationales = generate_rationales(cfg, ds, train, ds.split(cfg.data.train_split), log=log)
                log_generation(run, stats, rationales, out)
                shared.write_text(json.dumps(rationales))
            state.wait_for_everyone()
            if not is_main_process():
                rationales = json.loads(shared.read_text())
        run.log_params({f"rationales.{t}": len(texts) for t, texts in rationales.items()})
        tests = ds.split(cfg.data.test_split)[: cfg.data.max_test] if cfg.train.epoch_eval else None
        result = train_student(cfg, train, rationales, evals, run, resume=resume, log=log, test_examples=tests)
        if is_main_process() and "student_dir" in result:
            if "eval" in result:
                (out / layout.EVAL_PREDICTIONS).write_text(
                    "".join(json.dumps(p) + "\n" for p in result["eval"]["predictions"]))
                run.log_artifact(str(out / layout.EVAL_PREDICTIONS), "eval")
            if "selection" in result:
                run.log_params({"train.selected_epoch": result["selection"]["selected_epoch"]})
                run.log_artifact(str(out / layout.EPOCHS_FILE))
            run.log_artifacts(result["student_dir"], layout.STUDENT)
            run.log_artifact(str(out / layout.RESOLVED_CONFIG))
            if cfg.tracking.register_as:
                register_student(run, cfg.tracking.register_as)
        summary = {"student_dir": result.get("student_dir"), "steps": result["steps"], "run_id": run.run_id,
                   "split": result.get("eval", {}).get("split", cfg.data.eval_split),
                   **{k: v for k, v in result.get("eval", {}).items() if k.startswith("accuracy") or k == "n"},
                   **({"selection": {k: v for k, v in result["selection"].items() if k != "epochs"}}
                      if "selection" in result else {})}
        if is_main_process():
            (out / layout.SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    if state.num_processes > 1:
        state.destroy_process_group()
    return summary


def register_student(run, name: str) -> None:
    """Register the run's student folder as a new version of model `name` (models:/name/N then
    downloads that folder). The student is logged as plain files, not an MLmodel flavour, so the
    version is created from its artifact location directly."""
    import mlflow

    client = mlflow.MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    source = mlflow.get_run(run.run_id).info.artifact_uri.rstrip("/") + "/student"
    version = client.create_model_version(name, source=source, run_id=run.run_id)
    run.set_tags({"tinyllm.registered_model": f"models:/{name}/{version.version}"})
    log(f"[mlflow] registered the student as models:/{name}/{version.version}")


def evaluate_model(cfg: Config, split: str, track: bool = True) -> dict:
    """`tinyllm-distill eval`: accuracy of cfg.student.model on a split, with no training."""
    from distill.evaluation import check_method, evaluate
    from distill.student import PromptFormat, load_student, prompt_format
    from distill.tracking import mlflow_run

    ds = load_dataset(cfg.data.name, cfg.data.path)
    examples = ds.split(split)
    cap = cfg.data.max_test if split == cfg.data.test_split else cfg.data.max_eval
    if cap is not None:
        examples = examples[:cap]
    check_method(examples, cfg.train.eval_method)
    model, tok, identity = load_student(cfg.student)
    folder = Path(cfg.student.model)
    fmt = PromptFormat.load(folder) if (folder / layout.PROMPT_FORMAT).exists() else prompt_format(cfg.student, model)
    with mlflow_run(cfg, "eval", run_name=f"eval-{ds.name}", enabled=track,
                    tags={"tinyllm.dataset": ds.name, "tinyllm.student": cfg.student.model, "tinyllm.method": "zero-shot"
                          if not folder.is_dir() else "trained"}) as run:
        run.log_dataset(ds, split, examples, "evaluation")
        res = evaluate(model, tok, fmt, examples, cfg.train.eval_method, log=log)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / layout.EVAL_PREDICTIONS).write_text("".join(json.dumps(p) + "\n" for p in res["predictions"]))
        run.log_artifact(str(out / layout.EVAL_PREDICTIONS), "eval")
        metrics = {k: v for k, v in res.items() if k.startswith("accuracy")}
        run.log_metrics({f"{split}_{k}": v for k, v in metrics.items()})
        run.log_params({"eval.split": split, "eval.n": res["n"], "student.identity": identity})
    return {"model": cfg.student.model, "split": split, "n": res["n"], **metrics, "run_id": run.run_id}
