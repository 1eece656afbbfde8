"""Settings and helpers shared by the built-in job kinds.

The dataclasses here declare (hybridlab.core.settings) what several kinds and commands take:
the model, how a job runs, and calibration data for importance scores. A kind's spec fields
and a command's options are generated from them, next to the kind's own settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hybridlab.compression.layer_importance import LAYER_METRICS
from hybridlab.core.errors import shown
from hybridlab.core.paths import DEMO_CALIB
from hybridlab.core.settings import batch_count, sample_count, sequence_length, setting
from hybridlab.jobs.specs import artifact_name, model_ref
from hybridlab.model.loading import DTYPES
from hybridlab.store.lookups import importance_scores_dir

# The library's layer metrics as options; "none" asks for no layer scores (the library's None).
LAYER_METRIC_OPTIONS = tuple(metric or "none" for metric in LAYER_METRICS)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_name(value: str) -> str:
    """auto, cpu, cuda or cuda:N; a CUDA device must exist here (jobs run on this machine's workers)."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {shown(value)}")
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"{value!r} asked for, but torch sees no CUDA device here; use cpu or auto")
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"{value!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s); "
                f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    return value


def data_source(value: str) -> str:
    """'demo', or an existing file/folder (made absolute)."""
    if value == "demo":
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{value!r} does not exist; pass 'demo' or the path of your data")
    return str(path.resolve())


def run_id_or_folder(text: str) -> int | str:
    """Command-line text for an importance run id or a scores folder: digits are a run id."""
    return int(text) if text.strip().isdigit() else text


def absolute_path(value: str) -> str:
    return str(Path(value).expanduser().resolve())


def existing_path(value: str) -> str:
    """A token file or a folder of text files (made absolute)."""
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{value!r} does not exist; pass a .npy token array or text files")
    return str(path.resolve())


@dataclass
class ModelInput:
    model: str = setting(check=model_ref, help="'demo' or a local Hugging Face model directory")


@dataclass
class JobOptions:
    """How any built-in job runs."""

    device: str = setting(
        "auto", check=device_name, help="where to run: auto (cuda when available), cpu, cuda or cuda:N"
    )
    name: str | None = setting(
        None, check=artifact_name, cli=False, help="artifact name under the workspace (default: <kind>-<job id>)"
    )
    trust_remote_code: bool = setting(False, help="allow custom modeling code from the model folder")
    dtype: str = setting(
        "auto",
        choices=DTYPES,
        help="load models in this dtype; auto keeps each checkpoint's own (bf16 stays bf16; the demo computes in float32)",
    )
    allow_pickle_weights: bool = setting(
        False, help="read pickle-based pytorch_model.bin weights, which can run code when read (off: safetensors only)"
    )


@dataclass
class Calibration:
    """Importance scores from calibration data: importance jobs, and prune jobs given no scores."""

    calib: str | None = setting(
        None,
        check=data_source,
        help="calibration data: 'demo', a .npy token array, text files, .jsonl or .parquet "
        "(default: the demo's for the demo model)",
    )
    samples: int = setting(64, check=sample_count, help="calibration sequences (the paper used 1024)")
    seq_len: int = setting(256, check=sequence_length, help="tokens per calibration sequence")
    batch_size: int = setting(8, check=batch_count)
    layer_metric: str = setting(
        "kl",
        choices=LAYER_METRIC_OPTIONS,
        help="layer score: drop-one-layer KL (the paper), loss increase, block cosine, or none",
    )
    layer_samples: int = setting(
        16, check=sample_count, help="sequences for the drop-one-layer passes (one forward per layer each)"
    )


def layer_metric_arg(option: str) -> str | None:
    """A layer_metric option as estimate_importance takes it."""
    return None if option == "none" else option


def scores_dir(importance: int | str, store) -> Path:
    """An importance run id (int) or a scores folder (str) -> the scores folder."""
    if isinstance(importance, int):
        return importance_scores_dir(store, importance)
    path = Path(importance).expanduser().resolve()
    if not (path / "scores.json").is_file():
        raise ValueError(
            f"{shown(importance)} holds no importance scores; pass an importance run id or a scores folder"
        )
    return path


# ---- checks before any work: from configs, file headers and token files alone --------------------


def check_model_input(spec: dict, key: str = "model"):
    """The ModelDescription of the spec's model `key`, checked from its config and weight headers
    (hybridlab.model.checks); None for a "job:N" model, which is checked when it exists."""
    from hybridlab.model.checks import check_model
    from hybridlab.store.job_parents import parse_job_ref

    ref = spec.get(key)
    if ref is None or parse_job_ref(ref) is not None:
        return None
    return check_model(ref, spec.get("trust_remote_code", False), spec.get("allow_pickle_weights", False))


def check_token_input(
    source: str | None,
    description=None,
    *,
    demo_file: str = DEMO_CALIB,
    label: str = "tokens",
    min_tokens: int = 0,
    row_len: int = 0,
) -> None:
    """A token source (a .npy array, text files, "demo") checked against the model `description`
    (its vocabulary) without loading it: dtype, shape, emptiness, id range, and for a .npy file
    at least `min_tokens` tokens in all and rows of at least `row_len` (a 2-D array)."""
    import numpy as np

    from hybridlab.core.errors import UserError
    from hybridlab.data.calibration import check_tokens, token_path

    if source is None:
        return
    vocab = description.widths.vocab_size if description is not None else None
    check_tokens(source, vocab, demo_file)
    path = token_path(source, demo_file)
    if path.suffix != ".npy" or not (min_tokens or row_len):
        return
    shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    if len(shape) == 2 and row_len and shape[1] < row_len:
        raise UserError(f"{label} {path} has rows of {shape[1]} tokens, fewer than seq_len {row_len}; lower seq_len")
    if int(np.prod(shape)) < min_tokens:
        raise UserError(
            f"{label} {path} holds {int(np.prod(shape)):,} tokens, fewer than the {min_tokens:,} needed for one "
            "window; pass more tokens or lower seq_len"
        )


def check_calibration(spec: dict, description) -> None:
    """A Calibration spec's data and seq_len against the model (importance, and prune scoring now)."""
    check_seq_len(description, spec["seq_len"])
    source = spec["calib"] or ("demo" if spec["model"] == "demo" else None)
    check_token_input(source, description, label="'calib'", min_tokens=spec["seq_len"], row_len=spec["seq_len"])


def check_seq_len(description, seq_len: int, label: str = "'seq_len'") -> None:
    """seq_len within the model's max_position_embeddings (where its config names one)."""
    from hybridlab.model.checks import check_seq_len as check

    if description is not None:
        check(description.config, seq_len, label)


def run_name(spec: dict, ctx, prefix: str) -> str:
    return spec.get("name") or f"{prefix}-{ctx.job_id}"


def device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(name)


def load(ref: str, spec: dict):
    """(model on the spec's device in the spec's dtype, tokenizer or None)."""
    from hybridlab.model.loading import load_model, torch_dtype

    model, tokenizer = load_model(
        ref,
        trust_remote_code=spec.get("trust_remote_code", False),
        dtype=torch_dtype(spec.get("dtype", "auto")),
        allow_pickle_weights=spec.get("allow_pickle_weights", False),
    )
    return model.to(device(spec.get("device", "cpu"))), tokenizer


def demo_tokens_or(path: str | None, model: str, demo_file: str) -> Path | None:
    """The token file to use: the given one, the demo's `demo_file` for the demo model, else None."""
    from hybridlab.core.paths import demo_dir

    if path is not None:
        return Path(path)
    if model == "demo":
        return demo_dir() / demo_file
    return None
