"""How questions are written for teachers and for the student.

The question block matches the paper's released rationale files:
`Q: <question>\nAnswer Choices:\n(a) …\n(b) …`, so the paper's rationales and ours read alike.
"""
from __future__ import annotations

from distill.data import LETTERS, Example


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
