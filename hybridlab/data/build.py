"""`hybridlab data build`: documentation packages -> cleaned text -> BPE tokenizer -> uint16 token arrays.

Same packages in, same bytes out: documents are read in sorted path order, the split is a hash of
each path, the tokenizer is trained on the train split in that order, and calibration windows come
from a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hybridlab.core.progress import ProgressFn
from hybridlab.data.card import TRAIN_SAMPLE_CHUNK, TRAIN_SAMPLE_CHUNKS, write_data_card
from hybridlab.data.sources import SOURCES, Document, download_and_unpack, read_documents
from hybridlab.data.tokenizer import END_OF_TEXT, save_tokenizer, train_tokenizer
from hybridlab.data.tokens import TokenBatches, load_tokens, save_tokens, sha256_file, unigram_entropy

CALIB_SEED = 1234


def is_validation(path: str, val_fraction: float) -> bool:
    """Deterministic split: the first 8 bytes of sha256(path) as a fraction of 2**64."""
    h = int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < val_fraction


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    train = [d for d in docs if not is_validation(d.path, val_fraction)]
    val = [d for d in docs if is_validation(d.path, val_fraction)]
    return train, val


def encode_documents(tokenizer, docs: list[Document]) -> np.ndarray:
    """Concatenate documents, each followed by <|endoftext|>, as one uint16 array."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    encodings = tokenizer.encode_batch([d.text for d in docs])
    pieces = [np.array(e.ids + [eot], dtype=np.uint16) for e in encodings]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def build_corpus(
    out_dir: str | Path,
    debs_dir: str | Path | None = None,
    vocab_size: int = 8192,
    val_fraction: float = 0.02,
    calib_samples: int = 256,
    calib_seq_len: int = 256,
    progress: ProgressFn | None = None,
) -> dict:
    """Build the corpus into `out_dir` (written to a temp folder, then renamed). Returns the stats dict."""
    if not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 0.5)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} already exists and is not empty: pick another --out or delete it")
    report = progress or (lambda f, m, x=None: print(f"[{f:4.0%}] {m}", flush=True))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    stage.chmod(0o755)
    with tempfile.TemporaryDirectory(prefix="hybridlab-debs-") as scratch:
        workdir = Path(debs_dir) if debs_dir else Path(scratch)
        report(0.0, "downloading and unpacking Debian packages", None)
        unpacked = download_and_unpack(workdir, tuple(s.package for s in SOURCES))
        docs, per_source = [], []
        for source in SOURCES:
            report(0.1, f"reading {source.package}", None)
            found = list(read_documents(unpacked[source.package], source))
            deb = sorted(workdir.glob(f"{source.package}_*.deb"))[-1]
            per_source.append(
                {
                    "package": source.package,
                    "deb": deb.name,
                    "deb_sha256": sha256_file(deb),
                    "license": source.license,
                    "documents": len(found),
                    "bytes": sum(len(d.text.encode("utf-8")) for d in found),
                }
            )
            docs += found
    train_docs, val_docs = split_documents(docs, val_fraction)
    report(0.3, f"training BPE tokenizer (vocab {vocab_size}) on {len(train_docs)} documents", None)
    tokenizer = train_tokenizer((d.text for d in train_docs), vocab_size=vocab_size)
    save_tokenizer(tokenizer, stage / "tokenizer")
    report(0.7, "tokenising", None)
    train = encode_documents(tokenizer, train_docs)
    val = encode_documents(tokenizer, val_docs)
    calib = TokenBatches(train, calib_samples, calib_seq_len, CALIB_SEED).batch(0).numpy()  # [N, T]
    save_tokens(stage / "train.npy", train)
    save_tokens(stage / "val.npy", val)
    save_tokens(stage / "calib.npy", calib.astype(np.uint16))  # [N, T]
    stats = {
        "sources": per_source,
        "vocab_size": tokenizer.get_vocab_size(),
        "val_fraction": val_fraction,
        "split": "sha256(document path)[:8] / 2**64 < val_fraction",
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "bytes": {
            "train": sum(len(d.text.encode()) for d in train_docs),
            "val": sum(len(d.text.encode()) for d in val_docs),
        },
        "tokens": {"train": int(len(train)), "val": int(len(val)), "calib": [calib_samples, calib_seq_len]},
        "val_unigram_entropy_nats": unigram_entropy(val, tokenizer.get_vocab_size()),
        "sha256": {name: sha256_file(stage / name) for name in ("train.npy", "val.npy", "calib.npy")},
        "tokenizer_sha256": sha256_file(stage / "tokenizer" / "tokenizer.json"),
        "val_documents": [d.path for d in val_docs],
    }
    (stage / "corpus.json").write_text(json.dumps(stats, indent=2) + "\n")
    write_data_card(stats, stage / "DATA_CARD.md")
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked above)
    stage.rename(out_dir)
    report(1.0, f"wrote {out_dir}: {len(train):,} train / {len(val):,} val tokens", None)
    return stats


def train_sample(train: np.ndarray, chunks: int = TRAIN_SAMPLE_CHUNKS, chunk: int = TRAIN_SAMPLE_CHUNK) -> np.ndarray:
    """Evenly spaced contiguous chunks of the train split: a small, deterministic training set
    that covers both sources, for distillation on a fresh clone without the corpus."""
    starts = np.linspace(0, len(train) - chunk, chunks).astype(np.int64)
    return np.concatenate([train[s : s + chunk] for s in starts])


def copy_for_shipping(corpus_dir: Path, dest: Path) -> None:
    """The small parts shipped in assets/demo: val, calib and a training sample of tokens, and the data card."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("val.npy", "calib.npy", "corpus.json"):
        shutil.copyfile(corpus_dir / name, dest / name)
    save_tokens(dest / "train_sample.npy", train_sample(load_tokens(corpus_dir / "train.npy")))
    write_data_card(json.loads((corpus_dir / "corpus.json").read_text()), dest / "DATA_CARD.md")
