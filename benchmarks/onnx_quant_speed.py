"""Quantized ONNX against ONNX fp32 on this CPU: seconds per question and exact match, by MatMulNBits'
bits and compute type (accuracy level 0 = fp32 compute, onnxruntime's default; 4 = int8 compute).

    .venv/bin/python benchmarks/onnx_quant_speed.py                 # the OBQA TinyLLM student, 500 test questions
    .venv/bin/python benchmarks/onnx_quant_speed.py --questions 100 --student runs/quickstart/student

The fp32 form is `tinyllm-export --format onnx` (parity checked); each quantized form is that folder with
export/onnx.py's `quantize_weights` applied at the given bits and accuracy level. Every form answers the
same questions greedily in its own process (bench's HFRunner over optimum's ORTModelForCausalLM,
`--threads` intra-op threads, one warm-up question untimed), one after another, nothing else running.
Written to benchmarks/results/onnx_quant_speed.{json,md} with the CPU model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from paper_table import BIN, paired, shown  # noqa: E402

from distill.llama_runtime import cpu_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FORMS = [("fp32", None, None), ("int8-level0", 8, 0), ("int8-level4", 8, 4), ("int4-level0", 4, 0),
         ("int4-level4", 4, 4)]


def build(student: Path, study: Path, steps: list[dict]) -> None:
    fp32 = study / "fp32"
    if not (fp32 / "parity.json").exists():
        cmd = [str(BIN / "tinyllm-export"), str(student), "--format", "onnx", "--out", str(fp32), "--no-mlflow",
               "--overwrite"]
        print(f"[onnx-speed] {shown(cmd)}", flush=True)
        start = time.time()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        steps.append({"step": "export fp32", "command": shown(cmd).replace(str(REPO) + "/", ""),
                      "wall_s": round(time.time() - start), "rc": rc})
        if rc != 0:
            raise SystemExit(f"[onnx-speed] the fp32 export failed (exit {rc})")
    import export.onnx as onnx_export

    for name, bits, level in FORMS[1:]:
        out = study / name
        if (out / "done").exists():
            continue
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(fp32, out)
        onnx_export.ACCURACY_LEVEL = level
        start = time.time()
        onnx_export.quantize_weights(out, bits, out / "export.log")
        steps.append({"step": f"quantize {name}", "command": f"export.onnx.quantize_weights(bits={bits}, "
                      f"accuracy_level={level})", "wall_s": round(time.time() - start), "rc": 0})
        (out / "done").write_text("")


def worker(folder: str, questions: int, threads: int) -> dict:
    """(child process) Greedy answers and per-question seconds of one ONNX folder."""
    import onnxruntime
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    from distill.inference import HFRunner
    from distill.data import load_dataset
    from distill.student import PromptFormat

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    runner = HFRunner(ORTModelForCausalLM.from_pretrained(folder, session_options=opts,
                                                          provider="CPUExecutionProvider"),
                      AutoTokenizer.from_pretrained(folder))
    fmt = PromptFormat.load(Path(folder))
    examples = load_dataset("tinyllm-obqa").split("test")[:questions]
    runner.answer(fmt.answer_prompt(examples[0]), 32, ["\n"])  # warm-up, untimed
    texts, seconds = [], []
    for ex in examples:
        t = runner.answer(fmt.answer_prompt(ex), 32, ["\n"])
        texts.append(t.text.strip().split("\n")[0].strip())
        seconds.append(t.total_s)
    size = sum(f.stat().st_size for f in Path(folder).glob("*.onnx*"))
    return {"answers": texts, "seconds": seconds, "size_bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default=str(REPO / "runs" / "paper" / "obqa" / "tinyllm" / "student"))
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.questions, args.threads)))
        return
    student = Path(args.student)
    if not (student / "config.json").exists():
        raise SystemExit(f"[onnx-speed] {student} is not a student folder")
    study = student.parent / "onnx-speed"
    steps: list[dict] = []
    build(student, study, steps)
    from distill.data import load_dataset
    from distill.student import exact_match

    gold = [ex.answer_text for ex in load_dataset("tinyllm-obqa").split("test")[: args.questions]]
    forms = {}
    for name, bits, level in FORMS:
        cache = study / name / f"answers-{args.questions}-{args.threads}t.json"
        if not cache.exists():
            print(f"[onnx-speed] {name}: {args.questions} questions", flush=True)
            r = subprocess.run([sys.executable, __file__, "--worker", str(study / name), "--questions",
                                str(args.questions), "--threads", str(args.threads)], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"[onnx-speed] {name} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
            cache.write_text(r.stdout.strip().splitlines()[-1])
        forms[name] = {"bits": bits, "accuracy_level": level, **json.loads(cache.read_text())}
    ref = forms["fp32"]
    ref_correct = [exact_match(a, g) for a, g in zip(ref["answers"], gold)]
    rows = []
    for name, f in forms.items():
        correct = [exact_match(a, g) for a, g in zip(f["answers"], gold)]
        d, lo, hi, p = paired(correct, ref_correct)
        rows.append({"form": name, "bits": f["bits"], "accuracy_level": f["accuracy_level"], "size_bytes": f["size_bytes"],
                     "p50_s": statistics.median(f["seconds"]), "mean_s": statistics.mean(f["seconds"]),
                     "em": 100 * sum(correct) / len(correct), "diff": 100 * d, "ci": [100 * lo, 100 * hi], "p": p,
                     "same_as_fp32": sum(a == b for a, b in zip(f["answers"], ref["answers"])) / len(gold)})
    meta = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads, "questions": args.questions,
            "student": str(student.relative_to(REPO)) if student.is_relative_to(REPO) else str(student),
            "date": time.strftime("%Y-%m-%d"), "command": shown([".venv/bin/python", "benchmarks/onnx_quant_speed.py"]
                                                                 + sys.argv[1:])}
    (RESULTS / "onnx_quant_speed.json").write_text(json.dumps({"meta": meta, "forms": rows, "steps": steps},
                                                               indent=2) + "\n")
    fp32_p50 = rows[0]["p50_s"]
    lines = ["# Quantized ONNX against ONNX fp32 on a CPU", "",
             f"**How.** `{meta['command']}` on {meta['cpu']} ({meta['cores']} logical cores), {meta['date']}; student "
             f"{meta['student']}; {meta['questions']} OpenBookQA test questions, each answered once, greedily, by "
             f"each form in its own process with {meta['threads']} onnxruntime threads (1 warm-up question untimed), "
             "one form after another, nothing else running. MatMulNBits weight-only quantization, blocks of 32, "
             "symmetric; accuracy level 0 computes in fp32 (onnxruntime's default), 4 in int8. EM = the paper's exact "
             "match; Δ = paired difference to fp32 on the same questions (95% CI, exact McNemar p).", "",
             "| form | size MB | p50 s/question | vs fp32 | EM % | Δ EM vs fp32 [95% CI] | p | same answer as fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['form']} | {r['size_bytes'] / 1e6:.0f} | {r['p50_s']:.3f} | {fp32_p50 / r['p50_s']:.2f}× | "
                     f"{r['em']:.1f} | {r['diff']:+.1f} [{r['ci'][0]:+.1f}, {r['ci'][1]:+.1f}] | {r['p']:.2f} | "
                     f"{100 * r['same_as_fp32']:.0f}% |")
    md = RESULTS / "onnx_quant_speed.md"
    keep = md.read_text().split("<!-- notes -->", 1)[1] if md.exists() and "<!-- notes -->" in md.read_text() else ""
    md.write_text("\n".join(lines) + "\n" + ("\n<!-- notes -->" + keep if keep else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
