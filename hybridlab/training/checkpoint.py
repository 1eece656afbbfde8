"""Training checkpoints: model weights as safetensors, everything else as plain tensors and dicts.

Layout of `<dir>/`:
    model.safetensors   the model's parameters and buffers
    state.pt            optimizer state, step, tokens seen, wall time, RNG states (torch.save of
                        tensors/dicts/numbers only, so `torch.load(weights_only=True)` reads it)
A checkpoint is written to a sibling temp folder and renamed into place, so a crash mid-write
leaves the previous checkpoint intact. Replacing it takes two renames (the old one to
`.<dir>.old`, the new one into place); a crash between them leaves only the backup, which
`restore_checkpoint` (called by load_checkpoint, save_checkpoint and has_checkpoint) renames
back, so an interrupted run always finds its last complete checkpoint. A model sharded with
FSDP2 is gathered into full tensors first (a collective: every rank calls save_checkpoint,
rank 0 writes).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from hybridlab.core.atomic import restore_swapped
from hybridlab.core.faults import pause_point

CHECKPOINT_FILES = ("model.safetensors", "state.pt")


def checkpoint_complete(path: str | Path) -> bool:
    """Whether folder `path` holds both files of a checkpoint."""
    return all((Path(path) / name).is_file() for name in CHECKPOINT_FILES)


def restore_checkpoint(path: str | Path) -> str | None:
    """Put back the checkpoint a crash stranded in `.<name>.old` between the two renames of a save
    (or drop that backup when `path` is complete); returns what it did, None if nothing."""
    return restore_swapped(Path(path), checkpoint_complete)


def has_checkpoint(path: str | Path) -> bool:
    """Whether `path` holds a complete checkpoint to resume from, after restoring a stranded one."""
    restore_checkpoint(path)
    return checkpoint_complete(path)


def is_sharded(model: torch.nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def _full_state(model, optimizer) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, is_main: bool = True
) -> None:
    """Atomically write `model`, `optimizer` and `state` (step, tokens, ...) plus RNG states to `path`."""
    sharded = is_sharded(model)
    if sharded:
        model_state, optimizer_state = _full_state(model, optimizer)
    if not is_main:
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    restore_checkpoint(path)  # never delete the only complete checkpoint below
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    if sharded:
        save_file({k: v.contiguous().clone() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
    else:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
        optimizer_state = optimizer.state_dict()
    torch.save({**state, "optimizer": optimizer_state, "rng": _rng_state()}, tmp / "state.pt")
    if path.exists():
        path.rename(old)
        pause_point("checkpoint.between-renames")
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore weights (and optimizer and RNG states) in place; returns the saved state dict."""
    path = Path(path)
    restore_checkpoint(path)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"no checkpoint at {path}: expected model.safetensors and state.pt")
    try:
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"the checkpoint at {path} is corrupt or unreadable ({err}); delete it to start over"
        ) from None
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            model,
            optimizer,
            model_state_dict=load_file(str(path / "model.safetensors")),
            optim_state_dict=state.pop("optimizer"),
            options=StateDictOptions(full_state_dict=True),
        )
    else:
        load_model(model, str(path / "model.safetensors"))
        if optimizer is not None:
            optimizer.load_state_dict(state.pop("optimizer"))
            _keep_implementation(optimizer)
    _set_rng_state(state.pop("rng"))
    return state


def _rng_state() -> dict:
    # numpy's legacy state is (str, uint32 array, int, int, float): stored as tensor + numbers.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": [int(pos), int(has_gauss), float(cached)],
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
    }


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    pos, has_gauss, cached = rng["numpy_rest"]
    np.random.set_state(("MT19937", rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((3, tuple(int(x) for x in rng["python"].tolist()), None))


def _keep_implementation(optimizer: torch.optim.Optimizer) -> None:
    """load_state_dict takes each group's flags from the file, so a checkpoint saved by a non-fused
    AdamW would turn the fused one built for this run back into the per-tensor loop: keep this
    run's choice (and the step counters where a fused kernel wants them, float32 on the device)."""
    fused = optimizer.defaults.get("fused")
    for group in optimizer.param_groups:
        for flag in ("fused", "foreach"):
            if flag in optimizer.defaults:
                group[flag] = optimizer.defaults[flag]
        if fused:
            for param in group["params"]:
                step = optimizer.state.get(param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    optimizer.state[param]["step"] = step.to(dtype=torch.float32, device=param.device)
