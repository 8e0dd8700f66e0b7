"""The bench report: a markdown table, a JSON file and two plots, all from the per-question records."""
from __future__ import annotations

import json
import math
from pathlib import Path


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _num(x, fmt="{:.2f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def write_report(results: list[dict], meta: dict, out: Path) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    teachers = [r for r in ok if r["role"] == "teacher" and r.get("size_bytes")]
    largest = max(teachers, key=lambda r: r["size_bytes"]) if teachers else None
    torch_student = next((r for r in ok if r["name"] == "student-torch"), None)
    for r in ok:
        if largest:
            r["speedup_vs_largest_teacher"] = largest["p50_s"] / r["p50_s"] if r["p50_s"] else None
            r["size_ratio_vs_largest_teacher"] = r["size_bytes"] / largest["size_bytes"] if r.get("size_bytes") else None
        if torch_student and r["role"] == "student":
            for m in ("em", "option_match", "loglik"):
                if f"accuracy_{m}" in r and f"accuracy_{m}" in torch_student:
                    r[f"delta_vs_torch_{m}"] = r[f"accuracy_{m}"] - torch_student[f"accuracy_{m}"]

    lines = [f"# TinyLLM bench: {meta['dataset']} / {meta['split']} ({meta['questions']} questions)", "",
             f"Hardware: {meta['hardware']}. Threads: {meta['threads']}. "
             f"Warm-up: {meta['warmup']} question(s), untimed. {meta['date']}.", "", meta["method"], "",
             "| contestant | runtime | EM % [95% CI] | Δ EM vs torch | option match % [95% CI] | loglik % [95% CI] "
             "| p50 s/q | p95 s/q | TTFT p50 s | decode tok/s | prompt tok/s | peak RSS MB | size MB "
             "| speed-up vs largest teacher | size ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] != "ok":
            answered = r.get("answered_before_failure", 0)
            lines.append(f"| {r['name']} | {r['runtime']} | **{r['status']}** ({answered} answered) |" + " |" * 12)
            continue

        def acc(m):
            if f"accuracy_{m}" not in r:
                return "—"
            lo, hi = r[f"ci95_{m}"]
            return f"{_pct(r[f'accuracy_{m}'])} [{_pct(lo)}–{_pct(hi)}]"

        delta = r.get("delta_vs_torch_em")
        lines.append(" | ".join([
            f"| {r['name']}", r["runtime"], acc("em"), "—" if delta is None else f"{100 * delta:+.1f}",
            acc("option_match"), acc("loglik"), _num(r["p50_s"]), _num(r["p95_s"]),
            _num(r["ttft_p50_s"]), _num(r["decode_tok_s_p50"], "{:.1f}"), _num(r["prompt_tok_s_p50"], "{:.0f}"),
            _num(r.get("peak_rss_mb"), "{:.0f}"), _num(r["size_bytes"] / 1e6 if r.get("size_bytes") else None, "{:.0f}"),
            _num(r.get("speedup_vs_largest_teacher"), "{:.2f}×"), _num(r.get("size_ratio_vs_largest_teacher"), "{:.2f}")]) + " |")
    lines += ["", "Per-question outputs: `contestants/<name>/predictions.jsonl` (every figure above is computed from "
                  "them)."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    report = {"meta": meta, "contestants": results}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    try:
        plot(ok, out)
    except ModuleNotFoundError as exc:  # a host with torch only (scripts/gpu_check.sh): the figures, not the pictures
        if exc.name != "matplotlib":
            raise
        lines += ["", "Plots skipped: matplotlib is not installed here (pip install matplotlib)."]
    print("\n".join(lines))
    return report


AXIS = {"option_match": "accuracy: the answer names the gold option, % (95% CI)",
        "em": "accuracy: exact match of the final answer, % (95% CI)"}
"""The accuracy on the plots: option match where there are options (every contestant has it; a teacher's
chain of thought has no EM), EM for free-form questions (no options to name)."""


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "option_match" if any("accuracy_option_match" in r for r in results) else "em"
    for x_key, x_label, name, log_x in (("p50_s", "median seconds per question (lower is better)", "accuracy_vs_latency.png", True),
                                        ("size_bytes", "model file size, MB (lower is better)", "accuracy_vs_size.png", True)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        points = []
        for r in results:
            x = r.get(x_key)
            y = r.get(f"accuracy_{metric}")
            if x is None or y is None:
                continue
            x = x / 1e6 if x_key == "size_bytes" else x
            lo, hi = r[f"ci95_{metric}"]
            colour = "tab:blue" if r["role"] == "student" else "tab:orange"
            ax.errorbar([x], [100 * y], yerr=[[100 * (y - lo)], [100 * (hi - y)]], fmt="o", color=colour, capsize=3)
            points.append((x, 100 * y, r["name"]))
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(AXIS[metric])
        ax.set_title("students (blue) and teachers (orange)")
        ax.grid(alpha=0.3)
        for (x, y, label), dy in zip(points, label_offsets(ax, points)):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5 + dy), fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


def label_offsets(ax, points: list[tuple[float, float, str]], height: float = 11.0) -> list[float]:
    """Vertical offsets (points) for the labels so that none prints over another: a label whose point lies
    within a label's box of an earlier one moves up a line until it is clear."""
    fig = ax.figure
    fig.canvas.draw()
    per_pt = fig.dpi / 72.0
    placed, offsets = [], []
    for x, y, label in points:
        px, py = ax.transData.transform((x, y)) / per_pt  # in points
        width = 5.0 * len(label)  # ~5 points per character at font size 8
        dy = 0.0
        while any(abs(px - qx) < max(width, w) and abs(py + dy - (qy + qdy)) < height for qx, qy, qdy, w in placed):
            dy += height
        placed.append((px, py, dy, width))
        offsets.append(dy)
    return offsets
