"""Per-epoch evaluation, selection on the validation split, resume across epochs, exact-match scoring.

Run: pytest tests/test_epochs.py
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from distill.config import load_config
from distill.data import load_dataset
from distill.epochs import EpochEvaluator
from distill.errors import UserError
from distill.evaluation import evaluate
from distill.student import exact_match
from test_train import rationale_texts, run_cli


def write_split_data(folder):
    """A JSONL dataset with all three splits, built from the demo questions (the demo set has no validation split)."""
    demo = load_dataset("demo").splits
    splits = {"train": demo["train"][:16], "valid": demo["train"][16:24], "test": demo["test"][:8]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, exs in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": ex.id, "question": ex.question, "choices": list(ex.choices), "answer": ex.answer}) + "\n"
            for ex in exs))
    return splits


def write_config(tmp_path, tiny_student, **train):
    splits = write_split_data(tmp_path / "data")
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps({"example_id": i, "text": t}) + "\n"
                         for i, t in rationale_texts(splits["train"], "a").items()))
    train_yaml = ", ".join(f"{k}: {v}" for k, v in {
        "batch_size": 4, "lr": 3e-3, "epochs": 3, "epoch_eval": "true", "eval_method": "both", "select_by": "loglik",
        "save_every": 4, "log_every": 4, **train}.items())
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'out'}
data: {{name: jsonl, path: {tmp_path / 'data'}}}
teachers:
  - {{name: a, backend: files, model: {f}, alpha: 0.5}}
student: {{model: {tiny_student}}}
train: {{{train_yaml}}}
""")
    return cfg


def test_every_epoch_is_scored_and_the_student_is_the_best_on_valid(tmp_path, tiny_student):
    cfg = write_config(tmp_path, tiny_student)
    r = run_cli("run", str(cfg), "--no-mlflow", cwd=tmp_path)
    out = tmp_path / "out"
    records = json.loads((out / "epochs.json").read_text())["epochs"]
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 4), (2, 8), (3, 12)]  # 16 questions / 4 per step
    for rec in records:
        for split, n in (("valid", 8), ("test", 8)):
            assert rec[split]["n"] == n
            assert set(rec[split]) >= {"accuracy_loglik", "accuracy_loglik_sum", "accuracy_em", "accuracy_option_match"}
            assert rec[f"{split}_correct"]["loglik"].count("1") == round(rec[split]["accuracy_loglik"] * n)
    best = max(records, key=lambda r: (r["valid"]["accuracy_loglik"], -r["step"]))
    summary = json.loads(r.stdout)
    assert summary["split"] == "test" and summary["selection"]["selected_step"] == best["step"]
    assert summary["accuracy_loglik"] == best["test"]["accuracy_loglik"]  # the test split at the chosen epoch
    # The saved student holds the chosen epoch's weights; re-scoring it gives that epoch's test numbers.
    assert json.loads((out / "epochs" / "best" / "state.json").read_text())["step"] == best["step"]
    rescored = json.loads(run_cli("eval", str(cfg), "--model", str(out / "student"), "--no-mlflow", cwd=tmp_path).stdout)
    assert rescored["accuracy_loglik"] == best["test"]["accuracy_loglik"]
    assert rescored["accuracy_em"] == best["test"]["accuracy_em"]
    # Disk stays bounded: one set of epoch weights, whatever the number of epochs.
    assert len(list((out / "epochs").glob("*/model.safetensors"))) == 1
    assert "[epoch-eval] epoch 3" in r.stderr


def test_selection_uses_valid_even_when_test_disagrees(tmp_path):
    ev = EpochEvaluator(tmp_path, None, None, [], [], "both", "em", run=None, log=print, resume_step=None)
    ev.records = [{"epoch": 1, "step": 10, "valid": {"accuracy_em": 0.5}, "test": {"accuracy_em": 0.9}},
                  {"epoch": 2, "step": 20, "valid": {"accuracy_em": 0.7}, "test": {"accuracy_em": 0.1}},
                  {"epoch": 3, "step": 30, "valid": {"accuracy_em": 0.7}, "test": {"accuracy_em": 0.2}}]
    assert ev.best()["step"] == 20  # highest on valid; a tie goes to the earlier epoch


@pytest.mark.parametrize("kill_at", ["during epoch 3's training", "during epoch 3's evaluation"])
def test_resume_across_epochs_matches_uninterrupted_run(tmp_path, tiny_student, kill_at):
    cfg = write_config(tmp_path, tiny_student)
    run_cli("run", str(cfg), "--no-mlflow", cwd=tmp_path)
    out = tmp_path / "out"
    full = json.loads((out / "epochs.json").read_text())["epochs"]
    weights = load_file(str(out / "student" / "model.safetensors"))
    # What the kill leaves on disk: checkpoints up to its step, epochs.json up to the last finished eval.
    shutil.rmtree(out / "student")
    if kill_at.startswith("during epoch 3's training"):
        shutil.rmtree(out / "checkpoints" / "step-000012")
    doc = json.loads((out / "epochs.json").read_text())
    doc["epochs"] = doc["epochs"][:2]
    (out / "epochs.json").write_text(json.dumps(doc))
    r = run_cli("run", str(cfg), "--no-mlflow", "--resume", cwd=tmp_path)
    assert "resumed from" in r.stderr
    again = json.loads((out / "epochs.json").read_text())["epochs"]
    assert [(e["step"], e["valid"], e["test"]) for e in again] == [(e["step"], e["valid"], e["test"]) for e in full]
    resumed = load_file(str(out / "student" / "model.safetensors"))
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_epoch_eval_refuses_to_select_on_the_test_split(tmp_path, tiny_student):
    cfg = write_config(tmp_path, tiny_student)
    with pytest.raises(UserError, match="data.eval_split=valid"):
        load_config(cfg, ["data.eval_split=test"])
    with pytest.raises(UserError, match="train.eval_method=generate or both"):
        load_config(cfg, ["train.select_by=em", "train.eval_method=loglik"])


def test_exact_match_is_the_papers_strict_metric():
    assert exact_match(" the sun\n(b) because", "the sun")
    assert not exact_match("(a) the sun", "the sun")  # the lenient `generate` pick accepts a letter; EM does not
    assert not exact_match("the sun is hot", "the sun")


def test_generation_gets_its_prompt_on_the_students_device(tiny_student):
    """The prompt goes where the student's weights are (on a GPU, cuda): seen here with a student on 'meta'."""
    from types import SimpleNamespace

    import transformers

    from distill.inference import answers
    from distill.student import PromptFormat

    class OnMeta(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))
            self.config, self.seen = SimpleNamespace(is_encoder_decoder=False), []

        def generate(self, input_ids, attention_mask, **kw):
            self.seen.append({input_ids.device.type, attention_mask.device.type})
            return torch.full((1, input_ids.shape[1] + 1), kw["pad_token_id"])

    tok = transformers.AutoTokenizer.from_pretrained(tiny_student)
    model = OnMeta()
    assert answers(model, tok, [PromptFormat().answer_prompt(load_dataset("demo").splits["test"][0])]) == [""]
    assert model.seen == [{"meta"}]


def test_evaluate_scores_generation_by_exact_match(tiny_student):
    import transformers

    from distill.student import PromptFormat

    tok = transformers.AutoTokenizer.from_pretrained(tiny_student)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student)
    exs = load_dataset("demo").splits["test"][:4]
    res = evaluate(model, tok, PromptFormat(task_position="after"), exs, "both")
    assert res["accuracy_em"] == sum(exact_match(p["generated"], ex.answer_text)
                                     for p, ex in zip(res["predictions"], exs)) / 4
    assert {"accuracy_loglik", "accuracy_loglik_sum", "accuracy_option_match"} <= set(res)
    assert set(evaluate(model, tok, PromptFormat(), exs, "loglik")) == {"n", "predictions", "accuracy_loglik",
                                                                        "accuracy_loglik_sum"}
