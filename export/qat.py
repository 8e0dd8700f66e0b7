"""A quantization-aware pass: the student tuned, just before llama.cpp quantizes it, to answer as it does in fp32.

Fine-tuning moves a student that came from a 4-bit file by less than one 4-bit step, so re-quantizing it
rounds much of what it learned away (benchmarks/results/obqa_student_forms.md, "kept"). This pass runs the
student with every weight rounded exactly as llama.cpp's quantizer will round it (q4_0, q5_0 and q8_0: blocks
of 32 values of the f16 weights the GGUF holds, the reference rounding `llama_model_quantize` uses without an
importance matrix) and with every matmul input rounded to q8_0, as llama.cpp's CPU kernels take it. The float
weights move by the straight-through gradient so that this rounded student's next-token distributions match
the trained fp32 student's (KL) on its own training questions; llama.cpp then rounds the tuned weights to
exactly the blocks the pass trained with. Only the legacy block types can be mirrored this exactly, so the
pass is offered for q4_0, q5_0 and q8_0.
"""
from __future__ import annotations

import copy
import math
import random
import shutil
from pathlib import Path

from distill.errors import UserError
from distill.progress import Progress, log

QUANTS = ("q4_0", "q5_0", "q8_0")
"""`--quant` values the pass can mirror exactly."""
BLOCK = 32
ROUNDED = {"Q4_0": (8, 15), "Q5_0": (16, 31)}
"""GGUF type -> (offset, largest code) of llama.cpp's `quantize_row_q{4,5}_0_ref`."""
MIRRORED = ("Q4_0", "Q5_0", "Q8_0")
"""GGUF types whose rounding `round_like` reproduces."""


def check(quant: str, imatrix: str, adapter_rank: int) -> None:
    """Refuse, before any work, what the pass cannot mirror."""
    if quant not in QUANTS:
        raise UserError(f"export.qat_questions needs --quant {', '.join(QUANTS)} (block types whose rounding the pass "
                        f"reproduces exactly); --quant {quant} is not one of them.")
    if imatrix != "none":
        raise UserError("export.qat_questions and an importance matrix cannot go together: llama.cpp rounds differently "
                        "with one, so the tuned weights would not land where the pass put them; set export.imatrix=none.")
    if adapter_rank:
        raise UserError("export.qat_questions tunes the whole student, export.adapter_rank ships a delta beside the "
                        "pretrained base; use one of them.")


def _inverse(d):
    """1/d, and 0 where d is 0 (an all-zero block), as llama.cpp's `id = d ? 1.0f/d : 0.0f`."""
    import torch

    safe = torch.where(d != 0, d, torch.ones_like(d))
    return torch.where(d != 0, 1.0 / safe, torch.zeros_like(d))


def _q8_inputs(_module, args):
    """Forward pre-hook: a matmul's input rounded to q8_0 as llama.cpp's kernels take it (straight-through)."""
    x = args[0]
    return (x + (round_like(x, "Q8_0", ref=False) - x).detach(), *args[1:])


def round_like(w, kind: str, ref: bool = True):
    """`w` as llama.cpp stores and multiplies it as GGUF type `kind` (dequantized, float32). `ref`: weights go
    through fp16 first (the f16 GGUF the quantizer reads) and q8_0 rounds half away from zero (the reference
    quantizer); activations (`ref=False`) are rounded to nearest even, as the SIMD q8_0 kernels do."""
    import torch

    x = w.detach().float()
    if ref:
        x = x.half().float()
    if kind in ("F16", "F32"):
        return x if kind == "F16" else w.detach().float()
    shape = x.shape
    b = x.reshape(-1, BLOCK)
    if kind in ROUNDED:
        offset, top = ROUNDED[kind]
        peak = b.gather(1, b.abs().argmax(1, keepdim=True))  # the signed value of largest magnitude (first of ties)
        d = peak / -offset
        q = torch.clamp(torch.floor(b * _inverse(d) + (offset + 0.5)), max=top)
        out = (q - offset) * d.half().float()
    elif kind == "Q8_0":
        d = b.abs().amax(1, keepdim=True) / 127
        v = b * _inverse(d)
        q = torch.sign(v) * torch.floor(v.abs() + 0.5) if ref else torch.round(v)
        out = q * d.half().float()
    else:
        raise UserError(f"the quantization-aware pass cannot mirror GGUF type {kind}; use --quant {', '.join(QUANTS)}.")
    return out.reshape(shape)


def param_types(model, arch_name: str, types: dict[str, str]) -> dict[str, str]:
    """torch parameter name -> the GGUF type llama.cpp gave it (the tied LM head is the token embedding)."""
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch_name), model.config.num_hidden_layers)
    out = {}
    for name, p in model.named_parameters():
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new in types and p.ndim == 2:
            out[name] = types[new]
    return out


def tune(model, tok, pairs: list[tuple[str, str]], ptypes: dict[str, str], lr: float, batch_size: int = 8,
         seed: int = 0, prompt_weight: float = 0.5, first_weight: float = 0.0):
    """A copy of `model` tuned for one pass over `pairs` under llama.cpp's rounding; returns (copy, facts).
    The loss is KL(fp32 student || rounded copy) per position: `prompt_weight` of it on the prompt's positions,
    the rest on the gold answer's (what exact match reads), of which `first_weight` goes to the position that
    picks the answer's first token (where greedy decoding commits to an option)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    ref = model.eval()
    qm = copy.deepcopy(model).train()
    for m in qm.modules():  # dropout would make the copy disagree with the reference for no reason
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    params = dict(qm.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    modules = dict(qm.named_modules())
    hooks = [modules[n.rsplit(".", 1)[0]].register_forward_pre_hook(_q8_inputs)
             for n, kind in ptypes.items() if kind in MIRRORED
             and isinstance(modules.get(n.rsplit(".", 1)[0]), torch.nn.Linear)]
    if getattr(qm.config, "tie_word_embeddings", False) and "lm_head" in modules:
        emb = next((k for k in ptypes if "embed_tokens" in k), None)
        if emb and ptypes[emb] in MIRRORED:
            hooks.append(modules["lm_head"].register_forward_pre_hook(_q8_inputs))
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    steps = math.ceil(len(order) / batch_size)
    progress = Progress("qat", steps, log, every_s=30.0, unit="step")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    first = last = None
    try:
        for s in range(steps):
            idx = order[s * batch_size:(s + 1) * batch_size]
            rows, answer_from = [], []
            for i in idx:
                p = tok(pairs[i][0], add_special_tokens=True)["input_ids"]
                a = tok(pairs[i][0] + pairs[i][1], add_special_tokens=True)["input_ids"]
                rows.append(a)
                answer_from.append(len(p) - 1)  # logits at this position predict the answer's first token
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            pos = torch.arange(width - 1)
            live = mask[:, 1:].bool()  # position t predicts token t+1
            is_answer = pos[None, :] >= torch.tensor(answer_from)[:, None]
            is_first = pos[None, :] == torch.tensor(answer_from)[:, None]
            with torch.no_grad():
                target = F.log_softmax(ref(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
            rounded = {n: (p + (round_like(p, ptypes[n]) - p).detach()) if n in ptypes else p
                       for n, p in params.items()}
            logits = functional_call(qm, rounded, args=(), kwargs={"input_ids": ids, "attention_mask": mask}).logits
            kl = (target.exp() * (target - F.log_softmax(logits[:, :-1].float(), -1))).sum(-1)
            ans, prompt = live & is_answer, live & ~is_answer
            answer_loss = (1 - first_weight) * kl[ans].mean() + first_weight * kl[live & is_first].mean()
            loss = (1 - prompt_weight) * answer_loss + prompt_weight * (kl[prompt].mean() if prompt.any() else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(kl[ans].mean().detach())
            first = value if first is None else first
            last = value if last is None else 0.9 * last + 0.1 * value
            progress.update(1, tokens=int(mask.sum()))
    finally:
        for h in hooks:
            h.remove()
    qm.eval()
    log(f"[export] quantization-aware pass: answer-position KL to the fp32 student {first:.4f} (first batch) -> "
        f"{last:.4f} (last batches)")
    return qm, {"steps": steps, "batch_size": batch_size, "lr": lr, "answer_kl_first_batch": round(first, 5),
                "answer_kl_end_ema": round(last, 5)}


def save(qm, student: Path, dst: Path) -> Path:
    """The tuned student as a folder `write_f16` reads: its weights (safetensors) beside the student's other files."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in student.iterdir():
        if f.is_file() and f.suffix not in (".safetensors", ".bin") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, dst / f.name)
    qm.save_pretrained(dst, safe_serialization=True)
    return dst
