"""Prompts, the quality filter, the append-only cache and the generation loop (with an in-test teacher).

Run: pytest tests/test_rationales.py
"""
from __future__ import annotations

import json

import pytest

from distill.config import load_config
from distill.data import Dataset, Example
from distill.errors import UserError
from distill.prompts import DemoPicker, teacher_prompt
from distill.released import stated_answer
from distill.rationales import RationaleStore, check_rationale, generate_rationales, rationale_key
from distill.teachers import Generation

EX = Example("q1", "What pulls a dropped ball to the ground?", ("wind", "gravity", "light"), 1)


@pytest.mark.parametrize("text, finish, status, reason", [
    ("Gravity pulls objects down. So the answer is (b).", "stop", "ok", None),
    ("Gravity pulls objects toward Earth, so gravity is right.", "stop", "ok", None),  # names the gold text
    ("Wind moves air around us. So the answer is (a).", "stop", "rejected", "contradicts the gold answer"),
    ("", "stop", "rejected", "empty"),
    ("Objects fall down because", "length", "rejected", "truncated"),
    ("It falls. It falls down fast. It falls down fast. It falls down fast.", "stop", "rejected", "repetition loop"),
    ("Light is fast and bright here.", "stop", "rejected", "does not name the gold answer"),
    ("whatever", "error: prompt too long", "rejected", "error: prompt too long"),
])
def test_quality_filter(text, finish, status, reason):
    assert check_rationale(text, EX, finish)[1:] == (status, reason)


def test_filter_cuts_what_follows_the_conclusion():
    text, status, _ = check_rationale("Gravity pulls. Thus, the answer is (b) gravity.\n\nQ: next question", EX)
    assert status == "ok" and text == "Gravity pulls. Thus, the answer is (b) gravity."


def test_stated_answer_forms():
    assert stated_answer("so the answer is (c) x") == 2
    assert stated_answer("So, the answer is d.") == 3
    assert stated_answer("the answer is a good one") is None
    assert stated_answer("the answer is (a)... no, the answer is (b)") == 1


def test_free_form_filter():
    ex = Example("g", "2+3?", target="5")
    assert check_rationale("2 plus 3 is 5. So the answer is 5.", ex)[1] == "ok"
    assert check_rationale("2 plus 3 is 6. So the answer is 6.", ex)[2] == "contradicts the gold answer"


def test_prompt_has_gold_answer_and_demos():
    demos = [Example("d1", "Which is a star?", ("the Sun", "Mars"), 0, fact="the Sun is a star"),
             Example("d2", "Which is wet?", ("water", "sand"), 0)]
    p = teacher_prompt(EX, demos)
    assert "Correct answer: (b) gravity" in p.text and p.text.endswith("Explanation:")
    assert "Explanation: the Sun is a star. So the answer is (a)." in p.text
    assert p.text.count("Explanation:") == 2  # the fact-less demo shows no empty explanation
    assert p.messages[0]["role"] == "user" and "Correct answer: (b) gravity" in p.messages[0]["content"]
    with pytest.raises(UserError, match="unknown rationale template"):
        teacher_prompt(EX, [], template="nope")


def test_demo_picker_is_deterministic_excludes_self_and_can_match_words():
    pool = [Example(f"p{i}", f"question about topic {i}", ("a", "b"), 0) for i in range(20)]
    pool.append(Example("ball", "Why does a dropped ball fall to the ground?", ("a", "b"), 0))
    rnd = DemoPicker(pool, 3, "random", seed=7)
    assert [d.id for d in rnd(pool[0])] == [d.id for d in DemoPicker(pool, 3, "random", seed=7)(pool[0])]
    assert pool[0].id not in [d.id for d in rnd(pool[0])]
    assert DemoPicker(pool, 1, "similar")(EX)[0].id == "ball"


def test_key_changes_with_what_matters():
    base = rationale_key("t", "tf-cot-v1", {"max_new_tokens": 64}, EX)
    assert base == rationale_key("t", "tf-cot-v1", {"max_new_tokens": 64}, EX)
    assert base != rationale_key("t2", "tf-cot-v1", {"max_new_tokens": 64}, EX)
    assert base != rationale_key("t", "tf-cot-v2", {"max_new_tokens": 64}, EX)
    assert base != rationale_key("t", "tf-cot-v1", {"max_new_tokens": 65}, EX)
    changed = Example(EX.id, EX.question + "?", EX.choices, EX.answer)
    assert base != rationale_key("t", "tf-cot-v1", {"max_new_tokens": 64}, changed)


def test_store_appends_dedupes_and_repairs_a_partial_line(tmp_path):
    path = tmp_path / "t.jsonl"
    store = RationaleStore(path)
    store.append({"key": "k1", "text": "a"})
    store.append({"key": "k1", "text": "again"})
    store.close()
    with open(path, "a") as fh:  # what SIGKILL in the middle of a write leaves behind
        fh.write('{"key": "k2", "te')
    store = RationaleStore(path)
    assert store.keys == {"k1"}
    store.append({"key": "k2", "text": "b"})
    store.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k1", "k2"]


def test_store_reports_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"key": "k1"}\nnot json\n{"key": "k3"}\n')
    with pytest.raises(UserError, match=r"t\.jsonl line 2 is corrupt"):
        RationaleStore(path)


class EchoTeacher:
    """A teacher that explains with the gold answer it was shown; counts what it was asked."""

    def __init__(self, cfg):
        self.cfg, self.asked = cfg, 0

    def identity(self):
        return f"echo:{self.cfg.name}"

    def uses_chat(self):
        return False

    def generate(self, prompts):
        for i, p in enumerate(prompts):
            self.asked += 1
            answer = p.text.rsplit("Correct answer: ", 1)[1].split("\n")[0]
            yield i, Generation(f"Because of the facts, the answer is {answer}.", "stop", 9, 0.01)

    def close(self):
        pass


def test_generation_fills_cache_then_reuses_it(tmp_path):
    exs = [Example(f"e{i}", f"q{i}", ("x", "y"), i % 2) for i in range(6)]
    ds = Dataset("mem", "mem", {"train": exs})
    cfg = load_config(None, [f"rationales.cache_dir={tmp_path}", "rationales.k_shot=1",
                             "teachers=[{name: a, backend: openai, model: m, base_url: 'http://x'}, "
                             "{name: b, backend: openai, model: m, base_url: 'http://x'}]"])
    made = []

    def factory(tcfg):
        made.append(EchoTeacher(tcfg))
        return made[-1]

    stats, accepted = generate_rationales(cfg, ds, exs, exs, log=lambda m: None, teacher_factory=factory)
    assert {t: (s.generated, s.accepted) for t, s in stats.items()} == {"a": (6, 6), "b": (6, 6)}
    assert accepted["a"]["e1"] == "Because of the facts, the answer is (b) y."
    stats, accepted = generate_rationales(cfg, ds, exs, exs, log=lambda m: None, teacher_factory=factory)
    assert sum(t.asked for t in made[2:]) == 0 and stats["a"].cached == 6 and len(accepted["b"]) == 6


def test_files_teacher_reads_jsonl(tmp_path):
    from distill.config import TeacherConfig
    from distill.teachers import FilesTeacher

    f = tmp_path / "r.jsonl"
    f.write_text('{"example_id": "e1", "text": "because"}\n')
    texts, problems = FilesTeacher(TeacherConfig(name="mine", backend="files", model=str(f))).lookup("", "train", [])
    assert texts == {"e1": "because"} and problems == []
    f.write_text('{"id": "e1"}\n')
    with pytest.raises(UserError, match=r"r\.jsonl line 1: each rationale needs 'example_id' and 'text'"):
        FilesTeacher(TeacherConfig(name="mine", backend="files", model=str(f))).lookup("", "train", [])
