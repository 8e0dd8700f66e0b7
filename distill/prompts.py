"""How questions are written for teachers and for the student.

The question block matches the paper's released rationale files:
`Q: <question>\nAnswer Choices:\n(a) …\n(b) …`, so the paper's rationales and ours read alike.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from distill.data import LETTERS, Example
from distill.errors import UserError


def render_question(ex: Example) -> str:
    parts = []
    if ex.context:
        parts.append(f"Context: {ex.context}")
    parts.append(f"Q: {ex.question}")
    if ex.choices:
        parts.append("Answer Choices:")
        parts.extend(f"({LETTERS[i]}) {c}" for i, c in enumerate(ex.choices))
    return "\n".join(parts)


def render_answer(ex: Example) -> str:
    """The gold answer as the paper's rationales state it: `(d) plants sprouting, blooming and wilting`."""
    if ex.choices and ex.answer is not None:
        return f"({ex.answer_letter}) {ex.answer_text}"
    return str(ex.target)


# ---------------------------------------------------------------------------------------------
# Teacher-forcing chain of thought (the paper's method): the teacher sees the question, its
# options, the gold answer and k in-context examples, and explains why that answer is right.
# A template is versioned: its name is part of the rationale cache key, so changing the wording
# means a new name, and old rationales stay valid for the old one.

TEMPLATES = {
    "tf-cot-v1": {
        "instruction": (
            "Explain step by step why the given answer to the question is correct. "
            "Use short factual sentences, then end with \"So the answer is {answer}.\""
        ),
        "conclusion": "So the answer is {answer}.",
    },
}


@dataclass
class TeacherPrompt:
    example_id: str
    messages: list[dict]
    """Chat form: for teachers with a chat template."""
    text: str
    """Completion form: for base models (it ends where the explanation should begin)."""


def short_answer(ex: Example) -> str:
    """How a rationale names the answer at its end: `(b)` for multiple choice, the number otherwise."""
    return f"({ex.answer_letter})" if ex.choices else str(ex.target)


def _answered(ex: Example) -> str:
    return f"{render_question(ex)}\nCorrect answer: {render_answer(ex)}"


def teacher_prompt(ex: Example, demos: list[Example], template: str = "tf-cot-v1") -> TeacherPrompt:
    """Both forms of one prompt. A demo shows its explanation only when the data has a gold fact
    for it; an empty "Explanation:" would teach a base model to write nothing."""
    if template not in TEMPLATES:
        raise UserError(f"unknown rationale template '{template}'; known: {', '.join(TEMPLATES)}.")
    t = TEMPLATES[template]
    instruction = t["instruction"].format(answer=short_answer(ex))
    shots = []
    for d in demos:
        shot = _answered(d)
        if d.fact:
            shot += f"\nExplanation: {d.fact.strip().rstrip('.')}. " + t["conclusion"].format(answer=short_answer(d))
        shots.append(shot)
    target = _answered(ex)
    text = "\n\n".join([instruction, *shots, target + "\nExplanation:"])
    examples = ("Examples:\n\n" + "\n\n".join(shots) + "\n\nNow this question:\n") if shots else ""
    chat = f"{instruction}\n\n{examples}{target}\n\nExplain why this answer is correct."
    return TeacherPrompt(example_id=ex.id, messages=[{"role": "user", "content": chat}], text=text)


# ---------------------------------------------------------------------------------------------
# In-context example selection from the training split.

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the of to in on for and or is are was be what which who how why when does do this that it with by as at from".split())


def _words(ex: Example) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall((ex.question + " " + " ".join(ex.choices)).lower()) if w not in _STOP)


class DemoPicker:
    """Pick k in-context examples for each question: at random (the paper) or by lexical overlap.

    Deterministic for a given seed and example id, so a re-run builds the same prompts.
    Prefers pool examples that carry a gold fact (they make a full demonstration).
    """

    def __init__(self, pool: list[Example], k: int, selection: str = "random", seed: int = 0):
        self.pool, self.k, self.selection, self.seed = pool, k, selection, seed
        with_fact = [ex for ex in pool if ex.fact]
        self.candidates = with_fact if len(with_fact) >= k else pool
        self._words = [_words(ex) for ex in self.candidates] if selection == "similar" else None

    def __call__(self, ex: Example) -> list[Example]:
        if self.k == 0:
            return []
        if self.selection == "similar":
            mine = _words(ex)
            scored = sorted(
                ((len(mine & w) / (len(mine | w) or 1), i) for i, w in enumerate(self._words) if self.candidates[i].id != ex.id),
                key=lambda s: (-s[0], s[1]),
            )
            return [self.candidates[i] for _, i in scored[: self.k]]
        rng = random.Random(f"{self.seed}:{ex.id}")
        others = [c for c in self.candidates if c.id != ex.id]
        return rng.sample(others, min(self.k, len(others)))
