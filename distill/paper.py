"""The paper's released teacher rationales (FLAN-T5-xl 3B, LLaMA-2-chat 7B), parsed into Rationale records.

The TinyLLM release ships `<dataset>/tinyllm/llm/{split}_CoT_{k}.json`: JSON arrays of strings,
concatenated in k order one per example of the split, each
`<FLAN-T5-xl rationale>\n\nQ: <question>\nAnswer Choices:\n(a) …[ llama rationale: <LLaMA-2 rationale>]`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.data import Example, read_json
from distill.errors import UserError
from distill.released import LLAMA_MARK, parse_question_block, rationale_files, stated_answer

PAPER_TEACHERS = ("flan-t5-xl", "llama-2-7b")
"""The two teachers whose rationales the paper released (PIQA has only flan-t5-xl)."""

@dataclass
class Rationale:
    example_id: str
    teacher: str
    text: str
    stated_answer: int | None = None
    """Choice index the rationale names ("… the answer is (b)"), if it names one."""
    source: str = ""
    """Where it came from: a file and item, or the backend that generated it."""

    def to_json(self) -> dict:
        return asdict(self)


def _normalise(s: str) -> str:
    return " ".join(s.split())


@dataclass
class PaperRationales:
    records: dict[str, list[Rationale]] = field(default_factory=dict)
    """Teacher name -> rationales (in split order)."""
    unparsed: list[str] = field(default_factory=list)
    """One line per entry that could not be used: file, item and why."""
    files: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {t: len(r) for t, r in self.records.items()}


def load_paper_rationales(dataset_dir: str | Path, split: str, examples: list[Example]) -> PaperRationales:
    """Parse the paper's rationale files for `split`, aligned by position with `examples`.

    Each entry's own question block is checked against the example at its position, so a
    misaligned file is reported rather than silently pairing rationales with the wrong question.
    """
    base = Path(dataset_dir) / "tinyllm" / "llm"
    files = rationale_files(base, split)
    if not files:
        raise UserError(f"no {split}_CoT_*.json under {base}; pass the dataset folder that holds tinyllm/llm/.")
    out = PaperRationales(records={t: [] for t in PAPER_TEACHERS}, files=[str(f) for f in files])
    position = 0
    for f in files:
        entries = read_json(f)
        if not isinstance(entries, list):
            raise UserError(f"{f}: expected a JSON array of rationale strings.")
        for i, entry in enumerate(entries):
            where = f"{f.name} item {i}"
            ex = examples[position] if position < len(examples) else None
            position += 1
            if ex is None:
                out.unparsed.append(f"{where}: beyond the {len(examples)} examples of the split")
                continue
            if not isinstance(entry, str):
                out.unparsed.append(f"{where}: not a string")
                continue
            parsed = parse_question_block(entry)
            if parsed is None:
                out.unparsed.append(f"{where}: no 'Q: … Answer Choices:' block")
                continue
            flan, question, choices = parsed
            if _normalise(question) != _normalise(ex.question) and _normalise(ex.question) not in _normalise(question):
                out.unparsed.append(f"{where}: its question does not match example {ex.id} at the same position")
                continue
            flan = flan.strip()
            if flan:
                out.records["flan-t5-xl"].append(
                    Rationale(ex.id, "flan-t5-xl", flan, stated_answer(flan), f"{f.name}#{i}"))
            else:
                out.unparsed.append(f"{where}: empty FLAN-T5 rationale")
            if LLAMA_MARK in entry:
                llama = entry.split(LLAMA_MARK, 1)[1].strip()
                if llama:
                    out.records["llama-2-7b"].append(
                        Rationale(ex.id, "llama-2-7b", llama, stated_answer(llama), f"{f.name}#{i}"))
                else:
                    out.unparsed.append(f"{where}: empty LLaMA-2 rationale")
    if position < len(examples):
        out.unparsed.append(f"{len(examples) - position} examples of the split have no entry in the rationale files")
    if not out.records["llama-2-7b"]:
        del out.records["llama-2-7b"]
    return out
