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
from hybridlab.core.settings import positive, setting
from hybridlab.jobs.specs import artifact_name, model_ref
from hybridlab.store.lookups import importance_scores_dir

# The library's layer metrics as options; "none" asks for no layer scores (the library's None).
LAYER_METRIC_OPTIONS = tuple(metric or "none" for metric in LAYER_METRICS)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_name(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def data_source(value: str) -> str:
    """'demo', or an existing file/folder (made absolute)."""
    if value == "demo":
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{value!r} does not exist; pass 'demo' or the path of your data")
    return str(path.resolve())


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


@dataclass
class Calibration:
    """Importance scores from calibration data: importance jobs, and prune jobs given no scores."""

    calib: str | None = setting(
        None,
        check=data_source,
        help="calibration data: 'demo', a .npy token array, text files, .jsonl or .parquet "
        "(default: the demo's for the demo model)",
    )
    samples: int = setting(64, check=positive, help="calibration sequences (the paper used 1024)")
    seq_len: int = setting(256, check=positive, help="tokens per calibration sequence")
    batch_size: int = setting(8, check=positive)
    layer_metric: str = setting(
        "kl",
        choices=LAYER_METRIC_OPTIONS,
        help="layer score: drop-one-layer KL (the paper), loss increase, block cosine, or none",
    )
    layer_samples: int = setting(
        16, check=positive, help="sequences for the drop-one-layer passes (one forward per layer each)"
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
        raise ValueError(f"{importance!r} holds no importance scores; pass an importance run id or a scores folder")
    return path


def run_name(spec: dict, ctx, prefix: str) -> str:
    return spec.get("name") or f"{prefix}-{ctx.job_id}"


def device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(name)


def load(ref: str, spec: dict, dtype=None):
    """(model on the spec's device, tokenizer or None)."""
    from hybridlab.model.loading import load_model

    model, tokenizer = load_model(ref, trust_remote_code=spec.get("trust_remote_code", False), dtype=dtype)
    return model.to(device(spec.get("device", "cpu"))), tokenizer


def demo_tokens_or(path: str | None, model: str, demo_file: str) -> Path | None:
    """The token file to use: the given one, the demo's `demo_file` for the demo model, else None."""
    from hybridlab.core.paths import demo_dir

    if path is not None:
        return Path(path)
    if model == "demo":
        return demo_dir() / demo_file
    return None
