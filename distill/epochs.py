"""Per-epoch evaluation and model selection on the eval split (`train.epoch_eval`).

At the end of every epoch the student is scored on the eval split (validation) and on the test
split; the curve goes to `epochs.json` and MLflow. The student kept is the epoch best on the eval
split — the test split is reported at that epoch, never used to choose. Disk stays bounded: only
the best epoch's weights are kept (`epochs/best/`), plus each epoch's per-question predictions.

Resuming: the trainer checkpoints at each epoch's end *before* evaluating, so after a kill the
records in `epochs.json` are those at or before the checkpoint's step, and an epoch whose
evaluation was cut short is evaluated again on resume.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from distill import layout
from distill.checkpoints import save_weights
from distill.evaluation import correct_string, evaluate


class EpochEvaluator:
    def __init__(self, out_dir: Path, tok, fmt, eval_examples: list, test_examples: list, method: str,
                 select_by: str, run, log, resume_step: int | None):
        self.out_dir, self.tok, self.fmt, self.method = Path(out_dir), tok, fmt, method
        self.splits = {"valid": eval_examples, "test": test_examples}
        self.select_by, self.run, self.log = select_by, run, log
        self.file, self.dir = self.out_dir / layout.EPOCHS_FILE, self.out_dir / layout.EPOCHS_DIR
        self.records: list[dict] = []
        if resume_step is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.file.unlink(missing_ok=True)
        elif self.file.exists():
            # A kill between the checkpoint and the eval: drop what came after the checkpoint.
            self.records = [r for r in json.loads(self.file.read_text())["epochs"] if r["step"] <= resume_step]
            for r in self.records:
                self._log_metrics(r)
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, step: int) -> bool:
        return any(r["step"] == step for r in self.records)

    def best(self) -> dict | None:
        key = f"accuracy_{self.select_by}"
        return max(self.records, key=lambda r: (r["valid"][key], -r["step"]), default=None)

    def end_of_epoch(self, model, epoch: float, step: int) -> dict:
        """Score the model on both splits, record it, keep its weights if it is the best so far."""
        record = {"epoch": epoch, "step": step}
        for split, examples in self.splits.items():
            self.log(f"[epoch-eval] epoch {epoch:g} (step {step}): {split}, {len(examples)} questions")
            res = evaluate(model, self.tok, self.fmt, examples, self.method, log=self.log)
            record[split] = {k: v for k, v in res.items() if k.startswith("accuracy")} | {"n": res["n"]}
            record[f"{split}_correct"] = {k[len("accuracy_"):]: correct_string(res, k[len("accuracy_"):])
                                          for k in record[split] if k.startswith("accuracy_")}
            (self.dir / f"epoch-{step:06d}-{split}.jsonl").write_text(
                "".join(json.dumps(p) + "\n" for p in res["predictions"]))
        previous = self.best()
        self.records.append(record)
        if self.best() is record:
            tmp = self.dir / "best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_weights(model.state_dict(), tmp / "model.safetensors")
            (tmp / "state.json").write_text(json.dumps({"step": step}))
            shutil.rmtree(self.dir / "best", ignore_errors=True)
            tmp.rename(self.dir / "best")
        self._write()
        self._log_metrics(record)
        best = self.best()
        self.log(f"[epoch-eval] epoch {epoch:g}: " + " | ".join(
            f"{split} " + ", ".join(f"{k[len('accuracy_'):]} {v:.3f}" for k, v in record[split].items()
                                    if k.startswith("accuracy_")) for split in self.splits)
            + f" | best on valid so far: epoch {best['epoch']:g}" + (" (new)" if best is not previous else ""))
        return record

    def restore_best(self, model) -> dict:
        """Load the best epoch's weights into the model; its record (with the test split at that epoch)."""
        best = self.best()
        from safetensors.torch import load_file

        saved = json.loads((self.dir / "best" / "state.json").read_text())["step"]
        if saved != best["step"]:
            raise RuntimeError(f"{self.dir / 'best'} holds step {saved}, but epochs.json says step {best['step']} is "
                               "best")
        model.load_state_dict(load_file(str(self.dir / "best" / "model.safetensors")))
        return best

    def predictions(self, step: int, split: str) -> list[dict]:
        f = self.dir / f"epoch-{step:06d}-{split}.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines()]

    def summary(self) -> dict:
        best = self.best()
        return {"select_by": f"valid accuracy_{self.select_by}", "selected_epoch": best["epoch"],
                "selected_step": best["step"], "epochs": self.records}

    def _write(self) -> None:
        tmp = self.file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"select_by": f"accuracy_{self.select_by}", "epochs": self.records}, indent=1) + "\n")
        os.replace(tmp, self.file)

    def _log_metrics(self, record: dict) -> None:
        self.run.log_metrics({f"{split}_{k}": v for split in self.splits for k, v in record[split].items()
                              if k.startswith("accuracy")}, step=record["step"])

