"""A model for the dashboard tests: the bundled demo teacher when it is shipped, else a
tiny random NemotronH saved to a folder with calibration and validation token files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hybridlab.core.paths import demo_dir


@dataclass
class AppModel:
    ref: str  # what the jobs get: "demo" or an absolute folder
    calib: str | None  # token files (None for the demo: the jobs use its own)
    val: str | None

    @property
    def is_demo(self) -> bool:
        return self.ref == "demo"


def demo_shipped() -> bool:
    return (demo_dir() / "teacher" / "config.json").is_file() and (demo_dir() / "val.npy").is_file()


def tiny_model_dir(root: Path) -> AppModel:
    import torch
    from conftest import randomize, tiny_nemotron_config
    from transformers import NemotronHForCausalLM

    from hybridlab import save_model

    torch.manual_seed(0)
    model = randomize(NemotronHForCausalLM(tiny_nemotron_config(hidden_size=64, intermediate_size=96)))
    folder = save_model(model, None, root / "tiny-model")
    rng = np.random.default_rng(0)
    for name in ("calib", "val"):
        np.save(root / f"{name}.npy", rng.integers(3, 128, 20_000).astype(np.uint16))
    return AppModel(str(folder), str(root / "calib.npy"), str(root / "val.npy"))


def app_model(root: Path, prefer_demo: bool = True) -> AppModel:
    return AppModel("demo", None, None) if prefer_demo and demo_shipped() else tiny_model_dir(root)


def tiny_moe_model_dir(root: Path, family: str = "nemotron_h_moe") -> AppModel:
    """A tiny random mixture of experts (tests/families/tiny.py's TINY_MOE: NemotronH with moe layers, or
    GraniteMoeHybrid with experts) saved to a folder, with calibration and validation token files."""
    from hybridlab import save_model
    from tests.families.tiny import tiny_model

    root.mkdir(parents=True, exist_ok=True)
    folder = save_model(tiny_model(family), None, root / f"tiny-{family}")
    rng = np.random.default_rng(0)
    for name in ("calib", "val"):
        np.save(root / f"{name}.npy", rng.integers(3, 128, 20_000).astype(np.uint16))
    return AppModel(str(folder), str(root / "calib.npy"), str(root / "val.npy"))
