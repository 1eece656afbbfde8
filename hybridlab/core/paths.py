"""Where hybridlab finds its bundled assets and keeps its workspace."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def assets_dir() -> Path:
    return Path(os.environ.get("HYBRIDLAB_ASSETS", REPO_ROOT / "assets"))


def demo_dir() -> Path:
    """The bundled demo: teacher model, tokenizer and token sets."""
    return assets_dir() / "demo"


def workspace_dir(override: str | os.PathLike | None = None) -> Path:
    """Experiment store and artifacts: --workspace, else $HYBRIDLAB_WORKSPACE, else ~/.hybridlab."""
    chosen = override or os.environ.get("HYBRIDLAB_WORKSPACE") or Path.home() / ".hybridlab"
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
