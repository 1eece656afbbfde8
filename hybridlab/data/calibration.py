"""Calibration tokens for importance: the demo's set, a token array, or local text
(a .txt/.md file, a folder of them, .jsonl with a "text" field, or .parquet).

`check_tokens(source, vocab_size)` checks a source cheaply before any work: a .npy array from
its header (integer dtype, 1-D or 2-D, not empty) and then its id range against the model's
vocabulary through a memory map; text for having any. The loaders run the same checks, so a
token id the model has no embedding for is one clear error, never an IndexError mid-run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from hybridlab.core.errors import UserError, one_line
from hybridlab.core.paths import DEMO_CALIB, demo_dir

TEXT_SUFFIXES = {".txt", ".md", ".rst"}
TABLE_SUFFIXES = {".jsonl", ".json", ".parquet"}


def load_calibration(
    source: str | os.PathLike, tokenizer=None, samples: int = 256, seq_len: int = 256, vocab_size: int | None = None
) -> torch.Tensor:
    """LongTensor [samples, seq_len] (fewer rows if the source is short); ids checked against `vocab_size`."""
    if samples < 1 or seq_len < 2:
        raise ValueError(f"need at least 1 sample of 2 tokens (got samples={samples}, seq_len={seq_len})")
    return windows(load_token_array(token_path(source, DEMO_CALIB), tokenizer, vocab_size), samples, seq_len)


def token_path(source: str | os.PathLike, demo_file: str = DEMO_CALIB) -> Path:
    """The file or folder a token source names: "demo" (the demo's `demo_file`), `demo:NAME.npy`, or a path."""
    text = str(source)
    if text == "demo":
        return demo_dir() / demo_file
    path = demo_dir() / text.split(":", 1)[1] if text.startswith("demo:") else Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"token data {path} does not exist; pass a .npy token array or text files (.txt/.md/.rst, .jsonl, .parquet)"
        )
    return path


def load_token_array(source: str | os.PathLike, tokenizer=None, vocab_size: int | None = None) -> np.ndarray:
    """Token ids from `demo:NAME.npy` (a bundled demo array), a .npy file, or local text;
    UserError for an empty source or ids outside [0, vocab_size)."""
    path = token_path(source)
    if path.suffix == ".npy":
        check_tokens(path, vocab_size)  # header first: a wrong dtype or shape is refused before reading
        return np.load(path, allow_pickle=False)
    check_tokens(path)
    tokens = _tokenize_text(path, tokenizer)
    if vocab_size is not None:
        _check_range(path, tokens, vocab_size, "tokenizes to")
    return tokens


def check_tokens(source: str | os.PathLike, vocab_size: int | None = None, demo_file: str = DEMO_CALIB) -> None:
    """A token source checked without tokenizing or loading it whole; UserError naming the problem.

    .npy: a readable header, an integer dtype, 1-D or 2-D, not empty, ids in [0, vocab_size).
    Text (a file or a folder of .txt/.md/.rst, .jsonl, .parquet): not empty."""
    path = token_path(source, demo_file)
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.suffix in TEXT_SUFFIXES and p.is_file()]
        if not files:
            raise UserError(f"no text files ({', '.join(sorted(TEXT_SUFFIXES))}) under {path}; pass a folder of text")
        if not any(_has_text(p) for p in files):
            raise UserError(f"every text file under {path} is empty; pass text to tokenize or a .npy token array")
        return
    if path.suffix == ".npy":
        _check_npy(path, vocab_size)
    elif not _has_text(path):
        raise UserError(f"{path} is empty; pass text to tokenize or a .npy token array")


def _check_npy(path: Path, vocab_size: int | None) -> None:
    with open(path, "rb") as handle:
        shape, dtype = _npy_header(path, handle)
    if dtype.hasobject or dtype.kind not in "iu":
        raise UserError(f"{path} holds {dtype} values, not token ids; save integer ids (uint16 or int32)")
    if len(shape) not in (1, 2):
        raise UserError(f"{path} has shape {shape}; token arrays are 1-D (a stream) or 2-D (rows of a batch)")
    if int(np.prod(shape)) == 0:
        raise UserError(f"{path} holds no tokens (shape {shape}); pass a non-empty token array")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(
            f"{path} is not a complete .npy file ({one_line(err)}); write it again with numpy.save"
        ) from None
    if vocab_size is not None or dtype.kind == "i":
        _check_range(path, tokens, vocab_size, "holds")


def _npy_header(path: Path, handle: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(handle)
        else:
            shape, _, dtype = npy._read_array_header(handle, version)  # (3, 0): a UTF-8 header
    except (ValueError, OSError, SyntaxError, TypeError, EOFError) as err:
        raise UserError(f"{path} is not a .npy array file ({one_line(err)}); save token ids with numpy.save") from None
    return tuple(shape), np.dtype(dtype)


def _check_range(path: Path, tokens: np.ndarray, vocab_size: int | None, verb: str) -> None:
    if tokens.size == 0:
        raise UserError(f"{path} {verb} no tokens; pass non-empty token data")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0:
        raise UserError(f"{path} {verb} token id {low}; token ids cannot be negative: tokenize the data again")
    if vocab_size is not None and high >= vocab_size:
        raise UserError(
            f"{path} {verb} token id {high:,}, but the model's vocabulary has {vocab_size:,} tokens "
            f"(ids 0 to {vocab_size - 1:,}); tokenize the data with this model's tokenizer"
        )


def _has_text(path: Path) -> bool:
    """Whether the file holds anything but whitespace (read in chunks until something shows)."""
    if path.suffix in TABLE_SUFFIXES:
        return path.stat().st_size > 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            if chunk.strip():
                return True
    return False


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
        if isinstance(text, str) and text.strip():
            ids.extend(tokenizer(text)["input_ids"] + separator)
    if not ids:
        raise UserError(f"{path} holds no text to tokenize; pass text or a .npy token array")
    return np.asarray(ids, dtype=np.int64)


def batched(rows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
