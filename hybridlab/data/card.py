"""The data card: a human-readable statement of what the corpus is made of."""

from __future__ import annotations

from pathlib import Path

from hybridlab.core.atomic import write_text

TRAIN_SAMPLE_CHUNKS, TRAIN_SAMPLE_CHUNK = 16, 65_536


def _split_counts(source: dict, split: str) -> tuple[str, str]:
    counts = source.get("split", {}).get(split)  # absent in corpora built before per-source counts
    return (f"{counts['documents']:,}", f"{counts['tokens']:,}") if counts else ("", "")


def write_data_card(stats: dict, path: Path) -> None:
    sources = stats["sources"]
    rows = []
    for s in sources:
        train_docs, train_tokens = _split_counts(s, "train")
        val_docs, val_tokens = _split_counts(s, "val")
        rows.append(
            f"| `{s['package']}` | {s.get('version', '')} | {s['license']} | {s['documents']:,} | {s['bytes']:,} "
            f"| {train_docs} | {train_tokens} | {val_docs} | {val_tokens} |"
        )
    about = "\n".join(f"- **{s['package']}**: {s['about']}." for s in sources if s.get("about"))
    debs = "\n".join(f"- `{s['deb']}`: sha256 `{s['deb_sha256']}`" for s in sources)
    hashes = "\n".join(f"- `{name}`: `{digest}`" for name, digest in stats["sha256"].items())
    if stats.get("tokenizer") == "reused":
        tokenizer_step = (
            f"The tokenizer is reused unchanged (`hybridlab data build --tokenizer`, from `{stats['tokenizer_from']}`): "
            f"byte-level BPE, vocabulary {stats['vocab_size']:,}, special tokens `<|endoftext|>` (document separator, "
            "bos, eos) and `<|pad|>`; its sha256 is below."
        )
    else:
        tokenizer_step = (
            f"A byte-level BPE tokenizer (`tokenizers`, vocabulary {stats['vocab_size']:,}, special tokens "
            "`<|endoftext|>` (document separator, bos, eos) and `<|pad|>`) is trained on the train split only."
        )
    text = f"""# Data card: hybridlab demo corpus

English technical documentation from {len(sources)} Debian packages, fetched with `apt-get download` and
unpacked with `dpkg-deb -x` (nothing is installed). Built by `hybridlab data build`.

## Sources and licences

| package | version | licence | documents | bytes of clean text | train documents | train tokens | val documents | val tokens |
|---|---|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Tokens count each document's `<|endoftext|>` separator. Licences are those of the documentation as stated in
each package's `/usr/share/doc/<package>/copyright`.

{about}

Packages used for this build:
{debs}

## Processing

1. Each file is decoded as UTF-8; HTML pages are reduced to their main article text with the standard
   library's `html.parser` (scripts, styles, navigation bars, sidebars and generated indexes dropped), GNU info
   manuals are split into one document per node (menus and tag tables dropped), Perl POD is reduced to its
   text (formatting codes unwrapped). Whitespace is normalised (no trailing spaces, at most one blank line in a
   row). Files under 200 characters and exact duplicates within a package are dropped.
2. Split by document path: {stats["split"]}, val_fraction = {stats["val_fraction"]}. A document keeps its
   split in every build that contains it.
3. {tokenizer_step}
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

A licence-clean corpus for training a demo teacher that the compression pipeline can be exercised on, on a
CPU. It is narrow (software manuals), contains code and command lines, and is not meant for training
general-purpose models.
"""
    write_text(path, text)
