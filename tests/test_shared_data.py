"""The real datasets in ../shared/data: counts the acceptance criteria name, and the paper's rationales.

Run: pytest tests/test_shared_data.py   (skips when ../shared/data is absent)
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from distill.cli import main as distill_cli

pytestmark = pytest.mark.shared_data

EXPECTED = {
    "obqa": ("obqa", {"train": 4957, "valid": 500, "test": 500}),
    "arc-challenge": ("arc", {"train": 1119, "valid": 299, "test": 1172}),
    "arc-easy": ("arc", {"train": 2251, "valid": 570, "test": 2376}),
    "piqa": ("piqa", {"valid": 1838, "train": 16113}),
    "pubmedqa": ("pubmedqa", {"all": 1000, "train": 500, "test": 500}),
    "commonsenseqa": ("commonsenseqa", {"train": 9741, "valid": 1221}),
    "strategyqa": ("strategyqa", {"train": 2290}),
    "gsm8k": ("gsm8k", {"train": 7473, "test": 1319}),
    "svamp": ("svamp", {"test": 1000}),
    "tinyllm-obqa": ("obqa", {"train": 4957, "valid": 500, "test": 500}),
    "tinyllm-arc": ("arc", {"train": 1117, "valid": 295, "test": 1165}),
    "tinyllm-piqa": ("piqa", {"train": 16113, "valid": 919, "test": 919}),
    "tinyllm-riddlesense": ("riddlesense", {"train": 3510, "valid": 511, "test": 510}),
    "tinyllm-pubmedqa": ("pubmedqa", {"train": 500, "valid": 100, "test": 400}),
    "tinyllm-bioasq": ("bioasq", {"train": 976, "valid": 109, "test": 123}),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_split_counts(shared_data, name):
    folder, splits = EXPECTED[name]
    result = CliRunner().invoke(distill_cli, ["data", name, "--path", str(shared_data / folder), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["splits"] == splits


@pytest.mark.parametrize("name, folder, teachers", [
    ("tinyllm-obqa", "obqa", {"flan-t5-xl", "llama-2-7b"}),
    ("tinyllm-arc", "arc", {"flan-t5-xl", "llama-2-7b"}),
    ("tinyllm-piqa", "piqa", {"flan-t5-xl"}),
    ("tinyllm-riddlesense", "riddlesense", {"flan-t5-xl", "llama-2-7b"}),
    ("tinyllm-pubmedqa", "pubmedqa", {"flan-t5-xl", "llama-2-7b"}),
    ("tinyllm-bioasq", "bioasq", {"flan-t5-xl", "llama-2-7b"}),
])
def test_paper_rationales_cover_every_example(shared_data, name, folder, teachers):
    from distill.data import load_dataset
    from distill.paper import load_paper_rationales

    ds = load_dataset(name, shared_data / folder)
    for split in ("valid", "test"):
        got = load_paper_rationales(ds.path, split, ds.splits[split])
        assert set(got.records) == teachers
        assert got.unparsed == []
        for records in got.records.values():
            assert [r.example_id for r in records] == [ex.id for ex in ds.splits[split]]
    # The FLAN-T5 rationales were teacher-forced: nearly all state the gold answer.
    flan = load_paper_rationales(ds.path, "test", ds.splits["test"]).records["flan-t5-xl"]
    gold = {ex.id: ex.answer for ex in ds.splits["test"]}
    agree = sum(r.stated_answer == gold[r.example_id] for r in flan) / len(flan)
    assert agree > 0.9


def test_paper_obqa_rationales_through_files_teacher_and_filter(shared_data):
    """The released OBQA rationales via the `files` teacher: FLAN-T5-xl passes the filter at >= 99%;
    the LLaMA-2 ones almost never contradict the gold answer but often never state one (see README)."""
    from distill.config import TeacherConfig
    from distill.data import load_dataset
    from distill.rationales import check_rationale
    from distill.teachers import FilesTeacher

    ds = load_dataset("tinyllm-obqa", shared_data / "obqa")
    train = ds.split("train")
    gold = {ex.id: ex for ex in train}
    rates = {}
    for source in ("flan-t5-xl", "llama-2-7b"):
        texts, problems = FilesTeacher(TeacherConfig(name=source, backend="files", model=source)).lookup(ds.path, "train", train)
        assert problems == [] and len(texts) == 4957
        reasons = [check_rationale(t, gold[i])[2] for i, t in texts.items()]
        rates[source] = (reasons.count(None) / len(reasons), reasons.count("contradicts the gold answer") / len(reasons))
    assert rates["flan-t5-xl"][0] >= 0.99
    assert rates["llama-2-7b"][1] < 0.01
