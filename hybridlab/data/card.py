"""The data card: a human-readable statement of what the corpus is made of."""

from __future__ import annotations

from pathlib import Path

from hybridlab.core.atomic import write_text

TRAIN_SAMPLE_CHUNKS, TRAIN_SAMPLE_CHUNK = 16, 65_536


def write_data_card(stats: dict, path: Path) -> None:
    rows = "\n".join(
        f"| `{s['package']}` (`{s['deb']}`) | {s['license']} | {s['documents']:,} | {s['bytes']:,} |"
        for s in stats["sources"]
    )
    debs = "\n".join(f"- `{s['deb']}`: sha256 `{s['deb_sha256']}`" for s in stats["sources"])
    hashes = "\n".join(f"- `{name}`: `{digest}`" for name, digest in stats["sha256"].items())
    text = f"""# Data card: hybridlab demo corpus

English technical documentation from two Debian packages, fetched with `apt-get download` and
unpacked with `dpkg-deb -x` (nothing is installed). Built by `hybridlab data build`.

## Sources and licences

| package | licence | documents | bytes of clean text |
|---|---|---:|---:|
{rows}

- **linux-doc-6.1**: the Linux kernel's `Documentation/` tree (reStructuredText and plain text), GNU GPL
  version 2 (see `/usr/share/doc/linux-doc-6.1/copyright` in the package). Translations and devicetree
  binding schemas are left out (not English prose).
- **python3.11-doc**: the Python 3.11 documentation as Sphinx HTML, Python Software Foundation License
  version 2. Markup is stripped with the standard library's `html.parser`; scripts, styles, navigation bars,
  sidebars and the generated indexes are dropped.

Packages used for this build:
{debs}

## Processing

1. Each file is decoded as UTF-8, HTML pages are reduced to their main article text, whitespace is
   normalised (no trailing spaces, at most one blank line in a row). Files under 200 characters are dropped.
2. Split by document path: {stats["split"]}, val_fraction = {stats["val_fraction"]}.
3. A byte-level BPE tokenizer (`tokenizers`, vocabulary {stats["vocab_size"]:,}, special tokens
   `<|endoftext|>` (document separator, bos, eos) and `<|pad|>`) is trained on the train split only.
4. Documents are tokenised and concatenated, each followed by `<|endoftext|>`, into 1-D `uint16` arrays.
5. `calib.npy` holds {stats["tokens"]["calib"][0]} windows of {stats["tokens"]["calib"][1]} tokens drawn
   from the train split with a fixed seed (for importance estimation).
6. `train_sample.npy` (shipped in assets/demo only) holds {TRAIN_SAMPLE_CHUNKS} evenly spaced chunks of
   {TRAIN_SAMPLE_CHUNK:,} tokens of the train split, for distillation and search on a fresh clone.

## Sizes

| split | documents | bytes | tokens |
|---|---:|---:|---:|
| train | {stats["documents"]["train"]:,} | {stats["bytes"]["train"]:,} | {stats["tokens"]["train"]:,} |
| val | {stats["documents"]["val"]:,} | {stats["bytes"]["val"]:,} | {stats["tokens"]["val"]:,} |

Unigram entropy of the validation tokens: {stats["val_unigram_entropy_nats"]:.4f} nats/token (the loss of the
best model that ignores context).

## Checksums (sha256)

{hashes}
- `tokenizer/tokenizer.json`: `{stats["tokenizer_sha256"]}`

## Intended use and limits

A small, licence-clean corpus for training a demo teacher that the compression pipeline can be exercised
on, on a CPU. It is narrow (two technical manuals), contains code and command lines, and is not meant for
training general-purpose models.
"""
    write_text(path, text)
