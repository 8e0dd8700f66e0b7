"""Training throughput: TinyLLM's trainer vs a straightforward Hugging Face Trainer, same objective.

    .venv/bin/python benchmarks/train_throughput.py --questions 48 --batch-size 8

Both train the packaged SmolLM2-135M student for the same steps on the same OBQA questions (the
paper's split and released FLAN-T5-xl + LLaMA-2 rationales, from ../shared/data) in the same order,
minimising the same loss L = L_answer + 1.0·L_flan + 1.0·L_llama (each term a mean over its target
tokens). The baseline does what the paper's code does: per batch, three padded forward passes (one
per task), full-vocabulary logits at every position, through `transformers.Trainer`. TinyLLM runs
all tasks of a step in length-sorted micro-batches and projects only target positions; by default it
also packs each question's tasks into one row so their shared prompt tokens are computed once
(`tinyllm-noshare` is the same trainer with `train.share_prompt=false`; `tinyllm-compile`, `-chunked`
(`--ce-chunk-tokens`) and `-flex` turn on train.compile, train.ce_chunk_tokens and train.attention=flex
alone, `tinyllm-fused` all three). All see the same
prompts (`--task-position`, default `after`, the trainer's default for decoder-only students).
Each implementation runs in its own process, so peak resident memory (ru_maxrss) is its own.
Throughput = non-padding tokens of the steps / wall seconds of the steps (model loading excluded).
Model FLOP/s = 6 x parameters x that throughput (the same count for every implementation); on a GPU
the utilisation (MFU) divides it by the data sheet's dense peak (`--peak-tflops` for other devices).
An implementation that fails is reported with its error; the others still run.

On a GPU (`--device cuda`) the clock starts after `--warmup-steps` steps (CUDA context, kernel and
allocator warm-up) and stops after a device synchronisation; both implementations then run in the
precision asked for (the hf baseline through `TrainingArguments(bf16=True)`; on CPU it stays fp32).
`--random-init` draws the weights at random from the student folder's config.json: the same
architecture and arithmetic as the pretrained student, for hosts that cannot hold its weights (the
losses are then those of an untrained model and say nothing about quality).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
IMPLS = ["tinyllm", "tinyllm-noshare", "hf", "tinyllm-compile", "tinyllm-chunked", "tinyllm-flex", "tinyllm-fused"]
DEFAULT_IMPLS = IMPLS[:3]  # the others on request: compiling takes a minute or more
KERNELS = {  # implementation -> (train.compile, train.ce_chunk_tokens from --ce-chunk-tokens, train.attention=flex)
    "tinyllm-compile": (True, False, False), "tinyllm-chunked": (False, True, False),
    "tinyllm-flex": (False, False, True), "tinyllm-fused": (True, True, True)}
PEAK_TFLOPS = {"bf16": {"H100": 989.0, "H200": 989.0, "A100": 312.0}, "fp32": {"H100": 67.0, "H200": 67.0, "A100": 19.5}}
"""Dense peak of NVIDIA's data sheets (bf16 tensor cores; fp32 without TF32, torch's default), for MFU."""
sys.path.insert(0, str(REPO))
from distill.llama_runtime import cpu_model  # noqa: E402


def setup(args):
    from distill.config import StudentConfig
    from distill.data import load_dataset
    from distill.paper import load_paper_rationales
    from distill.batching import build_samples
    from distill.student import PromptFormat, load_student

    ds = load_dataset("tinyllm-obqa", args.data)
    train = ds.split("train")[: args.questions]
    paper = load_paper_rationales(ds.path, "train", ds.split("train"))
    rationales = {t: {r.example_id: r.text for r in recs} for t, recs in paper.records.items()}
    torch.manual_seed(0)
    if args.random_init:
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(args.student)
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(args.student),
                                                              dtype=torch.float32)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        model, tok, _ = load_student(StudentConfig(model=args.student))
    model.to(args.device)
    per_q = build_samples(train, rationales, tok, PromptFormat(task_position=args.task_position), False, args.max_length)
    return model, tok, per_q


def steps_of(per_q, batch_size):
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(per_q), generator=g).tolist()
    return [[per_q[i] for i in order[k: k + batch_size]] for k in range(0, len(order), batch_size)]


def run_tinyllm(args) -> dict:
    from distill.batching import step_loss_terms

    model, tok, per_q = setup(args)
    model.train()
    compiled, chunked, flex = KERNELS.get(args.impl, (False, False, False))
    if flex:  # as train.attention=flex
        from distill.batching import use_flex_attention

        use_flex_attention(model)
    if compiled:  # as train.compile; --warmup-steps keeps the compiling off the clock
        from distill.train import compile_student

        compile_student(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    alphas = {"answer": 1.0, "flan-t5-xl": 1.0, "llama-2-7b": 1.0}
    tokens, losses = 0, []
    start = time.perf_counter()
    for i, step in enumerate(steps_of(per_q, args.batch_size)):
        if i == args.warmup_steps:
            sync(args)
            tokens, start = 0, time.perf_counter()
        samples = [s for q in step for s in q]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):  # as train.precision
            terms = step_loss_terms(model, samples, tok.pad_token_id, alphas, args.micro_batch_tokens,
                                    backward=lambda loss: loss.backward(), share_prompt=args.impl != "tinyllm-noshare",
                                    ce_chunk_tokens=args.ce_chunk_tokens if chunked else 0)
        opt.step()
        tokens += sum(len(s.input_ids) for s in samples)
        losses.append(sum(terms.values()))
    sync(args)
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "losses": losses, "params": n_params(model)}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embeddings once: the LM head's matmul


def sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


def run_hf(args) -> dict:
    import transformers

    model, tok, per_q = setup(args)
    tasks = ["answer", "flan-t5-xl", "llama-2-7b"]
    rows = []
    for step in steps_of(per_q, args.batch_size):
        for q in step:
            rows.append({t: next(s for s in q if s.task == t) for t in tasks})

    def collate(batch):
        out = {}
        for t in tasks:
            n = max(len(b[t].input_ids) for b in batch)
            out[f"{t}.ids"] = torch.tensor([b[t].input_ids + [tok.pad_token_id] * (n - len(b[t].input_ids)) for b in batch])
            out[f"{t}.mask"] = torch.tensor([[1] * len(b[t].input_ids) + [0] * (n - len(b[t].input_ids)) for b in batch])
            out[f"{t}.labels"] = torch.tensor([b[t].labels + [-100] * (n - len(b[t].labels)) for b in batch])
        return out

    losses, timing = [], {}
    timed = rows[args.warmup_steps * args.batch_size:]

    class MultiTask(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = sum(model(input_ids=inputs[f"{t}.ids"], attention_mask=inputs[f"{t}.mask"],
                             labels=inputs[f"{t}.labels"]).loss for t in tasks)
            losses.append(float(loss))
            return loss

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            if not args.warmup_steps:
                timing["start"] = time.perf_counter()

        def on_step_end(self, targs, state, *a, **k):
            if state.global_step == args.warmup_steps:
                sync(args)
                timing["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            sync(args)
            timing["end"] = time.perf_counter()

    targs = transformers.TrainingArguments(output_dir=str(args.tmp / "hf"), per_device_train_batch_size=args.batch_size,
                                           learning_rate=args.lr, lr_scheduler_type="constant", num_train_epochs=1,
                                           report_to="none", save_strategy="no", logging_strategy="no",
                                           use_cpu=args.device == "cpu", bf16=args.device == "cuda" and args.precision == "bf16",
                                           remove_unused_columns=False, dataloader_drop_last=False, seed=0,
                                           weight_decay=0.0, max_grad_norm=0.0, warmup_steps=0)
    trainer = MultiTask(model=model, args=targs, train_dataset=rows, data_collator=collate, callbacks=[Clock()])
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(rows)  # same order as ours
    trainer.train()
    tokens = sum(len(r[t].input_ids) for r in timed for t in tasks)
    return {"seconds": timing["end"] - timing["start"], "tokens": tokens, "losses": losses, "params": n_params(model)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=IMPLS)
    ap.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help="comma-separated implementations to compare "
                    f"({', '.join(IMPLS)})")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="autocast of TinyLLM's forward/backward, as train.precision (the hf baseline: fp32 on cpu, "
                         "the same precision on cuda)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--warmup-steps", type=int, default=0, help="steps run before the clock starts")
    ap.add_argument("--student", default="smollm2-135m-instruct", help="packaged name, .gguf file or model folder")
    ap.add_argument("--random-init", action="store_true",
                    help="random weights from the --student folder's config.json (throughput only)")
    ap.add_argument("--task-position", choices=["before", "after"], default="after")
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--micro-batch-tokens", type=int, default=1024)
    ap.add_argument("--ce-chunk-tokens", type=int, default=1024, help="train.ce_chunk_tokens of tinyllm-chunked/-fused")
    ap.add_argument("--impl-timeout", type=float, help="seconds one implementation may take (default: no limit)")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak for model-FLOPs utilisation (default: "
                    "the data sheet's for H100/H200/A100 in the --precision)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "obqa"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_throughput.json"))
    args = ap.parse_args()
    args.tmp = Path("/tmp/tinyllm-bench")
    if args.random_init and not (Path(args.student) / "config.json").exists():
        ap.error(f"--random-init needs --student to be a model folder with config.json and the tokenizer; "
                 f"{args.student} is not one (benchmarks/results/README.md shows how to write one for SmolLM2-135M)")
    torch.set_num_threads(os.cpu_count())
    if args.impl:
        res = run_hf(args) if args.impl == "hf" else run_tinyllm(args)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.device == "cuda":
            res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps(res))
        return
    unknown = set(args.impls.split(",")) - set(IMPLS)
    if unknown:
        ap.error(f"--impls: unknown {', '.join(sorted(unknown))}; choose from {', '.join(IMPLS)}")
    results, peak = {}, args.peak_tflops
    if peak is None and args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS[args.precision].items() if k in name), None)
    hardware = f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if args.device == "cuda":
        hardware += f", {torch.cuda.get_device_name()}"
    report = {"command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]), "precision": args.precision,
              "device": args.device, "warmup_steps": args.warmup_steps,
              "weights": "random init from config.json" if args.random_init else "pretrained",
              "hardware": hardware, "peak_tflops": peak,
              "mfu": "6 x parameters x data tokens/s / peak_tflops (attention scores not counted)",
              "speedup": None, "results": results}
    for impl in args.impls.split(","):
        cmd = [sys.executable, __file__, "--impl", impl] + [a for a in sys.argv[1:]]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.impl_timeout)
            error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1] if done.returncode else None
        except subprocess.TimeoutExpired:
            error = f"timed out after {args.impl_timeout} s"
        if error:  # one implementation failing (a kernel this host lacks) leaves the others' figures
            results[impl] = {"error": error}
            print(f"{impl:16s} FAILED: {error}", flush=True)
        else:
            r = json.loads(done.stdout.strip().splitlines()[-1])
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
            # Model FLOPs: 6 x parameters per token (forward + backward of every matmul, attention scores left
            # out), over the data's tokens; the same count for every implementation, whatever it skips.
            r["model_tflops_per_s"] = 6 * r["params"] * r["tokens_per_s"] / 1e12
            if peak:
                r["mfu"] = r["model_tflops_per_s"] / peak
            results[impl] = r
            gpu = f"  peak GPU {r['peak_gpu_mb']:6.0f} MB" if "peak_gpu_mb" in r else ""
            mfu = f"  MFU {100 * r['mfu']:4.1f}%" if "mfu" in r else ""
            print(f"{impl:16s} {r['tokens_per_s']:7.1f} tok/s  {r['model_tflops_per_s']:6.2f} TFLOP/s{mfu}  "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MB{gpu}  "
                  f"losses {', '.join(f'{x:.3f}' for x in r['losses'])}", flush=True)
        hf = results.get("hf", {}).get("tokens_per_s")
        for name, r in results.items():
            if hf and name != "hf" and "tokens_per_s" in r:
                r["x_hf"] = r["tokens_per_s"] / hf
        report["speedup"] = results.get("tinyllm", {}).get("x_hf")
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")  # after each: a killed run keeps what it measured
    for name, r in results.items():
        if "x_hf" in r:
            print(f"{name}: {r['x_hf']:.2f}x over hf")

if __name__ == "__main__":
    main()
