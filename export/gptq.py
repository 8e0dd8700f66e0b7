"""Error-compensating rounding (GPTQ) onto llama.cpp's own q4_0 / q5_0 grid, chosen on the student's training prompts.

llama.cpp rounds every weight to its nearest grid point. GPTQ (Frantar et al., 2023) rounds a matrix one input
column at a time and spreads each column's rounding error over the columns not yet rounded, weighted by the
inverse of the Hessian H = Σ x xᵀ of that matrix's inputs on calibration text. That keeps the matrix's outputs on
those inputs closer to the fp32 ones than nearest rounding does. The grid is llama.cpp's: per row, blocks of 32
input columns, each with the scale d = peak / -offset taken from the block's value of largest magnitude (q4_0:
offset 8, codes 0..15; q5_0: offset 16, codes 0..31) and stored as fp16. The peak itself is kept exactly on the
grid (code 0), so when llama.cpp re-quantizes the rounded f16 weights it finds the same scale and the same codes:
the file holds the blocks chosen here (the test checks it block for block).
"""
from __future__ import annotations

from distill.errors import UserError
from distill.progress import Progress, log

GRIDS = {"Q4_0": (8, 15), "Q5_0": (16, 31)}
"""GGUF type -> (offset, largest code), as export/qat.py's ROUNDED."""
BLOCK = 32
QUANTS = ("q4_0", "q5_0")
"""Whole-file `--quant` types whose matrices GPTQ rounds (a --tensor-type pair may bring q4_0/q5_0 into others);
with `--quant auto` each is one more candidate (`<quant>-gptq<N>`)."""


def check(quant: str, imatrix: str, adapter_rank: int, qat_questions: int, tensor_types: str = "") -> None:
    """Refuse, before any work, what GPTQ rounding cannot go with (with --quant auto it adds candidates)."""
    if quant not in (*QUANTS, "auto") and not tensor_types:
        raise UserError(f"export.gptq_questions rounds q4_0 and q5_0 matrices, and --quant {quant} has none; give "
                        "--quant q4_0, q5_0 or auto, or --tensor-type pairs that set some matrices to q4_0/q5_0.")
    if imatrix != "none":
        raise UserError("export.gptq_questions and an importance matrix cannot go together: llama.cpp rounds with its "
                        "own search under one, so the GPTQ blocks would not survive; set export.imatrix=none.")
    if adapter_rank:
        raise UserError("export.gptq_questions rounds the trained student, export.adapter_rank ships a delta beside the "
                        "pretrained base; use one of them.")
    if qat_questions:
        raise UserError("export.gptq_questions and export.qat_questions both decide how the weights land on the grid; "
                        "use one of them.")


def hessians(model, tok, texts: list[str], names: list[str]) -> tuple[dict, int]:
    """name -> Σ x xᵀ (float64) of the inputs of each named Linear over `texts`, and the token count."""
    import torch

    modules = dict(model.named_modules())
    acc = {n: None for n in names}
    last = {"x": None, "h": None}  # q/k/v (and gate/up) read the same tensor: its x xᵀ is computed once

    def hook(name):
        def pre(_module, args):
            if args[0] is not last["x"]:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                last["x"], last["h"] = args[0], (x.T @ x).double()
            acc[name] = last["h"] if acc[name] is None else acc[name] + last["h"]
        return pre

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    tokens = 0
    progress = Progress("gptq: inputs", len(texts), log, every_s=30.0, unit="q")
    try:
        with torch.no_grad():
            for text in texts:  # one at a time: no padding rows in the sums
                ids = tok(text, return_tensors="pt", add_special_tokens=True)["input_ids"]
                model(input_ids=ids)
                tokens += ids.shape[1]
                progress.update(1)
    finally:
        for h in handles:
            h.remove()
        last.clear()
    return acc, tokens


def round_matrix(w, h, kind: str, damp: float = 0.01):
    """`w` (out × in) rounded onto llama.cpp's `kind` grid with GPTQ's error feedback under the inputs' Σ x xᵀ `h`;
    returns the dequantized matrix (float32), every value exactly what llama.cpp will store."""
    import torch

    offset, top = GRIDS[kind]
    W = w.detach().double().half().double().clone()  # what the f16 GGUF hands the quantizer
    rows, cols = W.shape
    H = h.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for b0 in range(0, cols, BLOCK):
        b1 = b0 + BLOCK
        blk = W[:, b0:b1]
        where = blk.abs().argmax(1)  # the block's peak, on today's (error-fed) values
        peak = blk.gather(1, where[:, None])[:, 0]
        d = peak / -offset
        dh = d.float().half().double()  # llama.cpp stores the scale as fp16
        inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
        err = torch.zeros((rows, BLOCK), dtype=W.dtype)
        for j in range(BLOCK):
            c = b0 + j
            x = W[:, c]
            q = torch.clamp(torch.floor(x * inv + (offset + 0.5)), 0, top)
            q = torch.where(where == j, torch.zeros_like(q), q)  # the peak stays on the grid: same scale on re-rounding
            xq = (q - offset) * dh
            Q[:, c] = xq
            e = (x - xq) / U[c, c]
            W[:, c + 1:b1] -= e[:, None] * U[c, c + 1:b1][None, :]
            err[:, j] = e
        W[:, b1:] -= err @ U[b0:b1, b1:]
    return Q.float()


def round_model(model, acc: dict, ptypes: dict[str, str], texts: int, tokens: int, damp: float = 0.01) -> dict:
    """Round, in place, every matrix of `model` whose GGUF type (`ptypes`: torch name -> type) is q4_0 or q5_0,
    with GPTQ under its inputs' Σ x xᵀ in `acc` (from `hessians`, left as it is); returns what was done."""
    import torch

    from export.qat import round_like

    modules = dict(model.named_modules())
    names = [n.rsplit(".", 1)[0] for n, k in ptypes.items() if k in GRIDS and n.rsplit(".", 1)[0] in acc]
    progress = Progress("gptq: rounding", len(names), log, every_s=30.0, unit="matrix")
    ours = nearest = 0.0
    with torch.no_grad():
        for name in names:
            w = modules[name].weight
            kind, hf = ptypes[name + ".weight"], acc[name].float()
            q = round_matrix(w, hf.double(), kind, damp)
            ref = w.detach().half().float()
            for mine, cand in ((True, q), (False, round_like(w, kind))):  # output error on the calibration inputs
                delta = ref - cand
                value = float(((delta @ hf) * delta).sum())
                ours, nearest = (ours + value, nearest) if mine else (ours, nearest + value)
            w.copy_(q.to(w.dtype))
            progress.update(1)
    ratio = ours / nearest if nearest else 1.0
    log(f"[export] gptq: {len(names)} matrices rounded with error feedback on {texts} training questions "
        f"({tokens} tokens); output error {ratio:.2f}x that of nearest rounding")
    return {"matrices": len(names), "questions": texts, "tokens": tokens, "damp": damp,
            "output_error_vs_nearest": round(ratio, 4)}


def linear_names(model, ptypes: dict[str, str]) -> list[str]:
    """The Linear modules whose weight GPTQ can round under `ptypes`."""
    import torch

    modules = dict(model.named_modules())
    return [n.rsplit(".", 1)[0] for n, k in ptypes.items() if k in GRIDS
            and isinstance(modules.get(n.rsplit(".", 1)[0]), torch.nn.Linear)]


def apply(model, tok, texts: list[str], ptypes: dict[str, str], damp: float = 0.01) -> dict:
    """`hessians` on `texts`, then `round_model`: GPTQ for every q4_0/q5_0 matrix of `model`, in place."""
    acc, tokens = hessians(model.eval(), tok, texts, linear_names(model, ptypes))
    return round_model(model, acc, ptypes, len(texts), tokens, damp)
