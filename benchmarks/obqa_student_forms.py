"""Every export form of the OBQA TinyLLM student on all 500 OpenBookQA test questions, beside the packaged
teachers: does the student a user ships keep what distillation taught it?

    .venv/bin/python benchmarks/obqa_student_forms.py            # export, bench, write (each step resumable)
    .venv/bin/python benchmarks/obqa_student_forms.py --write    # only rewrite the md from finished benches
    .venv/bin/python benchmarks/obqa_student_forms.py --students-only   # the packaged teachers' rows left out
    .venv/bin/python benchmarks/obqa_student_forms.py --only gguf-auto,gguf-q5_0 --stem obqa_student_qat
        # a sitting's subset: only these export folders (and the torch student), written to <stem>.{md,json}

The student is the paper table's OBQA TinyLLM cell (`runs/paper/obqa/tinyllm/student`; its command is in
benchmarks/results/paper_table_cpu.md). Steps, each skipped when its output exists:
1. `tinyllm-export` to GGUF q8_0/q6_k/q5_k_m/q5_0/q4_k_m/q4_1/q4_0, q4_1 with the fine-tuning as a rank-16
   adapter (`--adapter-rank`), q4_0 and q5_0 after a quantization-aware pass (`--qat 500`), the per-tensor type mix
   obqa_tensor_sensitivity.py chose on validation (`--tensor-type`, as it is and with `--qat 500`), q5_0 and
   q4_0 rounded by GPTQ on 1,000 training questions (`--gptq 1000`), ONNX fp32 and int8 (MatMulNBits, int8 compute), onnxruntime-genai int4 (round to
   nearest; k_quant scales; k_quant with the LM head at int8), and
   `--quant auto` (chosen on the 500 *validation* questions, `--max-drop 1`, as it is and with `--gptq 1000`'s two
   candidates, folder gguf-auto-gptq1000; when that certifies nothing the md
   shows what the same rule picks at 2 and 3 points, and how that file does on test).
   An export whose parity check fails keeps its files and is benched all the same (marked in the table).
2. `tinyllm-bench` once per contestant (`--contestants <one>`, its own report folder, so a killed run
   resumes at the next contestant), students first and the packaged teachers last. Nothing else runs
   meanwhile: the latencies are measured on the 2 cores alone.
3. The merged report (bench's own table and two plots), the paired difference of every form to the torch
   student on the same questions (95% CI, exact McNemar p) for exact match and log-likelihood, and one
   MLflow run holding the merged figures. Written to benchmarks/results/obqa_student_forms.{md,json} and
   obqa_student_forms_{latency,size}.png.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from paper_table import BIN, paired, shown  # noqa: E402

RUN = REPO / "runs" / "paper" / "obqa" / "tinyllm"
STUDENT = RUN / "student"
BENCH = RUN / "forms-bench"
RESULTS = REPO / "benchmarks" / "results"
EXPORTS = ([("gguf", q, 0) for q in ("q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_1", "q4_0")]
           + [("gguf", "q4_1", 16)]  # the pretrained base + the fine-tuning as a rank-16 adapter
           + [("onnx", "none", 0), ("onnx", "int8", 0), ("genai", "int4", 0)])
"""(format, quant, export.adapter_rank), exported to exports/<format>-<quant>[-r<rank>]."""
GENAI_VARIANTS = {"genai-int4-kquant": ("int4", ("export.genai_algo=k_quant",)),
                  "genai-int4-kquant-head8": ("int4", ("export.genai_algo=k_quant",
                                                       "export.genai_mixed_precision=last_matmul:int8"))}
"""onnxruntime-genai int4 with the builder's k_quant scales, and with the LM head (SmolLM2's tied 49k x 576
embedding, a fifth of its weights) kept at int8: folder -> (quant, overrides)."""
QAT_VARIANTS = {"gguf-q4_0-qat500": ("q4_0", 500, ("export.qat_lr=5e-5",)),
                "gguf-q5_0-qat500": ("q5_0", 500, ("export.qat_lr=5e-5",))}
"""The quantization-aware pass (`--qat`) over 500 of the 2,000 training questions, at the student's own
training learning rate, before llama.cpp rounds it to q4_0 or q5_0 (every matrix at 5 bits): folder ->
(quant, questions, overrides)."""
GPTQ_VARIANTS = {"gguf-q5_0-gptq1000": ("q5_0", 1000), "gguf-q4_0-gptq1000": ("q4_0", 1000)}
"""GPTQ rounding (`--gptq`) onto llama.cpp's q5_0 / q4_0 grid, on the inputs of 1,000 of the 2,000 training
questions, instead of nearest rounding: folder -> (quant, questions)."""


def mix_variants() -> dict[str, tuple[str, str, int, int]]:
    """Per-tensor type mixes (`--tensor-type`), chosen on validation by benchmarks/obqa_tensor_sensitivity.py:
    its lowest-KL mix within the size budget, as it is, after the same quantization-aware pass as QAT_VARIANTS,
    and rounded by GPTQ as GPTQ_VARIANTS: folder -> (quant, export.tensor_types, qat questions, gptq questions).
    Empty before the scan has run."""
    from export.gguf import variant

    f = RESULTS / "obqa_tensor_sensitivity.json"
    best = json.loads(f.read_text()).get("best_mix") if f.exists() else None
    if not best:
        return {}
    quant, rest = best.split(" + ", 1)  # "q4_0 + token_embd=q5_0, attn_v=q5_0, attn_q=q5_0"
    tt = ",".join(rest.split(", "))
    return {f"gguf-{variant(quant, 0, n, tt, g)}": (quant, tt, n, g) for n, g in ((0, 0), (500, 0), (0, 1000))}


TEACHERS = ("teachers=[{name: smollm2, backend: llama.cpp, model: smollm2-135m-instruct, max_new_tokens: 64}, "
            "{name: gemma3, backend: llama.cpp, model: gemma3-270m, max_new_tokens: 64}]")
BUDGET_POINTS = 1.0
AUTO_BUDGETS = (1.0, 2.0, 3.0)
"""Budgets the md shows auto's rule at: the run is at the goal's 1 point; a larger budget's choice is the same
rule on the same measurements (the smallest candidate whose 95% upper bound fits), and its test row is the plain
export with the same bytes (sha256)."""
SMALL_MB = 105  # today's q4_k_m size: the goal's "4-bit class"
ONLY: set[str] = set()
"""--only: the export folders this sitting exports and benches (empty = all)."""
STEM = "obqa_student_forms"
"""--stem: the results' file names (benchmarks/results/<stem>.md, .json, _latency.png, _size.png)."""


def wanted(folder: str) -> bool:
    return not ONLY or folder in ONLY


def sh(cmd: list[str], log: list[dict], what: str, kept: Path | None = None) -> None:
    """Run one step; a non-zero exit stops the script unless `kept` exists afterwards (a failed parity check
    or an uncertifiable auto keeps its numbers there: measured, not hidden)."""
    printable = shown(cmd).replace(str(REPO) + "/", "")
    print(f"[forms] {what}: {printable}", flush=True)
    start = time.time()
    r = subprocess.run(cmd, cwd=REPO)
    log.append({"step": what, "command": printable, "wall_s": round(time.time() - start), "rc": r.returncode})
    if r.returncode != 0 and not (kept and kept.exists()):
        raise SystemExit(f"[forms] {what} failed (exit {r.returncode}); fix it and run again (finished steps are kept)")


AUTO_FOLDERS = {"gguf-auto": (), "gguf-auto-gptq1000": ("--gptq", "1000")}
"""`--quant auto` as it is, and with the GPTQ-rounded q4_0 / q5_0 files as two more candidates: folder -> flags."""


def auto_folder() -> str:
    """The auto export this sitting's md reports: the GPTQ one when --only names it."""
    return next((f for f in AUTO_FOLDERS if f in ONLY and f != "gguf-auto"), "gguf-auto")


def auto_report() -> dict | None:
    """What `--quant auto --max-drop 1` measured: parity.json's when it chose, auto.json's when it certified nothing."""
    d = RUN / "exports" / auto_folder()
    if (d / "parity.json").exists():
        return json.loads((d / "parity.json").read_text())["auto"]
    if (d / "auto.json").exists():
        return json.loads((d / "auto.json").read_text())
    return None


def auto_choice(auto: dict, budget: float) -> dict | None:
    """auto's rule at another budget, on the same measurements: the smallest candidate whose bound fits (an
    auto.json from before the prediction bound has only the 95% bound of the mean)."""
    from export.auto import pick

    return pick([{**c, "drop_bound": c.get("drop_bound", c["drop_upper95"])} for c in auto["candidates"]], budget)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_all(steps: list[dict]) -> None:
    for fmt, quant, rank in EXPORTS:
        name = f"{fmt}-{quant}" + (f"-r{rank}" if rank else "")
        if (RUN / "exports" / name / "parity.json").exists() or not wanted(name):
            continue
        sh([str(BIN / "tinyllm-export"), str(STUDENT), "--format", fmt, "--quant", quant, "--overwrite",
            *(["--adapter-rank", str(rank)] if rank else [])], steps, f"export {name}",
           kept=RUN / "exports" / name / "parity.json")
    for name, (quant, overrides) in GENAI_VARIANTS.items():
        out = RUN / "exports" / name
        if not (out / "parity.json").exists() and wanted(name):
            sh([str(BIN / "tinyllm-export"), str(STUDENT), "--format", "genai", "--quant", quant, "--out", str(out),
                "--overwrite", *overrides], steps, f"export {name}", kept=out / "parity.json")
    for name, (quant, n, overrides) in QAT_VARIANTS.items():
        if not (RUN / "exports" / name / "parity.json").exists() and wanted(name):
            sh([str(BIN / "tinyllm-export"), str(STUDENT), "--format", "gguf", "--quant", quant, "--qat", str(n),
                "--overwrite", *overrides], steps, f"export {name}", kept=RUN / "exports" / name / "parity.json")
    for name, (quant, n) in GPTQ_VARIANTS.items():
        if not (RUN / "exports" / name / "parity.json").exists() and wanted(name):
            sh([str(BIN / "tinyllm-export"), str(STUDENT), "--format", "gguf", "--quant", quant, "--gptq", str(n),
                "--overwrite"], steps, f"export {name}", kept=RUN / "exports" / name / "parity.json")
    for name, (quant, tt, n, g) in mix_variants().items():
        if not (RUN / "exports" / name / "parity.json").exists() and wanted(name):
            sh([str(BIN / "tinyllm-export"), str(STUDENT), "--format", "gguf", "--quant", quant,
                *[a for pair in tt.split(",") for a in ("--tensor-type", pair)], "--overwrite",
                *(["--qat", str(n), "export.qat_lr=5e-5"] if n else []), *(["--gptq", str(g)] if g else [])],
               steps, f"export {name}",
               kept=RUN / "exports" / name / "parity.json")
    for folder, flags in AUTO_FOLDERS.items():
        out = RUN / "exports" / folder
        if not (out / "parity.json").exists() and not (out / "auto.json").exists() and wanted(folder):
            sh([str(BIN / "tinyllm-export"), str(STUDENT), "--format", "gguf", "--quant", "auto", "--max-drop",
                f"{BUDGET_POINTS:g}", *flags, "--out", str(out), "--overwrite", "export.auto_questions=500"],
               steps, f"export {folder} (max drop {BUDGET_POINTS:g})", kept=out / "auto.json")


def contestants() -> list[str]:
    from bench.run import discover
    from distill.config import load_config

    found = discover(load_config(RUN / "resolved_config.yaml", [TEACHERS]), STUDENT)
    if ONLY:  # the torch student (every pairing's reference) and the forms in the chosen folders
        found = [c for c in found if c["name"] == "student-torch"
                 or (c["role"] == "student" and Path(c["path"]).resolve().relative_to((RUN / "exports").resolve()).parts[0] in ONLY)]
    return [c["name"] for c in found if c["role"] == "student"] + [c["name"] for c in found if c["role"] != "student"]


BENCH_FIRST = ("student-torch", "student-onnx-none", "student-onnx-int8", "student-genai", "student-gguf-q4_k_m",
               "student-gguf-q6_k", "student-gguf-q8_0")
"""The references and the forms the md's questions hinge on are benched first, so a sitting that runs out still
has them."""


BENCH_LAST = ("student-gguf-q4_1",)
"""Plain q4_1 rounds the training away (obqa_imatrix.md: EM 3.8, answers like the untrained model, which rambles
to the token limit): the slowest student bench, and the least informative."""


def bench_order(name: str) -> int:
    if name in BENCH_LAST:
        return len(BENCH_FIRST) + 1
    return next((i for i, p in enumerate(BENCH_FIRST) if name.startswith(p)),
                len(BENCH_FIRST) + 2 * name.startswith("teacher:"))


def bench_all(names: list[str], steps: list[dict]) -> None:
    for name in sorted(names, key=bench_order):
        folder = BENCH / name.replace(":", "-")
        if (folder / "report.json").exists():
            continue
        sh([str(BIN / "tinyllm-bench"), "-c", str(RUN / "resolved_config.yaml"), "--student", str(STUDENT),
            "--contestants", name, "--out", str(folder), "--threads", "2", "--no-mlflow", "bench.timeout_s=3600",
            "bench.warmup=2", TEACHERS], steps, f"bench {name}")


def correct(pred_file: Path, key: str) -> str:
    preds = [json.loads(line) for line in pred_file.read_text().splitlines()]
    if key == "em":
        return "".join("1" if p["em"] else "0" for p in preds)
    return "".join("1" if p[key] == p["gold"] else "0" for p in preds)


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0].strip()


def untrained_answers() -> list[str]:
    """The untrained packaged SmolLM2-135M-Instruct's greedy answers to the test questions, same prompt as the
    student's (cached): the questions where training changed the answer are where a form can lose it."""
    f = BENCH / "untrained-answers.json"
    if not f.exists():
        from distill.config import StudentConfig
        from distill.data import load_dataset
        from distill.student import PromptFormat, load_student
        from export.auto import torch_answers

        model, tok, _ = load_student(StudentConfig(model="smollm2-135m-instruct"))
        model.eval()
        f.write_text(json.dumps(torch_answers(model, tok, PromptFormat.load(STUDENT),
                                              load_dataset("tinyllm-obqa").split("test"))))
    return [first_line(a) for a in json.loads(f.read_text())]


def add_kept(report: dict) -> dict:
    """Per student form: of the questions where the trained torch student answers differently from the
    untrained model, how many this form answers as the trained student does."""
    gen = {r["name"]: [first_line(json.loads(x)["generated"]) for x in Path(r["predictions"]).read_text().splitlines()]
           for r in report["contestants"] if r["status"] == "ok" and r["role"] == "student"}
    trained, untrained = gen["student-torch"], untrained_answers()
    changed = [i for i, (a, b) in enumerate(zip(trained, untrained)) if a != b]
    for r in report["contestants"]:
        if r["name"] in gen:
            r["kept_trained"] = {"kept": sum(gen[r["name"]][i] == trained[i] for i in changed), "of": len(changed)}
    return report


def merge(names: list[str]) -> dict:
    from bench.report import write_report

    results, meta = [], None
    for name in names:
        rep = json.loads((BENCH / name.replace(":", "-") / "report.json").read_text())
        meta = meta or rep["meta"]
        results += rep["contestants"]
    merged = BENCH / "merged"
    merged.mkdir(parents=True, exist_ok=True)
    report = write_report(results, meta, merged)
    base = next(r for r in report["contestants"] if r["name"] == "student-torch")
    for r in report["contestants"]:
        if r["status"] != "ok":
            continue
        # a teacher's chain of thought has no EM: it is compared with the torch student by option match
        for m in ("em", "loglik") if r["role"] == "student" else ("option_match", "loglik"):
            key = m if m == "em" else f"pred_{m}"
            a, b = correct(Path(r["predictions"]), key), correct(Path(base["predictions"]), key)
            d, lo, hi, p = paired(a, b)
            r[f"paired_{m}"] = {"diff_points": round(100 * d, 2), "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
                                "mcnemar_p": round(p, 4)}
    return add_kept(report)


def log_mlflow(report: dict) -> str | None:
    from bench.run import log_bench_metrics
    from distill.config import load_config
    from distill.tracking import mlflow_run

    cfg = load_config(RUN / "resolved_config.yaml", [])
    with mlflow_run(cfg, "bench", run_name="bench-obqa-forms", tags={"tinyllm.dataset": "obqa",
                                                                      "tinyllm.bench.kind": "every export form"}) as run:
        log_bench_metrics(run, report, BENCH / "merged")
        return getattr(run, "run_id", None)


def kv_cache_bytes(n_ctx: int = 2048) -> int:
    """f16 K and V for every layer and position, as llama.cpp allocates them for the student."""
    c = json.loads((STUDENT / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 2 * c["num_hidden_layers"] * n_ctx * c.get("num_key_value_heads", c["num_attention_heads"]) * head_dim * 2


def mb(n) -> str:
    return f"{n / 1e6:.0f}" if n else "—"


def write_md(report: dict, steps: list[dict], run_id: str | None) -> None:
    rows = [r for r in report["contestants"] if r["status"] == "ok"]
    students = [r for r in rows if r["role"] == "student"]
    torch_row = next(r for r in students if r["name"] == "student-torch")
    within = sorted((r for r in students if r["name"] != "student-torch" and r["paired_em"]["diff_points"] >= -BUDGET_POINTS),
                    key=lambda r: r["size_bytes"])
    certified = [r for r in within if r["paired_em"]["ci95"][0] >= -BUDGET_POINTS]
    small = [r for r in students if r["size_bytes"] <= SMALL_MB * 1e6]
    meta = report["meta"]

    def form(r):
        p = r["paired_em"]
        return (f"**{r['name']}**, {mb(r['size_bytes'])} MB, EM {100 * r['accuracy_em']:.1f}% (paired "
                f"{p['diff_points']:+.1f} [{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}], McNemar p {p['mcnemar_p']:.2g})")

    best_small = max(small, key=lambda r: r["paired_em"]["diff_points"]) if small else None
    lines = [
        ("# The shipped OBQA student in every form, on all 500 OpenBookQA test questions" if not ONLY else
         f"# The OBQA student in the forms of one sitting ({', '.join(sorted(ONLY))}), on all 500 OpenBookQA test "
         "questions (every other form: obqa_student_forms.md)"), "",
        "**Student.** SmolLM2-135M-Instruct distilled TinyLLM-style from the paper's released FLAN-T5-xl and "
        "LLaMA-2-7B rationales on 2,000 OBQA training questions, one epoch — the paper table's `obqa/tinyllm` "
        "cell (its command is in `paper_table_cpu.md`). "
        + ("**Teachers shown** are the packaged GGUF models (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M), "
           "answering zero-shot; the paper's 3B/7B teachers are not runnable here (their rationales are files)."
           if any(r["role"] == "teacher" for r in rows) else
           "**No teacher rows** in this run (`--students-only`): the packaged teachers' figures are in this file's "
           "earlier version (git history); the paper's 3B/7B teachers are not runnable here."), "",
        "**How.** `.venv/bin/python benchmarks/obqa_student_forms.py"
        + (f" --only {','.join(sorted(ONLY))} --stem {STEM}" if ONLY else "") + "` (exports, then one `tinyllm-bench` per "
        f"contestant, then the merge; every command below). {meta['hardware']}; {meta['threads']} threads per "
        f"runtime; {meta['warmup']} warm-up questions untimed; each of the {meta['questions']} questions answered once, "
        "greedily, and timed; nothing else running. EM = the paper's exact match: the generated first line is the "
        "gold option's text (students; the teachers' chains of thought are scored by option match, the option they "
        "name); loglik = the option with the highest mean token log-probability. Paired differences are "
        "against the torch student on the same questions (95% CI of the mean paired difference; exact McNemar p). "
        f"MLflow: one run holds the merged figures (`bench-obqa-forms`, run id `{run_id}`).", "",
        f"**Torch student:** EM {100 * torch_row['accuracy_em']:.1f}%. **Smallest form within {BUDGET_POINTS:g} EM "
        f"point of it** (point estimate of the paired difference): {form(within[0]) if within else 'none in this run'}. "
        + (f"Smallest whose whole 95% interval is within {BUDGET_POINTS:g} point: {form(certified[0])}. "
           if certified else f"No form's whole 95% interval is within {BUDGET_POINTS:g} point. ")
        + (f"**A form of at most {SMALL_MB} MB within {BUDGET_POINTS:g} point: "
           + ("yes**, " + form(next(r for r in within if r in small)) if any(r in small for r in within)
              else f"no**; the closest of them: {form(best_small)}") + "." if small else ""), ""]
    auto = auto_report()
    if auto is not None:
        by_sha = {}
        for r in students:
            f = Path(r.get("path") or "")
            if f.suffix == ".gguf" and f.exists() and not r.get("lora"):
                by_sha.setdefault(sha256(f), r)

        def on_test(c, budget):
            row = by_sha.get(c.get("sha256"))
            if row is None:
                return " (no benched file has its bytes)"
            p = row["paired_em"]
            return (f"; on the test split ({row['name']}, the same bytes) EM {100 * row['accuracy_em']:.1f}%, paired "
                    f"{p['diff_points']:+.1f} [{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}]: "
                    + ("within" if p["diff_points"] >= -budget else "**outside**") + f" its {budget:g}-point budget"
                    + ("" if p["ci95"][0] >= -budget else " by the point estimate, its interval reaching below"))

        flags = " ".join(AUTO_FOLDERS[auto_folder()])
        lines += [f"**`--quant auto --max-drop {BUDGET_POINTS:g}{' ' + flags if flags else ''}`** on {auto['questions']} questions of {auto['split']} "
                  f"(never the test split; torch EM there {auto['torch_em']:.1f}%; rule: {auto['rule']}): "
                  + (f"chose **{auto['chosen']}**." if auto["chosen"] else
                     f"**certified nothing**: the tightest bound any candidate reached is "
                     f"{auto['smallest_certifiable_drop']:+.1f} points, so on {auto['questions']} questions no "
                     f"budget below that certifies a form, and the export exits 1 with every candidate's numbers "
                     "in auto.json (below)."), ""]
        for budget in AUTO_BUDGETS:
            c = auto_choice(auto, budget)
            lines.append(f"- at `--max-drop {budget:g}` the rule picks "
                         + (f"**{c['name']}** ({mb(c['size_bytes'])} MB, valid drop {c['drop_points']:+.1f}, bound "
                            f"{c.get('drop_bound', c['drop_upper95']):+.1f}){on_test(c, budget)}." if c else "nothing."))
        lines += ["", "The larger budgets' picks are the same rule applied to the same validation measurements (what "
                  "`--max-drop 2` or `3` would choose); their test rows are the plain exports with the same sha256.", "",
                  "| candidate | size MB | valid EM % | drop (points) | the rule's bound | same answer as torch | |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for c in auto["candidates"]:
            note = "chosen" if c["name"] == auto["chosen"] else (
                "same file as " + c["same_file_as"] if c.get("same_file_as") else ("within budget" if c["within_budget"] else ""))
            lines.append(f"| {c['name']} | {mb(c['size_bytes'])} | {c['em']:.1f} | {c['drop_points']:+.1f} | "
                         f"{c.get('drop_bound', c['drop_upper95']):+.1f} | {100 * c['agreement']:.0f}% | {note} |")
        lines.append("")
    lines += ["## Every form on the test set", "",
              "| contestant | runtime | size MB | EM % [95% CI] | EM vs torch, paired [95% CI] (McNemar p) | loglik % "
              "| loglik vs torch, paired [95% CI] (McNemar p) | kept | p50 s/q | p95 s/q | decode tok/s | peak RSS MB |",
              "|---|---|---:|---|---|---:|---|---:|---:|---:|---:|---:|"]

    def pair(r, m):
        p = r[f"paired_{m}"]
        if r["name"] == "student-torch":
            return "—"
        return f"{p['diff_points']:+.1f} [{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}] ({p['mcnemar_p']:.2g})"

    def kept(r):
        k = r.get("kept_trained")
        return f"{k['kept']}/{k['of']}" if k else "—"

    for r in sorted(rows, key=lambda r: (r["role"] != "student", -(r.get("size_bytes") or 0))):
        m = "em" if "accuracy_em" in r else "option_match"
        lo, hi = r[f"ci95_{m}"]
        lines.append(f"| {r['name']}{' (parity check failed)' if r.get('parity_passed') is False else ''} | {r['runtime']} | {mb(r.get('size_bytes'))} | {100 * r[f'accuracy_{m}']:.1f} "
                     f"[{100 * lo:.1f}–{100 * hi:.1f}]{'' if m == 'em' else ' (option match)'} | {pair(r, m)} | {100 * r['accuracy_loglik']:.1f} | "
                     f"{pair(r, 'loglik')} | {kept(r)} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['decode_tok_s_p50']:.1f} | "
                     f"{r.get('peak_rss_mb', float('nan')):.0f} |")
    kv = kv_cache_bytes()
    ggufs = [r for r in students if r["runtime"].startswith("llama.cpp") and r.get("peak_rss_mb")]
    if ggufs:
        ratios = ", ".join(f"{r['name'].removeprefix('student-gguf-')} {r['peak_rss_mb'] * 1e6 / (r['size_bytes'] + kv):.2f}×"
                           for r in ggufs)
        lines += ["", f"**Memory of the GGUF students.** Peak RSS over (file + KV cache): {ratios}. The KV cache "
                  f"llama.cpp allocates for the bench's n_ctx 2048 is {kv / 1e6:.0f} MB (f16 K and V for every layer and "
                  "position); what else is resident is llama.cpp's compute buffers and the worker's Python interpreter "
                  "with numpy, yaml and the data loader (about 40 MB, no torch: tests/test_bench.py) — the share that "
                  "puts the smaller files above 1.5×."]
    failed = [r for r in report["contestants"] if r["status"] != "ok"]
    if failed:
        lines += ["", "Did not finish: " + "; ".join(f"{r['name']}: {r['status']}" for r in failed)]
    lines += ["", "*kept*: of the questions where the trained torch student's answer differs from the untrained "
              "SmolLM2-135M-Instruct's (same prompt, greedy, first line), how many this form answers as the trained "
              "student does. A form whose export parity check failed is marked so and benched all the same."]
    lines += ["", f"Plots: `{STEM}_latency.png` (EM vs median seconds per question), "
              f"`{STEM}_size.png` (EM vs file size); students blue, teachers orange, 95% CIs.", "",
              "## Commands (wall time)", "", "| step | wall | command |", "|---|---:|---|"]
    lines += [f"| {s['step']} | {s['wall_s']} s | `{s['command']}` |" for s in steps]
    md = RESULTS / f"{STEM}.md"
    old = md.read_text() if md.exists() else ""
    if "<!-- notes -->" in old:  # what a person wrote about the figures is kept across re-writes
        notes = old[old.index("<!-- notes -->"):old.index("<!-- /notes -->") + len("<!-- /notes -->")]
        at = lines.index("## Every form on the test set")
        lines[at:at] = [notes, ""]
    md.write_text("\n".join(lines) + "\n")


def main() -> None:
    global ONLY, STEM
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="Only merge finished benches and rewrite the md.")
    ap.add_argument("--exports-only", action="store_true", help="Only the exports (they are not timed: other work may "
                    "share the cores meanwhile, unlike the benches).")
    ap.add_argument("--only", help="Comma-separated export folders (e.g. gguf-auto,gguf-q5_0): export and bench only "
                    "these and the torch student (then --stem names where the results go).")
    ap.add_argument("--stem", default=STEM, help="Results' file name stem under benchmarks/results (default %(default)s).")
    ap.add_argument("--students-only", action="store_true",
                    help="Bench the student's forms only, not the packaged teachers (about 22 minutes less).")
    args = ap.parse_args()
    ONLY = set(filter(None, (args.only or "").split(",")))
    STEM = args.stem
    if ONLY and STEM == "obqa_student_forms":
        raise SystemExit("--only benches a subset: give it its own --stem, so obqa_student_forms.md keeps every form")
    if not (STUDENT / "config.json").exists():
        raise SystemExit(f"no student at {STUDENT}: train it first with the obqa/tinyllm command in "
                         "benchmarks/results/paper_table_cpu.md")
    steps_file = BENCH / "steps.json"
    BENCH.mkdir(parents=True, exist_ok=True)
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else []
    try:
        if not args.write:
            export_all(steps)
            if args.exports_only:
                return
            bench_all([n for n in contestants() if not (args.students_only and n.startswith("teacher:"))], steps)
    finally:
        steps_file.write_text(json.dumps(steps, indent=1) + "\n")
    names = [n for n in contestants() if (BENCH / n.replace(":", "-") / "report.json").exists()]
    report = merge(names)
    run_id = log_mlflow(report)
    slim = {**report, "contestants": [{k: v for k, v in r.items() if k not in ("predictions", "path")}
                                      for r in report["contestants"]], "steps": steps, "mlflow_run_id": run_id}
    (RESULTS / f"{STEM}.json").write_text(json.dumps(slim, indent=1) + "\n")
    for src, dst in (("accuracy_vs_latency.png", "latency"), ("accuracy_vs_size.png", "size")):
        shutil.copy(BENCH / "merged" / src, RESULTS / f"{STEM}_{dst}.png")
    write_md(report, steps, run_id)
    print(f"[forms] wrote {RESULTS / (STEM + '.md')}", flush=True)


if __name__ == "__main__":
    main()
