"""Which of the OBQA student's matrices lose its answers at 4 bits: a per-tensor sensitivity scan in torch,
and the per-tensor type mixes (`tinyllm-export --tensor-type`) it proposes within a size budget.

    .venv/bin/python benchmarks/obqa_tensor_sensitivity.py                  # 100 validation questions
    .venv/bin/python benchmarks/obqa_tensor_sensitivity.py --questions 200 --budget-mb 105

Every configuration rounds the fp32 student's matrices exactly as llama.cpp's quantizer rounds them
(export/qat.py `round_like`: q4_0, q5_0, q8_0 blocks of the f16 weights, bit-exact to the quantizer) and its
matmul inputs to q8_0 (what llama.cpp's CPU kernels multiply), then scores it teacher-forced on the gold
answers of the student's *validation* questions (never test) against the fp32 student: mean KL on the answer's
tokens, and the share of questions whose every answer token keeps fp32's top-1 (a proxy for "the same
answer"). Configurations: everything q4_0 (the token embedding / tied head at q8_0, as llama.cpp's q4_0 file
has it), everything q5_0, q4_0 with the token embedding lowered to q5_0 or q4_0, and q4_0 with one class of matrix (attn_q …
ffn_down) raised to q5_0 or q8_0. A greedy allocation then buys the upgrades with the largest KL reduction per
MB until the budget, assuming the reductions add up, from the embedding at q8_0 and again at q5_0 (its bytes
spent on upgrades); every mix it buys is scored as a whole configuration, and the lowest-KL one is reported.
Sizes are the matrices' bytes in those block types plus what every SmolLM2 GGUF carries besides (vocabulary,
norms), taken from the q4_0 formula. Written to benchmarks/results/obqa_tensor_sensitivity.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
STUDENT = REPO / "runs" / "paper" / "obqa" / "tinyllm" / "student"
RESULTS = REPO / "benchmarks" / "results"
BYTES = {"Q4_0": 18, "Q5_0": 22, "Q8_0": 34}
"""Bytes per block of 32 weights."""
CLASSES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    import gguf
    import torch
    import torch.nn.functional as F

    from distill.config import StudentConfig, load_config
    from distill.student import PromptFormat, load_student
    from distill.errors import UserError
    from export.auto import validation_questions
    from export.source import student_data, training_pairs
    from export.qat import _q8_inputs, round_like

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", type=Path, default=STUDENT)
    ap.add_argument("--questions", type=int, default=100)
    ap.add_argument("--budget-mb", type=float, default=105.0)
    ap.add_argument("--stem", default="obqa_tensor_sensitivity")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, tok, _ = load_student(StudentConfig(model=str(args.student)))
    model.eval()
    fmt = PromptFormat.load(args.student)
    try:
        exs, where = validation_questions(args.student, load_config(None), args.questions)
        pairs = [(fmt.answer_prompt(ex), fmt.answer_target(ex)) for ex in exs]
    except UserError as exc:  # a student whose data has no validation split (the demo): its training questions
        print(f"[sensitivity] {exc} Scoring on training questions instead.", flush=True)
        pairs, where = training_pairs(args.student, student_data(args.student, load_config(None)), args.questions)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    params = {n: p for n, p in model.named_parameters() if p.ndim == 2}
    gname = {n: names.get_name(n, try_suffixes=(".weight", ".bias")).removesuffix(".weight") for n in params}
    orig = {n: p.detach().clone() for n, p in params.items()}
    modules = dict(model.named_modules())
    hooks = [modules[n.rsplit(".", 1)[0]].register_forward_pre_hook(_q8_inputs) for n in params
             if isinstance(modules.get(n.rsplit(".", 1)[0]), torch.nn.Linear)]
    if model.config.tie_word_embeddings:
        hooks.append(modules["lm_head"].register_forward_pre_hook(_q8_inputs))

    # batches of (ids, mask, answer positions); the fp32 log-probs at the answer positions, once
    batches = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i in range(0, len(pairs), 8):
        rows, spans = [], []
        for prompt, target in pairs[i:i + 8]:
            p = tok(prompt, add_special_tokens=True)["input_ids"]
            a = tok(prompt + target, add_special_tokens=True)["input_ids"]
            rows.append(a)
            spans.append((len(p) - 1, len(a) - 1))  # logits at t predict token t+1
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
        batches.append((ids, mask, spans))

    def answer_logprobs(batch) -> list:
        ids, mask, spans = batch
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        return [F.log_softmax(logits[r, a:b], -1) for r, (a, b) in enumerate(spans)]

    for h in hooks:  # the reference is the fp32 student itself, inputs unrounded
        h.remove()
    ref = [answer_logprobs(b) for b in batches]
    hooks = [modules[n.rsplit(".", 1)[0]].register_forward_pre_hook(_q8_inputs) for n in params
             if isinstance(modules.get(n.rsplit(".", 1)[0]), torch.nn.Linear)]
    if model.config.tie_word_embeddings:
        hooks.append(modules["lm_head"].register_forward_pre_hook(_q8_inputs))

    other = [0]  # what a GGUF holds besides its matrices (vocabulary, merges, norms, metadata), set below

    def size_bytes(types: dict[str, str]) -> int:
        return sum(params[n].numel() // 32 * BYTES[types[n]] for n in params) + other[0]

    def score(types: dict[str, str]) -> dict:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(round_like(orig[n], types[n]))
        kls, same = [], 0
        for batch, refs in zip(batches, ref):
            for got, want in zip(answer_logprobs(batch), refs):
                kls.append(float((want.exp() * (want - got)).sum(-1).mean()))
                same += bool((got.argmax(-1) == want.argmax(-1)).all())
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(orig[n])
        return {"mean_kl": sum(kls) / len(kls), "same_top1": same / len(kls), "size_mb": size_bytes(types) / 1e6}

    def base(kind: str, embedding: str = "Q8_0") -> dict[str, str]:
        return {n: (embedding if gname[n] == "token_embd" else kind) for n in params}

    upgrades = {f"{c}={t}": (c, t) for c in CLASSES for t in ("Q5_0", "Q8_0")}
    # what a GGUF holds besides the matrices: the real plain q4_0 export's size where there is one
    plain = args.student.parent / "exports" / "gguf-q4_0" / "student-q4_0.gguf"
    other[0] = plain.stat().st_size - size_bytes(base("Q4_0")) if plain.exists() else 0
    t0 = time.perf_counter()
    rows = {}

    def scored(name: str, types: dict[str, str]) -> dict:
        if name in rows:  # a greedy mix of one upgrade is that upgrade's own row
            return rows[name]
        rows[name] = score(types)
        print(f"[sensitivity] {name}: {rows[name]} ({time.perf_counter() - t0:.0f}s)", flush=True)
        return rows[name]

    scored("all q4_0", base("Q4_0"))
    scored("all q5_0", base("Q5_0"))
    b4 = rows["all q4_0"]
    for emb in ("Q5_0", "Q4_0"):  # the token embedding (= the tied LM head) below q8_0: what it saves, what it costs
        scored(f"q4_0 + token_embd={emb.lower()}", base("Q4_0", emb))
    for name, (cls, kind) in upgrades.items():
        r = scored(f"q4_0 + {cls}={kind.lower()}",
                   {n: (kind if gname[n].endswith("." + cls) else t) for n, t in base("Q4_0").items()})
        r["gain_per_mb"] = (b4["mean_kl"] - r["mean_kl"]) / max(r["size_mb"] - b4["size_mb"], 1e-9)

    def greedy(embedding: str) -> list[str]:
        """Buy the class upgrades (a class bought at q5_0 may later be raised to q8_0) by KL reduction per MB over
        all-q4_0, within the budget,
        from a base whose token embedding is `embedding`; each step scored whole."""
        chosen: dict[str, str] = {}
        labels = []
        for name in sorted(upgrades, key=lambda k: -rows[f"q4_0 + {k.lower()}"]["gain_per_mb"]):
            cls, kind = upgrades[name]
            if rows[f"q4_0 + {name.lower()}"]["gain_per_mb"] <= 0 or BYTES[chosen.get(cls, "Q4_0")] >= BYTES[kind]:
                continue  # no gain measured, or the class already holds this type or a wider one
            trial = {**chosen, cls: kind}
            types = {n: next((k for c, k in trial.items() if gname[n].endswith("." + c)), t)
                     for n, t in base("Q4_0", embedding).items()}
            if size_bytes(types) / 1e6 > args.budget_mb:
                continue
            chosen = trial
            label = "q4_0 + " + ", ".join(([f"token_embd={embedding.lower()}"] if embedding != "Q8_0" else [])
                                          + [f"{c}={k.lower()}" for c, k in chosen.items()])
            scored(label, types)
            labels.append(label)
        return labels

    mixes = greedy("Q8_0") + greedy("Q5_0")
    best = min(mixes, key=lambda m: rows[m]["mean_kl"]) if mixes else None
    for h in hooks:
        h.remove()
    report = {"student": str(args.student), "questions": len(pairs), "split": where, "cpu": cpu(),
              "budget_mb": args.budget_mb, "other_bytes": other[0], "seconds": round(time.perf_counter() - t0),
              "rows": rows, "mixes": mixes, "best_mix": best,
              "command": "python benchmarks/obqa_tensor_sensitivity.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Which matrices of the OBQA student lose its answers at 4 bits (torch, llama.cpp's rounding)", "",
             f"**How.** `.venv/bin/{report['command']}` — {len(pairs)} questions of {where} (never test), teacher-forced"
             " on the gold answer; every matrix rounded bit-exactly as llama.cpp's quantizer would (export/qat.py), "
             "matmul inputs at q8_0; against the fp32 student: mean KL on the answer tokens, and the share of "
             "questions whose every answer token keeps fp32's top-1. Sizes: matrices in those block types plus "
             f"{other[0] / 1e6:.1f} MB a GGUF holds besides (from the plain q4_0 export). {report['cpu']}, 2 "
             f"threads, {report['seconds']} s.", "",
             "| configuration | size MB | mean KL (answer) | same top-1, all answer tokens | KL saved per MB over q4_0 |",
             "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['size_mb']:.1f} | {r['mean_kl']:.4f} | {100 * r['same_top1']:.0f}% | "
                     + (f"{r['gain_per_mb']:.5f}" if "gain_per_mb" in r else "") + " |")
    lines += ["", f"Greedy mixes within {args.budget_mb:g} MB (each scored whole, in the order bought; from the "
              "token embedding at q8_0, then at q5_0, the freed bytes spent on the same ranking): "
              + ("; ".join(mixes) if mixes else "none") + f". **Lowest KL: {best}** (what "
              "obqa_student_forms.py exports with `--tensor-type`).", ""]
    (RESULTS / f"{args.stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
