"""Teacher rationales: the quality filter, the append-only content-keyed cache, and generation into it.

The paper's released rationales are parsed by distill/paper.py and arrive through the files teacher."""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from distill.data import Example
from distill.errors import UserError
from distill.released import stated_answer
from distill.progress import Progress

# ---------------------------------------------------------------------------------------------
# Quality filter: is this rationale usable as a training target?

CONCLUSION = re.compile(r"(the answer is:?\s*\(?[a-z]\)?[^\n]*|the answer is:?\s*-?[\d.,]+)", re.I)
NUMBER_ANSWER = re.compile(r"the answer is:?\s*(-?[\d.,]*\d)", re.I)


def _looping(text: str, n: int = 8) -> bool:
    """True when the model fell into a loop: a sentence said 3 times, or an n-word run said 4 times.
    (Saying a fact twice, or echoing the answer in the conclusion, is not a loop.)"""
    sentences = [s.strip().lower() for s in re.split(r"[.\n!?]+", text) if len(s.split()) >= 3]
    if any(count >= 3 for count in Counter(sentences).values()):
        return True
    words = text.lower().split()
    grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
    return any(count >= 4 for count in grams.values())


def check_rationale(text: str, ex: Example, finish_reason: str = "stop") -> tuple[str, str, str | None]:
    """(cleaned text, status 'ok'|'rejected', reason). Cleaning cuts anything after the conclusion."""
    text = (text or "").strip()
    if finish_reason.startswith("error"):
        return text, "rejected", finish_reason
    # Keep everything up to the end of the sentence with the last "the answer is …"; what follows
    # (a next question the model started writing, a sign-off) is not part of the rationale.
    matches = list(CONCLUSION.finditer(text))
    m = matches[-1] if matches else None
    if m:
        end = m.end()
        sentence_end = text.find(".", m.start() + len("the answer is"))
        if 0 <= sentence_end < end:
            end = sentence_end + 1
        text = text[:end].strip()
    if len(text.split()) < 3:
        return text, "rejected", "empty"
    if _looping(text):
        return text, "rejected", "repetition loop"
    if ex.choices:
        stated = stated_answer(text)
        if stated is not None and stated != ex.answer:
            return text, "rejected", "contradicts the gold answer"
        if stated is None:
            if finish_reason == "length":
                return text, "rejected", "truncated"
            if ex.answer_text and ex.answer_text.lower() not in text.lower():
                return text, "rejected", "does not name the gold answer"
    else:
        numbers = NUMBER_ANSWER.findall(text)
        if numbers:
            if numbers[-1].replace(",", "").rstrip(".") != str(ex.target):
                return text, "rejected", "contradicts the gold answer"
        elif finish_reason == "length":
            return text, "rejected", "truncated"
        elif str(ex.target) not in text:
            return text, "rejected", "does not name the gold answer"
    return text, "ok", None


# ---------------------------------------------------------------------------------------------
# The cache: append-only JSONL, one file per teacher name, keyed by content.


def rationale_key(teacher_identity: str, template: str, gen_params: dict, ex: Example) -> str:
    """Same teacher, template, generation parameters and example content -> same key -> reused."""
    payload = json.dumps({"teacher": teacher_identity, "template": template, "gen": gen_params,
                          "example": ex.to_json()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class RationaleStore:
    """Append-only JSONL of rationale records. One line per record, written in one call and flushed,
    so a process killed at any moment leaves at most one partial last line, which the next open
    cuts off. Reading streams; only the keys are held in memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self.keys = {rec["key"] for rec in self.records()}
        self._fh = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def _repair(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            # A write was cut short: drop the partial line (its request is simply made again).
            fh.seek(0)
            fh.truncate(fh.read().rfind(b"\n") + 1)

    def records(self, keys: set[str] | None = None) -> Iterator[dict]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            seen = set()
            for lineno, line in enumerate(fh, 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{self.path} line {lineno} is corrupt; delete that line (its rationale is "
                                    "regenerated).") from None
                if rec["key"] in seen or (keys is not None and rec["key"] not in keys):
                    continue
                seen.add(rec["key"])
                yield rec

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if record["key"] in self.keys:
                return
            self._fh.write(line)
            self._fh.flush()
            self.keys.add(record["key"])

    def close(self) -> None:
        self._fh.close()


# ---------------------------------------------------------------------------------------------
# Generation: every training question gets a rationale from every teacher.


@dataclass
class TeacherStats:
    teacher: str
    total: int = 0
    cached: int = 0
    generated: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    words: int = 0

    def as_metrics(self) -> dict[str, float]:
        n = self.accepted + sum(self.rejected.values())
        return {
            "count": self.total, "generated": self.generated, "cached": self.cached, "accepted": self.accepted,
            "rejection_rate": (sum(self.rejected.values()) / n) if n else 0.0,
            "mean_words": (self.words / n) if n else 0.0,
            "tokens_per_s": (self.tokens / self.seconds) if self.seconds else 0.0,
        }


def gen_params(tcfg, rcfg, chat: bool) -> dict:
    return {"max_new_tokens": tcfg.max_new_tokens, "temperature": tcfg.temperature, "chat": chat,
            "k_shot": rcfg.k_shot, "selection": rcfg.selection, "seed": rcfg.seed}


def cached_counts(cfg, examples: list[Example]) -> dict[str, int | None]:
    """Per model teacher: how many of these questions already have a rationale in its cache, read without
    loading the teacher (None where its identity needs the model: transformers)."""
    from distill.teachers import planned_identity

    out = {}
    for tcfg in cfg.teachers:
        if tcfg.backend == "files":
            continue
        planned = planned_identity(tcfg)
        if planned is None:
            out[tcfg.name] = None
            continue
        identity, chat = planned
        params = gen_params(tcfg, cfg.rationales, chat)
        keys = {rationale_key(identity, cfg.rationales.template, params, ex) for ex in examples}
        path = Path(cfg.rationales.cache_dir) / f"{tcfg.name}.jsonl"
        stored = set()
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        stored.add(json.loads(line)["key"])
                    except (json.JSONDecodeError, KeyError):
                        continue  # a partial last line: the real run repairs it
        out[tcfg.name] = len(keys & stored)
    return out


def _record(key, ex, teacher, text, finish, status, reason, source, tokens=0, seconds=0.0) -> dict:
    return {"key": key, "example_id": ex.id, "teacher": teacher, "text": text, "stated_answer": stated_answer(text),
            "status": status, "reason": reason, "finish_reason": finish, "source": source,
            "tokens": tokens, "seconds": round(seconds, 4), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def generate_rationales(cfg, dataset, examples: list[Example], demo_pool: list[Example], log=print,
                        teacher_factory=None) -> tuple[dict[str, TeacherStats], dict[str, dict[str, str]]]:
    """Fill the cache for every (teacher, example); return per-teacher stats and the accepted
    rationales as teacher -> example id -> text (rejected ones too when rationales.keep_rejected)."""
    from distill.prompts import DemoPicker, teacher_prompt
    from distill.teachers import make_teacher

    factory = teacher_factory or (lambda t: make_teacher(t, threads=cfg.rationales.threads, seed=cfg.rationales.seed))
    rcfg = cfg.rationales
    picker = DemoPicker(demo_pool, rcfg.k_shot, rcfg.selection, rcfg.seed)
    by_id = {ex.id: ex for ex in examples}
    stats, accepted = {}, {}
    for tcfg in cfg.teachers:
        st = stats[tcfg.name] = TeacherStats(tcfg.name, total=len(examples))
        keep = accepted[tcfg.name] = {}
        teacher = factory(tcfg)
        try:
            if getattr(teacher, "precomputed", False):
                texts, unparsed = teacher.lookup(dataset.path, cfg.data.train_split, dataset.split(cfg.data.train_split))
                if unparsed:
                    st.rejected["unparsed"] = len(unparsed)
                for ex in examples:
                    if ex.id not in texts:
                        st.rejected["missing"] = st.rejected.get("missing", 0) + 1
                        continue
                    text, status, reason = check_rationale(texts[ex.id], ex)
                    _count(st, status, reason, text)
                    if status == "ok" or rcfg.keep_rejected:
                        keep[ex.id] = text
                st.cached = len(examples)
                log(f"[generate {tcfg.name}] {st.accepted}/{len(examples)} precomputed rationales accepted "
                    f"({', '.join(f'{k} {v}' for k, v in st.rejected.items()) or 'none rejected'})")
                continue
            params = gen_params(tcfg, rcfg, teacher.uses_chat())
            keys = {ex.id: rationale_key(teacher.identity(), rcfg.template, params, ex) for ex in examples}
            store = RationaleStore(Path(rcfg.cache_dir) / f"{tcfg.name}.jsonl")
            try:
                for rec in store.records(set(keys.values())):
                    st.cached += 1
                    _count(st, rec["status"], rec["reason"], rec["text"])
                    if rec["status"] == "ok" or rcfg.keep_rejected:
                        keep[rec["example_id"]] = rec["text"]
                todo = [ex for ex in examples if keys[ex.id] not in store.keys]
                log(f"[generate {tcfg.name}] {st.cached} cached, {len(todo)} to generate with {teacher.identity()}")
                prompts = [teacher_prompt(ex, picker(ex), rcfg.template) for ex in todo]
                progress = Progress(f"generate {tcfg.name}", len(todo), log, unit="prompts")
                for i, gen in teacher.generate(prompts):
                    ex = by_id[prompts[i].example_id]
                    text, status, reason = check_rationale(gen.text, ex, gen.finish_reason)
                    store.append(_record(keys[ex.id], ex, tcfg.name, text, gen.finish_reason, status, reason,
                                         teacher.identity(), gen.completion_tokens, gen.seconds))
                    st.generated += 1
                    st.tokens += gen.completion_tokens
                    st.seconds += gen.seconds
                    _count(st, status, reason, text)
                    if status == "ok" or rcfg.keep_rejected:
                        keep[ex.id] = text
                    progress.update(1, tokens=gen.completion_tokens)
                progress.done()
            finally:
                store.close()
        finally:
            teacher.close()
        log(f"[generate {tcfg.name}] accepted {st.accepted}/{st.total}; rejected: "
            + (", ".join(f"{k} {v}" for k, v in sorted(st.rejected.items())) or "none"))
    return stats, accepted


def _count(st: TeacherStats, status: str, reason: str | None, text: str) -> None:
    st.words += len(text.split())
    if status == "ok":
        st.accepted += 1
    else:
        st.rejected[reason or "rejected"] = st.rejected.get(reason or "rejected", 0) + 1
