"""Loaders over small fixtures written here in each source's original format.

Run: pytest tests/test_data.py
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from distill.cli import main as distill_cli
from distill.data import load_dataset
from distill.errors import UserError
from distill.paper import load_paper_rationales


def ai2_row(id_, stem, texts, key, labels="ABCDE"):
    return {"id": id_, "question": {"stem": stem, "choices": [{"text": t, "label": l} for t, l in zip(texts, labels)]},
            "answerKey": key}


def write_jsonl(path, rows, newline="\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + newline for r in rows))


def make_obqa(root):
    for split in ("train", "dev", "test"):
        rows = [ai2_row(f"{split}-{i}", f"q{i}", ["w", "x", "y", "z"], "ABCD"[i % 4]) for i in range(3)]
        write_jsonl(root / "Main" / f"{split}.jsonl", rows)
        write_jsonl(root / "Additional" / f"{split}_complete.jsonl", [{**r, "fact1": f"fact {r['id']}"} for r in rows])
    return root


def make_arc(root):
    base = root / "ARC-Challenge"
    write_jsonl(base / "ARC-Challenge-Train.jsonl", [
        ai2_row("a", "letters", ["p", "q", "r", "s"], "C"),
        ai2_row("b", "digits", ["p", "q", "r", "s"], "2", labels="1234"),
        ai2_row("c", "three choices", ["p", "q", "r"], "A"),
        ai2_row("d", "five choices", ["p", "q", "r", "s", "t"], "E"),
    ])
    for f in ("Dev", "Test"):
        write_jsonl(base / f"ARC-Challenge-{f}.jsonl", [ai2_row("e", "x", ["p", "q"], "B")])
    return root


def rationale_string(flan, question, choices, answer_letter, llama=None):
    s = f"{flan} Thus, the answer is ({answer_letter}) x\n\nQ: {question}\nAnswer Choices:\n"
    s += "\n".join(f"({'abcde'[i]}) {c}" for i, c in enumerate(choices))
    if llama is not None:
        s += f" llama rationale: {llama}"
    return s


def make_piqa(root, n_train=3):
    write_jsonl(root / "valid.jsonl", [{"goal": f"g{i}", "sol1": "a", "sol2": "b"} for i in range(4)])
    (root / "valid-labels.lst").write_text("0\n1\n1\n0\n")
    labels = [i % 2 for i in range(n_train)]
    (root / "train-labels.lst").write_text("".join(f"{l}\n" for l in labels))
    llm = root / "tinyllm" / "llm"
    llm.mkdir(parents=True)
    entries = [rationale_string("because", f"goal {i}", ["cut the board(s) with a saw", "sol two"], "ab"[l])
               for i, l in enumerate(labels)]
    (llm / "train_CoT_0.json").write_text(json.dumps(entries[:2]))
    (llm / "train_CoT_1.json").write_text(json.dumps(entries[2:]))
    return root


def test_obqa_official_with_facts(tmp_path):
    ds = load_dataset("obqa", make_obqa(tmp_path / "obqa"))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 3, "valid": 3, "test": 3}
    ex = ds.splits["train"][1]
    assert ex.choices == ("w", "x", "y", "z") and ex.answer == 1 and ex.fact == "fact train-1"


def test_arc_mixed_labels_and_choice_counts(tmp_path):
    train = load_dataset("arc-challenge", make_arc(tmp_path / "arc")).splits["train"]
    assert [ex.answer for ex in train] == [2, 1, 0, 4]
    assert [len(ex.choices) for ex in train] == [4, 4, 3, 5]


def test_answer_label_not_among_choices(tmp_path):
    root = make_arc(tmp_path / "arc")
    write_jsonl(root / "ARC-Challenge" / "ARC-Challenge-Train.jsonl", [ai2_row("a", "q", ["p", "q"], "D")])
    with pytest.raises(UserError, match=r"ARC-Challenge-Train\.jsonl line 1: answerKey 'D' is not among the choice labels"):
        load_dataset("arc-challenge", root)


def test_truncated_json_line_names_file_and_line(tmp_path):
    root = make_obqa(tmp_path / "obqa")
    good = json.dumps(ai2_row("x", "q", ["a", "b"], "A"))
    (root / "Main" / "dev.jsonl").write_text(good + "\n" + good[:25] + "\n")
    with pytest.raises(UserError, match=r"dev\.jsonl line 2: not valid JSON .*truncated"):
        load_dataset("obqa", root)


def test_missing_field_is_named(tmp_path):
    root = make_obqa(tmp_path / "obqa")
    row = ai2_row("x", "q", ["a", "b"], "A")
    del row["answerKey"]
    write_jsonl(root / "Main" / "test.jsonl", [row])
    with pytest.raises(UserError, match=r"test\.jsonl line 1: missing field 'answerKey'"):
        load_dataset("obqa", root)


def test_piqa_train_rebuilt_from_rationales_and_labels(tmp_path):
    ds = load_dataset("piqa", make_piqa(tmp_path / "piqa"))
    assert len(ds.splits["valid"]) == 4 and [ex.answer for ex in ds.splits["valid"]] == [0, 1, 1, 0]
    train = ds.splits["train"]
    assert [ex.question for ex in train] == ["goal 0", "goal 1", "goal 2"]
    # "(s) " inside an option must not split it.
    assert train[0].choices == ("cut the board(s) with a saw", "sol two")
    assert [ex.answer for ex in train] == [0, 1, 0]


def test_labels_file_shorter_than_questions(tmp_path):
    root = make_piqa(tmp_path / "piqa")
    (root / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(UserError, match=r"valid-labels\.lst has 2 labels but .*valid\.jsonl has 4 questions"):
        load_dataset("piqa", root)


def test_pubmedqa_test_keys(tmp_path):
    root = tmp_path / "pubmedqa"
    root.mkdir()
    recs = {str(i): {"QUESTION": f"q{i}", "CONTEXTS": ["c1", "c2"], "final_decision": ["yes", "no", "maybe"][i % 3],
                     "LONG_ANSWER": "because"} for i in range(6)}
    (root / "ori_pqal.json").write_text(json.dumps(recs))
    (root / "test_ground_truth.json").write_text(json.dumps({"1": "no", "2": "maybe"}))
    ds = load_dataset("pubmedqa", root)
    assert {k: len(v) for k, v in ds.splits.items()} == {"all": 6, "train": 4, "test": 2}
    assert ds.splits["test"][0].context == "c1 c2" and ds.splits["test"][0].answer_text == "no"
    (root / "test_ground_truth.json").write_text(json.dumps({"1": "yes"}))
    with pytest.raises(UserError, match="PMID 1 says 'yes'"):
        load_dataset("pubmedqa", root)


def test_commonsenseqa_strategyqa_gsm8k_svamp(tmp_path):
    csqa = tmp_path / "csqa"
    write_jsonl(csqa / "train_rand_split.jsonl", [ai2_row("t", "q", list("vwxyz"), "E")])
    write_jsonl(csqa / "dev_rand_split.jsonl", [ai2_row("d", "q", list("vwxyz"), "A")])
    assert load_dataset("commonsenseqa", csqa).splits["train"][0].answer == 4

    sqa = tmp_path / "sqa"
    sqa.mkdir()
    (sqa / "task.json").write_text(json.dumps({"examples": [
        {"input": "Is frost common?", "target_scores": {"Yes": 0, "No": 1}, "target": "No. It is warm."}]}))
    ex = load_dataset("strategyqa", sqa).splits["train"][0]
    assert ex.choices == ("Yes", "No") and ex.answer == 1 and ex.fact == "It is warm."

    gsm = tmp_path / "gsm"
    for split in ("train", "test"):
        write_jsonl(gsm / f"{split}.jsonl", [{"question": "2+2?", "answer": "2+2=<<2+2=4>>4\n#### 1,004"}])
    ex = load_dataset("gsm8k", gsm).splits["test"][0]
    assert ex.target == "1004" and ex.choices == () and ex.answer is None and "<<2+2=4>>" in ex.fact

    svamp = tmp_path / "svamp"
    svamp.mkdir()
    (svamp / "SVAMP.json").write_text(json.dumps([{"ID": "chal-1", "Body": "Each costs 76.", "Question": "Pay?",
                                                   "Equation": "( 76.0 - 25.0 )", "Answer": 51.0}]))
    assert load_dataset("svamp", svamp).splits["test"][0].target == "51"


def test_tinyllm_splits_jsonl_and_array_with_crlf(tmp_path):
    base = tmp_path / "obqa" / "tinyllm"
    base.mkdir(parents=True)
    rows = [{"id": "1", "question": "q", "choices": ["a", "b"], "answer": "b"}]
    write_jsonl(base / "obqa_train.json", rows, newline="\r\n")  # JSON Lines under a .json name
    (base / "obqa_test.json").write_text(json.dumps(rows, indent=4).replace("\n", "\r\n"))
    ds = load_dataset("tinyllm-obqa", tmp_path / "obqa")
    assert ds.splits["train"][0].answer == 1 and ds.splits["test"][0].answer == 1
    (base / "obqa_test.json").write_text(json.dumps([{**rows[0], "answer": "c"}]))
    with pytest.raises(UserError, match=r"obqa_test\.json item 0: answer 'c' is not one of its choices"):
        load_dataset("tinyllm-obqa", tmp_path / "obqa")


def test_paper_rationales_parse_align_and_count_failures(tmp_path):
    from distill.data import Example

    exs = [Example(str(i), f"question {i}", ("x", "y"), i % 2) for i in range(4)]
    llm = tmp_path / "ds" / "tinyllm" / "llm"
    llm.mkdir(parents=True)
    entries = [rationale_string(f"flan {i}.", f"question {i}", ["x", "y"], "ab"[i % 2], llama=f"llama {i}")
               for i in range(4)]
    entries[2] = "garbage without a question block"
    entries[3] = rationale_string("flan 3.", "some other question", ["x", "y"], "b")
    (llm / "train_CoT_0.json").write_text(json.dumps(entries))
    got = load_paper_rationales(tmp_path / "ds", "train", exs)
    assert got.counts() == {"flan-t5-xl": 2, "llama-2-7b": 2}
    assert got.records["flan-t5-xl"][1].example_id == "1"
    assert got.records["flan-t5-xl"][1].text == "flan 1. Thus, the answer is (b) x"
    assert got.records["flan-t5-xl"][1].stated_answer == 1
    assert got.records["llama-2-7b"][0].text == "llama 0"
    assert len(got.unparsed) == 2
    assert "item 2" in got.unparsed[0] and "does not match example 3" in got.unparsed[1]


def test_custom_jsonl_schema(tmp_path):
    root = tmp_path / "mine"
    write_jsonl(root / "train.jsonl", [
        {"question": "q1", "choices": ["a", "b", "c"], "answer": 2},
        {"id": "x", "question": "q2", "choices": ["a", "b", "c"], "answer": "B"},
        {"question": "q3", "choices": ["a", "b", "c"], "answer": "c", "context": "ctx"},
        {"question": "2+2", "answer": 4},
    ])
    rows = load_dataset("jsonl", root).splits["train"]
    assert [r.answer for r in rows[:3]] == [2, 1, 2] and rows[1].id == "x" and rows[0].id == "train-1"
    assert rows[3].target == "4" and rows[3].choices == ()
    write_jsonl(root / "train.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": "zzz"}])
    with pytest.raises(UserError, match=r"train\.jsonl line 1: answer 'zzz' is not among its 2 choices"):
        load_dataset("jsonl", root)


def test_hf_hub_records_map_onto_examples(monkeypatch):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([
            {"id": "1", "question_stem": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}]),
        "validation": datasets.Dataset.from_list([{"goal": "g", "sol1": "s1", "sol2": "s2", "label": 0}]),
    })
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: dd)
    ds = load_dataset("hf:someone/obqa-like")
    assert ds.splits["train"][0].answer == 1 and ds.splits["valid"][0].choices == ("s1", "s2")


@pytest.mark.parametrize("args, message", [
    (["data", "obqa-typo"], "unknown dataset 'obqa-typo'; did you mean 'obqa'?"),
    (["data", "obqa", "--path", "/nonexistent/obqa"], "--path /nonexistent/obqa does not exist"),
])
def test_cli_errors_are_one_sentence(args, message):
    result = CliRunner().invoke(distill_cli, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_cli_data_json(tmp_path):
    result = CliRunner().invoke(distill_cli, ["data", "arc-challenge", "--path", str(make_arc(tmp_path / "arc")), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["splits"] == {"train": 4, "valid": 1, "test": 1}
    assert info["choices"]["train"] == {"3": 1, "4": 2, "5": 1}
