"""Load and save models by reference: "demo" for the bundled teacher, else a local
Hugging Face directory. Saves are atomic: a temporary folder renamed into place."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hybridlab.core.atomic import atomic_directory
from hybridlab.families import supported_architectures
from hybridlab.model.checks import DEMO_NAME, check_weights, describe_config, read_config, resolve_model_dir
from hybridlab.model.fast_mamba import enable_if_suitable as enable_fast_mamba

DTYPES = ("auto", "float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype | None:
    """A dtype option's torch dtype; None for "auto" (the checkpoint's own)."""
    return None if name == "auto" else getattr(torch, name)


def loaded_dtype(ref: str | os.PathLike, dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype load_model gives `ref` for a dtype option; None keeps the checkpoint's own."""
    if dtype is None and str(ref) == DEMO_NAME:
        # Stored in bf16 to stay small, computed in fp32 like load_demo() and every figure in its card:
        # bf16 arithmetic is emulated on CPUs without AMX/AVX512-BF16 and ran several times slower there.
        return torch.float32
    return dtype


def load_model(
    ref: str | os.PathLike,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    allow_pickle_weights: bool = False,
):
    """(model in eval mode, tokenizer or None). dtype None keeps the checkpoint's own (the demo: float32).
    Checks the config, the family and its layer types,
    and the weight files' headers (hybridlab.model.checks) before loading weights; pickle `.bin`
    weights only with `allow_pickle_weights`."""
    from transformers import AutoModelForCausalLM

    dtype = loaded_dtype(ref, dtype)
    path = resolve_model_dir(ref)
    describe_config(read_config(path, trust_remote_code))  # an unsupported family fails here
    check_weights(path, allow_pickle_weights)  # truncated or garbage files fail here, not inside transformers
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=dtype or "auto")
    model.eval()
    enable_fast_mamba(model)  # on the CPU without CUDA kernels; HYBRIDLAB_FAST_MAMBA=0 keeps transformers' scan
    return model, load_tokenizer(path, trust_remote_code)


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    """The folder's tokenizer, or None when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        return None


def save_model(model, tokenizer, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """save_pretrained (safetensors) into a temporary sibling folder, then rename."""
    out = Path(out_dir).expanduser().resolve()
    with atomic_directory(out, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


__all__ = ["DEMO_NAME", "load_model", "resolve_model_dir", "save_model", "supported_architectures"]
