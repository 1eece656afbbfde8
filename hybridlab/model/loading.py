"""Load and save models by reference: "demo" for the bundled teacher, else a local
Hugging Face directory. Saves are atomic: a temporary folder renamed into place."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hybridlab.core.atomic import atomic_directory
from hybridlab.core.paths import demo_teacher_dir
from hybridlab.families import family_for, supported_architectures

DEMO_NAME = "demo"


def resolve_model_dir(ref: str | os.PathLike) -> Path:
    if str(ref) == DEMO_NAME:
        path = demo_teacher_dir()
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"the bundled demo teacher is missing at {path}; reinstall hybridlab from a full clone"
            )
        return path
    path = Path(ref).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model directory {path} does not exist; pass 'demo' or a local Hugging Face model directory"
        )
    if not path.is_dir() or not (path / "config.json").exists():
        raise ValueError(
            f"{path} is not a Hugging Face model directory (no config.json); pass 'demo' or a folder written by save_pretrained"
        )
    return path


def load_model(ref: str | os.PathLike, trust_remote_code: bool = False, dtype: torch.dtype | None = None):
    """(model in eval mode, tokenizer or None). Checks the family before loading weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(ref)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    family_for(config)  # an unsupported family fails here, before the weights are read
    model = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32
    )
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return model, tokenizer


def save_model(model, tokenizer, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """save_pretrained (safetensors) into a temporary sibling folder, then rename."""
    out = Path(out_dir).expanduser().resolve()
    with atomic_directory(out, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


__all__ = ["DEMO_NAME", "load_model", "resolve_model_dir", "save_model", "supported_architectures"]
