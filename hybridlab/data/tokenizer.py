"""Byte-level BPE tokenizer trained with `tokenizers`, saved so `AutoTokenizer.from_pretrained` loads it offline."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"  # document separator; also bos and eos, as in GPT-2
PAD = "<|pad|>"
SPECIAL_TOKENS = [END_OF_TEXT, PAD]  # ids 0 and 1


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """Byte-level BPE over `texts` (iterated once, in order). Deterministic for the same texts."""
    if vocab_size < 256 + len(SPECIAL_TOKENS) or vocab_size > 65535:
        raise ValueError(f"vocab_size={vocab_size} must be in [258, 65535]: 256 bytes + specials, uint16 ids")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def to_transformers(tokenizer: Tokenizer, model_max_length: int = 2048):
    """Wrap as a transformers fast tokenizer with bos/eos/pad set."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | Path) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json in out_dir."""
    to_transformers(tokenizer).save_pretrained(str(out_dir))


def load_tokenizer(path: str | Path):
    """The transformers tokenizer saved by `save_tokenizer` (no network)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
