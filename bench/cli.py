"""`tinyllm-bench`: thin CLI over the bench stage."""
from __future__ import annotations

import json

import click

from distill.cli import user_errors
from distill.errors import UserError

EXAMPLES = """\b
examples:
  tinyllm-bench -c configs/quickstart.yaml --limit 100
  tinyllm-bench -c configs/quickstart.yaml --contestants student-gguf-q4_k_m,teacher:gemma3 --threads 2
"""


@click.command(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("overrides", nargs=-1)
@click.option("-c", "--config", type=click.Path(dir_okay=False), help="The distill config: its data, teachers and student.")
@click.option("--limit", type=int, help="Use only the first N test questions.")
@click.option("--contestants", help="Comma-separated subset of contestants (default: all).")
@click.option("--threads", type=int, help="CPU threads for every runtime (fixed and reported).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the plan, then exit.")
@user_errors
def main(overrides, config, limit, contestants, threads, dry_run):
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
    if dry_run:
        click.echo(dump_yaml(cfg))
        return
    raise UserError("the benchmark is not built yet (issue #6); use --dry-run to check the arguments.")


if __name__ == "__main__":
    main()
