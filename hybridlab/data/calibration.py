"""Calibration tokens for importance: the demo's set, a token array, or local text
(a .txt/.md file, a folder of them, .jsonl with a "text" field, or .parquet)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hybridlab.core.paths import DEMO_CALIB, demo_dir

TEXT_SUFFIXES = {".txt", ".md", ".rst"}


def load_calibration(source: str | os.PathLike, tokenizer=None, samples: int = 256, seq_len: int = 256) -> torch.Tensor:
    """LongTensor [samples, seq_len] (fewer rows if the source is short)."""
    if samples < 1 or seq_len < 2:
        raise ValueError(f"need at least 1 sample of 2 tokens (got samples={samples}, seq_len={seq_len})")
    return windows(
        load_token_array(demo_dir() / DEMO_CALIB if str(source) == "demo" else source, tokenizer), samples, seq_len
    )


def load_token_array(source: str | os.PathLike, tokenizer=None) -> np.ndarray:
    """Token ids from `demo:NAME.npy` (a bundled demo array), a .npy file, or local text."""
    text = str(source)
    path = demo_dir() / text.split(":", 1)[1] if text.startswith("demo:") else Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"token data {path} does not exist; pass a .npy token array or text files (.txt/.md/.rst, .jsonl, .parquet)"
        )
    if path.suffix == ".npy":
        tokens = np.load(path, allow_pickle=False)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"{path} holds {tokens.dtype} values, not token ids")
        return tokens
    return _tokenize_text(path, tokenizer)


def windows(tokens: np.ndarray, samples: int, seq_len: int) -> torch.Tensor:
    """Rows of a 2-D array (cut to seq_len), or consecutive windows of a 1-D array."""
    if tokens.ndim == 2:
        if tokens.shape[1] < seq_len:
            raise ValueError(
                f"calibration rows have {tokens.shape[1]} tokens, fewer than seq_len={seq_len}; lower --seq-len"
            )
        rows = tokens[:samples, :seq_len]
    else:
        n = min(samples, len(tokens) // seq_len)
        if n == 0:
            raise ValueError(
                f"calibration data has {len(tokens)} tokens, fewer than one window of {seq_len}; lower --seq-len"
            )
        rows = tokens[: n * seq_len].reshape(n, seq_len)
    return torch.from_numpy(rows.astype(np.int64))


def _tokenize_text(path: Path, tokenizer) -> np.ndarray:
    if tokenizer is None:
        raise ValueError(
            "text calibration data needs the model's tokenizer, and this model directory has none; pass a .npy token array"
        )
    from datasets import load_dataset

    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
        kind = "text"
    else:
        files = [str(path)]
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix, "text")
    if not files:
        raise ValueError(f"no text files ({', '.join(sorted(TEXT_SUFFIXES))}) under {path}")
    dataset = load_dataset(kind, data_files=files, split="train")
    if "text" not in dataset.column_names:
        raise ValueError(f"{path} has no 'text' column (columns: {dataset.column_names})")
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in dataset["text"]:
        if text and text.strip():
            ids.extend(tokenizer(text)["input_ids"] + separator)
    return np.asarray(ids, dtype=np.int64)


def batched(rows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
