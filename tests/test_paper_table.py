"""benchmarks/paper_table.py: the paired statistics the table's conclusions rest on, and cell commands."""
from __future__ import annotations

import importlib.util
import json
import shutil
from math import sqrt
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("paper_table", Path(__file__).parent.parent / "benchmarks" / "paper_table.py")
paper_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_table)
paired = paper_table.paired


def test_paired_difference_and_exact_mcnemar():
    # 10 questions only a gets right, 0 only b: two-sided exact binomial p = 2 * 0.5**10
    a, b = "1" * 10 + "1" * 5 + "0" * 5, "0" * 10 + "1" * 5 + "0" * 5
    diff, lo, hi, p = paired(a, b)
    assert diff == pytest.approx(0.5) and p == pytest.approx(2 / 1024)
    sd = sqrt(sum((x - 0.5) ** 2 for x in [1] * 10 + [0] * 10) / 19)
    assert (lo, hi) == pytest.approx((0.5 - 1.96 * sd / sqrt(20), 0.5 + 1.96 * sd / sqrt(20)))
    # balanced disagreements: no difference, p = 1; identical results: no disagreements at all
    assert paired("1100", "0011")[0] == 0 and paired("1100", "0011")[3] == pytest.approx(1.0)
    assert paired("1010", "1010") == (0.0, 0.0, 0.0, 1.0)
    # 3 wins, 1 loss: p = 2 * (C(4,0) + C(4,1)) / 16
    assert paired("11100", "00010")[3] == pytest.approx(10 / 16)



def test_correctness_per_pick(tmp_path):
    preds = [{"id": "a", "gold": 1, "loglik": 1, "loglik_sum": 0}, {"id": "b", "gold": 0, "loglik": 2, "loglik_sum": 0}]
    (tmp_path / "eval_predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert paper_table.correctness(tmp_path) == "10"
    assert paper_table.correctness(tmp_path, "loglik_sum") == "01"
    (tmp_path / "eval_predictions.jsonl").write_text(json.dumps({"id": "a", "gold": 1, "loglik": 1}) + "\n")
    assert paper_table.correctness(tmp_path, "loglik_sum") is None  # recorded before the summed pick existed
    assert paper_table.correctness(tmp_path / "missing") is None


def test_cell_commands_share_the_budget_and_differ_only_in_method():
    cmds = {m: paper_table.command("obqa", m) for m in paper_table.METHODS}
    assert cmds["zero-shot"][1] == "eval" and all(c[1] == "run" for m, c in cmds.items() if m != "zero-shot")
    for m, c in cmds.items():
        assert "data.max_train=2000" in c and "train.batch_size=8" in c and "data.eval_split=test" in c
        assert f"output_dir=runs/paper/obqa/{m}" in c
    assert "teachers=[]" in cmds["ft-answer"] and "student.lora=true" in cmds["lora-answer"]
    assert "llama-2-7b" not in " ".join(cmds["step-by-step"]) and "llama-2-7b" in " ".join(cmds["tinyllm"])
    assert not any(a.startswith("data.max_train") for a in paper_table.command("arc", "tinyllm"))  # full split


def test_positions_count_picks_and_gold(tmp_path):
    preds = [{"gold": 0, "loglik": 2}, {"gold": 1, "loglik": 2}, {"gold": 0, "loglik": 0}]
    (tmp_path / "eval_predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert paper_table.positions(tmp_path) == {"picked": [1, 0, 2], "gold": [2, 1, 0]}


def test_table_pools_the_question_over_datasets(monkeypatch):
    cell = lambda ds, m, correct: {"dataset": ds, "method": m, "n_test": len(correct), "accuracy": correct.count("1") / len(correct),
                                   "correct": correct, "ci95": [0.0, 1.0], "wall_s": 60, "command": "cmd"}
    res = {("obqa", "tinyllm"): cell("obqa", "tinyllm", "1101"), ("obqa", "ft-answer"): cell("obqa", "ft-answer", "1001"),
           ("arc", "tinyllm"): {**cell("arc", "tinyllm", "110"), "positions": {"picked": [1, 1, 1], "gold": [2, 1, 0]}},
           ("arc", "ft-answer"): cell("arc", "ft-answer", "011"),
           ("riddlesense", "tinyllm"): {**cell("riddlesense", "tinyllm", "11"), "resumed_from": "step-000100"}}
    # riddlesense has no ft-answer yet: it is left out of the pool
    monkeypatch.setattr(paper_table, "load_results", lambda: res)
    text = paper_table.table()
    diff, lo, hi, p = paired("1101" + "110", "1001" + "011")
    assert f"| pooled: obqa + arc | tinyllm − ft-answer | {100 * diff:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {p:.3f} |" in text
    assert "| riddlesense (2, 2000) | — | — | — | — | — | 100.0 [0.0–100.0] |" in text  # no positions: no majority
    assert "| arc (3, full) | 66.7 | — | — |" in text  # 2 of 3 gold answers are option a
    assert "| arc | tinyllm | 1m00s | `cmd` |" in text  # a cell run in one sitting: its wall time as measured
    assert "| riddlesense | tinyllm | 1m00s (resumed from step-000100; last sitting only) | `cmd` |" in text


def test_the_papers_rows_stand_beside_ours():
    cell = {"dataset": "obqa", "n_test": 4, "accuracy": 0.5, "correct": "1100", "ci95": [0.0, 1.0], "wall_s": 1,
            "command": "c"}
    lines = paper_table.paper_beside_ours({("obqa", "ft-answer"): {**cell, "method": "ft-answer", "accuracy_em": 0.25},
                                           ("obqa", "tinyllm"): {**cell, "method": "tinyllm", "accuracy": 0.75},
                                           ("arc", "ft-answer"): {**cell, "dataset": "arc", "method": "ft-answer"}})
    text = "\n".join(lines)
    # 47.60 vs 41.60: +6.0 points, +14.4% relative; its teachers 69.2 and 58.6
    assert "| obqa | paper, 80M FLAN-T5-small | 16.6 | 37.8 | 41.6 | 47.6 | +6.0 (+14.4% rel.) | 69.2 | 58.6 |" in text
    assert "| obqa | ours, 135M SmolLM2, 1 epoch, loglik | — | — | 50.0 | 75.0 | +25.0 (+50.0% rel.) |" in text
    # the paper's metric gets its own row where any cell has it; TinyLLM's EM is not re-scored yet: no gain
    assert "| obqa | ours, 135M SmolLM2, 1 epoch, exact match (the paper's metric) | — | — | 25.0 | — | — |" in text
    assert "| arc | ours, 135M SmolLM2, 1 epoch, loglik |" in text and "arc | ours, 135M SmolLM2, 1 epoch, exact" not in text
    assert "| bioasq | ours, 135M SmolLM2 | — | — | — | — | not run yet |" in text


epochs_spec = importlib.util.spec_from_file_location("paper_epochs", Path(__file__).parent.parent / "benchmarks" / "paper_epochs.py")
paper_epochs = importlib.util.module_from_spec(epochs_spec)
epochs_spec.loader.exec_module(paper_epochs)


def test_epoch_cells_select_on_validation_and_name_their_variants():
    result = {"epochs": [{"epoch": 1, "step": 1, "valid": {"accuracy_em": 0.4, "accuracy_loglik": 0.6},
                          "test": {"accuracy_em": 0.9, "accuracy_loglik": 0.1}},
                         {"epoch": 2, "step": 2, "valid": {"accuracy_em": 0.5, "accuracy_loglik": 0.5},
                          "test": {"accuracy_em": 0.2, "accuracy_loglik": 0.8}}]}
    assert paper_epochs.selected(result, "em")["epoch"] == 2  # valid decides, whatever test says
    assert paper_epochs.selected(result, "loglik")["epoch"] == 1
    cmd = paper_epochs.command("obqa/tinyllm/a0.5/s2")
    assert "teachers.0.alpha=0.5" in cmd and "teachers.1.alpha=0.5" in cmd and "train.seed=2" in cmd
    assert "data.eval_split=valid" in cmd and "train.epoch_eval=true" in cmd and "data.max_train=2000" in cmd
    assert "rationales.keep_rejected=false" in paper_epochs.command("obqa/tinyllm/filtered")
    assert "train.epochs=2" in paper_epochs.command("obqa/tinyllm/a0.5/e2")
    assert "train.epochs=4" in paper_epochs.command("obqa/tinyllm")
    assert "train.precision=bf16" in paper_epochs.command("obqa/tinyllm/e2/bf16")
    assert not any("precision" in c for c in paper_epochs.command("obqa/tinyllm/e2"))
    assert not any("alpha" in c for c in paper_epochs.command("obqa/ft-answer"))
    with pytest.raises(SystemExit):
        paper_epochs.command("obqa/tinyllm/bogus")
    for typo in ("obqa/obqa/tinyllm/e2", "obq/tinyllm", "obqa/zero-shot"):  # one sentence, not a KeyError
        with pytest.raises(SystemExit, match="unknown cell .*dataset of obqa, .*method of lora-answer"):
            paper_epochs.command(typo)


def test_exact_match_column_and_pairs(tmp_path, monkeypatch):
    preds = [{"id": "a", "gold": 1, "loglik": 1, "em": 0}, {"id": "b", "gold": 0, "loglik": 2, "em": 1}]
    (tmp_path / "eval_predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    assert paper_table.correctness(tmp_path, "em") == "01"  # EM is its own verdict, not a pick against gold
    cell = lambda m, correct, em: {"dataset": "obqa", "method": m, "n_test": 4, "accuracy": correct.count("1") / 4,
                                   "correct": correct, "ci95": [0.0, 1.0], "wall_s": 60, "command": "cmd",
                                   "accuracy_em": em.count("1") / 4, "correct_em": em}
    res = {("obqa", "tinyllm"): cell("tinyllm", "1101", "1111"), ("obqa", "ft-answer"): cell("ft-answer", "1001", "0001"),
           ("obqa", "zero-shot"): {**cell("zero-shot", "0001", "0000"), "accuracy_em": None},
           ("arc", "tinyllm"): {**cell("tinyllm", "0110", "0100"), "dataset": "arc"},
           ("arc", "ft-answer"): {**cell("ft-answer", "0011", "0110"), "dataset": "arc"},
           ("piqa", "tinyllm"): {**cell("tinyllm", "0110", "1111"), "dataset": "piqa"},
           ("piqa", "ft-answer"): {**cell("ft-answer", "0011", ""), "dataset": "piqa", "accuracy_em": None}}
    monkeypatch.setattr(paper_table, "load_results", lambda: res)
    text = paper_table.table()
    assert "| obqa | — | — | 25.0 | — | 100.0 |" in text  # zero-shot not re-scored yet
    diff, lo, hi, p = paired("1111", "0001")
    assert f"| obqa | tinyllm − ft-answer | {100 * diff:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {p:.3f} |" in text
    # pooled by exact match over the datasets whose both cells have it (piqa's fine-tuning has none: left out),
    # beside the log-likelihood pool over all three
    diff, lo, hi, p = paired("1111" + "0100", "0001" + "0110")
    assert f"| pooled: obqa + arc | tinyllm − ft-answer | {100 * diff:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {p:.3f} |" in text
    assert "| pooled: obqa + arc + piqa | tinyllm − ft-answer |" in text
    assert "train.eval_method=both" in paper_table.command("obqa", "tinyllm")


def test_epoch_cells_pair_with_the_fine_tuning_cell_of_the_same_seed_and_setting():
    key = paper_epochs.baseline_key
    assert key("obqa/tinyllm/a0.5") == key("obqa/ft-answer") == key("obqa/ft-answer/s0")  # seed 0 is the default
    assert key("obqa/tinyllm/s1") == key("obqa/ft-answer/s1") != key("obqa/ft-answer")
    assert key("obqa/tinyllm/e2") != key("obqa/ft-answer") != key("riddlesense/ft-answer")
    assert key("obqa/tinyllm/a2/e2") == key("obqa/ft-answer/e2")
    # precision is part of the training setting: a bf16 cell pairs only with bf16 fine-tuning
    assert key("obqa/tinyllm/a2/e2/bf16") == key("obqa/ft-answer/e2/bf16") != key("obqa/ft-answer/e2")
    assert paper_epochs.parts("obqa/tinyllm/a2/e2/bf16")[4] == ("a2",)
    # two teachers are also set against one (step-by-step), never the other way round or across settings
    cells = ["rs/ft-answer/bf16", "rs/step-by-step/bf16", "rs/tinyllm/bf16", "rs/tinyllm", "rs/step-by-step"]
    assert paper_epochs.comparisons(cells) == [("rs/step-by-step/bf16", "rs/ft-answer/bf16"),
                                               ("rs/tinyllm/bf16", "rs/ft-answer/bf16"),
                                               ("rs/tinyllm/bf16", "rs/step-by-step/bf16"),
                                               ("rs/tinyllm", "rs/step-by-step")]


def _epoch_cell(valid_em: list[float], test_correct: list[str]) -> dict:
    """A finished epoch cell: per epoch, a validation EM and the test verdicts (test EM follows from them)."""
    return {"epochs": [{"epoch": i + 1, "step": i + 1, "valid": {"accuracy_em": v, "accuracy_loglik": v},
                        "test": {"accuracy_em": t.count("1") / len(t), "accuracy_loglik": 0.0},
                        "test_correct": {"em": t, "loglik": t}} for i, (v, t) in enumerate(zip(valid_em, test_correct))],
            "command": "cmd", "wall_s": 60}


def test_alpha_is_chosen_on_validation_and_compared_with_fine_tuning():
    res = {"obqa/ft-answer": _epoch_cell([0.3], ["1100"]),
           "obqa/tinyllm": _epoch_cell([0.4], ["1111"]),            # best on test, not on validation
           "obqa/tinyllm/a0.5": _epoch_cell([0.2, 0.5], ["1111", "1000"]),  # best on validation (epoch 2)
           "obqa/tinyllm/filtered": _epoch_cell([0.5], ["0000"]),    # ties a0.5 on validation, listed after it
           "obqa/step-by-step": _epoch_cell([0.9], ["1111"])}        # a method of its own: not in tinyllm's search
    lines = paper_epochs.alpha_search(res)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| obqa/")}
    assert set(rows) == {"obqa/tinyllm", "obqa/tinyllm/a0.5", "obqa/tinyllm/filtered"}
    assert rows["obqa/tinyllm/a0.5"].endswith("| **chosen** |") and "| α 0.5, all rationales | 2 | 50.0 | 25.0 |" in rows[
        "obqa/tinyllm/a0.5"]
    assert not rows["obqa/tinyllm"].endswith("**chosen** |") and not rows["obqa/tinyllm/filtered"].endswith("**chosen** |")
    assert "dropped" in rows["obqa/tinyllm/filtered"]
    diff, lo, hi, p = paired("1000", "1100")
    assert f"{100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p {p:.3f}" in rows["obqa/tinyllm/a0.5"]
    # a running cell is not a candidate yet; one recipe alone is no search
    assert paper_epochs.alpha_search({**res, "obqa/tinyllm/a2": {**_epoch_cell([0.99], ["1111"]), "running": True}}) == lines
    assert paper_epochs.alpha_search({"obqa/tinyllm": res["obqa/tinyllm"], "obqa/ft-answer": res["obqa/ft-answer"]}) == []


def test_bf16_cells_are_checked_against_their_fp32_twin_at_the_last_epoch():
    res = {"obqa/tinyllm/e2": _epoch_cell([0.3, 0.2], ["0000", "1100"]),
           "obqa/tinyllm/e2/bf16": _epoch_cell([0.3, 0.4], ["1111", "1110"]),
           "obqa/ft-answer/e1/bf16": _epoch_cell([0.3], ["1000"]),
           "obqa/tinyllm/a2/e2/bf16": _epoch_cell([0.3], ["1000"]),  # no fp32 twin: no row
           "riddlesense/ft-answer/e1/bf16": _epoch_cell([0.3], ["1000"])}  # twin scored without EM yet: no row
    one_epoch = {("obqa", "ft-answer"): {"correct": "1001", "correct_em": "0001"},
                 ("riddlesense", "ft-answer"): {"correct": "1001"}}
    rows = [line for line in paper_epochs.precision_check(res, one_epoch) if line.startswith("| obqa/") or
            line.startswith("| riddlesense/")]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| obqa/tinyllm/e2/bf16", "obqa/tinyllm/e2", "em"], ["| obqa/tinyllm/e2/bf16", "obqa/tinyllm/e2", "loglik"],
        ["| obqa/ft-answer/e1/bf16", "obqa/ft-answer (one-epoch table)", "em"],
        ["| obqa/ft-answer/e1/bf16", "obqa/ft-answer (one-epoch table)", "loglik"]]
    # last epochs compared (1110 vs 1100), not the best ones; agreement counted per question
    assert "| 75.0 | 50.0 | " in rows[0] and rows[0].endswith("| 75.0% |")
    assert "| 25.0 | 25.0 | " in rows[2] and rows[2].endswith("| 50.0% |")  # 1000 vs 0001
    assert "| 25.0 | 50.0 | " in rows[3]  # log-likelihood against the twin's own log-likelihood verdicts
    assert paper_epochs.precision_check({"obqa/tinyllm/e2": res["obqa/tinyllm/e2"]}, one_epoch) == []


def test_curves_draw_each_method_at_full_length_default_recipe_and_seed():
    cells = ["obqa/ft-answer", "obqa/tinyllm", "obqa/tinyllm/bf16", "obqa/tinyllm/e2/bf16", "obqa/tinyllm/a0.5",
             "obqa/tinyllm/s1", "obqa/ft-answer/s0", "riddlesense/ft-answer/bf16"]
    res = {c: _epoch_cell([0.3], ["1"]) for c in cells}
    assert list(paper_epochs.curve_cells(res, "obqa")) == ["obqa/ft-answer", "obqa/tinyllm", "obqa/tinyllm/bf16",
                                                           "obqa/ft-answer/s0"]
    assert list(paper_epochs.curve_cells(res, "riddlesense")) == ["riddlesense/ft-answer/bf16"]


def test_seeds_give_mean_spread_and_a_paired_test_pooled_over_seeds():
    res = {"obqa/ft-answer": _epoch_cell([0.3], ["1100"]), "obqa/ft-answer/s1": _epoch_cell([0.3], ["1000"]),
           "obqa/ft-answer/s2": _epoch_cell([0.3], ["0000"]),
           "obqa/tinyllm": _epoch_cell([0.3], ["1110"]), "obqa/tinyllm/s1": _epoch_cell([0.3, 0.1], ["1100", "1111"]),
           "obqa/tinyllm/a0.5/s1": _epoch_cell([0.3], ["1111"])}  # another recipe: neither tinyllm's seeds nor pooled
    lines = paper_epochs.seeds(res)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| obqa/")}
    assert set(rows) == {"obqa/ft-answer", "obqa/tinyllm"}
    assert rows["obqa/ft-answer"].endswith("| 0, 1, 2 | 50.0, 25.0, 0.0 | 25.0 | 25.0 | — | — |")
    assert "| 0, 1 | 75.0, 50.0 | 62.5 | 17.7 |" in rows["obqa/tinyllm"]  # seed 1 at its validation-chosen epoch 1
    diff, lo, hi, p = paired("1110" + "1100", "1100" + "1000")
    assert f"{100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p {p:.3f} (seeds 0, 1)" in rows["obqa/tinyllm"]
    # the unselected look pools each seed's last epoch (seed 1: 1111, not the chosen 1100)
    diff, lo, hi, p = paired("1110" + "1111", "1100" + "1000")
    assert rows["obqa/tinyllm"].endswith(f"| {100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p {p:.3f} |")
    assert paper_epochs.seeds({"obqa/tinyllm": res["obqa/tinyllm"]}) == []


def test_exact_match_rescore_of_a_saved_student_and_of_a_gone_one(tmp_path, tiny_student, monkeypatch):
    """`paper_table.py --em` on a cell recorded before exact match existed: a saved student answers the test split
    again by generation (no training); a student that is gone is re-created with the cell's own command, which
    must reproduce the recorded log-likelihood accuracy. Tiny model, demo questions, no MLflow."""
    import subprocess

    from test_epochs import write_split_data
    from test_train import rationale_texts

    splits = write_split_data(tmp_path / "data")
    rats = tmp_path / "a.jsonl"
    rats.write_text("".join(json.dumps({"example_id": i, "text": t}) + "\n"
                            for i, t in rationale_texts(splits["train"], "a").items()))
    cfg = tmp_path / "cell.yaml"
    cfg.write_text(f"""data: {{name: jsonl, path: {tmp_path / 'data'}}}
teachers: [{{name: a, backend: files, model: {rats}, alpha: 1.0}}]
student: {{model: {tiny_student}}}
train: {{batch_size: 4, lr: 3e-3, epochs: 1, log_every: 4}}
""")
    cell_cmd = lambda dataset, method: [str(paper_table.BIN / "tinyllm-distill"), "run", str(cfg), "data.eval_split=test",
                                        "train.eval_method=both", f"output_dir=runs/paper/{dataset}/{method}",
                                        "train.save_every=2", "--no-mlflow"]
    monkeypatch.setattr(paper_table, "REPO", tmp_path)
    monkeypatch.setattr(paper_table, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(paper_table, "command", cell_cmd)
    (tmp_path / "results").mkdir()

    # the cell as recorded before exact match: log-likelihood only
    old = [c if c != "train.eval_method=both" else "train.eval_method=loglik" for c in cell_cmd("obqa", "tinyllm")]
    r = subprocess.run(old, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    recorded = json.loads(r.stdout)
    assert recorded.get("accuracy_em") is None
    folder = tmp_path / "runs/paper/obqa/tinyllm"
    correct = paper_table.correctness(folder, "loglik")
    stored = {"dataset": "obqa", "method": "tinyllm", "accuracy": recorded["accuracy_loglik"], "correct": correct}
    (tmp_path / "results/obqa-tinyllm.json").write_text(json.dumps(stored))
    weights = (folder / "student/model.safetensors").read_bytes()

    out = paper_table.rescore_em("obqa", "tinyllm")
    assert out["em_how"] == "re-scored" and " eval " in out["em_command"] and "--model runs/paper/obqa/tinyllm/student" in out[
        "em_command"]
    preds = [json.loads(line) for line in (folder / "em/eval_predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [ex.id for ex in splits["test"]]
    assert out["correct_em"] == "".join(str(p["em"]) for p in preds)
    assert out["accuracy_em"] == pytest.approx(out["correct_em"].count("1") / len(preds))
    assert (folder / "student/model.safetensors").read_bytes() == weights  # scoring trains nothing
    assert json.loads((tmp_path / "results/obqa-tinyllm.json").read_text())["correct_em"] == out["correct_em"]

    # asked again: nothing runs
    monkeypatch.setattr(paper_table, "run_json", lambda *a: pytest.fail("a cell with exact match ran again"))
    assert paper_table.rescore_em("obqa", "tinyllm")["correct_em"] == out["correct_em"]
    monkeypatch.undo()

    # a cell whose student is gone: re-created by its own (now both-metric) command, same log-likelihood verdicts
    monkeypatch.setattr(paper_table, "REPO", tmp_path)
    monkeypatch.setattr(paper_table, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(paper_table, "command", cell_cmd)
    (tmp_path / "results/obqa-tinyllm.json").write_text(json.dumps(stored))
    shutil.rmtree(folder)
    again = paper_table.rescore_em("obqa", "tinyllm")
    assert again["em_how"].startswith("re-created") and " run " in again["em_command"]
    assert again["rerun_accuracy_loglik"] == recorded["accuracy_loglik"]
    assert paper_table.correctness(folder, "loglik") == correct
    assert len(again["correct_em"]) == len(splits["test"])


def test_tinyllm_on_a_one_teacher_dataset_trains_on_the_released_teacher_only():
    piqa = paper_table.command("piqa", "tinyllm")
    assert any("flan-t5-xl" in a for a in piqa) and not any("llama-2-7b" in a for a in piqa)
    assert any("llama-2-7b" in a for a in paper_table.command("obqa", "tinyllm"))
    with pytest.raises(SystemExit, match="piqa/tinyllm"):
        paper_table.command("piqa", "step-by-step")
    # an α variant sets every teacher the cell has, and only those
    assert [a for a in paper_epochs.command("piqa/tinyllm/a0.5") if "alpha=" in a] == ["teachers.0.alpha=0.5"]
    assert [a for a in paper_epochs.command("obqa/tinyllm/a2") if "alpha=" in a] == ["teachers.0.alpha=2", "teachers.1.alpha=2"]
    with pytest.raises(SystemExit, match="no teachers"):
        paper_epochs.command("obqa/ft-answer/a2")
    one = {("piqa", "tinyllm"): {"accuracy": 0.5}, ("piqa", "ft-answer"): {"accuracy": 0.4}}
    assert any("piqa: our TinyLLM cell has one teacher" in line for line in paper_table.paper_beside_ours(one))
    assert not any("one teacher" in line for line in paper_table.paper_beside_ours({("obqa", "tinyllm"): {"accuracy": 0.5}}))


def test_a_finished_cell_keeps_its_student_and_drops_its_resume_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paper_table, "REPO", tmp_path)
    cell = tmp_path / "runs" / "paper-epochs" / "obqa" / "ft-answer"
    for d in ("checkpoints/step-000025", "student", "epochs/epoch-1", "e1/bf16/checkpoints/step-000025"):
        (cell / d).mkdir(parents=True)
        (cell / d / "model.safetensors").write_bytes(b"x" * 1000)
    paper_table.prune_checkpoints(cell)
    assert not (cell / "checkpoints").exists()
    assert (cell / "student" / "model.safetensors").exists() and (cell / "epochs" / "epoch-1").exists()
    assert (cell / "e1" / "bf16" / "checkpoints").exists()  # a cell nested under it is its own cell
    assert "runs/paper-epochs/obqa/ft-answer: finished" in capsys.readouterr().out
    paper_table.prune_checkpoints(cell)  # nothing left to remove: no error
