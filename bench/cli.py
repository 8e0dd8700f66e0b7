"""`tinyllm-bench`: thin CLI over the bench stage."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from distill import layout
from distill.errors import UserError, user_errors

EXAMPLES = """\b
examples:
  tinyllm-bench -c configs/quickstart.yaml --limit 100
  tinyllm-bench -c configs/quickstart.yaml --contestants student-gguf-q4_k_m,teacher:gemma3 --threads 2
"""


@click.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("overrides", nargs=-1)
@click.option("-c", "--config", type=click.Path(dir_okay=False), help="The distill config: its data, teachers and "
                                                                      "student.")
@click.option("--limit", type=int, help="Use only the first N test questions.")
@click.option("--contestants", help="Comma-separated subset of contestants (default: all).")
@click.option("--threads", type=int, help="CPU threads for every runtime (fixed and reported).")
@click.option("--student", type=click.Path(file_okay=False), help="The student folder (default: "
                                                                  "<output_dir>/student); its exports are found beside it.")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: <output_dir>/bench).")
@click.option("--no-mlflow", is_flag=True, help="Do not log a bench run to MLflow.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the contestants found, then exit.")
@user_errors
def main(overrides, config, limit, contestants, threads, student, out, no_mlflow, dry_run):
    """Accuracy, latency, memory and size of the student (torch, ONNX, GGUF) against its teachers."""
    from distill.config import dump_yaml, load_config

    extra = list(overrides)
    if limit is not None:
        extra.append(f"bench.limit={limit}")
    if threads is not None:
        extra.append(f"bench.threads={threads}")
    if contestants:
        extra.append(f"bench.contestants={json.dumps(contestants.split(','))}")
    cfg = load_config(config, extra)
    student_dir = Path(student) if student else layout.student_dir(cfg.output_dir)
    if student and not (student_dir / "config.json").exists():
        raise UserError(f"--student {student} is not a student folder (no config.json); give the 'student' folder a "
                        "distill run saved, or leave --student out for <output_dir>/student.")
    out_dir = Path(out) if out else Path(cfg.output_dir) / layout.BENCH
    from bench.run import select

    chosen = select(cfg, student_dir if student_dir.exists() else None)  # the real run's checks, before any work
    if dry_run:
        click.echo(dump_yaml(cfg))
        click.echo(json.dumps([{k: v for k, v in c.items() if k != "teacher"} for c in chosen], indent=2))
        return
    from bench.run import bench

    report = bench(cfg, student_dir if student_dir.exists() else None, out_dir, track=not no_mlflow)
    plots = [str(p) for p in (out_dir / "accuracy_vs_latency.png", out_dir / "accuracy_vs_size.png") if p.exists()]
    click.echo(f"\nreport: {out_dir / 'report.md'}" + (f"  plots: {', '.join(plots)}" if plots else ""))
    failed = [f"{c['name']} ({c['status']})" for c in report["contestants"] if c["status"] != "ok"]
    if failed:
        click.secho(f"error: {len(failed)} of {len(report['contestants'])} contestant(s) did not finish: "
                    f"{', '.join(failed)}; the report has the others and each one's stderr.log.", fg="red", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
