"""Corpus building, tokenizer training, token arrays and deterministic batching."""

from hybridlab.data.tokens import TokenBatches, load_tokens, save_tokens

__all__ = ["TokenBatches", "load_tokens", "save_tokens"]
