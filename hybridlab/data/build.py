"""`hybridlab data build`: documentation packages -> cleaned text -> BPE tokenizer -> uint16 token arrays.

Same packages in, same bytes out: documents are read in sorted path order, the split is a hash of
each path, the tokenizer is trained on the train split in that order (or an existing one is reused
byte for byte, so a model trained on an earlier corpus keeps its vocabulary), and calibration windows
come from a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hybridlab.core.errors import UserError
from hybridlab.core.progress import ProgressFn
from hybridlab.data.card import TRAIN_SAMPLE_CHUNK, TRAIN_SAMPLE_CHUNKS, write_data_card
from hybridlab.data.sources import SOURCES, Document, Source, deb_version, download_and_unpack, read_documents
from hybridlab.data.tokenizer import END_OF_TEXT, PAD, save_tokenizer, train_tokenizer
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
    return encode_with_lengths(tokenizer, docs)[0]


def encode_with_lengths(tokenizer, docs: list[Document]) -> tuple[np.ndarray, list[int]]:
    """The concatenated uint16 array and each document's token count (its separator included)."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    pieces = []
    for start in range(0, len(docs), 512):  # bounded memory: encodings hold offsets for every token
        encodings = tokenizer.encode_batch([d.text for d in docs[start : start + 512]])
        pieces += [np.array(e.ids + [eot], dtype=np.uint16) for e in encodings]
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)
    return tokens, [len(p) for p in pieces]


def resolve_tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json a --tokenizer value names (the file, or a folder holding it); checked before work."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(
            f"--tokenizer {path}: no tokenizer.json there; give a tokenizer.json file or a folder holding one "
            "(e.g. assets/demo/teacher)"
        )
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises its own Exception type for a malformed file
        raise UserError(f"--tokenizer {file} is not a readable tokenizers file ({err})") from None
    missing = [t for t in (END_OF_TEXT, PAD) if tokenizer.token_to_id(t) is None]
    if missing or tokenizer.get_vocab_size() > 65536:
        raise UserError(
            f"--tokenizer {file}: needs the special tokens {END_OF_TEXT} and {PAD} and at most 65,536 ids for "
            f"uint16 arrays (missing {missing}, {tokenizer.get_vocab_size():,} ids); use a hybridlab tokenizer"
        )
    return file


def build_corpus(
    out_dir: str | Path,
    debs_dir: str | Path | None = None,
    vocab_size: int = 8192,
    val_fraction: float = 0.02,
    calib_samples: int = 256,
    calib_seq_len: int = 256,
    progress: ProgressFn | None = None,
    tokenizer: str | Path | None = None,
    sources: tuple[Source, ...] = SOURCES,
) -> dict:
    """Build the corpus into `out_dir` (written to a temp folder, then renamed). Returns the stats dict.

    `tokenizer` (a tokenizer.json or a folder holding one) is reused unchanged instead of training a new
    one on the train split; `vocab_size` is then ignored."""
    if not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 0.5)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} already exists and is not empty: pick another --out or delete it")
    reused_file = resolve_tokenizer_file(tokenizer) if tokenizer is not None else None
    report = progress or (lambda f, m, x=None: print(f"[{f:4.0%}] {m}", flush=True))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    stage.chmod(0o755)
    with tempfile.TemporaryDirectory(prefix="hybridlab-debs-") as scratch:
        workdir = Path(debs_dir) if debs_dir else Path(scratch)
        report(0.0, "downloading and unpacking Debian packages", None)
        unpacked = download_and_unpack(workdir, tuple(s.package for s in sources))
        docs, per_source = [], []
        for i, source in enumerate(sources):
            report(0.05 + 0.45 * i / len(sources), f"reading {source.package}", None)
            found = list(read_documents(unpacked[source.package], source))
            deb = sorted(workdir.glob(f"{source.package}_*.deb"))[-1]
            per_source.append(
                {
                    "package": source.package,
                    "version": deb_version(deb),
                    "deb": deb.name,
                    "deb_sha256": sha256_file(deb),
                    "license": source.license,
                    "about": source.about,
                    "documents": len(found),
                    "bytes": sum(len(d.text.encode("utf-8")) for d in found),
                }
            )
            docs += found
    train_docs, val_docs = split_documents(docs, val_fraction)
    if reused_file is None:
        report(0.5, f"training BPE tokenizer (vocab {vocab_size}) on {len(train_docs)} documents", None)
        tok = train_tokenizer((d.text for d in train_docs), vocab_size=vocab_size)
        save_tokenizer(tok, stage / "tokenizer")
    else:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(reused_file))
        save_tokenizer(tok, stage / "tokenizer")  # the transformers config (bos/eos/pad) beside it
        shutil.copyfile(reused_file, stage / "tokenizer" / "tokenizer.json")  # the very bytes: same hash
    report(0.7, "tokenising", None)
    train, train_lengths = encode_with_lengths(tok, train_docs)
    val, val_lengths = encode_with_lengths(tok, val_docs)
    _count_per_source(per_source, train_docs, train_lengths, "train")
    _count_per_source(per_source, val_docs, val_lengths, "val")
    calib = TokenBatches(train, calib_samples, calib_seq_len, CALIB_SEED).batch(0).numpy()  # [N, T]
    save_tokens(stage / "train.npy", train)
    save_tokens(stage / "val.npy", val)
    save_tokens(stage / "calib.npy", calib.astype(np.uint16))  # [N, T]
    stats = {
        "sources": per_source,
        "tokenizer": "reused" if reused_file is not None else "trained on the train split",
        "tokenizer_from": str(reused_file) if reused_file is not None else None,
        "vocab_size": tok.get_vocab_size(),
        "val_fraction": val_fraction,
        "split": "sha256(document path)[:8] / 2**64 < val_fraction",
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "bytes": {
            "train": sum(len(d.text.encode()) for d in train_docs),
            "val": sum(len(d.text.encode()) for d in val_docs),
        },
        "tokens": {"train": int(len(train)), "val": int(len(val)), "calib": [calib_samples, calib_seq_len]},
        "val_unigram_entropy_nats": unigram_entropy(val, tok.get_vocab_size()),
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


def _count_per_source(per_source: list[dict], docs: list[Document], lengths: list[int], split: str) -> None:
    """Documents and tokens of one split, per source (a document's package is its path's first part)."""
    for entry in per_source:
        entry.setdefault("split", {})[split] = {"documents": 0, "tokens": 0}
    by_package = {entry["package"]: entry["split"][split] for entry in per_source}
    for doc, length in zip(docs, lengths):
        counts = by_package[doc.path.split("/", 1)[0]]
        counts["documents"] += 1
        counts["tokens"] += length


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
