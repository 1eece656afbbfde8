"""Token arrays on disk (1-D uint16 .npy) and deterministic batches drawn from them.

A batch depends only on (seed, step), so a resumed run sees exactly the batches an
uninterrupted run would have seen: the data position is just the step number.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from hybridlab.core.atomic import atomic_file


def save_tokens(path: str | Path, tokens: np.ndarray) -> None:
    """Write a 1-D uint16 array to `path` atomically (temp file in the same folder, then rename)."""
    tokens = np.asarray(tokens)
    if tokens.ndim not in (1, 2) or tokens.dtype != np.uint16:
        raise ValueError(f"token arrays are uint16 with 1 or 2 dims, got {tokens.dtype} with shape {tokens.shape}")
    with atomic_file(path, "wb") as f:
        np.save(f, tokens, allow_pickle=False)


def load_tokens(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build it with `hybridlab data build --out DIR`")
    tokens = np.load(path, allow_pickle=False)
    if tokens.dtype != np.uint16:
        raise ValueError(f"{path} holds {tokens.dtype}; token arrays must be uint16")
    return tokens


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TokenBatches:
    """Random windows of `seq_len` tokens; batch `step` is a pure function of (seed, step)."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0):
        if tokens.ndim != 1:
            raise ValueError(f"expected a 1-D token array, got shape {tokens.shape}")
        if len(tokens) <= seq_len:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of seq_len={seq_len}")
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed

    def batch(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len + 1, size=self.batch_size)
        windows = np.stack([self.tokens[s : s + self.seq_len] for s in starts])  # [B, T]
        return torch.from_numpy(windows.astype(np.int64))


def contiguous_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows from the start of `tokens`: the fixed evaluation set. [N, T] int64."""
    count = len(tokens) // seq_len
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ValueError(f"{len(tokens)} tokens cannot fill one window of seq_len={seq_len}")
    return torch.from_numpy(tokens[: count * seq_len].astype(np.int64).reshape(count, seq_len))


def spread_windows(tokens: np.ndarray, seq_len: int, count: int) -> torch.Tensor:
    """`count` non-overlapping windows spread evenly over `tokens` (all of them when fewer fit): a
    validation sample that sees the whole split, not only its first documents. [N, T] int64."""
    fits = len(tokens) // seq_len
    if fits <= count:
        return contiguous_windows(tokens, seq_len)
    starts = np.linspace(0, fits - 1, count).round().astype(np.int64) * seq_len
    return torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64))


def unigram_entropy(tokens: np.ndarray, vocab_size: int | None = None) -> float:
    """Entropy (nats/token) of the empirical token distribution: the loss of the best context-free model."""
    counts = np.bincount(tokens.astype(np.int64), minlength=vocab_size or 0).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
