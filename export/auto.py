"""`--quant auto`: the smallest GGUF whose task accuracy stays within a budget of the torch student's.

Every candidate (q4_0, q4_1, q4_k_m, q5_k_m, q6_k, q8_0, and q4_0, q4_k_m, q5_k_m, q6_k again with the
token embedding and output tensor kept at q8_0; below 8 bits with the export's importance matrix; with
`--gptq N` also q4_0 and q5_0 rounded by GPTQ, `q4_0-gptq<N>`, `q5_0-gptq<N>`) is
quantized from one f16 file and answers the student's *validation* questions greedily through llama.cpp;
its exact-match accuracy (the generated first line is the gold option's text) is compared with the torch
student's on the same questions. The smallest file whose drop is *certified* at most
`export.max_accuracy_drop` points wins. Certified means: the one-sided upper prediction bound of the paired
drop that a fresh split of as many questions (the test split) will show, Bonferroni-corrected over the K
distinct files scored, is within the budget:

    bound = drop_valid + z(1 - 0.05/K) * s * sqrt(1/n_valid + 1/n_test)

A bound on the mean alone (the rule before) holds for one candidate looked at once; taking the smallest of K
that passes picks the one whose validation luck was best (on the OBQA student: +2.4 points above torch on
validation, -3.2 on test), and the test split's own noise comes on top. With the correction all K bounds hold
together with 95% confidence, so the chosen file's test drop is within them too. `s` counts at least one
discordant question, so a candidate scored on a handful of questions is never certified at zero width.
A candidate whose file is byte-identical to one already scored reuses its measurements. Every candidate's
per-question correctness is kept (auto.json / parity.json), so another rule can be judged on the same
measurements. The test split is never used to choose.
"""
from __future__ import annotations

import hashlib
import json
import math
from statistics import NormalDist
from pathlib import Path

from distill.errors import UserError
from distill.progress import Progress, log

# (name, llama.cpp quantization, keep token embedding / output tensor at q8_0)
CANDIDATES = [("q4_0", "q4_0", False), ("q4_0-e8", "q4_0", True), ("q4_1", "q4_1", False),
              ("q4_k_m", "q4_k_m", False), ("q4_k_m-e8", "q4_k_m", True), ("q5_k_m", "q5_k_m", False),
              ("q5_k_m-e8", "q5_k_m", True), ("q6_k", "q6_k", False), ("q6_k-e8", "q6_k", True), ("q8_0", "q8_0", False)]


class NoCandidateFits(Exception):
    """No candidate stays within the accuracy budget (its measurements are kept)."""


def validation_questions(student: Path, cfg, n: int) -> tuple[list, str]:
    """The student's validation questions: its dataset's `valid` split, or data.eval_split when that is
    not the test split."""
    from distill.data import load_dataset
    from export.source import student_data

    data = student_data(student, cfg)
    ds = load_dataset(data.name, data.path)
    split = "valid" if "valid" in ds.splits else data.eval_split
    if split == data.test_split or split not in ds.splits:
        raise UserError(f"--quant auto chooses on a validation split, and {ds.name} has none (splits: "
                        f"{', '.join(ds.splits)}); pick a --quant yourself, or train on data with a valid split.")
    return ds.split(split)[:n], f"{ds.name}/{split}"


def torch_answers(model, tok, fmt, examples) -> list[str]:
    from distill.inference import answers

    progress = Progress("auto torch", len(examples), log, unit="questions")
    return [a.strip() for a in answers(model, tok, [fmt.answer_prompt(ex) for ex in examples], progress=progress.update)]


def gguf_answers(path: Path, fmt, examples, threads: int | None = None, task: str = "auto gguf") -> list[str]:
    """Greedy answers through llama.cpp, in a child process: a candidate that kills llama.cpp is a
    one-sentence LlamaCrash, not the end of the export."""
    from distill.llama_runtime import call

    return call("export.auto:answer_prompts", f"answering with {path.name}", path=str(path),
                prompts=[fmt.answer_prompt(ex) for ex in examples], threads=threads, task=task)


def answer_prompts(path: str, prompts: list[str], threads: int | None = None, task: str = "auto gguf",
                   lora: str | None = None) -> list[str]:
    """(child process) The first line of llama.cpp's greedy completion of each prompt (with `lora` applied)."""
    from distill.inference import LlamaCppRunner

    runner = LlamaCppRunner(path, threads, lora=lora)
    progress = Progress(task, len(prompts), log, unit="questions")
    try:
        return [a.strip() for a in runner.answers(prompts, progress=progress.update)]
    finally:
        runner.close()


def paired_drop(ref_correct: list[bool], cand_correct: list[bool]) -> tuple[float, float]:
    """(mean drop, its one-sided 95% upper bound), in exact-match points, of a candidate against torch on the
    same questions: d_i = torch right - candidate right, normal approximation to the mean of d. Reported beside
    the rule's bound: it holds for one candidate looked at once, not for the smallest of several that passes."""
    d = [int(a) - int(b) for a, b in zip(ref_correct, cand_correct)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return 100 * mean, 100 * (mean + Z_UPPER_95 * math.sqrt(var / n))


Z_UPPER_95 = 1.645  # one-sided: "the drop is at most this", with 95% confidence
CONFIDENCE = 0.95


def prediction_bound(ref_correct: list[bool], cand_correct: list[bool], k: int, n_test: int | None = None) -> float:
    """The rule's bound, in points: the one-sided upper prediction bound of the paired exact-match drop a fresh
    split of `n_test` questions (default: as many as these) will show, at confidence 1 - 0.05/k (Bonferroni over
    the k distinct candidates scored). The variance of d counts at least one discordant question."""
    n = len(ref_correct)
    n_test = n_test or n
    lost, gained = discordant(ref_correct, cand_correct)
    mean = (lost - gained) / n
    var = (max(lost + gained, 1) / n - mean ** 2) * n / max(n - 1, 1)
    z = NormalDist().inv_cdf(1 - (1 - CONFIDENCE) / max(k, 1))
    return 100 * (mean + z * math.sqrt(var * (1 / n + 1 / n_test)))


def discordant(ref_correct, cand_correct) -> tuple[int, int]:
    """(questions torch got right and the candidate wrong, the reverse)."""
    return (sum(a and not b for a, b in zip(ref_correct, cand_correct)),
            sum(b and not a for a, b in zip(ref_correct, cand_correct)))


def pick(candidates: list[dict], budget: float) -> dict | None:
    """The rule on recorded measurements: the smallest candidate whose bound is within `budget` points."""
    fits = [c for c in candidates if c["drop_bound"] <= budget]
    return min(fits, key=lambda c: c["size_bytes"]) if fits else None


def bits(flags: list[bool]) -> str:
    return "".join("1" if f else "0" for f in flags)


RULE = ("smallest candidate whose upper prediction bound on the paired exact-match drop against torch (what a "
        "fresh split of as many questions will show), Bonferroni-corrected over the distinct candidates, is within "
        "the budget")


def choose(f16: Path, out_dir: Path, student: Path, model, tok, cfg, questions: tuple[list, str],
           imatrix: Path | None = None, extra: list[tuple[str, str, Path, dict]] = ()) -> dict:
    """Quantize every candidate, score each distinct file on the validation questions, keep the smallest whose
    drop is certified within budget (`prediction_bound`, corrected over the distinct files) as
    `student-<name>.gguf`. `extra`: more candidates, each (name, quant, its own f16 file, facts for the report),
    e.g. GPTQ-rounded weights (`--gptq`). Returns the measurements, each candidate's per-question correctness
    included (raises NoCandidateFits after writing only auto.json)."""
    from distill.student import PromptFormat, answer_is_right
    from export.gguf import quantize
    from export.imatrix import BELOW_8_BITS

    budget = cfg.export.max_accuracy_drop
    examples, where = questions
    fmt = PromptFormat.load(student)
    files, facts = [], {name: more for name, _, _, more in extra}
    for name, quant, keep_q8, src in ([(n, q, e, f16) for n, q, e in CANDIDATES]
                                      + [(n, q, False, src) for n, q, src, _ in extra]):
        path = out_dir / f"candidate-{name}.gguf"
        quantize(src, path, quant, embeddings_q8=keep_q8, log_file=out_dir / "export.log",
                 imatrix=imatrix if quant in BELOW_8_BITS else None)
        files.append((path.stat().st_size, name, quant, keep_q8, path, hashlib.sha256(path.read_bytes()).hexdigest()))
    files.sort()
    k = len({f[5] for f in files})
    log(f"[export] --quant auto: {len(files)} candidates ({k} distinct files) on {len(examples)} questions of "
        f"{where}, budget {budget:g} point(s) of exact match below torch (upper prediction bound of the paired drop "
        f"on a split as large, {100 * CONFIDENCE:.0f}% for all {k} together)")
    ref = torch_answers(model, tok, fmt, examples)
    ref_correct = [answer_is_right(a, ex) for a, ex in zip(ref, examples)]
    torch_em = 100 * sum(ref_correct) / len(examples)
    results, chosen, seen = [], None, {}
    for size, name, quant, keep_q8, path, digest in files:
        if digest in seen:  # e.g. `-e8` on a model whose embeddings llama.cpp already keeps at q8_0 or above
            base = seen[digest]
            results.append({**base, "name": name, "quant": quant, "embeddings_q8_0": keep_q8,
                            "same_file_as": base["name"]})
            log(f"[export] auto {name}: the same bytes as {base['name']}, its measurements reused")
            continue
        answers = gguf_answers(path, fmt, examples, task=f"auto {name}")
        correct = [answer_is_right(a, ex) for a, ex in zip(answers, examples)]
        em = 100 * sum(correct) / len(examples)
        drop, upper = paired_drop(ref_correct, correct)
        bound = prediction_bound(ref_correct, correct, k)
        rec = {"name": name, "quant": quant, "embeddings_q8_0": keep_q8, "size_bytes": size, "sha256": digest,
               "em": round(em, 2), "drop_points": round(drop, 2), "drop_bound": round(bound, 2),
               "drop_upper95": round(upper, 2),
               **dict(zip(("lost", "gained"), discordant(ref_correct, correct))),
               "agreement": round(sum(a == r for a, r in zip(answers, ref)) / len(ref), 4),
               "within_budget": bound <= budget, "correct": bits(correct),
               "same_answer": bits(a == r for a, r in zip(answers, ref)), **({"gptq": facts[name]} if name in facts else {})}
        seen[digest] = rec
        results.append(rec)
        log(f"[export] auto {name}: {size / 1e6:.1f} MB, EM {em:.1f} (torch {torch_em:.1f}), drop {drop:+.1f}, "
            f"bound {bound:+.1f} ({rec['lost']} lost, {rec['gained']} gained), same answer as torch "
            f"{100 * rec['agreement']:.0f}%" + (" — smallest certified within budget"
                                                 if rec["within_budget"] and chosen is None else ""))
        if rec["within_budget"] and chosen is None:
            chosen = rec
    report = {"max_accuracy_drop": budget, "metric": "exact match of the generated first line to the gold option text",
              "rule": RULE, "confidence": CONFIDENCE, "distinct_candidates": k,
              "questions": len(examples), "split": where, "torch_em": round(torch_em, 2),
              "torch_correct": bits(ref_correct), "candidates": results,
              "smallest_certifiable_drop": round(min(c["drop_bound"] for c in results), 2),
              "imatrix": imatrix is not None, "chosen": chosen["name"] if chosen else None}
    for _, name, _, _, path, _ in files:
        if chosen is None or name != chosen["name"]:
            path.unlink()
    if chosen is None:
        (out_dir / "auto.json").write_text(json.dumps(report, indent=2) + "\n")
        raise NoCandidateFits(report)
    (out_dir / f"candidate-{chosen['name']}.gguf").rename(out_dir / f"student-{chosen['name']}.gguf")
    return report


def floor_bound(n: int, k: int) -> float:
    """The bound of a candidate that answered every one of n questions as torch did (one discordant counted):
    the smallest budget n questions can certify with k candidates."""
    return prediction_bound([True] * n, [True] * n, k)


def readme_lines(auto: dict) -> list[str]:
    n, k = auto["questions"], auto.get("distinct_candidates", len(auto["candidates"]))
    lines = ["## How this quantization was chosen (`--quant auto`)", "",
             f"The smallest file certified within {auto['max_accuracy_drop']:g} point(s) of the torch student's exact "
             f"match ({auto['torch_em']:.1f}%) on {n} questions of {auto['split']}: the upper prediction bound of the "
             f"paired drop that a split of {n} questions (such as the test split) will show, "
             f"{100 * auto.get('confidence', 0.95):.0f}% for all {k} distinct candidates together (Bonferroni). "
             f"On {n} questions even a file that answers exactly as torch does is certified only down to "
             f"{floor_bound(n, k):+.1f} points; the tightest bound any candidate reached is "
             f"{auto['smallest_certifiable_drop']:+.1f}: a smaller budget certifies nothing.", "",
             "| candidate | size | exact match | drop (points) | lost / gained | bound | same answer as torch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in auto["candidates"]:
        mark = " **(chosen)**" if c["name"] == auto["chosen"] else ""
        if c.get("same_file_as"):
            mark += f" (same file as {c['same_file_as']})"
        lines.append(f"| {c['name']}{mark} | {c['size_bytes'] / 1e6:.1f} MB | {c['em']:.1f}% | "
                     f"{c['drop_points']:+.1f} | {c['lost']} / {c['gained']} | {c['drop_bound']:+.1f} | "
                     f"{100 * c['agreement']:.0f}% |")
    return lines + [""]
