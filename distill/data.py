"""Dataset name -> loader -> one Example type.

Each loader reads a source in its original format (official releases, the TinyLLM paper's own
splits, Hugging Face Hub datasets, or our documented JSONL schema) and returns a `Dataset`: named
splits of `Example`s. Bad input raises UserError naming the file, the line (or item) and the fix.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from distill.errors import UserError, read_utf8
from distill.released import parse_question_block, rationale_files, stated_answer

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    choices: tuple[str, ...] = ()
    """Answer options; empty for free-form (numeric) tasks."""
    answer: int | None = None
    """Index of the gold choice; None for free-form tasks and unlabelled rows."""
    context: str | None = None
    """Supporting text shown with the question (an abstract, snippets)."""
    fact: str | None = None
    """A gold fact or human explanation (OBQA fact1, GSM8K solution, StrategyQA facts)."""
    target: str | None = None
    """Free-form gold answer (GSM8K/SVAMP number); None for multiple choice."""

    @property
    def answer_text(self) -> str | None:
        if self.choices and self.answer is not None:
            return self.choices[self.answer]
        return self.target

    @property
    def answer_letter(self) -> str | None:
        return LETTERS[self.answer] if self.answer is not None and self.choices else None

    def to_json(self) -> dict:
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d


@dataclass
class Dataset:
    name: str
    path: str
    splits: dict[str, list[Example]]
    notes: list[str] = field(default_factory=list)
    """What the user should know: unlabelled files skipped, splits rebuilt, overlaps."""

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise UserError(
                f"dataset '{self.name}' has no split '{name}'; its splits are: {', '.join(self.splits)}."
            )
        return self.splits[name]

    def fingerprint(self, split: str) -> str:
        """Content hash of one split, logged with every run that uses it."""
        return fingerprint_rows(self.split(split))


def fingerprint_rows(examples: list[Example]) -> str:
    """Content hash of these questions, in order (a split, or the prefix of it a run used)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.to_json(), sort_keys=True).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Reading files with errors that point at the spot.


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{path} is missing; {what}")
    return path


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object); a bad line is an error naming file and line."""
    for lineno, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                "the line may be truncated: fix or remove it."
            ) from None
        if not isinstance(obj, dict):
            raise UserError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}.")
        yield lineno, obj


def read_json(path: Path):
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
            "the file may be truncated: restore it from its source."
        ) from None


def _field(obj: dict, key: str, where: str, kind: type | tuple = str):
    if key not in obj:
        raise UserError(f"{where}: missing field '{key}'; every row needs it.")
    value = obj[key]
    if not isinstance(value, kind):
        raise UserError(f"{where}: field '{key}' should be {getattr(kind, '__name__', kind)}, got "
                        f"{type(value).__name__}.")
    return value


# ---------------------------------------------------------------------------------------------
# Official releases.


def _ai2_rows(path: Path, question_key: str = "stem") -> list[Example]:
    """OpenBookQA / ARC / CommonsenseQA share one schema: question.stem, question.choices[{label,text}], answerKey."""
    out = []
    for lineno, row in read_jsonl(path):
        where = f"{path} line {lineno}"
        q = _field(row, "question", where, dict)
        stem = _field(q, question_key, where + " (question)")
        choices = _field(q, "choices", where + " (question)", list)
        labels = [str(_field(c, "label", where + " (choice)", (str, int))) for c in choices]
        texts = tuple(_field(c, "text", where + " (choice)") for c in choices)
        key = str(_field(row, "answerKey", where, (str, int)))
        if key not in labels:
            raise UserError(
                f"{where}: answerKey '{key}' is not among the choice labels {labels}; fix the label or the key."
            )
        out.append(Example(id=str(_field(row, "id", where, (str, int))), question=stem, choices=texts, answer=labels.index(key)))
    return out


def load_obqa(path: Path) -> Dataset:
    splits, notes = {}, []
    for split, fname in (("train", "train"), ("valid", "dev"), ("test", "test")):
        rows = _ai2_rows(_need(path / "Main" / f"{fname}.jsonl", "pass --path to the OpenBookQA folder that holds "
                                                                 "Main/ and Additional/."))
        complete = path / "Additional" / f"{fname}_complete.jsonl"
        if complete.exists():
            facts = {str(r.get("id")): r.get("fact1") for _, r in read_jsonl(complete)}
            rows = [Example(**{**ex.to_json(), "choices": ex.choices, "fact": facts.get(ex.id)}) for ex in rows]
        splits[split] = rows
    if not (path / "Additional").exists():
        notes.append("Additional/ not found: examples have no fact1.")
    return Dataset("obqa", str(path), splits, notes)


def _arc(which: str) -> Callable[[Path], Dataset]:
    def load(path: Path) -> Dataset:
        base = path / f"ARC-{which}"
        splits = {
            split: _ai2_rows(_need(base / f"ARC-{which}-{fname}.jsonl", "pass --path to the ARC folder that holds "
                                                                        "ARC-Challenge/ and ARC-Easy/."))
            for split, fname in (("train", "Train"), ("valid", "Dev"), ("test", "Test"))
        }
        return Dataset(f"arc-{which.lower()}", str(path), splits)

    return load


def _read_labels(path: Path, n_rows: int, rows_file: Path) -> list[int]:
    labels = []
    for lineno, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        if line.strip() not in ("0", "1"):
            raise UserError(f"{path} line {lineno}: expected a label 0 or 1, got {line.strip()!r}.")
        labels.append(int(line))
    if len(labels) != n_rows:
        raise UserError(
            f"{path} has {len(labels)} labels but {rows_file} has {n_rows} questions; "
            "the two files must be aligned row for row: restore the matching pair."
        )
    return labels


def load_piqa(path: Path) -> Dataset:
    splits, notes = {}, []
    valid = _need(path / "valid.jsonl", "pass --path to the PIQA folder that holds valid.jsonl and valid-labels.lst.")
    rows = list(read_jsonl(valid))
    labels = _read_labels(_need(path / "valid-labels.lst", "it holds the labels for valid.jsonl."), len(rows), valid)
    splits["valid"] = [
        Example(
            id=f"piqa-valid-{i}",
            question=_field(r, "goal", f"{valid} line {ln}"),
            choices=(_field(r, "sol1", f"{valid} line {ln}"), _field(r, "sol2", f"{valid} line {ln}")),
            answer=label,
        )
        for i, ((ln, r), label) in enumerate(zip(rows, labels))
    ]
    train = path / "train.jsonl"
    if train.exists():
        rows = list(read_jsonl(train))
        labels = _read_labels(_need(path / "train-labels.lst", "it holds the labels for train.jsonl."), len(rows), train)
        splits["train"] = [
            Example(id=f"piqa-train-{i}", question=_field(r, "goal", f"{train} line {ln}"),
                    choices=(_field(r, "sol1", f"{train} line {ln}"), _field(r, "sol2", f"{train} line {ln}")), answer=label)
            for i, ((ln, r), label) in enumerate(zip(rows, labels))
        ]
    elif (path / "tinyllm" / "llm").exists():
        splits["train"] = _piqa_train_from_rationales(path)
        notes.append("train.jsonl is absent: train rebuilt from tinyllm/llm/train_CoT_*.json, labels checked against "
                     "train-labels.lst.")
    else:
        notes.append("train.jsonl is absent and no rationale files to rebuild it from: no train split.")
    if (path / "tests.jsonl").exists():
        notes.append("tests.jsonl has no labels (leaderboard only): not loaded.")
    return Dataset("piqa", str(path), splits, notes)


def load_pubmedqa(path: Path) -> Dataset:
    src = _need(path / "ori_pqal.json", "pass --path to the PubMedQA folder that holds ori_pqal.json.")
    data = read_json(src)
    if not isinstance(data, dict):
        raise UserError(f"{src}: expected a mapping of PMID to record.")
    choices = ("yes", "no", "maybe")
    examples = {}
    for pmid, rec in data.items():
        where = f"{src} record {pmid}"
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected an object.")
        decision = _field(rec, "final_decision", where)
        if decision not in choices:
            raise UserError(f"{where}: final_decision {decision!r} is not one of yes/no/maybe.")
        contexts = _field(rec, "CONTEXTS", where, list)
        examples[pmid] = Example(
            id=pmid, question=_field(rec, "QUESTION", where), choices=choices, answer=choices.index(decision),
            context=" ".join(contexts), fact=rec.get("LONG_ANSWER"),
        )
    keys_file = _need(path / "test_ground_truth.json", "it holds the official test key (500 PMIDs).")
    keys = read_json(keys_file)
    for pmid, label in keys.items():
        if pmid not in examples:
            raise UserError(f"{keys_file}: PMID {pmid} is not in {src}; the two files come from different releases.")
        if choices[examples[pmid].answer] != label:
            raise UserError(f"{keys_file}: PMID {pmid} says {label!r} but {src} says "
                            f"{choices[examples[pmid].answer]!r}.")
    splits = {
        "all": list(examples.values()),
        "train": [ex for pmid, ex in examples.items() if pmid not in keys],
        "test": [examples[pmid] for pmid in keys],
    }
    return Dataset("pubmedqa", str(path), splits,
                   ["'all' is PQA-L's 1000 expert-labelled questions = 'train' (500) + 'test' (the 500 official test "
                    "keys)."])


def load_commonsenseqa(path: Path) -> Dataset:
    splits = {
        split: _ai2_rows(_need(path / f"{fname}_rand_split.jsonl", "pass --path to the CommonsenseQA folder."))
        for split, fname in (("train", "train"), ("valid", "dev"))
    }
    return Dataset("commonsenseqa", str(path), splits, ["test_rand_split_no_answers.jsonl has no answers: not loaded; "
                                                        "evaluate on 'valid'."])


def load_strategyqa(path: Path) -> Dataset:
    src = _need(path / "task.json", "pass --path to the StrategyQA folder that holds BIG-bench's task.json.")
    task = read_json(src)
    rows = _field(task, "examples", str(src), list)
    out = []
    for i, row in enumerate(rows):
        where = f"{src} examples[{i}]"
        scores = _field(row, "target_scores", where, dict)
        labels = list(scores)
        gold = [k for k, v in scores.items() if v == 1]
        if len(gold) != 1:
            raise UserError(f"{where}: target_scores should mark exactly one answer with 1, got {scores}.")
        target = row.get("target", "")
        fact = re.sub(r"^(Yes|No)\.\s*", "", target) or None
        out.append(Example(id=f"strategyqa-{i}", question=_field(row, "input", where), choices=tuple(labels),
                           answer=labels.index(gold[0]), fact=fact))
    return Dataset("strategyqa", str(path), {"train": out}, ["BIG-bench packaging: StrategyQA's labelled questions, "
                                                             "no official split."])


def _gsm8k_rows(path: Path) -> list[Example]:
    out = []
    for lineno, row in read_jsonl(path):
        where = f"{path} line {lineno}"
        solution = _field(row, "answer", where)
        if "####" not in solution:
            raise UserError(f"{where}: 'answer' has no '#### <number>' final line; this is not GSM8K's format.")
        work, _, final = solution.rpartition("####")
        out.append(Example(id=f"{path.stem}-{lineno}", question=_field(row, "question", where),
                           target=final.strip().replace(",", ""), fact=work.strip()))
    return out


def load_gsm8k(path: Path) -> Dataset:
    return Dataset("gsm8k", str(path), {
        split: _gsm8k_rows(_need(path / f"{split}.jsonl", "pass --path to the GSM8K folder."))
        for split in ("train", "test")
    })


def load_svamp(path: Path) -> Dataset:
    src = _need(path / "SVAMP.json", "pass --path to the SVAMP folder.")
    rows = read_json(src)
    out = []
    for i, row in enumerate(rows):
        where = f"{src} item {i}"
        answer = _field(row, "Answer", where, (int, float))
        number = int(answer) if float(answer).is_integer() else answer
        out.append(Example(id=str(row.get("ID", i)), question=f"{_field(row, 'Body', where)} {_field(row, 'Question', where)}".strip(),
                           target=str(number), fact=row.get("Equation")))
    return Dataset("svamp", str(path), {"test": out}, ["SVAMP has no official split: all 1000 problems are one 'test' "
                                                       "split."])


# ---------------------------------------------------------------------------------------------
# The TinyLLM paper's processed splits (`<folder>/tinyllm/<prefix>_<split>.json`).


def _tinyllm_rows(path: Path) -> list[Example]:
    # OBQA's file is JSON Lines under a .json name; the others are JSON arrays.
    text = read_utf8(path).lstrip()
    if text.startswith("["):
        items = [(f"item {i}", r) for i, r in enumerate(read_json(path))]
    else:
        items = [(f"line {ln}", r) for ln, r in read_jsonl(path)]
    out = []
    for loc, row in items:
        where = f"{path} {loc}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object with id, question, choices, answer.")
        choices = tuple(_field(row, "choices", where, list))
        answer = _field(row, "answer", where)
        if answer not in choices:
            raise UserError(f"{where}: answer {answer!r} is not one of its choices {list(choices)}; fix the answer "
                            "text.")
        out.append(Example(id=str(_field(row, "id", where, (str, int))), question=_field(row, "question", where),
                           choices=choices, answer=choices.index(answer)))
    return out


def _tinyllm(prefix: str, name: str) -> Callable[[Path], Dataset]:
    def load(path: Path) -> Dataset:
        base = path / "tinyllm"
        if not base.exists():
            raise UserError(f"{base} is missing; pass --path to the dataset folder that holds tinyllm/ (e.g. "
                            f"../shared/data/{path.name}).")
        splits, notes = {}, []
        for split in ("train", "valid", "test"):
            f = base / f"{prefix}_{split}.json"
            if f.exists():
                splits[split] = _tinyllm_rows(f)
        if prefix == "piqa" and "train" not in splits and (base / "llm").exists():
            splits = {"train": _piqa_train_from_rationales(path), **splits}
            notes.append("train rebuilt from tinyllm/llm/train_CoT_*.json (the paper ships PIQA's train only inside "
                         "its rationales).")
        if not splits:
            raise UserError(f"{base} has no {prefix}_train/valid/test.json; pass --path to the right dataset folder.")
        return Dataset(name, str(path), splits, notes)

    return load


def _piqa_train_from_rationales(path: Path) -> list[Example]:
    """PIQA's official train.jsonl is not shipped; its rationale strings hold goal and solutions in order."""
    files = rationale_files(path / "tinyllm" / "llm", "train")
    labels_file = path / "train-labels.lst"
    out = []
    for f in files:
        entries = read_json(f)
        for i, entry in enumerate(entries):
            parsed = parse_question_block(entry) if isinstance(entry, str) else None
            if parsed is None or len(parsed[2]) != 2:
                raise UserError(f"{f} item {i}: not a 'Q: … Answer Choices: (a) … (b) …' rationale string; the PIQA "
                                "train split cannot be rebuilt from it.")
            rationale, goal, sols = parsed
            out.append(Example(id=f"piqa-train-{len(out)}", question=goal, choices=tuple(sols),
                               answer=stated_answer(rationale)))
    if labels_file.exists():
        labels = _read_labels(labels_file, len(out), files[0].parent / "train_CoT_*.json")
        disagree = [ex.id for ex, lab in zip(out, labels) if ex.answer is not None and ex.answer != lab]
        if disagree:
            raise UserError(f"{labels_file} disagrees with the rationale files on {len(disagree)} rows (first: "
                            f"{disagree[0]}); they are not aligned.")
        out = [Example(**{**ex.to_json(), "choices": ex.choices, "answer": lab}) for ex, lab in zip(out, labels)]
    elif any(ex.answer is None for ex in out):
        raise UserError(f"{labels_file} is missing and some rationale strings state no answer; restore "
                        "train-labels.lst.")
    return out


# ---------------------------------------------------------------------------------------------
# Our own JSONL schema, and Hugging Face Hub datasets.

JSONL_SCHEMA = """\
One JSON object per line, one file per split: <folder>/train.jsonl, valid.jsonl, test.jsonl (any subset).
  id        string   optional; defaults to "<split>-<line>"
  question  string   required
  choices   [string] the options; omit for free-form answers
  answer    int | string   required: the gold choice as a 0-based index, a letter (a/A), or the choice text;
                           for free-form tasks, the answer string (e.g. "72")
  context   string   optional supporting text (abstract, snippets)
  fact      string   optional gold fact or human explanation
"""


def _answer_index(answer, choices: tuple[str, ...], where: str) -> int:
    if isinstance(answer, bool):
        raise UserError(f"{where}: 'answer' must be an index, a letter or the choice text, got {answer!r}.")
    if isinstance(answer, int):
        if 0 <= answer < len(choices):
            return answer
    elif isinstance(answer, str):
        if answer in choices:
            return choices.index(answer)
        if len(answer) == 1 and answer.lower() in LETTERS[: len(choices)]:
            return LETTERS.index(answer.lower())
    raise UserError(f"{where}: answer {answer!r} is not among its {len(choices)} choices; "
                    "give a 0-based index, a letter, or the exact choice text.")


def example_from_record(row: dict, where: str, default_id: str) -> Example:
    question = _field(row, "question", where)
    if "answer" not in row:
        raise UserError(f"{where}: missing field 'answer'; every row needs it.")
    choices = tuple(row.get("choices") or ())
    if not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: 'choices' must be a list of strings.")
    if choices:
        return Example(id=str(row.get("id", default_id)), question=question, choices=choices,
                       answer=_answer_index(row["answer"], choices, where), context=row.get("context"), fact=row.get("fact"))
    return Example(id=str(row.get("id", default_id)), question=question, target=str(row["answer"]),
                   context=row.get("context"), fact=row.get("fact"))


def load_jsonl_folder(path: Path) -> Dataset:
    if path.is_file():
        files = {path.stem: path}
    else:
        order = {"train": 0, "valid": 1, "test": 2}
        files = {p.stem: p for p in sorted(path.glob("*.jsonl"), key=lambda p: (order.get(p.stem, 3), p.stem))}
    if not files:
        raise UserError(f"{path} holds no .jsonl files; write train.jsonl / valid.jsonl / test.jsonl in the schema of "
                        "`tinyllm-distill data --schema`.")
    splits = {}
    for split, f in files.items():
        rows, first_line = [], {}
        for ln, row in read_jsonl(f):
            ex = example_from_record(row, f"{f} line {ln}", f"{split}-{ln}")
            if ex.id in first_line:
                raise UserError(f"{f} line {ln}: id '{ex.id}' is already the id of line {first_line[ex.id]}; ids key the "
                                "rationale cache and the per-question results, so give each question its own id.")
            first_line[ex.id] = ln
            rows.append(ex)
        splits[split] = rows
    return Dataset("jsonl", str(path), splits)


def _hf_record(row: dict, where: str, default_id: str) -> Example:
    """Map the common Hub multiple-choice schemas (OBQA/ARC/CSQA style, PIQA style, plain) onto Example."""
    q = row.get("question_stem", row.get("question", row.get("goal")))
    if isinstance(q, dict):
        q = q.get("stem")
    raw_choices = row.get("choices", row.get("options"))
    labels = None
    if isinstance(raw_choices, dict):
        labels = [str(x) for x in raw_choices.get("label", [])]
        raw_choices = raw_choices.get("text")
    elif raw_choices is None and "sol1" in row:
        raw_choices = [row["sol1"], row["sol2"]]
    answer = row.get("answerKey", row.get("answer", row.get("label")))
    if not isinstance(q, str) or answer is None:
        raise UserError(f"{where}: could not find a question and an answer among the fields {sorted(row)}; "
                        "convert the data to TinyLLM's JSONL schema (`tinyllm-distill data --schema`).")
    if raw_choices:
        choices = tuple(str(c) for c in raw_choices)
        if labels and str(answer) in labels:
            answer = labels.index(str(answer))
        return Example(id=str(row.get("id", default_id)), question=q, choices=choices,
                       answer=_answer_index(answer, choices, where), fact=row.get("fact1"))
    return Example(id=str(row.get("id", default_id)), question=q, target=str(answer))


def load_hf(spec: str) -> Dataset:
    """`hf:<hub id>[:<config>]` through `datasets.load_dataset` (needs the network or a local HF cache)."""
    from distill.errors import require

    datasets = require("datasets")
    hub_id, _, config = spec.partition(":")
    try:
        dd = datasets.load_dataset(hub_id, config or None)
    except Exception as exc:  # the hub raises many types: connection, not found, gated
        raise UserError(f"could not load '{hub_id}' from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
                        "check the id and your network, or export it to JSONL and use the 'jsonl' dataset.") from None
    splits = {}
    for split, rows in dd.items():
        name = "valid" if split == "validation" else split
        splits[name] = [_hf_record(dict(r), f"hf:{spec} {split}[{i}]", f"{split}-{i}") for i, r in enumerate(rows)]
    return Dataset(f"hf:{spec}", f"hf:{spec}", splits)


# ---------------------------------------------------------------------------------------------
# The registry: name -> (default folder under the data root, loader, one line for --list).

REGISTRY: dict[str, tuple[str, Callable[[Path], Dataset], str]] = {
    "obqa": ("obqa", load_obqa, "OpenBookQA, official release (Main/ + Additional/ fact1)"),
    "arc-challenge": ("arc", _arc("Challenge"), "ARC-Challenge, official release"),
    "arc-easy": ("arc", _arc("Easy"), "ARC-Easy, official release"),
    "piqa": ("piqa", load_piqa, "PIQA, official release (+ train rebuilt from rationale files)"),
    "pubmedqa": ("pubmedqa", load_pubmedqa, "PubMedQA PQA-L with the official 500-question test key"),
    "commonsenseqa": ("commonsenseqa", load_commonsenseqa, "CommonsenseQA v1.11 random split"),
    "strategyqa": ("strategyqa", load_strategyqa, "StrategyQA, BIG-bench task.json"),
    "gsm8k": ("gsm8k", load_gsm8k, "GSM8K, free-form numeric answers"),
    "svamp": ("svamp", load_svamp, "SVAMP, free-form numeric answers"),
    "tinyllm-obqa": ("obqa", _tinyllm("obqa", "tinyllm-obqa"), "OBQA, the TinyLLM paper's split"),
    "tinyllm-arc": ("arc", _tinyllm("arc", "tinyllm-arc"), "ARC (Challenge, 4-choice), the TinyLLM paper's split"),
    "tinyllm-piqa": ("piqa", _tinyllm("piqa", "tinyllm-piqa"), "PIQA, the TinyLLM paper's split"),
    "tinyllm-riddlesense": ("riddlesense", _tinyllm("riddle", "tinyllm-riddlesense"), "RiddleSense, the TinyLLM "
                                                                                      "paper's split"),
    "tinyllm-pubmedqa": ("pubmedqa", _tinyllm("pubmedqa", "tinyllm-pubmedqa"), "PubMedQA, the TinyLLM paper's split"),
    "tinyllm-bioasq": ("bioasq", _tinyllm("bioasq", "tinyllm-bioasq"), "BioASQ yes/no, the TinyLLM paper's split"),
    "jsonl": ("", load_jsonl_folder, "your own data in TinyLLM's JSONL schema (--path to the folder)"),
    "demo": ("", lambda p: _renamed(load_jsonl_folder(p), "demo"),
             "158 science and everyday-reasoning questions shipped with TinyLLM (quick start; no download)"),
}

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"


def _renamed(ds: Dataset, name: str) -> Dataset:
    ds.name = name
    return ds


def data_roots() -> list[Path]:
    """Where datasets are looked for when no path is given: $TINYLLM_DATA_DIR, then ../shared/data."""
    roots = []
    if os.environ.get("TINYLLM_DATA_DIR"):
        roots.append(Path(os.environ["TINYLLM_DATA_DIR"]))
    roots.append(Path.cwd().parent / "shared" / "data")
    roots.append(Path(__file__).resolve().parent.parent.parent / "shared" / "data")
    return roots


def load_dataset(name: str, path: str | os.PathLike | None = None) -> Dataset:
    if name.startswith("hf:"):
        return load_hf(name[3:])
    if name not in REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"unknown dataset '{name}'; {hint}known names: {', '.join(REGISTRY)} (or hf:<hub id>).")
    folder, loader, _ = REGISTRY[name]
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise UserError(f"--path {p} does not exist; pass the dataset's folder (e.g. "
                            f"../shared/data/{folder or 'mydata'}).")
        return loader(p)
    if name == "demo":
        return loader(DEMO_DIR)
    if not folder:
        raise UserError(f"dataset '{name}' needs --path (data.path) to your folder of .jsonl files.")
    for root in data_roots():
        if (root / folder).exists():
            return loader(root / folder)
    tried = ", ".join(str(r / folder) for r in data_roots())
    raise UserError(f"dataset '{name}' not found (looked in {tried}); pass --path to its folder or set "
                    "TINYLLM_DATA_DIR.")


def describe(ds: Dataset) -> dict:
    """Split sizes and answer distributions: what `tinyllm-distill data` prints."""
    info = {"name": ds.name, "path": ds.path, "splits": {k: len(v) for k, v in ds.splits.items()},
            "answers": {}, "choices": {}, "notes": ds.notes}
    for split, rows in ds.splits.items():
        if rows and rows[0].choices:
            info["answers"][split] = dict(sorted(Counter(ex.answer_letter or "unlabelled" for ex in rows).items()))
            info["choices"][split] = dict(sorted(Counter(len(ex.choices) for ex in rows).items()))
        else:
            info["answers"][split] = {"free-form": len(rows)}
    return info
