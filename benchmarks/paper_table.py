"""The paper's table at CPU scale: five methods x six datasets, one resumable cell at a time.

    .venv/bin/python benchmarks/paper_table.py --datasets obqa,arc,riddlesense --methods all
    .venv/bin/python benchmarks/paper_table.py --table --write   # only rebuild the table from finished cells

Every cell is one tinyllm-distill command (printed and stored with its result), one MLflow run
(tags: dataset, method, student, budget) and one JSON file under benchmarks/results/paper/. A cell
whose JSON exists is skipped, so the table can be built over several sittings; a killed cell
resumes from its last checkpoint (every 25 steps) when the script is run again. Student: the packaged SmolLM2-135M-Instruct (a CPU stand-in for the paper's
80M FLAN-T5-small); accuracy is option log-likelihood on the full test split, with a 95% Wilson CI.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from distill.llama_runtime import cpu_model  # noqa: E402
RESULTS = REPO / "benchmarks" / "results" / "paper"
BIN = Path(sys.executable).parent

# Training questions per dataset at CPU scale (the full split where it fits, >= 2000 otherwise).
BUDGET = {"obqa": 2000, "arc": None, "riddlesense": 2000, "piqa": 2000, "pubmedqa": None, "bioasq": None}

FLAN = "{name: flan-t5-xl, backend: files, model: flan-t5-xl, alpha: 1.0}"
LLAMA = "{name: llama-2-7b, backend: files, model: llama-2-7b, alpha: 1.0}"
TEACHERS = {"step-by-step": (FLAN,), "tinyllm": (FLAN, LLAMA)}
"""The teachers of each distillation method, in order (its `teachers=[...]` override below)."""
METHODS = {
    "zero-shot": None,
    "lora-answer": ["teachers=[]", "student.lora=true", "train.lr=1e-4"],
    "ft-answer": ["teachers=[]"],
    **{m: [f"teachers=[{', '.join(t)}]"] for m, t in TEACHERS.items()},
}


# Datasets whose release has the FLAN-T5-xl rationales only: TinyLLM there trains on the one teacher there is,
# which is step-by-step's recipe (the table says so; running both would train the same student twice).
ONE_TEACHER = {"piqa": "the paper released no LLaMA-2 rationales for PIQA"}


def recipe(dataset: str, method: str) -> str:
    """The method whose overrides a cell uses: TinyLLM on a one-teacher dataset is step-by-step's recipe."""
    return "step-by-step" if method == "tinyllm" and dataset in ONE_TEACHER else method


def overrides(dataset: str, method: str) -> list[str]:
    """The method's config overrides on this dataset (TinyLLM keeps only the teachers the release has)."""
    return list(METHODS[recipe(dataset, method)] or [])


def n_teachers(dataset: str, method: str) -> int:
    return len(TEACHERS.get(recipe(dataset, method), ()))


# The paper's own numbers (arXiv 2402.04616 v1, main table; ../shared/PAPER_RESULTS.md): accuracy (%) of its
# 80M FLAN-T5-small student rows and its two teachers on its own test splits (the same splits as ours).
PAPER_80M = {
    "obqa": {"zero-shot": 16.60, "lora-answer": 37.80, "ft-answer": 41.60, "tinyllm": 47.60},
    "arc": {"zero-shot": 19.31, "lora-answer": 27.12, "ft-answer": 27.47, "tinyllm": 31.93},
    "piqa": {"zero-shot": 20.78, "lora-answer": 39.93, "ft-answer": 42.33, "tinyllm": 52.77},
    "riddlesense": {"zero-shot": 13.33, "lora-answer": 39.80, "ft-answer": 42.75, "tinyllm": 49.22},
    "pubmedqa": {"zero-shot": 38.00, "lora-answer": 53.75, "ft-answer": 56.25, "tinyllm": 62.00},
    "bioasq": {"zero-shot": 47.97, "lora-answer": 78.05, "ft-answer": 78.86, "tinyllm": 82.11},
}
PAPER_TEACHERS = {
    "obqa": (69.20, 58.60), "arc": (68.24, 45.90), "piqa": (58.43, 78.80), "riddlesense": (53.73, 47.65),
    "pubmedqa": (71.50, 54.50), "bioasq": (65.85, 73.75),
}
"""(FLAN-T5-xl 3B, LLaMA-2-chat 7B) accuracy (%) in the paper."""

# The order cells run in: the comparison the table exists for (TinyLLM vs answer-only fine-tuning) first.
RUN_ORDER = ["zero-shot", "ft-answer", "tinyllm", "step-by-step", "lora-answer"]


def command(dataset: str, method: str) -> list[str]:
    cfg = f"configs/paper/{dataset}.yaml"
    common = ["student.model=smollm2-135m-instruct", "student.architecture=auto", "student.task_position=after",
              "train.eval_method=both",  # option log-likelihood and the paper's exact match of generated text
              "data.eval_split=test", "train.batch_size=8", f"output_dir=runs/paper/{dataset}/{method}",
              f"tracking.tags.method_cell={method}", "tracking.tags.student=smollm2-135m-instruct",
              f"tracking.tags.budget={BUDGET[dataset] or 'full'}"]
    if method != "zero-shot":
        common.append("train.save_every=25")  # a cell killed mid-training resumes from its last checkpoint
    if BUDGET[dataset]:
        common.append(f"data.max_train={BUDGET[dataset]}")
    if method == "zero-shot":
        return [str(BIN / "tinyllm-distill"), "eval", cfg, *common]
    if method == "step-by-step" and dataset in ONE_TEACHER:
        raise SystemExit(f"{dataset}/step-by-step is {dataset}/tinyllm ({ONE_TEACHER[dataset]}): run that cell.")
    return [str(BIN / "tinyllm-distill"), "run", cfg, *overrides(dataset, method), *common]


def run_cell(dataset: str, method: str) -> dict:
    out = RESULTS / f"{dataset}-{method}.json"
    if out.exists():
        print(f"[paper] {dataset}/{method}: done earlier, skipped", flush=True)
        return json.loads(out.read_text())
    cmd = command(dataset, method)
    printable = shown(cmd)
    print(f"[paper] {dataset}/{method}: {printable}", flush=True)
    folder = REPO / f"runs/paper/{dataset}/{method}"
    done = sorted((folder / "checkpoints").glob("step-*[0-9]"))
    resumed_from = done[-1].name if method != "zero-shot" and done else None
    if resumed_from:
        cmd.append("--resume")  # same final weights as an uninterrupted run (tests/test_train.py)
        print(f"[paper] {dataset}/{method}: resuming from its last checkpoint", flush=True)
    start = time.time()
    summary = run_json(cmd, f"{dataset}/{method}")
    from bench.run import wilson

    n, acc = summary["n"], summary["accuracy_loglik"]
    result = {"dataset": dataset, "method": method, "command": printable, "n_test": n, "accuracy": acc,
              "correct": correctness(folder), "positions": positions(folder),
              **({"accuracy_sum": summary["accuracy_loglik_sum"],
                  "correct_sum": correctness(folder, "loglik_sum")}
                 if "accuracy_loglik_sum" in summary else {}),
              **({"accuracy_em": summary["accuracy_em"], "correct_em": correctness(folder, "em")}
                 if "accuracy_em" in summary else {}),
              "ci95": wilson(round(acc * n), n), "wall_s": round(time.time() - start),
              **({"resumed_from": resumed_from} if resumed_from else {}), "run_id": summary.get("run_id"),
              "budget": BUDGET[dataset] or "full", "hardware": f"{cpu_model()}, {os.cpu_count()} cores"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    prune_checkpoints(folder)
    return result


def prune_checkpoints(folder: Path) -> None:
    """A finished cell's resume checkpoints (weights and optimizer state, ~1.6 GB each) are no longer
    needed once its result is written: its saved student (and, for epoch cells, each epoch's) stays."""
    ckpt = folder / "checkpoints"
    if ckpt.is_dir():
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        shutil.rmtree(ckpt)
        print(f"[paper] {folder.relative_to(REPO)}: finished, its resume checkpoints removed "
              f"({size / 1e9:.1f} GB); the saved student stays", flush=True)


def correctness(out_dir: Path, pick: str = "loglik") -> str | None:
    """Per test question, in order: '1' if the pick is right (`pick`: "loglik", the option with the best mean
    log-prob per token; "loglik_sum", summed log-prob; "em", the generated answer is the gold option's text)."""
    f = out_dir / "eval_predictions.jsonl"
    if not f.exists():
        return None
    preds = [json.loads(line) for line in f.read_text().splitlines()]
    if any(pick not in p for p in preds):
        return None  # recorded before that pick was
    return "".join("1" if (p[pick] == 1 if pick == "em" else p[pick] == p["gold"]) else "0" for p in preds)


def positions(out_dir: Path) -> dict | None:
    """How often each option position is picked, and how often it is the gold answer (a bias check:
    an untrained instruct model tends to pick the last option it read)."""
    f = out_dir / "eval_predictions.jsonl"
    if not f.exists():
        return None
    preds = [json.loads(line) for line in f.read_text().splitlines()]
    width = 1 + max(max(p["gold"], p["loglik"]) for p in preds)
    return {"picked": [sum(p["loglik"] == i for p in preds) for i in range(width)],
            "gold": [sum(p["gold"] == i for p in preds) for i in range(width)]}


def shown(cmd: list[str]) -> str:
    """A command as the md prints it: quoted where needed, run from the repository with .venv/bin."""
    return " ".join(c if " " not in c else repr(c) for c in cmd).replace(str(BIN) + "/", ".venv/bin/")


def run_json(cmd: list[str], what: str) -> dict:
    """Run a tinyllm-distill command (its progress on our stderr) and return the JSON it prints."""
    r = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"[paper] {what} failed (exit {r.returncode}); re-run to resume or retry it.")
    return json.loads(r.stdout)


def rescore_em(dataset: str, method: str) -> dict:
    """Add the paper's metric (exact match of the generated answer) to a finished cell recorded without it:
    its saved student (or the base model, zero-shot) answers the test split again with generation; a
    trained cell whose student is gone is re-created with its own command (now scoring both metrics), and
    the re-run's log-likelihood accuracy is kept beside the stored one."""
    out = RESULTS / f"{dataset}-{method}.json"
    r = json.loads(out.read_text())
    if r.get("accuracy_em") is not None:
        print(f"[paper] {dataset}/{method}: has exact match already", flush=True)
        return r
    folder = REPO / f"runs/paper/{dataset}/{method}"
    student = folder / "student"
    cmd = command(dataset, method)
    summary_file = folder / "summary.json"
    done = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    recorded = correctness(folder, "em")
    if method != "zero-shot" and done.get("accuracy_em") is not None and recorded:
        # re-created already with the cell's own command (which now scores both metrics): nothing to run
        print(f"[paper] {dataset}/{method}: exact match from its re-created run in {folder.relative_to(REPO)}", flush=True)
        r.update({"accuracy_em": done["accuracy_em"], "correct_em": recorded, "em_command": shown(cmd),
                  "em_how": "re-created (its student was gone)", "rerun_accuracy_loglik": done.get("accuracy_loglik")})
        out.write_text(json.dumps(r, indent=2) + "\n")
        return r
    if method == "zero-shot" or (student / "config.json").exists():
        em_dir = folder / "em"
        cmd = [c for c in cmd if not c.startswith(("output_dir=", "train.eval_method=", "train.save_every="))]
        cmd = [cmd[0], "eval", *cmd[2:], "train.eval_method=generate", f"output_dir={em_dir.relative_to(REPO)}",
               "--no-mlflow"] + ([] if method == "zero-shot" else ["--model", str(student.relative_to(REPO))])
        how = "re-scored"
    else:
        em_dir = folder
        how = "re-created (its student was gone)"
    printable = shown(cmd)
    print(f"[paper] {dataset}/{method}: exact match, {how}: {printable}", flush=True)
    start = time.time()
    summary = run_json(cmd, f"{dataset}/{method} (exact-match re-score)")
    r.update({"accuracy_em": summary["accuracy_em"], "correct_em": correctness(em_dir, "em"), "em_command": printable,
              "em_how": how, "em_wall_s": round(time.time() - start)})
    if "accuracy_loglik" in summary and how.startswith("re-created"):
        r["rerun_accuracy_loglik"] = summary["accuracy_loglik"]
    out.write_text(json.dumps(r, indent=2) + "\n")
    prune_checkpoints(folder)
    return r


def paired(a: str, b: str) -> tuple[float, float, float, float]:
    """Accuracy difference a - b on the same questions: (diff, 95% CI low, high, exact McNemar p)."""
    from math import comb, sqrt

    n = len(a)
    d = [int(x) - int(y) for x, y in zip(a, b)]
    mean = sum(d) / n
    sd = sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / sqrt(n)
    wins, losses = d.count(1), d.count(-1)
    k, m = min(wins, losses), wins + losses
    p = min(1.0, 2 * sum(comb(m, i) for i in range(k + 1)) / 2 ** m) if m else 1.0
    return mean, mean - half, mean + half, p


def load_results() -> dict[tuple[str, str], dict]:
    """Finished cells; a cell stored without per-question results gets them from its run folder."""
    out = {}
    for f in sorted(RESULTS.glob("*.json")):
        r = json.loads(f.read_text())
        folder = REPO / f"runs/paper/{r['dataset']}/{r['method']}"
        pos = None if r.get("positions") else positions(folder)
        if pos and sum(pos["picked"]) == r["n_test"]:
            r["positions"] = pos
            f.write_text(json.dumps(r, indent=2) + "\n")
        summed = None if r.get("correct_sum") is not None else correctness(folder, "loglik_sum")
        if summed and len(summed) == r["n_test"]:
            r["correct_sum"], r["accuracy_sum"] = summed, summed.count("1") / r["n_test"]
            f.write_text(json.dumps(r, indent=2) + "\n")
        correct = None if r.get("correct") else correctness(folder)
        if correct:
            r["correct"] = correct
            if len(r["correct"]) == r["n_test"] and abs(r["correct"].count("1") / r["n_test"] - r["accuracy"]) < 1e-9:
                f.write_text(json.dumps(r, indent=2) + "\n")
            else:
                r["correct"] = None
        out[(r["dataset"], r["method"])] = r
    return out


def paper_beside_ours(res: dict) -> list[str]:
    """The paper's 80M rows and teachers beside our cells, per dataset, with TinyLLM's relative gain over
    full fine-tuning in each."""
    lines = ["| dataset | source | zero-shot | LoRA | full fine-tuning | TinyLLM | TinyLLM vs fine-tuning | "
             "teacher FLAN-T5-xl 3B | teacher LLaMA-2-chat 7B |", "|---|---|---|---|---|---|---|---|---|"]
    for ds, paper in PAPER_80M.items():
        rel = 100 * (paper["tinyllm"] - paper["ft-answer"]) / paper["ft-answer"]
        flan, llama = PAPER_TEACHERS[ds]
        lines.append(f"| {ds} | paper, 80M FLAN-T5-small | {paper['zero-shot']:.1f} | {paper['lora-answer']:.1f} | "
                     f"{paper['ft-answer']:.1f} | {paper['tinyllm']:.1f} | {paper['tinyllm'] - paper['ft-answer']:+.1f} "
                     f"({rel:+.1f}% rel.) | {flan:.1f} | {llama:.1f} |")
        ours = {m: res.get((ds, m)) for m in ("zero-shot", "lora-answer", "ft-answer", "tinyllm")}
        if not any(ours.values()):
            lines.append(f"| {ds} | ours, 135M SmolLM2 | — | — | — | — | not run yet | — | — |")
            continue
        for key, label in (("accuracy", "loglik"), ("accuracy_em", "exact match (the paper's metric)")):
            if key != "accuracy" and not any(r and r.get(key) is not None for r in ours.values()):
                continue
            acc = {m: r.get(key) if r else None for m, r in ours.items()}
            cell = {m: "—" if a is None else f"{100 * a:.1f}" for m, a in acc.items()}
            gain = "—"
            if acc["ft-answer"] is not None and acc["tinyllm"] is not None:
                ft, tl = acc["ft-answer"], acc["tinyllm"]
                gain = f"{100 * (tl - ft):+.1f}" + (f" ({100 * (tl - ft) / ft:+.1f}% rel.)" if ft else "")
            lines.append(f"| {ds} | ours, 135M SmolLM2, 1 epoch, {label} | {cell['zero-shot']} | {cell['lora-answer']} | "
                         f"{cell['ft-answer']} | {cell['tinyllm']} | {gain} | not measured | not measured |")
    for ds, why in ONE_TEACHER.items():
        if res.get((ds, "tinyllm")):
            lines += ["", f"{ds}: our TinyLLM cell has one teacher, FLAN-T5-xl ({why}), so its recipe is "
                      "step-by-step's; the paper's TinyLLM row for it had both teachers."]
    return lines


def pooled(res: dict, datasets: list[str], comparisons, key: str) -> list[str]:
    """The table's question over every test question of the datasets that have both cells scored by `key`
    ("correct": option log-likelihood, "correct_em": exact match), one row per comparison."""
    rows = []
    for a, b in comparisons:
        both = [ds for ds in datasets if all((res.get((ds, m)) or {}).get(key) for m in (a, b))]
        if len(both) > 1:
            diff, lo, hi, p = paired("".join(res[(ds, a)][key] for ds in both), "".join(res[(ds, b)][key] for ds in both))
            rows.append(f"| pooled: {' + '.join(both)} | {a} − {b} | {100 * diff:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] "
                        f"| {p:.3f} |")
    return rows


def table() -> str:
    res = load_results()
    datasets = [d for d in BUDGET if any(k[0] == d for k in res)]
    lines = ["| dataset (n test, train budget) | majority | " + " | ".join(METHODS) + " |",
             "|---" * (len(METHODS) + 2) + "|"]
    for ds in datasets:
        n = next(r["n_test"] for k, r in res.items() if k[0] == ds)
        # The floor any row must clear: always answering the commonest gold option (position).
        gold = next((r["positions"]["gold"] for k, r in res.items() if k[0] == ds and r.get("positions")), None)
        cells = [f"{100 * max(gold) / sum(gold):.1f}" if gold else "—"]
        for m in METHODS:
            r = res.get((ds, m))
            cells.append(f"{100 * r['accuracy']:.1f} [{100 * r['ci95'][0]:.1f}–{100 * r['ci95'][1]:.1f}]" if r else "—")
        lines.append(f"| {ds} ({n}, {BUDGET[ds] or 'full'}) | " + " | ".join(cells) + " |")
    lines += ["", "The paper's numbers beside ours (accuracy %, same test splits; the paper's metric is exact match of "
              "generated text after ~130 epochs; ours after one epoch, by option log-likelihood and, where re-scored, by the "
              "paper's exact match — see the protocol list above):",
              ""] + paper_beside_ours(res)
    lines += ["", "Paired differences on the same test questions (points; 95% CI; exact McNemar p):", "",
              "| dataset | comparison | difference | 95% CI | p |", "|---|---|---|---|---|"]
    comparisons = (("tinyllm", "ft-answer"), ("tinyllm", "step-by-step"), ("tinyllm", "zero-shot"),
                   ("step-by-step", "ft-answer"), ("step-by-step", "zero-shot"), ("ft-answer", "zero-shot"),
                   ("lora-answer", "zero-shot"))
    for ds in datasets:
        for a, b in comparisons:
            ra, rb = res.get((ds, a)), res.get((ds, b))
            if ra and rb and ra.get("correct") and rb.get("correct"):
                diff, lo, hi, p = paired(ra["correct"], rb["correct"])
                lines.append(f"| {ds} | {a} − {b} | {100 * diff:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {p:.3f} |")
    lines += pooled(res, datasets, comparisons[:2], "correct")
    em_cells = {k: r for k, r in res.items() if r.get("accuracy_em") is not None}
    lines += ["", "The paper's metric — exact match of the greedy generated answer to the gold option's text — for the "
              "same cells (— = no such cell, or not re-scored yet: `paper_table.py --em`):", "",
              "| dataset | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for ds in datasets:
        lines.append(f"| {ds} | " + " | ".join(f"{100 * em_cells[(ds, m)]['accuracy_em']:.1f}" if (ds, m) in em_cells
                                              else "—" for m in METHODS) + " |")
    em_pairs = []
    for ds in datasets:
        for a, b in comparisons[:2] + comparisons[5:6]:
            ra, rb = em_cells.get((ds, a)), em_cells.get((ds, b))
            if ra and rb and ra.get("correct_em") and rb.get("correct_em"):
                diff, lo, hi, p = paired(ra["correct_em"], rb["correct_em"])
                em_pairs.append(f"| {ds} | {a} − {b} | {100 * diff:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {p:.3f} |")
    if em_pairs:
        lines += ["", "| dataset | exact match: comparison | difference | 95% CI | p |", "|---|---|---|---|---|"] + em_pairs
        lines += pooled(res, datasets, comparisons[:2], "correct_em")
    summed = [(k, r) for k, r in sorted(res.items()) if r.get("accuracy_sum") is not None]
    if summed:
        lines += ["", "The same runs scored by summed option log-probability (no length normalisation; recorded "
                  "for cells run, or re-scored with their own command and `--no-mlflow`, since it was added):", "",
                  "| dataset | method | summed log-prob | mean per token (reported) | summed − mean (paired) | p |",
                  "|---|---|---|---|---|---|"]
        for (ds, m), r in summed:
            line = f"| {ds} | {m} | {100 * r['accuracy_sum']:.1f} | {100 * r['accuracy']:.1f} |"
            if r.get("correct_sum") and r.get("correct"):
                diff, lo, hi, p = paired(r["correct_sum"], r["correct"])
                line += f" {100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {p:.3f} |"
            else:
                line += " — | — |"
            lines.append(line)
    biased = [(k, r) for k, r in sorted(res.items()) if r.get("positions")]
    if biased:
        lines += ["", "Which option position each cell picks (% of test questions, options a, b, c, …), "
                  "against where the gold answer is:", "", "| dataset | cell | a | b | c | d | e |", "|---|---|---|---|---|---|---|"]
        for ds in datasets:
            rows = [(m, r["positions"]) for (d, m), r in sorted(biased, key=lambda kr: list(METHODS).index(kr[0][1]))
                    if d == ds]
            if not rows:
                continue
            n = sum(rows[0][1]["gold"])
            for label, counts in [("gold", rows[0][1]["gold"])] + [(m, pos["picked"]) for m, pos in rows]:
                shares = [f"{100 * c / n:.0f}" for c in counts] + ["—"] * (5 - len(counts))
                lines.append(f"| {ds} | {label} | " + " | ".join(shares[:5]) + " |")
    lines += ["", "| dataset | method | wall | command |", "|---|---|---|---|"]
    for (ds, m), r in sorted(res.items()):
        wall = f"{r['wall_s'] // 60}m{r['wall_s'] % 60:02d}s"
        if r.get("resumed_from"):  # the sittings before the resume were not timed
            wall += f" (resumed from {r['resumed_from']}; last sitting only)"
        lines.append(f"| {ds} | {m} | {wall} | `{r['command']}` |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="obqa,arc,riddlesense")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--table", action="store_true", help="Only print the table of finished cells.")
    ap.add_argument("--em", action="store_true",
                    help="Add the paper's exact-match metric to finished cells recorded without it (see rescore_em).")
    ap.add_argument("--write", action="store_true",
                    help="Also put the table into benchmarks/results/paper_table_cpu.md (between its table markers).")
    args = ap.parse_args()
    if not args.table:
        methods = RUN_ORDER if args.methods == "all" else args.methods.split(",")
        for ds in args.datasets.split(","):
            for m in methods:
                if m == "step-by-step" and ds in ONE_TEACHER:
                    print(f"[paper] {ds}/step-by-step: the same recipe as {ds}/tinyllm ({ONE_TEACHER[ds]}), skipped",
                          flush=True)
                    continue
                rescore_em(ds, m) if args.em else run_cell(ds, m)
    text = table()
    print(text)
    if args.write:
        write_section("table", text)


def write_section(marker: str, text: str) -> None:
    """Put `text` into benchmarks/results/paper_table_cpu.md between its `<!-- marker -->` lines."""
    md = REPO / "benchmarks" / "results" / "paper_table_cpu.md"
    doc = md.read_text()
    start, end = doc.index(f"<!-- {marker} -->") + len(f"<!-- {marker} -->"), doc.index(f"<!-- /{marker} -->")
    md.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


if __name__ == "__main__":
    main()
