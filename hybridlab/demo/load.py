"""The bundled demo: a trained mini Nemotron-H teacher, its tokenizer, and calibration/validation tokens.

    demo = load_demo()
    demo.model        NemotronHForCausalLM in float32, eval mode
    demo.tokenizer    its byte-level BPE tokenizer
    demo.calib        LongTensor [256, 256]: windows from the train split, for importance estimation
    demo.val          LongTensor [N]: the validation split, documents separated by <|endoftext|>
    demo.train_sample numpy uint16 [M]: chunks of the train split, for distillation and search

Everything is read from assets/demo/ (see hybridlab.core.paths.demo_dir); nothing touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from hybridlab.core.paths import DEMO_CALIB, DEMO_TRAIN, DEMO_VAL, demo_dir, demo_teacher_dir
from hybridlab.model.fast_mamba import enable_if_suitable as enable_fast_mamba

DEMO_NAME = "demo"
# The fixed subset the model card's "subset loss" is computed on (fast on CPU, checked by tests).
CARD_SUBSET_WINDOWS = 32
CARD_SEQ_LEN = 256


@dataclass
class Demo:
    model: torch.nn.Module | None
    tokenizer: object
    calib: torch.Tensor  # [N, T] int64
    val: torch.Tensor  # [N] int64
    path: Path
    train_sample: np.ndarray | None = None  # [M] uint16

    def calib_batches(self, batch_size: int = 8, limit: int | None = None) -> Iterator[torch.Tensor]:
        """Calibration windows in batches of [B, T]; `limit` caps the number of windows."""
        windows = self.calib if limit is None else self.calib[:limit]
        for i in range(0, len(windows), batch_size):
            yield windows[i : i + batch_size]

    def val_windows(self, seq_len: int = CARD_SEQ_LEN, max_windows: int | None = None) -> torch.Tensor:
        """Non-overlapping validation windows from the start of the split: [N, seq_len]."""
        count = len(self.val) // seq_len
        if max_windows is not None:
            count = min(count, max_windows)
        return self.val[: count * seq_len].view(count, seq_len)

    def val_batches(
        self, batch_size: int = 8, seq_len: int = CARD_SEQ_LEN, max_windows: int | None = None
    ) -> Iterator[torch.Tensor]:
        windows = self.val_windows(seq_len, max_windows)
        for i in range(0, len(windows), batch_size):
            yield windows[i : i + batch_size]


def teacher_dir(root: Path | None = None) -> Path:
    return demo_teacher_dir(root)


def load_demo(with_model: bool = True, root: str | Path | None = None) -> Demo:
    """Load the bundled demo (model in float32 and eval mode unless `with_model=False`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(root) if root else demo_dir()
    teacher = teacher_dir(root)
    for needed in (teacher / "config.json", root / DEMO_CALIB, root / DEMO_VAL):
        if not needed.exists():
            raise FileNotFoundError(
                f"{needed} missing: the demo assets are not shipped in {root}; "
                "rebuild them with `hybridlab data build` + `hybridlab train` + `hybridlab data ship`"
            )
    tokenizer = AutoTokenizer.from_pretrained(str(teacher), local_files_only=True)
    model = None
    if with_model:
        # Weights are stored in bfloat16 to keep the repository small; all work happens in float32.
        model = AutoModelForCausalLM.from_pretrained(str(teacher), local_files_only=True, dtype=torch.float32)
        model.eval()
        enable_fast_mamba(model)  # HYBRIDLAB_FAST_MAMBA=0 keeps transformers' scan
    calib = torch.from_numpy(np.load(root / DEMO_CALIB, allow_pickle=False).astype(np.int64))
    val = torch.from_numpy(np.load(root / DEMO_VAL, allow_pickle=False).astype(np.int64))
    sample_file = root / DEMO_TRAIN
    sample = np.load(sample_file, allow_pickle=False) if sample_file.exists() else None
    return Demo(model=model, tokenizer=tokenizer, calib=calib, val=val, path=root, train_sample=sample)
