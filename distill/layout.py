"""The run folder's layout, named once: distill writes it, export and bench read it.

    <output_dir>/
      resolved_config.yaml     the config that made everything here
      summary.json             the distill run's result (run id, accuracies, the chosen epoch)
      generation.json          per-teacher rationale statistics
      eval_predictions.jsonl   per-question predictions of the final evaluation
      epochs.json, epochs/     per-epoch scores and the best epoch's weights (train.epoch_eval)
      checkpoints/step-NNNNNN  resumable training state (step-NNNNNN.tmp while being written)
      student/                 the trained student (+ prompt_format.json)
      exports/<format>-<quant> tinyllm-export's default output folders
      bench/                   tinyllm-bench's report and plots
"""
from __future__ import annotations

from pathlib import Path

RESOLVED_CONFIG = "resolved_config.yaml"
SUMMARY = "summary.json"
GENERATION = "generation.json"
RATIONALES_USED = "rationales_used.json"
EVAL_PREDICTIONS = "eval_predictions.jsonl"
EPOCHS_FILE = "epochs.json"
EPOCHS_DIR = "epochs"
CHECKPOINTS = "checkpoints"
STUDENT = "student"
PROMPT_FORMAT = "prompt_format.json"
EXPORTS = "exports"
BENCH = "bench"


def student_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / STUDENT


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step:06d}"


def export_dir(student: Path, fmt: str, quant: str) -> Path:
    """Where tinyllm-export writes by default and tinyllm-bench looks: beside the student."""
    return Path(student).parent / EXPORTS / f"{fmt}-{quant}"


def run_of(student: Path) -> Path:
    """The distill output folder a student folder belongs to."""
    return Path(student).parent
