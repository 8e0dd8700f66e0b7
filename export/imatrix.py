"""An importance matrix from the student's own task, for llama.cpp's quantizer.

What llama.cpp's `llama-imatrix` computes from a calibration text, computed here from the torch student
on its own training questions (answer prompt + gold answer, the task it ships for): for every matrix
that a matmul multiplies, the mean over tokens of each input column's squared activation. The quantizer
then spends its rounding error where inputs are large (llama.cpp weights each column's error by it).

Saved in llama.cpp's legacy `.dat` layout, which `llama-quantize --imatrix FILE` reads:
    int32 n_entries; per entry: int32 len, name[len], int32 ncall, int32 nval, float32[nval]
    (sum over calls of per-call means, so value / ncall is the mean); then int32 last_call,
    int32 len, dataset[len].
GGUF-format imatrix files (`llama-imatrix -o x.gguf`: `<name>.in_sum2` / `<name>.counts`) are read too.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from distill.errors import UserError

FILE_NAME = "imatrix.dat"
BELOW_8_BITS = ("q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_1", "q4_0")
"""The quantizations an importance matrix is used for (f16 and q8_0 round finely enough without one)."""


def gguf_names(model, arch_name: str) -> dict[str, str]:
    """torch Linear module name -> the GGUF tensor its weight becomes (`blk.3.attn_q.weight`); a tied output
    projection multiplies by the token embedding, so its inputs count for `token_embd.weight`."""
    import gguf
    import torch

    cfg = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch_name), cfg.num_hidden_layers)
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        if name == "lm_head":
            out[name] = "token_embd.weight" if getattr(cfg, "tie_word_embeddings", False) else "output.weight"
            continue
        new = names.get_name(name + ".weight", try_suffixes=(".weight", ".bias"))
        if new is not None:
            out[name] = new
    return out


def compute(model, tok, texts: list[str], arch_name: str, progress=None) -> tuple[dict[str, np.ndarray], int]:
    """(GGUF tensor name -> mean squared input activation per column, tokens seen), one text at a time
    (no padding, so every position counted is a real token)."""
    import torch

    names = gguf_names(model, arch_name)
    sums: dict[str, torch.Tensor] = {}
    seen = {"tokens": 0}
    hooks = []

    def hook_for(gname):
        def hook(_mod, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[gname] = sums[gname] + (x * x).sum(0) if gname in sums else (x * x).sum(0)
        return hook

    modules = dict(model.named_modules())
    for name, gname in names.items():
        hooks.append(modules[name].register_forward_pre_hook(hook_for(gname)))
    try:
        with torch.inference_mode():
            for text in texts:
                ids = tok(text, return_tensors="pt")["input_ids"]
                model(input_ids=ids)
                seen["tokens"] += ids.shape[1]
                if progress is not None:
                    progress.update(1, tokens=ids.shape[1])
    finally:
        for h in hooks:
            h.remove()
    n = seen["tokens"]
    return {g: (s / n).float().numpy() for g, s in sums.items()}, n


def save_dat(path: Path, means: dict[str, np.ndarray], ncall: int, dataset: str) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<i", len(means)))
        for name, v in sorted(means.items()):
            b = name.encode()
            fh.write(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, v.size))
            fh.write((np.asarray(v, dtype=np.float32) * ncall).astype("<f4").tobytes())
        b = dataset.encode()
        fh.write(struct.pack("<i", ncall) + struct.pack("<i", len(b)) + b)


def load(path: Path) -> dict[str, np.ndarray]:
    """A legacy `.dat` or a GGUF imatrix file -> tensor name -> mean squared activation per column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--imatrix {path}: no such file; give a file from llama-imatrix or a TinyLLM export, "
                        "auto, or none.")
    if path.read_bytes()[:4] == b"GGUF":
        import gguf

        reader = gguf.GGUFReader(str(path))
        t = {x.name: np.asarray(x.data, dtype=np.float64) for x in reader.tensors}
        out = {}
        for name in t:
            if name.endswith(".in_sum2") and name[:-8] + ".counts" in t:
                counts = t[name[:-8] + ".counts"].reshape(-1)
                sums = t[name].reshape(len(counts), -1) / np.maximum(counts, 1)[:, None]
                out[name[:-8]] = sums.reshape(-1).astype(np.float32)
        if not out:
            raise UserError(f"--imatrix {path}: a GGUF without <tensor>.in_sum2/.counts pairs is not an imatrix file.")
        return out
    data, out, off = path.read_bytes(), {}, 4
    try:
        (n,) = struct.unpack_from("<i", data, 0)
        for _ in range(n):
            (ln,) = struct.unpack_from("<i", data, off)
            name = data[off + 4: off + 4 + ln].decode()
            off += 4 + ln
            ncall, nval = struct.unpack_from("<ii", data, off)
            off += 8
            v = np.frombuffer(data, dtype="<f4", count=nval, offset=off).astype(np.float32)
            off += 4 * nval
            out[name] = v / ncall if ncall > 0 else v
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"--imatrix {path}: not a llama.cpp imatrix file (.dat or GGUF) ({exc}).") from None
    return out


def ctypes_entries(means: dict[str, np.ndarray]):
    """The null-terminated `llama_model_imatrix_data` array `llama_model_quantize_params.imatrix` takes, and
    the buffers it points into (keep them alive until the quantizer returns)."""
    import ctypes

    import llama_cpp

    arr = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    keep = []
    for i, (name, v) in enumerate(sorted(means.items())):
        buf = np.ascontiguousarray(v, dtype=np.float32)
        b = name.encode()
        keep += [buf, b]
        arr[i].name, arr[i].data, arr[i].size = b, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size
    arr[len(means)].name = None
    return ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data)), (arr, keep)
