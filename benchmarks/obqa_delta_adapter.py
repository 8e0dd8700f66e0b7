"""Does the fine-tuning survive 4 bits if it travels as a LoRA adapter over the pretrained base?

    .venv/bin/python benchmarks/obqa_delta_adapter.py --student runs/paper/obqa/tinyllm/student

The packaged SmolLM2-135M student is dequantized from Q4_1, and fine-tuning moves its weights by a fraction
of a 4-bit step, so quantizing the trained weights again rounds most of the training away. Here the GGUF
is built instead from the *pretrained* matrices (with the trained norms) at 4 bits — for q4_1 that is the
packaged grid itself — and the delta (trained - pretrained) rides beside it as a rank-r f16 LoRA adapter
(export/adapter.py) that llama.cpp adds at load. Every form answers the same OBQA test questions greedily
(first line, the paper's exact match); reported per form: EM, the paired difference to the torch student
(95% CI, exact McNemar p), the share of answers equal to torch's, and, of the questions where training
changed the answer (torch student vs the untrained torch model), how many keep the trained answer.
Accuracy only: no latency, so other work on the machine does not change a figure. Writes
benchmarks/results/obqa_delta_adapter.{json,md} (`--out` to change); each form's answers are cached in
--work and reused.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from distill.llama_runtime import cpu_model  # noqa: E402
from paper_table import paired  # noqa: E402


def torch_answers(folder: Path, fmt, exs) -> list[str]:
    import transformers

    from distill.inference import answers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return answers(model, tok, [fmt.answer_prompt(e) for e in exs])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", type=Path, default=REPO / "runs/paper/obqa/tinyllm/student")
    ap.add_argument("--pretrained", default="smollm2-135m-instruct", help="the model the student was trained from")
    ap.add_argument("--ranks", default="8,16,32")
    ap.add_argument("--bases", default="q4_1", help="quant types of the pretrained base (comma-separated)")
    ap.add_argument("--plain", default="q4_1,q4_k_m,q4_0", help="plain re-quantizations of the student, for comparison")
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--work", type=Path, default=None, help="default: <student>/../delta-adapter")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/obqa_delta_adapter")
    args = ap.parse_args()
    from distill.data import load_dataset
    from distill.models import load_causal_lm
    from distill.student import PromptFormat, answer_is_right
    from export.adapter import base_student, write_delta_adapter
    from export.auto import answer_prompts
    from export.gguf import quantize, write_f16

    work = args.work or args.student.parent / "delta-adapter"
    work.mkdir(parents=True, exist_ok=True)
    fmt = PromptFormat.load(args.student)
    exs = load_dataset("tinyllm-obqa").split("test")[: args.questions]
    pre = work / "pretrained"
    if not (pre / "model.safetensors").exists():
        m, t, _ = load_causal_lm(args.pretrained)
        m.save_pretrained(pre)
        t.save_pretrained(pre)

    def cached(name, fn):
        f = work / f"answers-{name}.json"
        if not f.exists():
            t0 = time.time()
            f.write_text(json.dumps({"answers": fn(), "seconds": time.time() - t0}))
        return [a.strip() for a in json.loads(f.read_text())["answers"]]  # torch's keep the space before the text

    forms = {"torch": cached("torch", lambda: torch_answers(args.student, fmt, exs)),
             "untrained": cached("untrained", lambda: torch_answers(pre, fmt, exs))}
    sizes, prompts = {}, [fmt.answer_prompt(e) for e in exs]
    f16 = work / "student-f16.gguf"
    for q in [q for q in args.plain.split(",") if q]:
        g = work / f"student-{q}.gguf"
        if not g.exists():
            f16.exists() or write_f16(args.student, f16)
            quantize(f16, g, q)
        sizes[f"plain-{q}"] = g.stat().st_size
        forms[f"plain-{q}"] = cached(f"plain-{q}", lambda g=g: answer_prompts(str(g), prompts, task=g.name))
    base = base_student(args.student, pre, work / "base-student") if not (work / "base-student").exists() else work / "base-student"
    adapters = {}
    for r in [int(x) for x in args.ranks.split(",") if x]:
        a = work / f"adapter-r{r}.gguf"
        if not a.exists():
            adapters[r] = write_delta_adapter(args.student, pre, a, r)
        adapters[r] = {"bytes": a.stat().st_size, **adapters.get(r, {})}
    for q in [q for q in args.bases.split(",") if q]:
        g = work / f"base-{q}.gguf"
        if not g.exists():
            bf16 = work / "base-f16.gguf"
            bf16.exists() or write_f16(base, bf16)
            quantize(bf16, g, q)
        sizes[f"base-{q}"] = g.stat().st_size
        forms[f"base-{q}"] = cached(f"base-{q}", lambda g=g: answer_prompts(str(g), prompts, task=g.name))
        for r in adapters:
            a = work / f"adapter-r{r}.gguf"
            name = f"base-{q}+r{r}"
            sizes[name] = g.stat().st_size + a.stat().st_size
            forms[name] = cached(name, lambda g=g, a=a: answer_prompts(str(g), prompts, task=f"{g.name}+{a.name}", lora=str(a)))

    right = {k: "".join("1" if answer_is_right(x, e) else "0" for x, e in zip(v, exs)) for k, v in forms.items()}
    changed = [i for i, (a, b) in enumerate(zip(forms["torch"], forms["untrained"])) if a != b]
    rows = []
    for k, v in forms.items():
        d, lo, hi, p = paired(right[k], right["torch"])
        rows.append({"form": k, "size_bytes": sizes.get(k), "em": right[k].count("1") / len(exs), "delta_vs_torch": d,
                     "ci95": [lo, hi], "mcnemar_p": p,
                     "same_as_torch": sum(a == b for a, b in zip(v, forms["torch"])) / len(exs),
                     "kept": sum(v[i] == forms["torch"][i] for i in changed), "changed": len(changed)})
    report = {"command": "python benchmarks/obqa_delta_adapter.py " + " ".join(sys.argv[1:]),
              "hardware": f"{cpu_model()}", "student": str(args.student), "pretrained": args.pretrained,
              "questions": len(exs), "adapters": adapters, "forms": rows, "correct": right}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| form | size MB | EM % | Δ vs torch (points) [95% CI] | McNemar p | same answer as torch | kept |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.1f}" if r["size_bytes"] else "—"
        lines.append(f"| {r['form']} | {size} | {100 * r['em']:.1f} | {100 * r['delta_vs_torch']:+.1f} "
                     f"[{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}] | {r['mcnemar_p']:.2f} | "
                     f"{100 * r['same_as_torch']:.0f}% | {r['kept']}/{r['changed']} |")
    print("\n".join(lines))
    args.out.with_suffix(".table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
