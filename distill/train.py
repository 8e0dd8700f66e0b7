"""The student: multi-task batches, the TinyLLM loss, the training loop, checkpoints and evaluation.

L = L_answer + Σ_m α_m · L_rationale_m. Each task's loss is the mean cross-entropy over that
task's target tokens in the optimizer step; prompt tokens contribute nothing. All tasks of a step
go through the model together in length-sorted micro-batches (one forward per micro-batch, not one
padded forward per task), and the vocabulary projection runs only on target positions.

Decoder-only students also share the question: a question's tasks are packed into one row — the
tokens their prompts have in common once, then each task's own tokens — with an attention mask that
lets each task see the shared part and itself only, and positions that restart after the shared
part. That is exactly the separate forwards' computation on fewer tokens. It pays when the task
prefix comes after the question (`task_position: after`, the default for decoder-only students).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.data import Example
from distill.errors import UserError
from distill.prompts import render_question
from distill.rationales import format_duration

PROMPT_FORMAT_FILE = "prompt_format.json"


# ---------------------------------------------------------------------------------------------
# Prompt format: how the student is asked. Saved beside the student so export and bench (and any
# runtime on a device) ask it the same way.


@dataclass
class PromptFormat:
    answer_prefix: str = "predict:"
    rationale_prefix: str = "explain_{teacher}:"
    task_position: str = "before"
    """'before': "predict: Q: …\nAnswer:" (the paper's T5 layout). 'after': "Q: …\npredict: Answer:",
    so a question's tasks share their leading tokens (see the module docstring)."""

    def wrap(self, prefix: str, cue: str) -> tuple[str, str]:
        """(text before, text after) the question block for a task with this prefix and cue."""
        if self.task_position == "after":
            return "", f"\n{prefix} {cue}"
        return f"{prefix} ", f"\n{cue}"

    def answer_prompt(self, ex: Example) -> str:
        head, tail = self.wrap(self.answer_prefix, "Answer:")
        return head + render_question(ex) + tail

    def rationale_prompt(self, ex: Example, teacher: str) -> str:
        head, tail = self.wrap(self.rationale_prefix.format(teacher=teacher), "Explanation:")
        return head + render_question(ex) + tail

    @staticmethod
    def answer_target(ex: Example) -> str:
        return f" {ex.answer_text}"

    def save(self, folder: Path) -> None:
        head, tail = self.wrap(self.answer_prefix, "Answer:")
        doc = {"answer_prefix": self.answer_prefix, "rationale_prefix": self.rationale_prefix,
               "task_position": self.task_position,
               "answer_template": head + "Q: {question}\nAnswer Choices:\n(a) {choice_a}\n(b) {choice_b}\n…" + tail,
               "note": "The student answers with the text of the chosen option after 'Answer:'."}
        (Path(folder) / PROMPT_FORMAT_FILE).write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "PromptFormat":
        f = Path(folder) / PROMPT_FORMAT_FILE
        if not f.exists():
            return cls()
        doc = json.loads(f.read_text())
        return cls(doc["answer_prefix"], doc["rationale_prefix"], doc.get("task_position", "before"))


# ---------------------------------------------------------------------------------------------
# Students.


def is_seq2seq(model) -> bool:
    return bool(getattr(model.config, "is_encoder_decoder", False))


def load_student(scfg, dtype=None):
    """(model, tokenizer, identity) for a decoder-only or encoder-decoder (T5) student."""
    from distill.models import load_causal_lm

    import transformers

    seq2seq = scfg.architecture == "seq2seq"
    if scfg.architecture == "auto" and Path(scfg.model).is_dir() and (Path(scfg.model) / "config.json").exists():
        seq2seq = bool(json.loads((Path(scfg.model) / "config.json").read_text()).get("is_encoder_decoder"))
    elif scfg.architecture == "auto" and "t5" in scfg.model.lower():
        seq2seq = True
    if seq2seq:
        tok = transformers.AutoTokenizer.from_pretrained(scfg.model, trust_remote_code=scfg.trust_remote_code)
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(scfg.model, dtype=dtype or torch.float32,
                                                                   use_safetensors=True, trust_remote_code=scfg.trust_remote_code)
        identity = scfg.model
    else:
        model, tok, identity = load_causal_lm(scfg.model, trust_remote_code=scfg.trust_remote_code, dtype=dtype)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if scfg.lora:
        from distill.errors import require

        peft = require("peft")
        targets = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q", "k", "v", "o")
                   if any(name.endswith("." + n) for name, _ in model.named_modules())]
        model = peft.get_peft_model(model, peft.LoraConfig(r=scfg.lora_r, lora_alpha=scfg.lora_alpha, lora_dropout=0.0,
                                                           target_modules=targets,
                                                           task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"))
    return model, tok, identity


def prompt_format(scfg, model) -> PromptFormat:
    """The student's prompt format from its config (task_position 'auto' resolved for this model)."""
    position = scfg.task_position
    if position == "auto":
        position = "before" if is_seq2seq(model) else "after"
    return PromptFormat(scfg.answer_prefix, scfg.rationale_prefix, position)


# ---------------------------------------------------------------------------------------------
# Samples: one (input, target) per task per question.


@dataclass
class Sample:
    task: str
    """'answer', or the teacher name for its rationale task."""
    input_ids: list[int]
    labels: list[int]
    """Decoder-only: same length as input_ids, -100 on prompt tokens. Seq2seq: the target ids."""
    group: int = -1
    """The question it belongs to (samples of one question may share their common prompt tokens)."""


def encode(tok, prompt: str, target: str, task: str, seq2seq: bool, max_length: int) -> Sample:
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    t = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if seq2seq:
        return Sample(task, p[: max_length - 1] + [tok.eos_token_id] if len(p) > max_length else p, t[:max_length])
    t = t[: max(1, max_length // 2)] if len(p) + len(t) > max_length else t
    budget = max_length - len(t)
    if len(p) > budget:
        # Cut the middle of the prompt: keep the task prefix and the end, where the options are.
        head = min(8, budget // 2)
        p = p[:head] + p[len(p) - (budget - head):]
    return Sample(task, p + t, [-100] * len(p) + t)


def build_samples(examples: list[Example], rationales: dict[str, dict[str, str]], tok, fmt: PromptFormat,
                  seq2seq: bool, max_length: int) -> list[list[Sample]]:
    """Per question: its answer sample, then one rationale sample per teacher that has one."""
    out = []
    for q, ex in enumerate(examples):
        per = [encode(tok, fmt.answer_prompt(ex), fmt.answer_target(ex), "answer", seq2seq, max_length)]
        for teacher, texts in rationales.items():
            if ex.id in texts:
                per.append(encode(tok, fmt.rationale_prompt(ex, teacher), " " + texts[ex.id], teacher, seq2seq, max_length))
        for smp in per:
            smp.group = q
        out.append(per)
    return out


def _sample_size(s: Sample) -> int:
    return len(s.input_ids) + (len(s.labels) if len(s.labels) != len(s.input_ids) else 0)


def micro_batches(samples: list, max_tokens: int, size=_sample_size) -> list[list]:
    """Length-sorted groups whose padded size (rows x longest) stays within max_tokens."""
    ordered = sorted(samples, key=size, reverse=True)
    batches, cur, longest = [], [], 0
    for s in ordered:
        size_s = size(s)
        if cur and max(longest, size_s) * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(s)
        longest = max(longest, size_s)
    if cur:
        batches.append(cur)
    return batches


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    n = max(map(len, rows))
    return torch.tensor([r + [value] * (n - len(r)) for r in rows], dtype=torch.long)


class TargetLogits(torch.nn.Module):
    """A decoder-only student's logits at chosen (row, position) pairs only: the vocabulary projection
    never runs on prompt or padding positions. A module so that FSDP can make it the root that holds
    the embeddings, final norm and LM head."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, rows, cols):
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids).last_hidden_state
        logits = self.model.get_output_embeddings()(hidden[rows, cols])
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


def target_logits(model, input_ids, attention_mask, position_ids, rows, cols):
    scorer = getattr(model, "_tinyllm_root", None) or TargetLogits(model)
    return scorer(input_ids, attention_mask, position_ids, rows, cols)


def token_losses(model, batch: list[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: (sum of target-token cross-entropy, number of target tokens)."""
    device = next(model.parameters()).device
    if is_seq2seq(model):
        ids = _pad([s.input_ids for s in batch], pad_id).to(device)
        labels = _pad([s.labels for s in batch], -100).to(device)
        dec_in = model.prepare_decoder_input_ids_from_labels(labels=labels.clamp(min=0)) if hasattr(
            model, "prepare_decoder_input_ids_from_labels") else None
        scorer = getattr(model, "_tinyllm_root", None) or model
        logits = scorer(input_ids=ids, attention_mask=(ids != pad_id).long(), decoder_input_ids=dec_in).logits
        mask = labels != -100
        losses = F.cross_entropy(logits[mask].float(), labels[mask], reduction="none")
    else:
        ids = _pad([s.input_ids for s in batch], pad_id).to(device)
        attn = _pad([[1] * len(s.input_ids) for s in batch], 0).to(device)
        labels = _pad([s.labels for s in batch], -100).to(device)
        # Position i predicts token i+1; project only the positions whose next token is a target.
        targets = labels[:, 1:]
        mask = targets != -100
        rows, cols = mask.nonzero(as_tuple=True)
        logits = target_logits(model, ids, attn, None, rows, cols)
        losses = F.cross_entropy(logits.float(), targets[mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    sums = torch.zeros(len(batch), device=device, dtype=losses.dtype).index_add(0, rows, losses)
    return sums, mask.sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Shared prompts: one row per question, its tasks' common prompt tokens computed once.


@dataclass
class Pack:
    samples: list[Sample]
    ids: list[int]
    positions: list[int]
    segments: list[int]
    """-1 on the shared tokens, i on sample i's own tokens."""
    targets: list[tuple[int, int, int]]
    """(row position whose output predicts the token, token id, sample index)."""


def shared_length(group: list[Sample]) -> int:
    """How many leading prompt tokens every sample of the group has in common (never a target)."""
    if len(group) < 2:
        return 0
    first = min(next((i for i, x in enumerate(s.labels) if x != -100), len(s.labels)) for s in group)
    ref, c = group[0].input_ids, 0
    while c < first and all(len(s.input_ids) > c and s.input_ids[c] == ref[c] for s in group[1:]):
        c += 1
    return c


def pack(group: list[Sample]) -> Pack:
    c = shared_length(group)
    ids, positions, segments, targets = list(group[0].input_ids[:c]), list(range(c)), [-1] * c, []
    for i, s in enumerate(group):
        start = len(ids)
        rest = s.input_ids[c:]
        ids += rest
        positions += range(c, c + len(rest))
        segments += [i] * len(rest)
        for j, label in enumerate(s.labels[c:]):
            if label != -100 and c + j > 0:  # the very first token has nothing before it to predict it
                targets.append((start + j - 1 if j > 0 else c - 1, label, i))
    return Pack(group, ids, positions, segments, targets)


def packs_for(samples: list[Sample]) -> list[Pack]:
    """One pack per question (samples without a question get their own)."""
    groups: dict[int, list[Sample]] = {}
    for k, s in enumerate(samples):
        groups.setdefault(s.group if s.group >= 0 else -1 - k, []).append(s)
    return [pack(g) for g in groups.values()]


def _attn_impl(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def can_share(model) -> bool:
    """Decoder-only students whose attention takes an arbitrary 4D mask (sdpa, eager)."""
    return not is_seq2seq(model) and _attn_impl(model) in ("sdpa", "eager")


def packed_token_losses(model, packs: list[Pack], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """token_losses for packed questions: per sample (sum of target cross-entropy, target count),
    samples in pack order."""
    device = next(model.parameters()).device
    n = max(len(p.ids) for p in packs)
    ids = torch.tensor([p.ids + [pad_id] * (n - len(p.ids)) for p in packs], device=device)
    pos = torch.tensor([p.positions + [0] * (n - len(p.ids)) for p in packs], device=device)
    seg = torch.tensor([p.segments + [-2] * (n - len(p.ids)) for p in packs], device=device)
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    # Query q sees key k <= q when k is shared or in q's own segment; padding sees only itself.
    allowed = causal & ((seg[:, None, :] == -1) | (seg[:, None, :] == seg[:, :, None]))
    allowed |= torch.eye(n, dtype=torch.bool, device=device)
    mask = allowed[:, None]
    if _attn_impl(model) != "sdpa":
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    rows, src, labels, owner, base = [], [], [], [], 0
    for b, p in enumerate(packs):
        for at, label, i in p.targets:
            rows.append(b)
            src.append(at)
            labels.append(label)
            owner.append(base + i)
        base += len(p.samples)
    logits = target_logits(model, ids, mask, pos, torch.tensor(rows, device=device, dtype=torch.long),
                           torch.tensor(src, device=device, dtype=torch.long))
    losses = F.cross_entropy(logits.float(), torch.tensor(labels, device=device), reduction="none")
    owner_t = torch.tensor(owner, device=device, dtype=torch.long)
    sums = torch.zeros(base, device=device, dtype=losses.dtype).index_add(0, owner_t, losses)
    counts = torch.zeros(base, device=device, dtype=torch.long).index_add(0, owner_t, torch.ones_like(owner_t))
    return sums, counts


def _pack_size(p: Pack) -> int:
    return len(p.ids)


def sliding_window(model) -> int | None:
    cfg = model.config
    return None if getattr(cfg, "use_sliding_window", True) is False else getattr(cfg, "sliding_window", None)


def fits_window(model, packs: list[Pack]) -> bool:
    """A packed row must not be longer than a sliding attention window (Gemma 3, Mistral-style
    models): one 4D mask serves every layer, so the window would not be applied."""
    window = sliding_window(model)
    return window is None or all(len(p.ids) <= window for p in packs)


def micro_batch_plan(model, samples: list[Sample], max_tokens: int, share_prompt: bool = True) -> list[tuple[list, list[Sample]]]:
    """The forward passes of one step: (micro-batch of samples or packs, its samples in order)."""
    if share_prompt and can_share(model):
        packs = packs_for(samples)
        if fits_window(model, packs):
            return [(mb, [s for p in mb for s in p.samples]) for mb in micro_batches(packs, max_tokens, size=_pack_size)]
    return [(mb, mb) for mb in micro_batches(samples, max_tokens)]


def step_loss_terms(model, samples: list[Sample], pad_id: int, alphas: dict[str, float], max_tokens: int,
                    token_totals: dict[str, int] | None = None, scale: float = 1.0, backward=None,
                    share_prompt: bool = True, min_passes: int = 0, defer_sync=None) -> dict[str, float]:
    """Run one optimizer step's samples; return each task's mean token loss (for logging).

    The objective is Σ_t α_t · (Σ target-token loss of task t) / N_t with N_t the task's target
    tokens in the step (`token_totals`, summed across processes when distributed). Each micro-batch
    backpropagates its share at once, so memory holds one micro-batch of activations at a time.
    With `share_prompt` (decoder-only students), a question's tasks are packed into one row.
    `min_passes`: run zero-weighted passes up to this many (FSDP needs every process to run the
    same number of forward/backward passes). `defer_sync`: a context (DDP's `no_sync`) that every pass
    but the last runs in, so gradients are reduced across processes once per step.
    """
    totals = token_totals or count_targets(samples)
    sums = {t: 0.0 for t in totals}
    plan = micro_batch_plan(model, samples, max_tokens, share_prompt)
    weights = [1.0] * len(plan)
    if len(plan) < min_passes:
        filler = plan[:1] or [([Sample("answer", [pad_id, pad_id], [-100, pad_id])],) * 2]
        plan, weights = plan + filler * (min_passes - len(plan)), weights + [0.0] * (min_passes - len(plan))
    for k, ((mb, flat), weight) in enumerate(zip(plan, weights)):
        with defer_sync() if defer_sync and k < len(plan) - 1 else contextlib.nullcontext():
            loss_sums, _ = (token_losses if flat is mb else packed_token_losses)(model, mb, pad_id)
            objective = sum(alphas.get(s.task, 0.0) / max(1, totals.get(s.task, 0)) * loss_sums[i]
                            for i, s in enumerate(flat)) * (scale * weight)
            if backward is not None:
                backward(objective)
        if weight:
            for i, s in enumerate(flat):
                sums[s.task] += float(loss_sums[i].detach())
    return {t: sums[t] / totals[t] for t in totals if totals[t]}


def count_targets(samples: list[Sample]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for s in samples:
        totals[s.task] = totals.get(s.task, 0) + sum(1 for x in s.labels if x != -100)
    return totals


# ---------------------------------------------------------------------------------------------
# Evaluation: option log-likelihood and greedy generation with exact match (the paper's metric).


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()


def match_option(generated: str, choices: tuple[str, ...]) -> int | None:
    """The option a generated answer names: its exact text, or a leading '(b)' letter."""
    first = generated.strip().split("\n")[0]
    g = _norm(first)
    for i, c in enumerate(choices):
        if g == _norm(c):
            return i
    m = re.match(r"\(?([a-z])\)", first.strip().lower())
    if m and ord(m.group(1)) - 97 < len(choices):
        return ord(m.group(1)) - 97
    for i, c in enumerate(choices):
        if _norm(c) and g.startswith(_norm(c)):
            return i
    return None


@torch.inference_mode()
def option_scores(model, tok, fmt: PromptFormat, ex: Example) -> list[float]:
    """Mean log-probability per token of each option after the answer prompt."""
    return [total / max(1, count) for total, count in option_logprobs(model, tok, fmt, ex)]


@torch.inference_mode()
def option_logprobs(model, tok, fmt: PromptFormat, ex: Example) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each option after the answer prompt."""
    seq2seq = is_seq2seq(model)
    samples = [encode(tok, fmt.answer_prompt(ex), " " + c, "answer", seq2seq, 4096) for c in ex.choices]
    for s in samples:  # score the option text only, not the end-of-sequence token
        s.labels = s.labels[:-1] if seq2seq else s.labels[:-1] + [-100]
    if can_share(model) and fits_window(model, [packed := pack(samples)]):  # the options share the prompt
        sums, counts = packed_token_losses(model, [packed], tok.pad_token_id)
    else:
        sums, counts = token_losses(model, samples, tok.pad_token_id)
    return [(-float(a), int(b)) for a, b in zip(sums, counts)]


@torch.inference_mode()
def generate_answer(model, tok, fmt: PromptFormat, ex: Example, max_new_tokens: int = 32) -> str:
    enc = tok(fmt.answer_prompt(ex), return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0] if is_seq2seq(model) else out[0, enc["input_ids"].shape[1]:]
    return tok.decode(new, skip_special_tokens=True)


def exact_match(generated: str, gold: str) -> bool:
    """The paper's metric: the generated answer's first line is the gold option's text (surrounding
    whitespace aside). Stricter than `match_option`, which also takes a leading '(b)' or a prefix."""
    return generated.strip().split("\n")[0].strip() == gold.strip()


EVAL_PICKS = {"loglik": ("loglik", "loglik_sum"), "generate": ("generate", "em")}


def evaluate(model, tok, fmt: PromptFormat, examples: list[Example], method: str = "both", log=None) -> dict:
    """Accuracy by option log-likelihood and/or generation; per-question predictions included.

    The log-likelihood pick (`loglik`) normalises by option length (mean log-prob per token);
    `loglik_sum`, the pick by summed log-prob, is recorded beside it so the effect of the
    normalisation can be read off the same run. Generation is scored twice: `em`, the paper's exact
    match of the generated text to the gold option's text, and `generate`, the option the text names
    (its text, a leading '(b)' or a prefix)."""
    was_training = model.training
    model.eval()
    picks = [p for m, ps in EVAL_PICKS.items() if method in (m, "both") for p in ps]
    preds, hits = [], dict.fromkeys(picks, 0)
    start = time.perf_counter()
    for i, ex in enumerate(examples):
        rec = {"id": ex.id, "gold": ex.answer}
        if method in ("loglik", "both"):
            lps = option_logprobs(model, tok, fmt, ex)
            means = [total / max(1, count) for total, count in lps]
            rec["loglik"] = max(range(len(lps)), key=means.__getitem__)
            rec["loglik_sum"] = max(range(len(lps)), key=lambda j: lps[j][0])
        if method in ("generate", "both"):
            rec["generated"] = generate_answer(model, tok, fmt, ex)
            rec["generate"] = match_option(rec["generated"], ex.choices)
            rec["em"] = int(exact_match(rec["generated"], ex.answer_text))
        for pick in picks:
            hits[pick] += is_correct(rec, pick)
        preds.append(rec)
        if log and (i + 1) % 25 == 0:
            log(f"[eval] {i + 1}/{len(examples)} | {time.perf_counter() - start:.0f}s")
    if was_training:
        model.train()
    n = len(examples)
    return {"n": n, "predictions": preds, **{f"accuracy_{p}": hits[p] / n if n else 0.0 for p in picks}}


def is_correct(rec: dict, pick: str) -> bool:
    """Whether a prediction record's pick ('loglik', 'loglik_sum', 'generate' or 'em') is right."""
    return rec[pick] == 1 if pick == "em" else rec[pick] == rec["gold"]


def correct_string(result: dict, pick: str) -> str:
    """Per question, in order: '1' where the pick was right, else '0' (compact, for paired tests)."""
    return "".join("1" if is_correct(p, pick) else "0" for p in result["predictions"])


# ---------------------------------------------------------------------------------------------
# Checkpoints: model, optimizer, scheduler, RNG and data position; resume reproduces the run.


def full_states(model, optimizer, sharded: bool) -> tuple[dict, dict]:
    """Model and optimizer state dicts; with FSDP gathered in full on rank 0 (a collective call)."""
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def save_checkpoint(folder: Path, model_state: dict, optimizer_state: dict, scheduler, step: int, keep: int = 2,
                    scaler=None) -> None:
    from safetensors.torch import save_file

    tmp = folder.parent / (folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model_state.items()}
    save_file(state, str(tmp / "model.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({**rng_states(), **({"scaler": scaler.state_dict()} if scaler is not None else {})}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    for stale in sorted(folder.parent.glob("step-*[0-9]"))[:-keep]:
        shutil.rmtree(stale)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint. A checkpoint is written as `step-N.tmp` and renamed when whole,
    so a `.tmp` folder is what a kill during the write left, never a checkpoint."""
    found = sorted(c for c in (out_dir / "checkpoints").glob("step-*[0-9]") if (c / "state.json").exists())
    return found[-1] if found else None


def remove_partial_checkpoints(out_dir: Path) -> list[Path]:
    partial = sorted((out_dir / "checkpoints").glob("step-*.tmp"))
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def load_checkpoint(folder: Path, model, optimizer, scheduler, sharded: bool = False, scaler=None) -> int:
    from safetensors.torch import load_file

    model_state = load_file(str(folder / "model.safetensors"))
    # weights_only: these files hold tensors and plain containers; never unpickle arbitrary objects.
    optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True)
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=opts)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=opts)
    else:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    set_rng_states(rng)
    if scaler is not None and "scaler" in rng:
        scaler.load_state_dict(rng["scaler"])
    return json.loads((folder / "state.json").read_text())["step"]


def rng_states() -> dict:
    """Every random generator a run draws from: torch's CPU and (when present) CUDA ones, Python's
    and NumPy's — as tensors and plain containers, so the file loads with weights_only=True."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})}


def set_rng_states(rng: dict) -> None:
    import numpy as np

    torch.set_rng_state(rng["torch"])
    random.setstate(_tuples(rng["python"]))
    if "numpy" in rng:  # checkpoints written before NumPy's state was saved have none
        n = rng["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------
# The loop.


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


def load_saved_student(folder: Path, device):
    import transformers

    config = json.loads((folder / "config.json").read_text())
    auto = transformers.AutoModelForSeq2SeqLM if config.get("is_encoder_decoder") else transformers.AutoModelForCausalLM
    return auto.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).to(device)


def train_student(cfg, train_examples: list[Example], rationales: dict[str, dict[str, str]],
                  eval_examples: list[Example], run, resume: bool = False, log=print,
                  test_examples: list[Example] | None = None) -> dict:
    """Train the student on the answer task plus one rationale task per teacher; save it; evaluate it.

    Distributed: launched by torchrun/accelerate, each process takes its share of every step's
    questions; gradients are summed across processes (each process's loss is its share of the
    global, token-normalised objective), so N processes compute the same step as one.
    """
    import torch.distributed as dist
    import transformers
    from accelerate import Accelerator

    tc = cfg.train
    acc = Accelerator(cpu=not torch.cuda.is_available())  # process group, device and ranks from the launcher
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    sharded = tc.sharding == "fsdp"
    if acc.distributed_type.name in ("FSDP", "DEEPSPEED"):
        raise UserError(f"accelerate is configured for {acc.distributed_type.name}, but TinyLLM shards the student itself: "
                        "launch with a plain multi-process accelerate config (or torchrun) and set train.sharding=fsdp.")
    if sharded and cfg.student.lora:
        raise UserError("train.sharding=fsdp is for full fine-tuning; LoRA students train with train.sharding=none.")
    if sharded and tc.precision == "fp16":
        raise UserError("train.sharding=fsdp runs in fp32 or bf16; set train.precision=bf16.")
    if sharded and (tc.eval_every or tc.epoch_eval):
        raise UserError("train.eval_every and train.epoch_eval need train.sharding=none; with fsdp the student is "
                        "evaluated after training.")
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
    low = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tc.precision]
    scaler = torch.amp.GradScaler(acc.device.type) if tc.precision == "fp16" else None
    fmt = prompt_format(cfg.student, model)
    samples = build_samples(train_examples, rationales, tok, fmt, is_seq2seq(model), tc.max_length)
    alphas = {"answer": 1.0, **{t.name: t.alpha for t in cfg.teachers}}
    tasks = ["answer"] + [t.name for t in cfg.teachers]
    n = len(samples)
    if n == 0:
        raise UserError("no training questions: check data.train_split and data.max_train.")
    per_step = tc.batch_size * tc.grad_accum
    steps_per_epoch = math.ceil(n / per_step)
    total = math.ceil(n * tc.epochs / per_step)
    if tc.max_steps is not None:
        total = min(total, tc.max_steps)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, int(tc.warmup_ratio * total), total)
    start_step = 0
    partial = remove_partial_checkpoints(out_dir) if main else []
    if main and partial:
        log(f"[train] removed {len(partial)} partial checkpoint(s) a killed run left: {', '.join(p.name for p in partial)}")
    if world > 1:
        dist.barrier()
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None and not partial:
            raise UserError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}; set train.save_every to make them.")
        if ckpt is None:
            resume = False
            if main:
                log("[train] --resume: the only checkpoint was partial (killed while being written); starting from step 0")
        else:
            start_step = load_checkpoint(ckpt, model, optimizer, scheduler, sharded, scaler)
            if main:
                log(f"[train] resumed from {ckpt} at step {start_step}/{total}")

    epochs = None
    if tc.epoch_eval and main:
        from distill.epochs import EpochEvaluator

        epochs = EpochEvaluator(out_dir, tok, fmt, eval_examples, test_examples or [], tc.eval_method, tc.select_by,
                                run, log, resume_step=start_step if resume else None)
        if start_step and start_step % steps_per_epoch == 0 and not epochs.done(start_step):
            epochs.end_of_epoch(model, start_step / steps_per_epoch, start_step)  # cut short before the kill
    if tc.epoch_eval and world > 1:
        dist.barrier()

    run.log_params({"student.identity": identity, "student.parameters": n_params,
                    "student.trainable_parameters": sum(p.numel() for p in params), "train.total_steps": total,
                    "train.world_size": world})
    if main:
        log(f"[train] {n} questions, tasks {', '.join(tasks)}, {total} steps of {per_step} questions, {world} process(es)")

    def order(epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(tc.seed + epoch)
        return torch.randperm(n, generator=g).tolist()

    model.train()
    t0, tokens_seen, history = time.perf_counter(), 0, []
    window_tokens, window_start = 0, time.perf_counter()
    for step in range(start_step, total):
        epoch, k = divmod(step, steps_per_epoch)
        questions = order(epoch)[k * per_step:(k + 1) * per_step][rank::world]
        step_samples = [s for q in questions for s in samples[q]]
        counts = count_targets(step_samples)
        totals_t = torch.tensor([float(counts.get(t, 0)) for t in tasks])
        if world > 1:
            dist.all_reduce(totals_t)
        totals = {t: int(v) for t, v in zip(tasks, totals_t.tolist()) if v > 0}
        passes = 1 if root is not None else 0  # DDP: a process with no question this step still joins the reduction
        if sharded:  # every process must run the same number of passes: pad with zero-weighted ones
            passes_t = torch.tensor([float(len(micro_batch_plan(model, step_samples, tc.micro_batch_tokens, tc.share_prompt)))])
            dist.all_reduce(passes_t, op=dist.ReduceOp.MAX)
            passes = int(passes_t.item())
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(acc.device.type, dtype=low or torch.float32, enabled=low is not None):
            # Each process's objective is its share of the global one, so gradients are summed across
            # processes; DDP's all-reduce and FSDP's reduce-scatter average them, hence x world.
            terms = step_loss_terms(model, step_samples, tok.pad_token_id, alphas, tc.micro_batch_tokens,
                                    token_totals=totals, scale=world, min_passes=passes,
                                    backward=lambda loss: (scaler.scale(loss) if scaler else loss).backward(),
                                    share_prompt=tc.share_prompt, defer_sync=root.no_sync if root else None)
        terms_t = torch.tensor([terms.get(t, 0.0) for t in tasks])
        if world > 1:
            dist.all_reduce(terms_t)
        terms = {t: v for t, v in zip(tasks, terms_t.tolist()) if t in totals}
        if scaler is not None:
            scaler.unscale_(optimizer)
        if tc.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()

        step_tokens = sum(len(s.input_ids) + (len(s.labels) if is_seq2seq(model) else 0) for s in step_samples)
        if world > 1:
            step_tokens_t = torch.tensor([float(step_tokens)])
            dist.all_reduce(step_tokens_t)
            step_tokens = int(step_tokens_t.item())
        tokens_seen += step_tokens
        window_tokens += step_tokens
        loss = sum(alphas[t] * v for t, v in terms.items())
        done = step + 1
        if main and (done % tc.log_every == 0 or done == total or done == start_step + 1):
            elapsed = time.perf_counter() - window_start
            tps = window_tokens / elapsed if elapsed else 0.0
            window_tokens, window_start = 0, time.perf_counter()
            rate = (time.perf_counter() - t0) / (done - start_step)
            lr = scheduler.get_last_lr()[0]
            parts = " ".join(f"{t} {v:.3f}" for t, v in terms.items())
            log(f"step {done:05d}/{total:05d} ({100 * done / total:.1f}%) | loss {loss:.4f} ({parts}) | lr {lr:.2e} | "
                f"{tps:.0f} tok/s | eta {format_duration(rate * (total - done))}")
            run.log_metrics({"loss": loss, **{f"loss_{t}": v for t, v in terms.items()}, "lr": lr,
                             "tokens_per_s": tps, "epoch": step / steps_per_epoch}, step=done)
        history.append({"step": done, "loss": loss, **{f"loss_{t}": v for t, v in terms.items()}})
        epoch_end = tc.epoch_eval and (done % steps_per_epoch == 0 or done == total)
        # At an epoch's end the checkpoint comes before the evaluation, so a kill during it resumes there.
        if tc.save_every and ((done % tc.save_every == 0 and done < total) or epoch_end):
            model_state, optimizer_state = full_states(model, optimizer, sharded)
            if main:
                save_checkpoint(out_dir / "checkpoints" / f"step-{done:06d}", model_state, optimizer_state, scheduler, done,
                                scaler=scaler)
            if world > 1:
                dist.barrier()
        if epoch_end:
            if main:
                epochs.end_of_epoch(model, round(done / steps_per_epoch, 3), done)
            if world > 1:
                dist.barrier()
        if tc.eval_every and done % tc.eval_every == 0 and done < total and eval_examples:
            if main:
                res = evaluate(model, tok, fmt, eval_examples, tc.eval_method)
                run.log_metrics({f"eval_{k}": v for k, v in res.items() if k.startswith("accuracy")}, step=done)
                log(f"[eval] step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items() if k.startswith("accuracy")))
            if world > 1:
                dist.barrier()

    result = {"steps": total, "tokens": tokens_seen, "seconds": time.perf_counter() - t0, "history": history}
    final_state = full_states(model, optimizer, True)[0] if sharded else None
    if main:
        student_dir = out_dir / "student"
        chosen = None
        if epochs is not None:
            chosen = epochs.restore_best(model)
            log(f"[epoch-eval] the student is epoch {chosen['epoch']:g} (step {chosen['step']}), best on "
                f"{cfg.data.eval_split} by accuracy_{tc.select_by}")
        final = model.merge_and_unload() if cfg.student.lora else model
        if sharded:  # save the gathered weights, then evaluate an unsharded copy on this process alone
            if getattr(final.config, "tie_word_embeddings", False):  # as save_pretrained does for a whole model
                for key in getattr(final, "_tied_weights_keys", None) or []:
                    final_state.pop(key, None)
            final.save_pretrained(student_dir, state_dict=final_state, safe_serialization=True)
            final = load_saved_student(student_dir, acc.device)
        else:
            final.save_pretrained(student_dir, safe_serialization=True)
        tok.save_pretrained(student_dir)
        fmt.save(student_dir)
        result["student_dir"] = str(student_dir)
        if chosen is not None:  # already scored at its epoch: report its test split, chosen on the eval split
            result["eval"] = {**chosen["test"], "split": cfg.data.test_split,
                              "predictions": epochs.predictions(chosen["step"], "test")}
            result["selection"] = epochs.summary()
            log("[eval] selected epoch on the test split: " + ", ".join(
                f"{k} {v:.3f}" for k, v in chosen["test"].items() if k.startswith("accuracy"))
                + f" on {chosen['test']['n']} questions")
        elif eval_examples:
            res = evaluate(final, tok, fmt, eval_examples, tc.eval_method, log=log)
            result["eval"] = res
            run.log_metrics({f"eval_{k}": v for k, v in res.items() if k.startswith("accuracy")}, step=total)
            log("[eval] final: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items() if k.startswith("accuracy"))
                + f" on {res['n']} questions")
    if world > 1:
        dist.barrier()
    return result
