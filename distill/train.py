"""The training recipe, read top to bottom: setup, the steps, the finish.

Setup: student (sharded or replicated), samples, optimizer, resume point. Steps: one optimizer step
each, logged and checkpointed. Finish: the chosen weights saved and scored. The loss lives in
batching.py, scoring in evaluation.py, checkpoints in checkpoints.py, per-epoch selection in epochs.py."""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from distill import layout
from distill.batching import (TargetLogits, build_samples, can_chunk, can_share, count_targets, micro_batch_plan,
                             step_loss_terms, use_flex_attention)
from distill.checkpoints import (full_states, latest_checkpoint, load_checkpoint, remove_partial_checkpoints,
                                 save_checkpoint)
from distill.data import Example
from distill.errors import UserError
from distill.evaluation import evaluate
from distill.progress import progress_line
from distill.student import is_seq2seq, load_saved_student, load_student, prompt_format

# ---------------------------------------------------------------------------------------------
# Data parallel and sharded students.


def shard_student(model) -> None:
    """FSDP2: shard each transformer block, then the rest (embeddings, norms, LM head) as the root.
    Decoder-only students get TargetLogits as their root, the module the loss goes through."""
    from torch.distributed.fsdp import fully_shard

    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise UserError(f"train.sharding=fsdp: cannot tell which modules of {type(model).__name__} are its transformer "
                        "blocks (it declares no _no_split_modules); use train.sharding=none.")
    for block in blocks:
        fully_shard(block)
    if is_seq2seq(model):
        fully_shard(model)
    else:
        root = TargetLogits(model)
        fully_shard(root)
        object.__setattr__(model, "_tinyllm_root", root)  # not a submodule: no cycle in named_modules()


def check_kernels(tc, model, device) -> None:
    """train.attention and train.ce_chunk_tokens name what the student and device can run."""
    if tc.attention == "flex":
        if device.type == "cpu":
            raise UserError("train.attention=flex needs a CUDA GPU (torch has no FlexAttention backward on the CPU); "
                            "use train.attention=sdpa here.")
        if not (tc.share_prompt and can_share(model)):
            raise UserError(f"train.attention=flex applies to packed rows of decoder-only students (share_prompt=true); "
                            f"this {type(model).__name__} student has none, so use train.attention=sdpa.")
    if tc.ce_chunk_tokens and not can_chunk(model):
        raise UserError(f"train.ce_chunk_tokens applies to decoder-only students whose output projection has no bias; "
                        f"this {type(model).__name__} student is not one, so set train.ce_chunk_tokens=0.")


def compile_student(model) -> None:
    """train.compile: the module the loss goes through (the student's root, as sharding or replication left
    it) runs compiled; the weights stay the model's own, so saving and evaluation see the same tensors."""
    root = getattr(model, "_tinyllm_root", None)
    root = (model if is_seq2seq(model) else TargetLogits(model)) if root is None else root
    object.__setattr__(model, "_tinyllm_root", torch.compile(root, dynamic=True))


def replicate_student(model, device):
    """Data parallelism with torch's DistributedDataParallel: gradients are bucketed and reduced while
    the backward pass runs. DDP wraps the module the loss goes through (TargetLogits for decoder-only
    students, the model itself for T5) and becomes the student's root, as with FSDP. Buffers are not
    broadcast: evaluation runs the root on the main process alone."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    root = DistributedDataParallel(model if is_seq2seq(model) else TargetLogits(model), device_ids=ids,
                                   broadcast_buffers=False)
    object.__setattr__(model, "_tinyllm_root", root)  # not a submodule: no cycle in named_modules()
    return root


@dataclass
class Session:
    """What setup() prepares and the steps and the finish use."""
    cfg: Any
    acc: Any
    run: Any
    log: Callable
    model: Any
    tok: Any
    fmt: Any
    root: Any
    """DistributedDataParallel wrapper of what the loss runs through (data parallel), else None."""
    samples: list
    alphas: dict
    tasks: list
    params: list
    optimizer: Any
    scheduler: Any
    scaler: Any
    low: Any
    total: int
    per_step: int
    steps_per_epoch: int
    start_step: int
    epochs: Any
    """EpochEvaluator with train.epoch_eval on the main process, else None."""

    @property
    def world(self) -> int:
        return self.acc.num_processes

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def sharded(self) -> bool:
        return self.cfg.train.sharding == "fsdp"

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, values: list[float], op=None) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t, **({"op": op} if op else {}))
        return t.tolist()


def train_student(cfg, train_examples: list[Example], rationales: dict[str, dict[str, str]],
                  eval_examples: list[Example], run, resume: bool = False, log=print,
                  test_examples: list[Example] | None = None) -> dict:
    """Train the student on the answer task plus one rationale task per teacher; save it; evaluate it.

    Distributed: launched by torchrun/accelerate, each process takes its share of every step's
    questions; gradients are summed across processes (each process's loss is its share of the
    global, token-normalised objective), so N processes compute the same step as one.
    """
    s = setup(cfg, train_examples, rationales, eval_examples, test_examples, run, resume, log)
    result = train_steps(s, eval_examples)
    return finish(s, result, eval_examples)


# ---------------------------------------------------------------------------------------------
# Setup: the student (sharded or replicated), its samples, the optimizer, and where to start.


def on_cpu() -> bool:
    """Whether this process trains on CPU (no GPU visible). A launch of more processes on a node than it has
    GPUs is named here as the user's mistake, before CUDA fails on a device ordinal that does not exist."""
    if not torch.cuda.is_available():
        return True
    gpus, per_node = torch.cuda.device_count(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if per_node > gpus:
        raise UserError(f"{per_node} training processes were launched on this node but it has {gpus} GPU(s): launch at "
                        f"most {gpus} per node (torchrun --nproc_per_node {gpus}), or train on CPU by hiding the GPUs "
                        "(CUDA_VISIBLE_DEVICES=).")
    return False


def check_distributed(cfg, acc) -> None:
    tc = cfg.train
    sharded = tc.sharding == "fsdp"
    if acc.distributed_type.name in ("FSDP", "DEEPSPEED"):
        raise UserError(f"accelerate is configured for {acc.distributed_type.name}, but TinyLLM shards the student "
                        "itself: "
                        "launch with a plain multi-process accelerate config (or torchrun) and set "
                        "train.sharding=fsdp.")
    if sharded and cfg.student.lora:
        raise UserError("train.sharding=fsdp is for full fine-tuning; LoRA students train with train.sharding=none.")
    if sharded and tc.precision == "fp16":
        raise UserError("train.sharding=fsdp runs in fp32 or bf16; set train.precision=bf16.")
    if sharded and (tc.eval_every or tc.epoch_eval):
        raise UserError("train.eval_every and train.epoch_eval need train.sharding=none; with fsdp the student is "
                        "evaluated after training.")


def setup(cfg, train_examples, rationales, eval_examples, test_examples, run, resume: bool, log) -> Session:
    import transformers
    from accelerate import Accelerator

    tc = cfg.train
    acc = Accelerator(cpu=on_cpu())  # process group, device and ranks from the launcher
    check_distributed(cfg, acc)
    world, main, sharded = acc.num_processes, acc.is_main_process, tc.sharding == "fsdp"
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    out_dir = Path(cfg.output_dir)

    model, tok, identity = load_student(cfg.student)
    model.to(acc.device)
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    root = None
    if sharded:
        shard_student(model)
    elif world > 1:
        root = replicate_student(model, acc.device)
    check_kernels(tc, model, acc.device)
    if tc.attention == "flex":
        use_flex_attention(model)
    if tc.compile:
        compile_student(model)
    fmt = prompt_format(cfg.student, model)
    samples = build_samples(train_examples, rationales, tok, fmt, is_seq2seq(model), tc.max_length)
    if not samples:
        raise UserError("no training questions: check data.train_split and data.max_train.")
    per_step = tc.batch_size * tc.grad_accum
    total = math.ceil(len(samples) * tc.epochs / per_step)
    if tc.max_steps is not None:
        total = min(total, tc.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    s = Session(cfg=cfg, acc=acc, run=run, log=log, model=model, tok=tok, fmt=fmt, root=root, samples=samples,
                alphas={"answer": 1.0, **{t.name: t.alpha for t in cfg.teachers}},
                tasks=["answer"] + [t.name for t in cfg.teachers], params=params, optimizer=optimizer,
                scheduler=transformers.get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * total), total),
                scaler=torch.amp.GradScaler(acc.device.type) if tc.precision == "fp16" else None,
                low={"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tc.precision], total=total,
                per_step=per_step, steps_per_epoch=math.ceil(len(samples) / per_step), start_step=0, epochs=None)
    resume = resume_point(s, out_dir, resume)

    if tc.epoch_eval and main:
        from distill.epochs import EpochEvaluator

        s.epochs = EpochEvaluator(out_dir, tok, fmt, eval_examples, test_examples or [], tc.eval_method, tc.select_by,
                                  run, log, resume_step=s.start_step if resume else None)
        if s.start_step and s.start_step % s.steps_per_epoch == 0 and not s.epochs.done(s.start_step):
            s.epochs.end_of_epoch(model, s.start_step / s.steps_per_epoch, s.start_step)  # cut short by a kill
    if tc.epoch_eval:
        s.barrier()

    run.log_params({"student.identity": identity, "student.parameters": n_params,
                    "student.trainable_parameters": sum(p.numel() for p in params), "train.total_steps": total,
                    "train.world_size": world})
    if main:
        log(f"[train] {len(samples)} questions, tasks {', '.join(s.tasks)}, {total} steps of {per_step} questions, "
            f"{world} process(es)")
    return s


def resume_point(s: Session, out_dir: Path, resume: bool) -> bool:
    """Remove partial checkpoints; with --resume load the latest complete one. Whether the run resumes."""
    partial = remove_partial_checkpoints(out_dir) if s.main else []
    if s.main and partial:
        s.log(f"[train] removed {len(partial)} partial checkpoint(s) a killed run left: "
              f"{', '.join(p.name for p in partial)}")
    s.barrier()
    if not resume:
        return False
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None and not partial:
        raise UserError(f"--resume: no checkpoint under {out_dir / layout.CHECKPOINTS}; set train.save_every to make "
                        "them.")
    if ckpt is None:
        if s.main:
            s.log("[train] --resume: the only checkpoint was partial (killed while being written); starting from step "
                  "0")
        return False
    s.start_step = load_checkpoint(ckpt, s.model, s.optimizer, s.scheduler, s.sharded, s.scaler)
    if s.main:
        s.log(f"[train] resumed from {ckpt} at step {s.start_step}/{s.total}")
    return True


# ---------------------------------------------------------------------------------------------
# The steps.


def train_steps(s: Session, eval_examples: list[Example]) -> dict:
    tc, out_dir = s.cfg.train, Path(s.cfg.output_dir)

    def order(epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(tc.seed + epoch)
        return torch.randperm(len(s.samples), generator=g).tolist()

    s.model.train()
    t0, tokens_seen, history = time.perf_counter(), 0, []
    window_tokens, window_start = 0, time.perf_counter()
    for step in range(s.start_step, s.total):
        epoch, k = divmod(step, s.steps_per_epoch)
        questions = order(epoch)[k * s.per_step:(k + 1) * s.per_step][s.acc.process_index::s.world]
        terms, step_tokens = one_step(s, [smp for q in questions for smp in s.samples[q]])
        tokens_seen += step_tokens
        window_tokens += step_tokens
        loss = sum(s.alphas[t] * v for t, v in terms.items())
        done = step + 1
        if s.main and (done % tc.log_every == 0 or done == s.total or done == s.start_step + 1):
            elapsed = time.perf_counter() - window_start
            tps = window_tokens / elapsed if elapsed else 0.0
            window_tokens, window_start = 0, time.perf_counter()
            rate = (time.perf_counter() - t0) / (done - s.start_step)
            lr = s.scheduler.get_last_lr()[0]
            parts = " ".join(f"{t} {v:.3f}" for t, v in terms.items())
            s.log(progress_line("train", done, s.total, [f"loss {loss:.4f} ({parts})", f"lr {lr:.2e}", f"{tps:.0f} tok/s"],
                                time.perf_counter() - t0, rate * (s.total - done), noun="step"))
            s.run.log_metrics({"loss": loss, **{f"loss_{t}": v for t, v in terms.items()}, "lr": lr,
                               "tokens_per_s": tps, "epoch": step / s.steps_per_epoch}, step=done)
        history.append({"step": done, "loss": loss, **{f"loss_{t}": v for t, v in terms.items()}})
        epoch_end = tc.epoch_eval and (done % s.steps_per_epoch == 0 or done == s.total)
        # At an epoch's end the checkpoint comes before the evaluation, so a kill during it resumes there.
        if tc.save_every and ((done % tc.save_every == 0 and done < s.total) or epoch_end):
            model_state, optimizer_state = full_states(s.model, s.optimizer, s.sharded)
            if s.main:
                save_checkpoint(layout.checkpoint_dir(out_dir, done), model_state, optimizer_state, s.scheduler, done,
                                scaler=s.scaler)
            s.barrier()
        if epoch_end:
            if s.main:
                s.epochs.end_of_epoch(s.model, round(done / s.steps_per_epoch, 3), done)
            s.barrier()
        if tc.eval_every and done % tc.eval_every == 0 and done < s.total and eval_examples:
            if s.main:
                res = evaluate(s.model, s.tok, s.fmt, eval_examples, tc.eval_method)
                s.run.log_metrics({f"eval_{k}": v for k, v in res.items() if k.startswith("accuracy")}, step=done)
                s.log(f"[eval] step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items() if k.startswith("accuracy")))
            s.barrier()
    return {"steps": s.total, "tokens": tokens_seen, "seconds": time.perf_counter() - t0, "history": history}


def one_step(s: Session, step_samples: list) -> tuple[dict[str, float], int]:
    """One optimizer step over this process's share of the step's questions: (each task's mean loss over
    every process, tokens seen by every process)."""
    tc, model = s.cfg.train, s.model
    counts = count_targets(step_samples)
    totals = {t: int(v) for t, v in zip(s.tasks, s.all_sum([float(counts.get(t, 0)) for t in s.tasks])) if v > 0}
    passes = 1 if s.root is not None else 0  # DDP: a process with no question this step still joins the reduction
    if s.sharded:  # every process must run the same number of passes: pad with zero-weighted ones
        mine = len(micro_batch_plan(model, step_samples, tc.micro_batch_tokens, tc.share_prompt))
        passes = int(s.all_sum([float(mine)], op=torch.distributed.ReduceOp.MAX)[0])
    s.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(s.acc.device.type, dtype=s.low or torch.float32, enabled=s.low is not None):
        # Each process's objective is its share of the global one, so gradients are summed across
        # processes; DDP's all-reduce and FSDP's reduce-scatter average them, hence x world.
        terms = step_loss_terms(model, step_samples, s.tok.pad_token_id, s.alphas, tc.micro_batch_tokens,
                                token_totals=totals, scale=s.world, min_passes=passes,
                                backward=lambda loss: (s.scaler.scale(loss) if s.scaler else loss).backward(),
                                share_prompt=tc.share_prompt, defer_sync=s.root.no_sync if s.root else None,
                                ce_chunk_tokens=tc.ce_chunk_tokens)
    summed = s.all_sum([terms.get(t, 0.0) for t in s.tasks])
    terms = {t: v for t, v in zip(s.tasks, summed) if t in totals}
    if s.scaler is not None:
        s.scaler.unscale_(s.optimizer)
    if tc.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(s.params, tc.max_grad_norm)
    if s.scaler is not None:
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        s.optimizer.step()
    s.scheduler.step()
    tokens = sum(len(smp.input_ids) + (len(smp.labels) if is_seq2seq(model) else 0) for smp in step_samples)
    return terms, int(s.all_sum([float(tokens)])[0])


# ---------------------------------------------------------------------------------------------
# The finish: the chosen weights saved with the tokenizer and prompt format, then scored.


def finish(s: Session, result: dict, eval_examples: list[Example]) -> dict:
    cfg, tc, log = s.cfg, s.cfg.train, s.log
    final_state = full_states(s.model, s.optimizer, True)[0] if s.sharded else None
    if s.main:
        student_dir = layout.student_dir(cfg.output_dir)
        chosen = None
        if s.epochs is not None:
            chosen = s.epochs.restore_best(s.model)
            log(f"[epoch-eval] the student is epoch {chosen['epoch']:g} (step {chosen['step']}), best on "
                f"{cfg.data.eval_split} by accuracy_{tc.select_by}")
        final = s.model.merge_and_unload() if cfg.student.lora else s.model
        if s.sharded:  # save the gathered weights, then evaluate an unsharded copy on this process alone
            if getattr(final.config, "tie_word_embeddings", False):  # as save_pretrained does for a whole model
                for key in getattr(final, "_tied_weights_keys", None) or []:
                    final_state.pop(key, None)
            final.save_pretrained(student_dir, state_dict=final_state, safe_serialization=True)
            final = load_saved_student(student_dir, s.acc.device)
        else:
            final.save_pretrained(student_dir, safe_serialization=True)
        s.tok.save_pretrained(student_dir)
        s.fmt.save(student_dir)
        result["student_dir"] = str(student_dir)
        if chosen is not None:  # already scored at its epoch: report its test split, chosen on the eval split
            result["eval"] = {**chosen["test"], "split": cfg.data.test_split,
                              "predictions": s.epochs.predictions(chosen["step"], "test")}
            result["selection"] = s.epochs.summary()
            log("[eval] selected epoch on the test split: " + ", ".join(
                f"{k} {v:.3f}" for k, v in chosen["test"].items() if k.startswith("accuracy"))
                + f" on {chosen['test']['n']} questions")
        elif eval_examples:
            res = evaluate(final, s.tok, s.fmt, eval_examples, tc.eval_method, log=log)
            result["eval"] = res
            s.run.log_metrics({f"eval_{k}": v for k, v in res.items() if k.startswith("accuracy")}, step=s.total)
            log("[eval] final: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items() if k.startswith("accuracy"))
                + f" on {res['n']} questions")
    s.barrier()
    return result
