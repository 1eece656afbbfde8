"""Where hybridlab finds its bundled assets and keeps its workspace."""

from __future__ import annotations

import os
from pathlib import Path

from hybridlab.core.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def assets_dir() -> Path:
    return Path(os.environ.get("HYBRIDLAB_ASSETS", REPO_ROOT / "assets"))


# The bundled demo's files, named once (see assets/demo/DATA_CARD.md).
DEMO_TEACHER = "teacher"  # a Hugging Face model folder with its tokenizer
DEMO_CALIB = "calib.npy"  # [N, T] uint16 windows of the train split, for importance
DEMO_VAL = "val.npy"  # [M] uint16, the whole validation split
DEMO_TRAIN = "train_sample.npy"  # [M] uint16 chunks of the train split, for distillation and search


def demo_dir() -> Path:
    """The bundled demo: teacher model, tokenizer and token sets."""
    return assets_dir() / "demo"


def demo_teacher_dir(root: Path | None = None) -> Path:
    return (root or demo_dir()) / DEMO_TEACHER


def workspace_path(override: str | os.PathLike | None = None) -> Path:
    """Where the workspace is (made or not): --workspace, else $HYBRIDLAB_WORKSPACE, else ~/.hybridlab."""
    chosen = override or os.environ.get("HYBRIDLAB_WORKSPACE") or Path.home() / ".hybridlab"
    return Path(chosen).expanduser().resolve()


def workspace_dir(override: str | os.PathLike | None = None) -> Path:
    """Experiment store and artifacts (workspace_path), made if missing."""
    path = workspace_path(override)
    if path.exists() and not path.is_dir():
        raise UserError(f"workspace {path} is a file, not a folder; pass --workspace DIR (or set HYBRIDLAB_WORKSPACE)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(
            f"workspace {path} is inside a file; pass --workspace DIR (or set HYBRIDLAB_WORKSPACE)"
        ) from None
    except PermissionError:
        raise UserError(f"workspace {path} cannot be created (permission denied); pass --workspace DIR") from None
    return path
