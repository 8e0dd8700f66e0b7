"""The fine-tuning delta as a llama.cpp LoRA adapter beside a 4-bit base built from the pretrained student.

The base holds the *pretrained* matrices; what training changed rides beside them in f16.

Why: a student fine-tuned from a quantized checkpoint (the packaged SmolLM2 is dequantized from Q4_1) moves
its weights by a fraction of one 4-bit step (0.06-0.5% of each matrix's norm after 40 steps at lr 5e-5),
so re-quantizing the trained weights rounds most of the change away: the q4_1 file of such a student is
close to the untrained model. The delta W_trained - W_pretrained is nearly low-rank (rank 32 holds 57-94%
of its energy per matrix), so a rank-r SVD of it, stored as llama.cpp's `lora_a`/`lora_b` pairs and added
at load (`Llama(lora_path=...)`, `llama-cli --lora`, Ollama's `ADAPTER`), brings the change back on top
of a base quantized from the pretrained weights, which lose nothing when they were on a 4-bit grid already.

The base folder (`base_student`) holds the pretrained 2-D weights with the trained 1-D ones (norms:
llama.cpp applies no adapter to them, and they stay f32 in every GGUF), so base + adapter = student up
to the rank-r cut and the base's own rounding.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from distill.errors import UserError, require
from export.gguf import SUPPORTED, _permute, check_supported

SKIP = ("embed_tokens", "lm_head")
"""Not adapted: llama.cpp's tied output projection reuses the token embedding with another LoRA layout."""


def _state(folder: Path) -> dict:
    from safetensors.numpy import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no *.safetensors weights; the delta adapter needs the student's and the base "
                        "model's weights as safetensors.")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def base_student(student: Path, base: Path, out: Path) -> Path:
    """A student folder (config, tokenizer, prompt format: the student's) whose matrices are `base`'s and whose
    1-D tensors are the student's own; exported like any student."""
    from safetensors.numpy import save_file

    trained, pre = _state(student), _state(base)
    missing = sorted(k for k, v in trained.items() if v.ndim == 2 and k not in pre)
    if missing or any(pre[k].shape != v.shape for k, v in trained.items() if v.ndim == 2 and k in pre):
        raise UserError(f"{base} is not the model {student} was trained from (tensors {', '.join(missing[:3]) or 'differ in shape'}); "
                        "pass the pretrained student it started from.")
    out.mkdir(parents=True, exist_ok=True)
    for f in student.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    merged = {k: (pre[k] if v.ndim == 2 else v).astype(np.float32) for k, v in trained.items()}
    save_file(merged, str(out / "model.safetensors"))
    return out


def write_delta_adapter(student: Path, base: Path, out_file: Path, rank: int) -> dict:
    """The rank-`rank` SVD of (student - base) for every adapted matrix, as a llama.cpp LoRA GGUF (f16,
    scale 1). Returns what it kept: per-matrix energy share and the file's size."""
    gguf = require("gguf")
    import torch

    hf_cfg = json.loads((student / "config.json").read_text())
    arch_name = SUPPORTED[check_supported(hf_cfg)]
    arch = getattr(gguf.MODEL_ARCH, arch_name)
    n_layer, n_head = hf_cfg["num_hidden_layers"], hf_cfg["num_attention_heads"]
    n_kv = hf_cfg.get("num_key_value_heads", n_head)
    names = gguf.get_tensor_name_map(arch, n_layer)
    trained, pre = _state(student), _state(base)
    w = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[arch])
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))  # llama.cpp scales by alpha / rank: 1
    kept, n = [], 0
    for name, t in sorted(trained.items()):
        if t.ndim != 2 or any(s in name for s in SKIP):
            continue
        delta = torch.from_numpy(t.astype(np.float32) - pre[name].astype(np.float32))
        if arch_name != "GEMMA3" and name.endswith(("q_proj.weight", "k_proj.weight")):
            delta = torch.from_numpy(_permute(delta.numpy(), n_head if name.endswith("q_proj.weight") else n_kv))
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        r = min(rank, len(s))
        kept.append(float((s[:r] ** 2).sum() / (s ** 2).sum()) if s.any() else 1.0)
        root = s[:r].sqrt()
        a = (root[:, None] * vh[:r]).numpy().astype(np.float16)  # [r, in]
        b = (u[:, :r] * root[None, :]).numpy().astype(np.float16)  # [out, r]
        gname = names.get_name(name, try_suffixes=(".weight",))
        w.add_tensor(gname + ".lora_a", a)
        w.add_tensor(gname + ".lora_b", b)
        n += 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"rank": rank, "matrices": n, "bytes": out_file.stat().st_size,
            "energy_kept_min": min(kept), "energy_kept_mean": sum(kept) / len(kept)}
