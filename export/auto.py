"""`--quant auto`: the smallest GGUF whose task accuracy stays within a budget of the torch student's.

Every candidate (q4_0, q4_1, q4_k_m, q5_k_m, q6_k, q8_0, and q4_0, q4_k_m, q5_k_m, q6_k again with the
token embedding and output tensor kept at q8_0; below 8 bits with the export's importance matrix) is
quantized from one f16 file and answers the student's *validation* questions greedily through llama.cpp; its exact-match accuracy (the generated first line is the gold
option's text) is compared with the torch student's on the same questions. The smallest file whose
drop is *certified* at most `export.max_accuracy_drop` points wins: the one-sided 95% upper bound of the
paired drop, since a point estimate on a few hundred questions moves by more than the budget. A candidate whose file is byte-identical to one
already scored (`-e8` where llama.cpp keeps those tensors at q8_0 anyway) reuses its measurements. The
test split is never used to choose.
"""
from __future__ import annotations

import hashlib
import json
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
    same questions: d_i = torch right - candidate right, normal approximation to the mean of d."""
    import math

    d = [int(a) - int(b) for a, b in zip(ref_correct, cand_correct)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return 100 * mean, 100 * (mean + Z_UPPER_95 * math.sqrt(var / n))


Z_UPPER_95 = 1.645  # one-sided: "the drop is at most this", with 95% confidence


def choose(f16: Path, out_dir: Path, student: Path, model, tok, cfg, questions: tuple[list, str],
           imatrix: Path | None = None) -> dict:
    """Quantize every candidate, score each on the validation questions, keep the smallest whose drop is
    certified within budget as `student-<name>.gguf`: the one-sided 95% upper bound of its paired drop
    against torch, not the point estimate, must be at most the budget, so the choice carries the noise of
    the questions it rests on. Returns the measurements (raises NoCandidateFits after writing nothing else)."""
    from distill.student import PromptFormat, answer_is_right
    from export.gguf import quantize
    from export.imatrix import BELOW_8_BITS

    budget = cfg.export.max_accuracy_drop
    examples, where = questions
    fmt = PromptFormat.load(student)
    log(f"[export] --quant auto: {len(CANDIDATES)} candidates on {len(examples)} questions of {where}, "
        f"budget {budget:g} point(s) of exact match below torch (95% upper bound of the paired drop)")
    ref = torch_answers(model, tok, fmt, examples)
    ref_correct = [answer_is_right(a, ex) for a, ex in zip(ref, examples)]
    torch_em = 100 * sum(ref_correct) / len(examples)
    files = []
    for name, quant, keep_q8 in CANDIDATES:
        path = out_dir / f"candidate-{name}.gguf"
        quantize(f16, path, quant, embeddings_q8=keep_q8, log_file=out_dir / "export.log",
                 imatrix=imatrix if quant in BELOW_8_BITS else None)
        files.append((path.stat().st_size, name, quant, keep_q8, path))
    files.sort()
    results, chosen, seen = [], None, {}
    for size, name, quant, keep_q8, path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
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
        rec = {"name": name, "quant": quant, "embeddings_q8_0": keep_q8, "size_bytes": size, "sha256": digest,
               "em": round(em, 2),
               "drop_points": round(drop, 2), "drop_upper95": round(upper, 2),
               "agreement": round(sum(a == r for a, r in zip(answers, ref)) / len(ref), 4),
               "within_budget": upper <= budget}
        seen[digest] = rec
        results.append(rec)
        log(f"[export] auto {name}: {size / 1e6:.1f} MB, EM {em:.1f} (torch {torch_em:.1f}), drop {drop:+.1f} "
            f"(95% upper bound {upper:+.1f}), same answer as torch {100 * rec['agreement']:.0f}%"
            + (" — smallest certified within budget" if rec["within_budget"] and chosen is None else ""))
        if rec["within_budget"] and chosen is None:
            chosen = rec
    report = {"max_accuracy_drop": budget, "metric": "exact match of the generated first line to the gold option text",
              "rule": "smallest candidate whose one-sided 95% upper bound on the paired exact-match drop against "
                      "torch is within the budget",
              "questions": len(examples), "split": where, "torch_em": round(torch_em, 2), "candidates": results,
              "smallest_certifiable_drop": round(min(c["drop_upper95"] for c in results), 2),
              "imatrix": imatrix is not None, "chosen": chosen["name"] if chosen else None}
    for _, name, _, _, path in files:
        if chosen is None or name != chosen["name"]:
            path.unlink()
    if chosen is None:
        (out_dir / "auto.json").write_text(json.dumps(report, indent=2) + "\n")
        raise NoCandidateFits(report)
    (out_dir / f"candidate-{chosen['name']}.gguf").rename(out_dir / f"student-{chosen['name']}.gguf")
    return report


def readme_lines(auto: dict) -> list[str]:
    lines = ["## How this quantization was chosen (`--quant auto`)", "",
             f"The smallest file whose exact-match drop against the torch student ({auto['torch_em']:.1f}%) is at "
             f"most {auto['max_accuracy_drop']:g} point(s) with 95% confidence (one-sided upper bound of the paired "
             f"drop), on {auto['questions']} questions of {auto['split']}. On that many questions the tightest bound "
             f"any candidate reached is {auto['smallest_certifiable_drop']:+.1f} points: a smaller budget "
             "certifies nothing.", "",
             "| candidate | size | exact match | drop (points) | 95% upper bound | same answer as torch |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in auto["candidates"]:
        mark = " **(chosen)**" if c["name"] == auto["chosen"] else ""
        if c.get("same_file_as"):
            mark += f" (same file as {c['same_file_as']})"
        lines.append(f"| {c['name']}{mark} | {c['size_bytes'] / 1e6:.1f} MB | {c['em']:.1f}% | "
                     f"{c['drop_points']:+.1f} | {c['drop_upper95']:+.1f} | {100 * c['agreement']:.0f}% |")
    return lines + [""]
