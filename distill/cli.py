"""`tinyllm-distill`: thin CLI over the distill stage. Parse, validate, call one function."""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from distill.errors import UserError, user_errors

EXAMPLES = """\b
examples:
  tinyllm-distill run configs/quickstart.yaml --dry-run
  tinyllm-distill config configs/quickstart.yaml        # every key, its value and what it does
  tinyllm-distill generate configs/quickstart.yaml data.max_train=20
  tinyllm-distill run configs/quickstart.yaml train.save_every=2; tinyllm-distill run configs/quickstart.yaml --resume
  tinyllm-distill eval configs/quickstart.yaml --model runs/quickstart/student
  tinyllm-distill run configs/paper/obqa.yaml train.lr=1e-4 teachers.0.alpha=0.5
  tinyllm-distill run configs/paper/obqa.yaml teachers=[]      # answer-only baseline
  tinyllm-distill data tinyllm-arc --path ../shared/data/arc
  tinyllm-distill data --list
"""


@click.group(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Distill several teacher LLMs into one small student (TinyLLM, Tian et al. 2024).

    Teachers explain why the gold answer is right (teacher-forcing chain of thought); the student
    learns the answer and every teacher's rationale, one task prefix per teacher.
    """


# ---------------------------------------------------------------------------------------------


def plan(cfg, evaluates: bool = False) -> dict:
    """What a run would do, computed from the config and the data (no model is loaded). `evaluates`: the
    command scores the eval split, so its train.eval_method must suit the questions (refused as the run
    would refuse it)."""
    from distill.data import load_dataset

    ds = load_dataset(cfg.data.name, cfg.data.path)
    if evaluates:
        from distill.evaluation import check_method

        check_method(ds.splits.get(cfg.data.eval_split, [])[: cfg.data.max_eval], cfg.train.eval_method)
    n_train = len(ds.split(cfg.data.train_split))
    if cfg.data.max_train is not None:
        n_train = min(n_train, cfg.data.max_train)
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    steps = math.ceil(n_train * cfg.train.epochs / per_step)
    if cfg.train.max_steps is not None:
        steps = min(steps, cfg.train.max_steps)
    tasks = ["answer"] + [f"rationale:{t.name}" for t in cfg.teachers]
    from distill.rationales import cached_counts

    train = ds.split(cfg.data.train_split)[: cfg.data.max_train]
    cached = cached_counts(cfg, train)  # None: a transformers teacher, whose cache keys need the model

    def size(split, cap):
        n = len(ds.splits.get(split, []))
        return min(n, cap) if cap is not None else n

    return {
        "dataset": {"name": ds.name, "path": ds.path, "train": n_train,
                    "eval": size(cfg.data.eval_split, cfg.data.max_eval), "test": size(cfg.data.test_split, cfg.data.max_test)},
        "teachers": [{"name": t.name, "backend": t.backend, "model": t.model, "alpha": t.alpha} for t in cfg.teachers],
        "method": "answer-only fine-tuning" if not cfg.teachers else
                  "distilling step-by-step (one teacher)" if len(cfg.teachers) == 1 else f"TinyLLM ({len(cfg.teachers)} teachers)",
        "student": {"model": cfg.student.model, "lora": cfg.student.lora},
        "tasks": tasks,
        "rationales_cached": cached,
        "rationales_to_generate": sum(n_train - (c or 0) for c in cached.values()),
        "optimizer_steps": steps,
        "examples_per_step": per_step,
        "output_dir": cfg.output_dir,
    }


@main.command(epilog=EXAMPLES)
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the plan, then exit; loads no model.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in output_dir (needs "
                                             "train.save_every).")
@click.option("--no-mlflow", is_flag=True, help="Do not log this run to MLflow.")
@user_errors
def run(config, overrides, dry_run, resume, no_mlflow):
    """Generate rationales and train the student described by CONFIG (YAML).

    OVERRIDES are KEY=VALUE pairs with dotted keys (train.lr=1e-4, teachers.0.alpha=0.5);
    they win over the file, which wins over the defaults.
    """
    from distill.config import dump_yaml, load_config

    cfg = load_config(config, overrides)
    if dry_run:
        click.echo("# resolved config")
        click.echo(dump_yaml(cfg))
        click.echo("# plan")
        click.echo(json.dumps(plan(cfg, evaluates=True), indent=2))
        return
    from distill.pipeline import distill
    from distill.tracking import is_main_process

    summary = distill(cfg, resume=resume, track=not no_mlflow)
    if is_main_process():
        click.echo(json.dumps(summary, indent=2))


@main.command("config", epilog=EXAMPLES)
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.argument("overrides", nargs=-1)
@user_errors
def config_cmd(config, overrides):
    """Every config key with its value (defaults, then CONFIG, then OVERRIDES) and what it does."""
    from distill.config import describe_keys, load_config

    click.echo(describe_keys(load_config(config, overrides)))


@main.command("eval", epilog=EXAMPLES)
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--model", help="Evaluate this model instead of student.model (a folder, .gguf or packaged name).")
@click.option("--split", help="Which split (default: data.test_split).")
@click.option("--no-mlflow", is_flag=True, help="Do not log this run to MLflow.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and what would be scored, then exit; loads "
                                             "no model.")
@user_errors
def eval_cmd(config, overrides, model, split, no_mlflow, dry_run):
    """Accuracy of a model without training (the paper's zero-shot "inference" baseline) or of a trained student."""
    from distill.config import dump_yaml, load_config
    from distill.pipeline import evaluate_model

    cfg = load_config(config, overrides)
    if model:
        cfg.student.model = model
    if dry_run:
        from distill.data import load_dataset
        from distill.models import PACKAGED

        target = cfg.student.model
        hub_id = target.count("/") == 1 and not target.startswith((".", "/", "~"))  # org/name
        if not (target in PACKAGED or Path(target).exists() or hub_id):
            raise UserError(f"--model {target}: no such folder or file, and not a packaged model "
                            f"({', '.join(PACKAGED)}) or hub id.")
        which = split or cfg.data.test_split
        ds = load_dataset(cfg.data.name, cfg.data.path)
        if which not in ds.splits:
            raise UserError(f"--split {which}: {ds.name} has the splits {', '.join(ds.splits)}.")
        click.echo(dump_yaml(cfg))
        click.echo(json.dumps({"model": target, "dataset": ds.name, "split": which,
                               "questions": len(ds.split(which)[: cfg.data.max_test if which == cfg.data.test_split
                                                                 else cfg.data.max_eval]),
                               "method": cfg.train.eval_method}, indent=2))
        return
    click.echo(json.dumps(evaluate_model(cfg, split or cfg.data.test_split, track=not no_mlflow), indent=2))


@main.command(epilog=EXAMPLES)
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--no-mlflow", is_flag=True, help="Do not log this run to MLflow.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the plan, then exit; loads no model.")
@user_errors
def generate(config, overrides, no_mlflow, dry_run):
    """Only the first half of a run: every training question gets a rationale from every teacher.

    Rationales go to an append-only cache (rationales.cache_dir); a re-run generates only what is
    missing, and a run killed part-way loses at most the requests in flight.
    """
    from distill.config import dump_yaml, load_config
    from distill.pipeline import generate as run_generate

    if dry_run:
        cfg = load_config(config, overrides)
        click.echo(dump_yaml(cfg))
        p = plan(cfg)
        click.echo(json.dumps({k: p[k] for k in ("dataset", "teachers", "rationales_to_generate")}, indent=2))
        return
    report = run_generate(load_config(config, overrides), track=not no_mlflow)
    click.echo(json.dumps(report, indent=2))


# ---------------------------------------------------------------------------------------------


@main.command(epilog=EXAMPLES)
@click.argument("name", required=False)
@click.option("--path", type=click.Path(), help="The dataset's folder, e.g. ../shared/data/arc.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (splits, answers, notes) instead of text.")
@click.option("--list", "list_names", is_flag=True, help="List the dataset names and exit.")
@click.option("--schema", is_flag=True, help="Print the JSONL schema for your own data and exit.")
@click.option("--rationales", is_flag=True, help="Also parse the paper's released teacher rationales (tinyllm-* only).")
@user_errors
def data(name, path, as_json, list_names, schema, rationales):
    """Check a dataset before spending GPU hours: split sizes, answer distribution, one example."""
    from distill.data import JSONL_SCHEMA, REGISTRY, describe, load_dataset
    from distill.prompts import render_answer, render_question

    if schema:
        click.echo(JSONL_SCHEMA)
        return
    if list_names or not name:
        for key, (folder, _, desc) in REGISTRY.items():
            click.echo(f"  {key:22s} {desc}")
        click.echo(f"  {'hf:<id>[:<config>]':22s} a Hugging Face Hub dataset (needs the network)")
        return
    ds = load_dataset(name, path)
    info = describe(ds)
    if rationales:
        if not name.startswith("tinyllm-"):
            raise UserError("--rationales reads the paper's released rationales, which exist only for the tinyllm-* "
                            "datasets.")
        from distill.paper import load_paper_rationales

        info["rationales"] = {}
        for split, rows in ds.splits.items():
            parsed = load_paper_rationales(ds.path, split, rows)
            info["rationales"][split] = {"counts": parsed.counts(), "unparsed": len(parsed.unparsed),
                                         "unparsed_first": parsed.unparsed[:5]}
    first_split = next(iter(ds.splits))
    sample = ds.splits[first_split][0] if ds.splits[first_split] else None
    if as_json:
        info["example"] = sample.to_json() if sample else None
        click.echo(json.dumps(info, ensure_ascii=False))
        return
    click.echo(f"{info['name']}  ({info['path']})")
    for split, n in info["splits"].items():
        answers = ", ".join(f"{k}:{v}" for k, v in info["answers"][split].items())
        click.echo(f"  {split:8s} {n:6d}   answers {answers}")
    for split, r in info.get("rationales", {}).items():
        click.echo(f"  rationales {split}: " + ", ".join(f"{t} {n}" for t, n in r["counts"].items())
                   + f"; unparsed {r['unparsed']}")
        for line in r["unparsed_first"]:
            click.echo(f"    - {line}")
    for note in info["notes"]:
        click.echo(f"  note: {note}")
    if sample:
        click.echo(f"\nexample ({first_split}, id {sample.id}):")
        text = render_question(sample)
        click.echo("  " + (text if len(text) < 1200 else text[:1200] + " …").replace("\n", "\n  "))
        click.echo(f"  gold: {render_answer(sample)}")


if __name__ == "__main__":
    main()
