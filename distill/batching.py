"""The TinyLLM loss over multi-task batches.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.data import Example
from distill.student import PromptFormat, is_seq2seq

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


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Σ_t w_t · CE(softcap(h_t Wᵀ), y_t), N target tokens at a time (train.ce_chunk_tokens). Each chunk's
    gradients with respect to h and W are computed as soon as its logits are, so no more than one chunk of
    (tokens x vocabulary) logits is ever alive, and there is no recomputation: the token weights w are known
    before the forward pass, and the backward pass only scales the stored gradients by the incoming scalar.
    The matmuls run in the ambient autocast precision, as the unchunked projection does; the per-token
    losses come back too, detached, for logging."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, token_weights, chunk: int, cap):
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        for a in range(0, n, chunk):
            h, y = hidden[a:a + chunk], labels[a:a + chunk]
            z = F.linear(h, weight)  # autocast decides the precision, as in TargetLogits
            t = torch.tanh(z / cap) if cap else None
            logits = (t * cap if cap else z).float()
            lse = logits.logsumexp(-1)
            losses[a:a + chunk] = lse - logits.gather(1, y[:, None]).squeeze(1)
            d = torch.exp(logits - lse[:, None])
            d[torch.arange(len(y), device=d.device), y] -= 1.0
            dz = (d * token_weights[a:a + chunk, None].float()).to(z.dtype)
            if cap:
                dz = dz * (1 - t * t)
            grad_hidden[a:a + chunk] = (dz @ weight.to(dz.dtype)).to(hidden.dtype)
            grad_weight += (dz.t() @ h.to(dz.dtype)).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.mark_non_differentiable(losses)
        objective = (losses * token_weights.float()).sum()
        return objective, losses

    @staticmethod
    def backward(ctx, grad_objective, _grad_losses):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_objective, grad_weight * grad_objective, None, None, None, None


class TargetLogits(torch.nn.Module):
    """A decoder-only student's logits at chosen (row, position) pairs only: the vocabulary projection
    never runs on prompt or padding positions. A module so that FSDP can make it the root that holds
    the embeddings, final norm and LM head. Given target ids, their weights and a chunk size, it returns
    the weighted cross-entropy and per-token losses instead (ChunkedLinearCrossEntropy)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, rows, cols, labels=None, token_weights=None, chunk=0):
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids).last_hidden_state
        head = self.model.get_output_embeddings()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if chunk:
            return ChunkedLinearCrossEntropy.apply(hidden[rows, cols], head.weight, labels, token_weights, chunk, cap)
        logits = head(hidden[rows, cols])
        return torch.tanh(logits / cap) * cap if cap else logits


def target_logits(model, input_ids, attention_mask, position_ids, rows, cols, **objective):
    scorer = getattr(model, "_tinyllm_root", None)
    scorer = TargetLogits(model) if scorer is None else scorer  # `or` would ask a compiled module its len()
    return scorer(input_ids, attention_mask, position_ids, rows, cols, **objective)


def can_chunk(model) -> bool:
    """train.ce_chunk_tokens applies: a decoder-only student whose vocabulary projection has no bias."""
    return not is_seq2seq(model) and getattr(model.get_output_embeddings(), "bias", None) is None


def _losses(run, labels, weights, chunk):
    """Per target token: (losses, objective or None). `run(**objective)` is the student's forward;
    `weights` are per target token (already scaled), needed up front only when chunked."""
    if chunk:
        return tuple(reversed(run(labels=labels, token_weights=weights, chunk=chunk)))
    losses = F.cross_entropy(run().float(), labels, reduction="none")
    return losses, None if weights is None else (losses * weights).sum()


def token_losses(model, batch: list[Sample], pad_id: int, weights=None, chunk: int = 0):
    """Per sample: (sum of target-token cross-entropy, number of target tokens, and with per-sample
    `weights` the objective Σ weight · sum, else None; chunked: computed with the losses)."""
    device = next(model.parameters()).device
    if is_seq2seq(model):
        ids = _pad([s.input_ids for s in batch], pad_id).to(device)
        labels = _pad([s.labels for s in batch], -100).to(device)
        dec_in = model.prepare_decoder_input_ids_from_labels(labels=labels.clamp(min=0)) if hasattr(
            model, "prepare_decoder_input_ids_from_labels") else None
        scorer = getattr(model, "_tinyllm_root", None)
        scorer = model if scorer is None else scorer
        logits = scorer(input_ids=ids, attention_mask=(ids != pad_id).long(), decoder_input_ids=dec_in).logits
        mask = labels != -100
        losses = F.cross_entropy(logits[mask].float(), labels[mask], reduction="none")
        objective = None if weights is None else (losses * weights[mask.nonzero()[:, 0]]).sum()
    else:
        ids = _pad([s.input_ids for s in batch], pad_id).to(device)
        attn = _pad([[1] * len(s.input_ids) for s in batch], 0).to(device)
        labels = _pad([s.labels for s in batch], -100).to(device)
        # Position i predicts token i+1; project only the positions whose next token is a target.
        targets = labels[:, 1:]
        mask = targets != -100
        rows, cols = mask.nonzero(as_tuple=True)
        losses, objective = _losses(lambda **o: target_logits(model, ids, attn, None, rows, cols, **o),
                                    targets[mask], None if weights is None else weights[rows], chunk)
    rows = mask.nonzero()[:, 0]
    sums = torch.zeros(len(batch), device=device, dtype=losses.dtype).index_add(0, rows, losses)
    return sums, mask.sum(dim=1), objective


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
    """Decoder-only students whose attention takes an arbitrary 4D mask (sdpa, eager) or a block mask
    (flex_attention)."""
    return not is_seq2seq(model) and _attn_impl(model) in ("sdpa", "eager", "flex_attention")


def use_flex_attention(model) -> None:
    """train.attention=flex: packed rows go through FlexAttention with a block mask built from the packing
    layout (fused kernels, compiled on first use) instead of the model's attention with a dense 4D mask.
    Same computation; torch has no FlexAttention backward on CPU, so it is for CUDA."""
    object.__setattr__(model, "_tinyllm_flex", True)


@contextlib.contextmanager
def _attention_as(model, impl: str):
    """Run the model's attention layers with another implementation for one forward (they look it up in
    the shared config on every call)."""
    before = model.config._attn_implementation
    model.config._attn_implementation = impl
    try:
        yield
    finally:
        model.config._attn_implementation = before


def packed_block_mask(seg: torch.Tensor):
    """The packing layout's mask as a FlexAttention BlockMask: query q sees key k <= q when k is shared
    (segment -1) or in q's own segment; padding (segment -2) sees only itself. Blocks no query sees are
    skipped by the kernel."""
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(b, h, q, k):
        return ((k <= q) & ((seg[b, k] == -1) | (seg[b, k] == seg[b, q]))) | (q == k)

    n = seg.shape[1]
    return create_block_mask(allowed, seg.shape[0], None, n, n, device=seg.device)


def packed_token_losses(model, packs: list[Pack], pad_id: int, weights=None, chunk: int = 0):
    """token_losses for packed questions: per sample (sum of target cross-entropy, target count),
    samples in pack order, and the objective (None without per-sample `weights`)."""
    n = sum(len(p.samples) for p in packs)
    run, labels, owner = packed_forward(model, packs, pad_id)
    losses, objective = _losses(run, labels, None if weights is None else weights[owner], chunk)
    sums = torch.zeros(n, device=losses.device, dtype=losses.dtype).index_add(0, owner, losses)
    counts = torch.zeros(n, device=losses.device, dtype=torch.long).index_add(0, owner, torch.ones_like(owner))
    return sums, counts, objective


def packed_target_logits(model, packs: list[Pack], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits that predict every target token of the packed questions: (logits, target ids, index of
    the sample each belongs to, samples numbered in pack order), targets in pack order."""
    run, labels, owner = packed_forward(model, packs, pad_id)
    return run(), labels, owner


def packed_forward(model, packs: list[Pack], pad_id: int):
    """(the packed questions' forward to their target positions, as a callable taking TargetLogits'
    objective arguments; target ids; index of the sample each target belongs to)."""
    device = next(model.parameters()).device
    n = max(len(p.ids) for p in packs)
    ids = torch.tensor([p.ids + [pad_id] * (n - len(p.ids)) for p in packs], device=device)
    pos = torch.tensor([p.positions + [0] * (n - len(p.ids)) for p in packs], device=device)
    seg = torch.tensor([p.segments + [-2] * (n - len(p.ids)) for p in packs], device=device)
    flex = getattr(model, "_tinyllm_flex", False) or _attn_impl(model) == "flex_attention"
    if flex:
        mask = packed_block_mask(seg)
    else:
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
    rows, src = torch.tensor(rows, device=device, dtype=torch.long), torch.tensor(src, device=device, dtype=torch.long)

    def run(**objective):
        with _attention_as(model, "flex_attention") if flex else contextlib.nullcontext():
            return target_logits(model, ids, mask, pos, rows, src, **objective)

    return (run, torch.tensor(labels, device=device, dtype=torch.long),
            torch.tensor(owner, device=device, dtype=torch.long))


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
                    share_prompt: bool = True, min_passes: int = 0, defer_sync=None,
                    ce_chunk_tokens: int = 0) -> dict[str, float]:
    """Run one optimizer step's samples; return each task's mean token loss (for logging).

    The objective is Σ_t α_t · (Σ target-token loss of task t) / N_t with N_t the task's target
    tokens in the step (`token_totals`, summed across processes when distributed). Each micro-batch
    backpropagates its share at once, so memory holds one micro-batch of activations at a time.
    With `share_prompt` (decoder-only students), a question's tasks are packed into one row.
    `min_passes`: run zero-weighted passes up to this many (FSDP needs every process to run the
    same number of forward/backward passes). `defer_sync`: a context (DDP's `no_sync`) that every pass
    but the last runs in, so gradients are reduced across processes once per step. `ce_chunk_tokens`:
    decoder-only students' projection and cross-entropy run that many target tokens at a time.
    """
    totals = token_totals or count_targets(samples)
    tasks = list(totals)
    sums = None  # per task, on the device: read back once, after the last pass
    plan = micro_batch_plan(model, samples, max_tokens, share_prompt)
    device = next(model.parameters()).device
    weights = [1.0] * len(plan)
    if len(plan) < min_passes:
        filler = plan[:1] or [([Sample("answer", [pad_id, pad_id], [-100, pad_id])],) * 2]
        plan, weights = plan + filler * (min_passes - len(plan)), weights + [0.0] * (min_passes - len(plan))
    for k, ((mb, flat), weight) in enumerate(zip(plan, weights)):
        with defer_sync() if defer_sync and k < len(plan) - 1 else contextlib.nullcontext():
            w = torch.tensor([alphas.get(s.task, 0.0) / max(1, totals.get(s.task, 0)) * scale * weight for s in flat],
                             device=device)
            loss_sums, _, objective = (token_losses if flat is mb else packed_token_losses)(
                model, mb, pad_id, weights=w, chunk=ce_chunk_tokens if can_chunk(model) else 0)
            if backward is not None:
                backward(objective)
        if weight:
            owner = torch.tensor([tasks.index(s.task) for s in flat], device=loss_sums.device)
            part = torch.zeros(len(tasks), device=loss_sums.device, dtype=loss_sums.dtype).index_add(
                0, owner, loss_sums.detach())
            sums = part if sums is None else sums + part
    per_task = sums.tolist() if sums is not None else [0.0] * len(tasks)
    return {t: per_task[k] / totals[t] for k, t in enumerate(tasks) if totals[t]}


def count_targets(samples: list[Sample]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for s in samples:
        totals[s.task] = totals.get(s.task, 0) + sum(1 for x in s.labels if x != -100)
    return totals
