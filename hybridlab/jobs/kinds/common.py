"""Spec fields and helpers shared by the built-in job kinds."""

from __future__ import annotations

import re
from pathlib import Path

from hybridlab.jobs.registry import Field
from hybridlab.jobs.specs import artifact_name, existing_file, model_ref, positive

DEVICES = ("auto", "cpu", "cuda")


def model_field(doc: str = "'demo' or a local Hugging Face model directory") -> Field:
    return Field(str, doc=doc, check=model_ref)


def name_field() -> Field:
    return Field(
        str,
        default=None,
        nullable=True,
        check=artifact_name,
        doc="artifact name under the workspace (default: <kind>-<job id>)",
    )


TRUST_REMOTE_CODE = Field(bool, default=False, doc="allow custom modeling code from the model folder")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_name(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


DEVICE = Field(
    str, default="auto", check=device_name, doc="where to run: auto (cuda when available), cpu, cuda, cuda:N"
)
SEQ_LEN = Field(int, default=256, check=positive)
BATCH_SIZE = Field(int, default=8, check=positive)
TOKENS_FILE = Field(
    str,
    default=None,
    nullable=True,
    check=existing_file,
    doc="a 1-D uint16 .npy token file (default: the demo's for the demo model)",
)


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
