"""Does a task importance matrix keep what distillation taught the OBQA student at 4 bits?

    .venv/bin/python benchmarks/obqa_imatrix.py            # export, answer, write (each step resumable)
    .venv/bin/python benchmarks/obqa_imatrix.py --write    # only rewrite the md from the stored answers

The student is the paper table's OBQA TinyLLM cell (`runs/paper/obqa/tinyllm/student`; its command is in
benchmarks/results/paper_table_cpu.md). Steps, each skipped when its output exists:
1. `tinyllm-export` to GGUF q4_0, q4_1, q4_k_m, q5_k_m, each with `--imatrix none` and `--imatrix auto`
   (computed from the student's own training questions), and `--quant auto --max-drop 1` (chosen on all
   500 *validation* questions by the 95% upper bound of the paired drop).
2. Greedy answers to all 500 OpenBookQA test questions: the torch student, the untrained student (the
   packaged SmolLM2-135M-Instruct with the same prompt format), and every exported file through llama.cpp.
3. Per form: exact match (the paper's metric), the paired difference to the torch student (95% CI, exact
   McNemar p), the share of answers equal to torch's, and, of the questions where training changed the
   student's answer, how many keep the trained answer. Written to benchmarks/results/obqa_imatrix.{md,json}.
Accuracy only: no latency is measured here, so other work on the machine does not change a figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from obqa_student_forms import RESULTS, RUN, STUDENT  # noqa: E402  (the same student as the forms bench)
from paper_table import BIN, paired, shown  # noqa: E402

from distill.llama_runtime import cpu_model  # noqa: E402

STUDY = RUN / "imatrix-study"
QUANTS = ("q4_0", "q4_1", "q4_k_m", "q5_k_m")
IMATRIX = ("none", "auto")
BUDGET_POINTS = 1.0


def sh(cmd: list[str], steps: list[dict], what: str, ok=(0,)) -> int:
    printable = shown(cmd).replace(str(REPO) + "/", "")
    print(f"[imatrix] {what}: {printable}", flush=True)
    start = time.time()
    rc = subprocess.run(cmd, cwd=REPO).returncode
    steps.append({"step": what, "command": printable, "wall_s": round(time.time() - start), "rc": rc})
    if rc not in ok:
        raise SystemExit(f"[imatrix] {what} failed (exit {rc}); fix it and run again (finished steps are kept)")
    return rc


def form_dir(quant: str, imatrix: str) -> Path:
    return STUDY / f"gguf-{quant}-{'imatrix' if imatrix == 'auto' else 'plain'}"


def export_all(steps: list[dict], auto: bool = True) -> None:
    for quant in QUANTS:
        for im in IMATRIX:
            out = form_dir(quant, im)
            if (out / "parity.json").exists():
                continue
            # The matrix depends on the student only: computed by the first imatrix export, then given to the others.
            made = next(iter(sorted(STUDY.glob("gguf-*-imatrix/imatrix.dat"))), None) if im == "auto" else None
            # exit 1 = parity thresholds missed, files kept: still a form to measure
            sh([str(BIN / "tinyllm-export"), str(STUDENT), "--format", "gguf", "--quant", quant, "--imatrix",
                str(made) if made else im, "--out", str(out), "--no-mlflow", "--overwrite"], steps,
               f"export {quant} imatrix={im}", ok=(0, 1))
    out = STUDY / "gguf-auto"
    if auto and not ((out / "parity.json").exists() or (out / "auto.json").exists()):
        sh([str(BIN / "tinyllm-export"), str(STUDENT), "--format", "gguf", "--quant", "auto", "--max-drop",
            f"{BUDGET_POINTS:g}", "--out", str(out), "--no-mlflow", "--overwrite"], steps, "export auto", ok=(0, 1))


def answers(name: str, make) -> list[str]:
    f = STUDY / "answers" / f"{name}.json"
    if f.exists():
        return json.loads(f.read_text())
    f.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    got = make()
    f.write_text(json.dumps(got))
    print(f"[imatrix] answers of {name}: {time.time() - start:.0f}s", flush=True)
    return got


def answer_all() -> dict[str, list[str]]:
    from distill.config import StudentConfig
    from distill.data import load_dataset
    from distill.student import PromptFormat, load_student
    from export.auto import gguf_answers, torch_answers

    examples = load_dataset("tinyllm-obqa").split("test")
    fmt = PromptFormat.load(STUDENT)
    out = {}

    def torch_of(model_name):
        def make():
            model, tok, _ = load_student(StudentConfig(model=model_name))
            model.eval()
            return torch_answers(model, tok, fmt, examples)
        return make

    out["torch"] = answers("torch", torch_of(str(STUDENT)))
    out["untrained"] = answers("untrained", torch_of("smollm2-135m-instruct"))
    for d in sorted(STUDY.glob("gguf-*")):
        files = list(d.glob("student-*.gguf"))
        if files:
            out[d.name] = answers(d.name, lambda f=files[0]: gguf_answers(f, fmt, examples, threads=2, task=d.name))
    return out


def rows(ans: dict[str, list[str]]) -> tuple[list[dict], dict]:
    from distill.data import load_dataset
    from distill.student import exact_match

    gold = [ex.answer_text for ex in load_dataset("tinyllm-obqa").split("test")]
    correct = {k: [exact_match(a, g) for a, g in zip(v, gold)] for k, v in ans.items()}
    ref, trained, untrained = correct["torch"], ans["torch"], ans["untrained"]
    changed = [i for i, (a, b) in enumerate(zip(trained, untrained)) if a.strip() != b.strip()]
    out = []
    for name, c in correct.items():
        d, lo, hi, p = paired(c, ref)
        folder = STUDY / name
        parity = json.loads((folder / "parity.json").read_text()) if (folder / "parity.json").exists() else {}
        gguf = next(iter(folder.glob("student-*.gguf")), None) if folder.exists() else None
        out.append({"form": name, "quant": parity.get("quant"), "imatrix": (parity.get("imatrix") or {}).get("source"),
                    "size_bytes": gguf.stat().st_size if gguf else None, "em": 100 * sum(c) / len(c),
                    "diff": 100 * d, "ci": [100 * lo, 100 * hi], "p": p,
                    "same_as_torch": sum(a.strip() == b.strip() for a, b in zip(ans[name], trained)) / len(trained),
                    "kept_trained": sum(ans[name][i].strip() == trained[i].strip() for i in changed),
                    "top1_agreement": parity.get("top1_agreement"), "mean_kl": parity.get("mean_kl"),
                    "parity_passed": parity.get("passed")})
    return out, {"questions": len(gold), "changed_by_training": len(changed)}


def write(steps: list[dict]) -> None:
    ans = answer_all()
    table, facts = rows(ans)
    auto_dir = STUDY / "gguf-auto"
    auto = None
    if (auto_dir / "parity.json").exists():
        auto = json.loads((auto_dir / "parity.json").read_text()).get("auto")
    elif (auto_dir / "auto.json").exists():
        auto = json.loads((auto_dir / "auto.json").read_text())
    meta = {"cpu": cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "student": str(STUDENT.relative_to(REPO)),
            **facts}
    prev = json.loads((RESULTS / "obqa_imatrix.json").read_text()) if (RESULTS / "obqa_imatrix.json").exists() else {}
    all_steps = prev.get("steps", []) + steps
    (RESULTS / "obqa_imatrix.json").write_text(json.dumps({"meta": meta, "forms": table, "auto": auto,
                                                            "steps": all_steps}, indent=2) + "\n")
    lines = ["# A task importance matrix for the OBQA student's 4-bit GGUFs", "",
             f"**How.** `.venv/bin/python benchmarks/obqa_imatrix.py` on {meta['cpu']} ({meta['cores']} logical cores), "
             f"{meta['date']}. Student: {meta['student']} (the paper table's OBQA TinyLLM cell). Every form answers all "
             f"{facts['questions']} OpenBookQA test questions once, greedily; EM = the paper's exact match (the generated "
             "first line is the gold option's text). Paired differences are against the torch student on the same "
             "questions (95% CI of the mean paired difference; exact McNemar p). *Kept* = of the "
             f"{facts['changed_by_training']} questions where training changed the student's answer (trained torch "
             "vs the untrained SmolLM2-135M-Instruct, same prompt), how many this form answers as the trained "
             "student does. The importance matrix (`imatrix`) is `--imatrix auto`: mean squared input activation "
             "per column of every matrix, from the torch student on 512 of its training questions.", "",
             "| form | size MB | EM % | Δ vs torch (points) [95% CI] | McNemar p | same answer as torch | kept | "
             "top-1 / KL (parity, 50 prompts) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(table, key=lambda r: (r["size_bytes"] or 0, r["form"])):
        size = f"{r['size_bytes'] / 1e6:.0f}" if r["size_bytes"] else "—"
        par = f"{r['top1_agreement']:.3f} / {r['mean_kl']:.3f}" if r["top1_agreement"] is not None else "—"
        lines.append(f"| {r['form']} | {size} | {r['em']:.1f} | {r['diff']:+.1f} [{r['ci'][0]:+.1f}, {r['ci'][1]:+.1f}] "
                     f"| {r['p']:.2f} | {100 * r['same_as_torch']:.0f}% | {r['kept_trained']}/{facts['changed_by_training']} "
                     f"| {par} |")
    small = [r for r in table if r["size_bytes"] and r["diff"] >= -BUDGET_POINTS]
    small.sort(key=lambda r: r["size_bytes"])
    lines += [""]
    if small:
        s = small[0]
        lines.append(f"**Smallest form within {BUDGET_POINTS:g} EM point of torch on test** (point estimate): "
                     f"**{s['form']}**, {s['size_bytes'] / 1e6:.0f} MB, {s['diff']:+.1f} [{s['ci'][0]:+.1f}, "
                     f"{s['ci'][1]:+.1f}]; ≤ 105 MB: {'yes' if s['size_bytes'] <= 105e6 else 'no'}.")
    if auto:
        chosen = auto.get("chosen")
        lines += ["", f"**`--quant auto --max-drop {BUDGET_POINTS:g}`** on {auto['questions']} questions of {auto['split']} "
                  f"(torch EM there {auto['torch_em']:.1f}%; the tightest 95% upper bound any candidate reached: "
                  f"{auto['smallest_certifiable_drop']:+.1f}): "
                  + (f"chose **{chosen}**." if chosen else "certified no candidate."), "",
                  "| candidate | size MB | valid EM % | drop | 95% upper bound | same answer as torch |",
                  "|---|---:|---:|---:|---:|---:|"]
        for c in auto["candidates"]:
            lines.append(f"| {c['name']}{' (same file as ' + c['same_file_as'] + ')' if c.get('same_file_as') else ''} | "
                         f"{c['size_bytes'] / 1e6:.0f} | {c['em']:.1f} | {c['drop_points']:+.1f} | "
                         f"{c['drop_upper95']:+.1f} | {100 * c['agreement']:.0f}% |")
        if chosen:
            test = next((r for r in table if r["form"] == "gguf-auto"), None)
            if test:
                lines += ["", f"On test (never used to choose), auto's {chosen}: {test['diff']:+.1f} "
                          f"[{test['ci'][0]:+.1f}, {test['ci'][1]:+.1f}] against torch."]
    lines += ["", "## Commands", "",
              "Every form: `.venv/bin/tinyllm-export runs/paper/obqa/tinyllm/student --format gguf --quant <q> --imatrix "
              "<none|auto> --out runs/paper/obqa/tinyllm/imatrix-study/gguf-<q>-<plain|imatrix> --no-mlflow` (after the "
              "first, the imatrix forms are given the first one's `imatrix.dat`: the matrix depends on the student "
              "only). Recorded steps of the last sitting:", ""] + [
        f"- `{s['command']}` ({s['wall_s']} s, exit {s['rc']})" for s in all_steps]
    notes = RESULTS / "obqa_imatrix.md"
    keep = notes.read_text().split("<!-- notes -->", 1)[1] if notes.exists() and "<!-- notes -->" in notes.read_text() else ""
    notes.write_text("\n".join(lines) + "\n\n<!-- notes -->" + keep if keep else "\n".join(lines) + "\n")
    print(f"[imatrix] wrote {notes}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="only rewrite the md from the stored answers")
    ap.add_argument("--no-auto", action="store_true", help="leave out the --quant auto export (its 10 candidates "
                    "answer all 500 validation questions: the longest step)")
    args = ap.parse_args()
    if not (STUDENT / "config.json").exists():
        raise SystemExit(f"[imatrix] {STUDENT} is missing: train it first with the obqa/tinyllm command in "
                         "benchmarks/results/paper_table_cpu.md")
    steps: list[dict] = []
    if not args.write:
        export_all(steps, auto=not args.no_auto)
    write(steps)


if __name__ == "__main__":
    main()
