"""Training checkpoints: model, optimizer, scheduler and every RNG, written whole or not at all.

Written as `step-N.tmp` and renamed when complete, so resuming from one reproduces the uninterrupted
run and a kill mid-write never leaves something that looks like a checkpoint."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from distill import layout

# ---------------------------------------------------------------------------------------------
# Checkpoints: model, optimizer, scheduler, RNG and data position; resume reproduces the run.


def full_states(model, optimizer, sharded: bool) -> tuple[dict, dict]:
    """Model and optimizer state dicts; with FSDP gathered in full on rank 0 (a collective call)."""
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def save_weights(state: dict, path: Path) -> None:
    """A state dict as safetensors (tied tensors written as separate copies, as safetensors requires)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path))


def save_checkpoint(folder: Path, model_state: dict, optimizer_state: dict, scheduler, step: int, keep: int = 2,
                    scaler=None) -> None:
    tmp = folder.parent / (folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_weights(model_state, tmp / "model.safetensors")
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
    found = sorted(c for c in (out_dir / layout.CHECKPOINTS).glob("step-*[0-9]") if (c / "state.json").exists())
    return found[-1] if found else None


def remove_partial_checkpoints(out_dir: Path) -> list[Path]:
    partial = sorted((out_dir / layout.CHECKPOINTS).glob("step-*.tmp"))
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
