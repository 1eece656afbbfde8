"""The `continuation_mc` task: pick the true continuation of a passage among four.

Each item takes a passage of validation text, cuts it into a context and its true
continuation, and adds distractor continuations taken from other passages (same token
length, so plain accuracy is not biased by length). The gold position cycles 0, 1, 2, 3,
so answer positions are exactly balanced and a model that ignores the context scores
1/num_choices. Everything is deterministic in (tokens, tokenizer, arguments, seed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hybridlab.core.atomic import atomic_file


def _decode(tokenizer, ids: np.ndarray) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def _passages(tokens: np.ndarray, span: int, special_ids: set[int]) -> list[np.ndarray]:
    """Non-overlapping windows of `span` tokens inside documents: the stream is cut at special
    tokens (EOS, BOS, ...), since a window that crosses a document boundary would pair a
    context with the start of an unrelated text."""
    is_special = np.isin(tokens, list(special_ids)) if special_ids else np.zeros(len(tokens), dtype=bool)
    cuts = np.flatnonzero(is_special)
    starts, ends = np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [len(tokens)]])
    windows = []
    for doc_start, doc_end in zip(starts, ends):
        for start in range(doc_start, doc_end - span + 1, span):
            windows.append(tokens[start : start + span])
    return windows


def _split_text(tokenizer, window: np.ndarray, context_tokens: int) -> tuple[str, str]:
    """Context text and continuation text such that context + continuation == decode(window).

    Decoding the continuation on its own can drop a leading space (sentencepiece-style
    tokenizers), so it is taken as the remainder of the whole window's text when possible.
    """
    whole = _decode(tokenizer, window)
    context = _decode(tokenizer, window[:context_tokens])
    if whole.startswith(context):
        return context, whole[len(context) :]
    return context, _decode(tokenizer, window[context_tokens:])


def build_continuation_items(
    tokens,
    tokenizer,
    num_items: int = 200,
    context_tokens: int = 64,
    continuation_tokens: int = 16,
    num_choices: int = 4,
    seed: int = 0,
) -> list[dict]:
    """Items {"id", "context", "choices", "label"} built from a 1-D token array."""
    tokens = np.asarray(tokens).reshape(-1)
    if context_tokens < 1 or continuation_tokens < 1:
        raise ValueError("context_tokens and continuation_tokens must be at least 1")
    if num_choices < 2:
        raise ValueError(f"num_choices must be at least 2, got {num_choices}")
    if num_items < 1:
        raise ValueError(f"num_items must be at least 1, got {num_items}")
    special_ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    # A pool a few times larger than the item count is plenty of distractors; decoding every
    # window of a large validation set would only cost time.
    windows = _passages(tokens, context_tokens + continuation_tokens, special_ids)[: max(4 * num_items, 512)]
    splits = [_split_text(tokenizer, w, context_tokens) for w in windows]
    # Distractors must differ from the gold text; drop exact repeats of a continuation.
    seen, unique = set(), []
    for context, continuation in splits:
        if continuation.strip() and continuation not in seen:
            seen.add(continuation)
            unique.append((context, continuation))
    if len(unique) < num_choices:
        need = num_choices * (context_tokens + continuation_tokens)
        raise ValueError(
            f"only {len(unique)} usable passages in {len(tokens)} tokens; the continuation task needs at "
            f"least {num_choices} (about {need} tokens): pass more validation tokens or shorter "
            "context_tokens/continuation_tokens"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))[: min(num_items, len(unique))]
    items = []
    for item_index, passage_index in enumerate(order):
        context, gold = unique[passage_index]
        others = rng.choice(len(unique) - 1, size=num_choices - 1, replace=False)
        others = [o if o < passage_index else o + 1 for o in others]  # skip the passage itself
        choices = [unique[o][1] for o in others]
        label = item_index % num_choices
        choices.insert(label, gold)
        items.append({"id": int(item_index), "context": context, "choices": choices, "label": int(label)})
    return items


def write_jsonl(items: list[dict], path: str | os.PathLike) -> Path:
    """Write items as JSON lines via a temporary file and rename."""
    with atomic_file(path) as handle:
        for item in items:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    return Path(path)
