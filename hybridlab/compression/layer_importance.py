"""Layer importance: how much the model changes when one layer is removed.

- "kl": KL(full || without layer) of next-token distributions (the paper's metric);
- "loss": LM loss increase without the layer;
- "cosine": block importance 1 - cos(layer input, layer output) (modelopt's metric).
Higher = more important. The first two need one extra forward per layer and batch.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hybridlab.core.progress import ProgressFn, track

LAYER_METRICS = ("kl", "loss", "cosine", None)


class _Mean:
    def __init__(self):
        self.total, self.count = 0.0, 0.0

    def add(self, total: float, count: float) -> None:
        self.total += total
        self.count += count

    def result(self) -> float:
        return self.total / max(self.count, 1.0)


def block_cosine_hook(store: dict, index: int, mask_ref: list):
    """Forward hook (with_kwargs) recording 1 - cos(block input, block output) per token."""
    store[index] = _Mean()

    def hook(module, args, kwargs, output):
        inp = args[0] if args else kwargs["hidden_states"]  # [B, T, hidden]
        out = output[0] if isinstance(output, tuple) else output
        distance = 1 - F.cosine_similarity(inp.float(), out.float(), dim=-1)  # [B, T]
        mask = mask_ref[0]
        weights = torch.ones_like(distance) if mask is None else mask.to(distance.dtype)
        store[index].add(float((distance * weights).sum()), float(weights.sum()))

    return hook


@contextmanager
def skipped(block):
    """Run the model as if `block` were absent: its forward returns its input."""
    block.forward = lambda hidden_states, *args, **kwargs: hidden_states
    try:
        yield
    finally:
        del block.forward


def _next_token_logprobs(model, inputs) -> torch.Tensor:
    logits = model(**inputs, use_cache=False).logits[:, :-1]  # [B, T-1, V]
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def drop_one_layer_scores(
    model, parts, batches, device, progress: ProgressFn | None = None, start: float = 0.0
) -> dict:
    """{"kl": [L], "loss": [L]} from removing each layer in turn."""
    n_layers = len(parts.layers)
    kl = [_Mean() for _ in range(n_layers)]
    loss = [_Mean() for _ in range(n_layers)]
    steps = [(b, layer) for b in range(len(batches)) for layer in [None, *range(n_layers)]]
    full_logprobs = targets = weights = None
    for batch_index, layer in track(steps, len(steps), "importance: drop-one-layer", progress, start, 1.0):
        inputs = {k: (v.to(device) if v is not None else None) for k, v in batches[batch_index].items()}
        if layer is None:  # the full model, once per batch
            full_logprobs = _next_token_logprobs(model, inputs)
            targets = inputs["input_ids"][:, 1:]  # [B, T-1]
            mask = inputs["attention_mask"]
            weights = (
                torch.ones_like(targets, dtype=torch.float32) if mask is None else (mask[:, 1:] * mask[:, :-1]).float()
            )
            full_nll = -full_logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            continue
        with skipped(parts.layers[layer].block):
            logprobs = _next_token_logprobs(model, inputs)
        per_token_kl = (full_logprobs.exp() * (full_logprobs - logprobs)).sum(-1)  # [B, T-1]
        nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        count = float(weights.sum())
        kl[layer].add(float((per_token_kl * weights).sum()), count)
        loss[layer].add(float(((nll - full_nll) * weights).sum()), count)
    return {"kl": torch.tensor([m.result() for m in kl]), "loss": torch.tensor([m.result() for m in loss])}
