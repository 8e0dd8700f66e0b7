"""The paper's claim under a longer protocol: several epochs, every epoch scored on validation and test,
the student chosen on validation (tests/test_epochs.py covers the mechanism).

    .venv/bin/python benchmarks/paper_epochs.py --cells obqa/ft-answer,obqa/tinyllm   # run (resumable)
    .venv/bin/python benchmarks/paper_epochs.py --table --write                     # md section + curve PNGs

A cell is dataset/method[/variant...]: method as in paper_table.py; variants: `a<α>` (every teacher's α),
`filtered` (rationales.keep_rejected=false), `s<seed>`, `e<N>` (N epochs instead of 4, e.g. for a cheaper
α search), `bf16` (training under bf16 autocast; compared only with cells of the same precision, and checked
against its fp32 twin where one was run), `gemma3` (the packaged Gemma 3 270M as the student; compared only
with cells of the same student). Each cell is one `tinyllm-distill run` with
`train.epoch_eval=true` (printed and stored with its result); a finished cell (its JSON exists) is
skipped, a killed one resumes from its last checkpoint (every 25 steps and at each epoch's end).
Headline: the test accuracy at the epoch best on *validation* by exact match of the generated answer
(the paper's metric); the log-likelihood pick, chosen on validation the same way, is shown beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from distill.llama_runtime import cpu_model  # noqa: E402
from paper_table import (BIN, BUDGET, METHODS, load_results, n_teachers, overrides as method_overrides, paired,  # noqa: E402
                         prune_checkpoints, run_json, shown, write_section)

RESULTS = REPO / "benchmarks" / "results" / "paper_epochs"
STUDENTS = {"gemma3": "gemma3-270m"}
"""Student variants: the packaged Gemma 3 270M (base) instead of SmolLM2-135M-Instruct, the default."""
EPOCHS = 4
PICKS = ("em", "loglik")  # the headline first


def command(cell: str) -> list[str]:
    dataset, method, *variants = cell.split("/")
    trained = [m for m, o in METHODS.items() if o is not None]  # zero-shot has no epochs to score
    if dataset not in BUDGET or method not in trained:
        raise SystemExit(f"unknown cell {cell!r}: write <dataset>/<method>[/<variant>...] with a dataset of "
                         f"{', '.join(BUDGET)} and a method of {', '.join(trained)}")
    overrides, epochs, teachers = method_overrides(dataset, method), EPOCHS, n_teachers(dataset, method)
    student = "smollm2-135m-instruct"
    for v in variants:
        if v.startswith("a"):
            if not teachers:
                raise SystemExit(f"{cell}: {method} has no teachers, so no α to set; drop the {v} variant")
            overrides += [f"teachers.{i}.alpha={v[1:]}" for i in range(teachers)]
        elif v == "filtered":
            overrides.append("rationales.keep_rejected=false")
        elif v.startswith("s") and v[1:].isdigit():
            overrides.append(f"train.seed={v[1:]}")
        elif v.startswith("e") and v[1:].isdigit():
            epochs = int(v[1:])
        elif v == "bf16":  # training's forward/backward under bf16 autocast; evaluation stays fp32
            overrides.append("train.precision=bf16")
        elif v in STUDENTS:
            student = STUDENTS[v]
        else:
            raise SystemExit(f"unknown variant {v!r} in {cell}: use a<alpha>, filtered, s<seed>, e<epochs>, bf16 or "
                             f"a student ({', '.join(STUDENTS)})")
    return [str(BIN / "tinyllm-distill"), "run", f"configs/paper/{dataset}.yaml", *overrides,
            f"student.model={student}", "student.architecture=auto", "student.task_position=after",
            "train.batch_size=8", f"train.epochs={epochs}", "train.epoch_eval=true", "train.eval_method=both",
            "train.select_by=em", "data.eval_split=valid", "train.save_every=25",
            *([f"data.max_train={BUDGET[dataset]}"] if BUDGET[dataset] else []),
            f"output_dir=runs/paper-epochs/{cell}", f"tracking.experiment=tinyllm-paper-epochs-{dataset}",
            f"tracking.tags.cell={cell}"]


def run_cell(cell: str) -> dict:
    out = RESULTS / (cell.replace("/", "-") + ".json")
    if out.exists():
        print(f"[epochs] {cell}: done earlier, skipped", flush=True)
        return json.loads(out.read_text())
    cmd = command(cell)
    printable = shown(cmd)
    print(f"[epochs] {cell}: {printable}", flush=True)
    folder = REPO / "runs" / "paper-epochs" / cell
    done = sorted((folder / "checkpoints").glob("step-*[0-9]"))
    resumed_from = done[-1].name if done else None
    if resumed_from:
        cmd.append("--resume")
    start = time.time()
    summary = run_json(cmd, cell)
    records = json.loads((folder / "epochs.json").read_text())["epochs"]
    result = {"cell": cell, "command": printable, "epochs": records, "run_id": summary.get("run_id"),
              "wall_s": round(time.time() - start), **({"resumed_from": resumed_from} if resumed_from else {}),
              "hardware": f"{cpu_model()}, {os.cpu_count()} cores"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    prune_checkpoints(folder)
    return result


def selected(result: dict, pick: str) -> dict:
    """The epoch best on validation by `pick` (earliest on ties), never looking at the test split."""
    return max(result["epochs"], key=lambda r: (r["valid"][f"accuracy_{pick}"], -r["step"]))


def load() -> dict[str, dict]:
    return {json.loads(f.read_text())["cell"]: json.loads(f.read_text()) for f in sorted(RESULTS.glob("*.json"))}


def baseline_key(cell: str) -> tuple:
    """What a cell shares with the fine-tuning cell it is compared with: dataset, seed and training setting
    (epochs, precision); α and the rationale filter are what the comparison is about."""
    dataset, _, seed, setting, _ = parts(cell)
    return dataset, seed, setting


def parts(cell: str) -> tuple[str, str, int, tuple, tuple]:
    """dataset, method, seed (0 when not given, the config's default), the training setting (epochs and
    precision variants: held fixed in every comparison), and the variants that change the recipe (α,
    rationale filter)."""
    dataset, method, *variants = cell.split("/")
    seed = next((int(v[1:]) for v in variants if v[:1] == "s" and v[1:].isdigit()), 0)
    setting = tuple(v for v in variants if (v[:1] == "e" and v[1:].isdigit()) or v == "bf16")
    recipe = tuple(v for v in variants if not ((v[:1] in ("s", "e") and v[1:].isdigit()) or v == "bf16"))
    return dataset, method, seed, setting, recipe


def comparisons(finished: list[str]) -> list[tuple[str, str]]:
    """(a, b) pairs whose paired test difference a − b the table shows: every trained method against
    fine-tuning, and two teachers (TinyLLM) against one (step-by-step), each within one dataset, seed and
    training setting."""
    trained = {m for m, o in METHODS.items() if o is not None}
    against = {"ft-answer": trained - {"ft-answer"}, "step-by-step": {"tinyllm"}}
    return [(a, b) for a in finished for b in finished
            if parts(a)[1] in against.get(parts(b)[1], ()) and baseline_key(a) == baseline_key(b)]


def recipe_label(recipe: tuple) -> str:
    alpha = next((v[1:] for v in recipe if v.startswith("a")), "1")
    return f"α {alpha}" + (", LLaMA-2 rationales the filter rejects dropped" if "filtered" in recipe else ", all rationales")


def paired_text(a: str, b: str) -> str:
    """The paired difference a − b of two verdict strings, as the α-search and seeds tables print it."""
    diff, lo, hi, p = paired(a, b)
    return f"{100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p {p:.3f}"


def alpha_search(res: dict[str, dict]) -> list[str]:
    """Per dataset/method/seed/setting, the recipes tried (α, filter): each at its own validation-chosen epoch,
    the recipe chosen by validation exact match (ties: the earlier in the list, α 1 first), and its test
    accuracy and paired difference to fine-tuning of the same seed and setting. The test split chooses nothing."""
    groups: dict[tuple, list[str]] = {}
    for cell, r in res.items():
        dataset, method, seed, setting, _ = parts(cell)
        if method != "ft-answer" and not r.get("running"):
            groups.setdefault((dataset, method, seed, setting), []).append(cell)
    lines = []
    for (dataset, method, seed, setting), cells in groups.items():
        if len(cells) < 2:
            continue
        cells.sort(key=lambda c: (parts(c)[4] != (), c))
        best = max(cells, key=lambda c: selected(res[c], "em")["valid"]["accuracy_em"])  # first of equals wins
        ft = next((c for c, r in res.items() if not r.get("running") and parts(c)[1] == "ft-answer"
                   and baseline_key(c) == baseline_key(best)), None)
        if not lines:
            lines += ["", "Recipe chosen on validation (α for every teacher, rationale filter); each recipe at its own "
                      "validation-chosen epoch, exact match:", "",
                      "| cell | recipe | epoch | valid EM | test EM | test EM − fine-tuning (paired) | chosen |",
                      "|---|---|---|---|---|---|---|"]
        for c in cells:
            e = selected(res[c], "em")
            vs = paired_text(e["test_correct"]["em"], selected(res[ft], "em")["test_correct"]["em"]) if ft else "—"
            lines.append(f"| {c} | {recipe_label(parts(c)[4])} | {e['epoch']:g} | {100 * e['valid']['accuracy_em']:.1f} "
                         f"| {100 * e['test']['accuracy_em']:.1f} | {vs} | {'**chosen**' if c == best else ''} |")
    return lines


def seeds(res: dict[str, dict]) -> list[str]:
    """Cells repeated over seeds: test exact match at each seed's validation-chosen epoch (mean, sample standard
    deviation, range) and, against fine-tuning of the same seeds and setting, the paired difference pooled over
    seeds (every question of every seed one pair: it says how sure the mean difference is over these seeds'
    noise and the questions', not how it would move with other test questions). A second column pools the same
    pairs at each seed's last epoch: a look without selection, printed so that it can be cited, and labelled as
    not the rule fixed beforehand."""
    groups: dict[tuple, dict[int, str]] = {}
    for cell, r in res.items():
        dataset, method, seed, setting, recipe = parts(cell)
        if not r.get("running"):
            groups.setdefault((dataset, method, setting, recipe), {})[seed] = cell
    multi = {k: v for k, v in groups.items() if len(v) >= 2}
    if not multi:
        return []
    lines = ["", "Seeds (test exact match at each seed's validation-chosen epoch; pooled: every question of every "
             "seed one pair):", "", "| cells | seeds | test EM per seed | mean | sd | vs fine-tuning, pooled over seeds "
             "| same, both at the last epoch (no selection; not the rule) |", "|---|---|---|---|---|---|---|"]
    for (dataset, method, setting, recipe), by_seed in multi.items():
        ems = [100 * selected(res[by_seed[s]], "em")["test"]["accuracy_em"] for s in sorted(by_seed)]
        mean = sum(ems) / len(ems)
        sd = (sum((x - mean) ** 2 for x in ems) / (len(ems) - 1)) ** 0.5
        ft = groups.get((dataset, "ft-answer", setting, ()), {}) if method != "ft-answer" else {}
        common = sorted(set(by_seed) & set(ft))
        def pooled(epoch_of) -> str:
            """Every question of every common seed one pair, each cell scored at the epoch epoch_of picks."""
            a = "".join(epoch_of(res[by_seed[s]])["test_correct"]["em"] for s in common)
            b = "".join(epoch_of(res[ft[s]])["test_correct"]["em"] for s in common)
            return paired_text(a, b)
        vs = last = "—"
        if len(common) >= 2:
            vs = f"{pooled(lambda r: selected(r, 'em'))} (seeds {', '.join(map(str, common))})"
            last = pooled(lambda r: r["epochs"][-1])
        name = "/".join([dataset, method, *recipe, *setting])
        lines.append(f"| {name} | {', '.join(map(str, sorted(by_seed)))} | {', '.join(f'{x:.1f}' for x in ems)} "
                     f"| {mean:.1f} | {sd:.1f} | {vs} | {last} |")
    return lines


def fp32_twin(cell: str, res: dict[str, dict], one_epoch: dict[tuple[str, str], dict]) -> tuple[str, dict] | None:
    """The same cell trained in fp32: an epochs cell of that name, or, for a one-epoch cell of a method's
    default recipe and seed, the one-epoch cell of paper_table.py (same data, seed and schedule). Its test
    verdicts per metric, at its last epoch (the same training steps as the bf16 cell's last epoch)."""
    name = "/".join(v for v in cell.split("/") if v != "bf16")
    if name in res and not res[name].get("running"):
        return name, res[name]["epochs"][-1]["test_correct"]
    dataset, method, seed, setting, recipe = parts(name)
    r = one_epoch.get((dataset, method)) if (seed, setting, recipe) == (0, ("e1",), ()) else None
    if r and r.get("correct_em"):
        return f"{dataset}/{method} (one-epoch table)", {"em": r["correct_em"], "loglik": r["correct"]}
    return None


def precision_check(res: dict[str, dict], one_epoch: dict[tuple[str, str], dict]) -> list[str]:
    """bf16 cells against their fp32 twins on the test split, at the last epoch: how far the numerics move
    accuracy, and on how many questions the two students agree."""
    lines = []
    for cell, r in res.items():
        twin = None if r.get("running") or "bf16" not in cell.split("/") else fp32_twin(cell, res, one_epoch)
        if not twin:
            continue
        if not lines:
            lines = ["", "Training precision: bf16 cells against the same cell trained in fp32 (test split, last epoch):",
                     "", "| bf16 cell | fp32 twin | metric | bf16 | fp32 | bf16 − fp32 (paired) | same verdict |",
                     "|---|---|---|---|---|---|---|"]
        for pick in PICKS:
            a, b = r["epochs"][-1]["test_correct"][pick], twin[1][pick]
            same = sum(x == y for x, y in zip(a, b)) / len(a)
            lines.append(f"| {cell} | {twin[0]} | {pick} | {100 * a.count('1') / len(a):.1f} | "
                         f"{100 * b.count('1') / len(b):.1f} | {paired_text(a, b)} | {100 * same:.1f}% |")
    return lines


def load_running() -> dict[str, dict]:
    """Cells still training: the epochs scored so far, from their run folders (no result JSON yet)."""
    done, out = load(), {}
    runs = REPO / "runs" / "paper-epochs"
    found = [Path(d) / "epochs.json" for d, _, files in os.walk(runs, followlinks=True) if "epochs.json" in files]
    for f in sorted(found):
        cell = str(f.parent.relative_to(runs))
        records = json.loads(f.read_text())["epochs"]
        if cell not in done and records:
            out[cell] = {"cell": cell, "epochs": records, "running": True, "command": shown(command(cell))}
    return out


def table() -> str:
    res = {**load(), **load_running()}
    lines = ["| cell | epochs | chosen epoch (valid EM) | valid EM | **test EM** | chosen epoch (valid loglik) "
             "| test loglik | test EM, last epoch | wall |", "|---|---|---|---|---|---|---|---|---|"]
    for cell, r in res.items():
        em, ll, last = selected(r, "em"), selected(r, "loglik"), r["epochs"][-1]
        wall = "running" if r.get("running") else (
            f"{r['wall_s'] // 60}m" + (f" in its last sitting (resumed from {r['resumed_from']})" if r.get("resumed_from") else ""))
        lines.append(f"| {cell} | {len(r['epochs'])} | {em['epoch']:g} | {100 * em['valid']['accuracy_em']:.1f} "
                     f"| **{100 * em['test']['accuracy_em']:.1f}** | {ll['epoch']:g} | {100 * ll['test']['accuracy_loglik']:.1f} "
                     f"| {100 * last['test']['accuracy_em']:.1f} | {wall} |")
    finished = [c for c, r in res.items() if not r.get("running")]  # a running cell's choice can still change
    pairs = comparisons(finished)
    if pairs:
        lines += ["", "Paired differences on the test split at each cell's validation-chosen epoch (points; 95% CI; "
                  "exact McNemar p):", "", "| comparison | metric | difference | 95% CI | p |", "|---|---|---|---|---|"]
        for a, b in pairs:
            for pick in PICKS:
                ca, cb = selected(res[a], pick)["test_correct"][pick], selected(res[b], pick)["test_correct"][pick]
                diff, lo, hi, p = paired(ca, cb)
                lines.append(f"| {a} − {b} | {pick} | {100 * diff:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {p:.3f} |")
    lines += alpha_search(res) + seeds(res) + precision_check(res, load_results())
    lines += ["", "Every epoch (the curves' numbers, %):", "",
              "| cell | epoch | valid EM | valid loglik | test EM | test loglik |", "|---|---|---|---|---|---|"]
    for cell, r in res.items():
        for e in r["epochs"]:
            lines.append(f"| {cell} | {e['epoch']:g} | {100 * e['valid']['accuracy_em']:.1f} | "
                         f"{100 * e['valid']['accuracy_loglik']:.1f} | {100 * e['test']['accuracy_em']:.1f} | "
                         f"{100 * e['test']['accuracy_loglik']:.1f} |")
    running = [c for c, r in res.items() if r.get("running")]
    if running:
        lines += ["", f"Still running: {', '.join(running)} — the row shows the epochs scored so far (its choice can "
                  "still change); every epoch's numbers are in the cell's `epochs.json`, the curves in the PNG."]
    lines += ["", "| cell | command |", "|---|---|"] + [f"| {c} | `{r['command']}` |" for c, r in res.items()]
    return "\n".join(lines)


def curve_cells(res: dict[str, dict], dataset: str) -> dict[str, dict]:
    """The cells drawn as curves: each method at its default recipe, seed 0 and full length, in fp32 and,
    where run, bf16 (labelled by its name); α variants, shorter runs and other seeds are in the tables."""
    return {c: r for c, r in res.items()
            if parts(c)[0] == dataset and parts(c)[2] == 0 and parts(c)[3] in ((), ("bf16",)) and not parts(c)[4]}


def plot(dataset: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    res = curve_cells({**load(), **load_running()}, dataset)
    if not res:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, pick in zip(axes, PICKS):
        for i, (cell, r) in enumerate(res.items()):
            xs = [e["epoch"] for e in r["epochs"]]
            color = f"C{i}"
            ax.plot(xs, [100 * e["valid"][f"accuracy_{pick}"] for e in r["epochs"]], "--o", color=color,
                    label=f"{cell.split('/', 1)[1]} valid")
            ax.plot(xs, [100 * e["test"][f"accuracy_{pick}"] for e in r["epochs"]], "-s", color=color,
                    label=f"{cell.split('/', 1)[1]} test")
            best = selected(r, pick)
            ax.plot([best["epoch"]], [100 * best["test"][f"accuracy_{pick}"]], "*", color=color, markersize=14)
        ax.set_title(f"{dataset}: {'exact match (paper metric)' if pick == 'em' else 'option log-likelihood'}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M student, 2,000 training questions; ★ = test at the epoch chosen on validation", fontsize=9)
    fig.tight_layout()
    out = REPO / "benchmarks" / "results" / f"paper_epochs_{dataset}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="obqa/ft-answer,obqa/tinyllm,obqa/step-by-step,riddlesense/ft-answer,"
                                       "riddlesense/tinyllm,riddlesense/step-by-step")
    ap.add_argument("--table", action="store_true", help="Only build the table and plots from finished cells.")
    ap.add_argument("--write", action="store_true",
                    help="Put the table into benchmarks/results/paper_table_cpu.md (between its epochs markers).")
    args = ap.parse_args()
    if not args.table:
        for cell in args.cells.split(","):
            run_cell(cell)
    text = table()
    print(text)
    for ds in sorted({c.split("/")[0] for c in {**load(), **load_running()}}):
        print(f"[epochs] plot: {plot(ds)}")
    if args.write:
        write_section("epochs", text)


if __name__ == "__main__":
    main()
