"""The paper's released rationale strings: how the files are laid out and how to read one.

`<dataset>/tinyllm/llm/{split}_CoT_{k}.json` are JSON arrays of strings, concatenated in k order one per
example of the split, each `<FLAN-T5-xl rationale>\n\nQ: <question>\nAnswer Choices:\n(a) …[ llama
rationale: <LLaMA-2 rationale>]`. Used to read the rationales (distill/paper.py), to rebuild PIQA's
training split from them (distill/data.py) and to find the answer any rationale states.
"""
from __future__ import annotations

import re
import string
from pathlib import Path

LLAMA_MARK = " llama rationale: "
# "the answer is (b)", "the answer is: (b)", "the answer is b." — a bare letter only when the sentence ends there.
STATED_ANSWER = re.compile(r"the answer is:?\s*(?:\(([a-z])\)|([a-z])(?=\s*[.,;]|\s*$))", re.I)


def stated_answer(text: str) -> int | None:
    """The last "the answer is (x)" in a rationale, as a choice index."""
    found = STATED_ANSWER.findall(text)
    return string.ascii_lowercase.index("".join(found[-1]).lower()) if found else None


def rationale_files(base: Path, split: str) -> list[Path]:
    """`{split}_CoT_{k}.json` in k order: concatenated, one string per example in split order."""
    files = list(base.glob(f"{split}_CoT_*.json"))
    return sorted(files, key=lambda p: int(re.search(r"_(\d+)\.json$", p.name).group(1)))


QUESTION_BLOCK = re.compile(r"\n\nQ: (?P<question>.*?)\nAnswer Choices:\n(?P<choices>\(a\) .*)\Z", re.S)


def parse_question_block(entry: str) -> tuple[str, str, list[str]] | None:
    """Split a paper rationale string into (rationale, question, choices); None if it does not parse."""
    head = entry.split(LLAMA_MARK, 1)[0]
    m = QUESTION_BLOCK.search(head)
    if not m:
        return None
    # Options run (a), (b), … each on a new line; an option's text may itself contain "(s) ".
    rest, choices = m.group("choices")[len("(a) "):], []
    for letter in string.ascii_lowercase[1:]:
        text, sep, rest_next = rest.partition(f"\n({letter}) ")
        choices.append(text)
        if not sep:
            break
        rest = rest_next
    return head[: m.start()], m.group("question"), choices
