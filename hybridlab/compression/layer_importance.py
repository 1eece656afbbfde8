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
def skipped(block, output=lambda hidden_states: hidden_states):
    """Run the model as if `block` were absent: its forward returns its input, wrapped by
    `output` as the model's layer loop expects (a family's Layer.skip_output)."""
    block.forward = lambda hidden_states, *args, **kwargs: output(hidden_states)
    try:
        yield
    finally:
        del block.forward


def next_token_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits -> [B, T-1, V] float log-probabilities of each next token."""
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


class DropOneLayer:
    """KL(full || without layer) and the LM-loss increase, accumulated batch by batch for each layer.
    In memory and streamed the same calls come in the same order, so both give the same scores."""

    def __init__(self, num_layers: int):
        self.kl = [_Mean() for _ in range(num_layers)]
        self.loss = [_Mean() for _ in range(num_layers)]

    def reference(self, full_logprobs: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None) -> None:
        """The full model's next-token log-probs [B, T-1, V] for the batch the next `add` calls are about."""
        self.full_logprobs = full_logprobs
        self.targets = input_ids[:, 1:]  # [B, T-1]
        self.weights = (
            torch.ones_like(self.targets, dtype=torch.float32) if mask is None else (mask[:, 1:] * mask[:, :-1]).float()
        )
        self.full_nll = -full_logprobs.gather(-1, self.targets.unsqueeze(-1)).squeeze(-1)

    def add(self, layer: int, logprobs: torch.Tensor) -> None:
        """The model without `layer` on the reference batch."""
        per_token_kl = (self.full_logprobs.exp() * (self.full_logprobs - logprobs)).sum(-1)  # [B, T-1]
        nll = -logprobs.gather(-1, self.targets.unsqueeze(-1)).squeeze(-1)
        count = float(self.weights.sum())
        self.kl[layer].add(float((per_token_kl * self.weights).sum()), count)
        self.loss[layer].add(float(((nll - self.full_nll) * self.weights).sum()), count)

    def result(self) -> dict:
        return {
            "kl": torch.tensor([m.result() for m in self.kl]),
            "loss": torch.tensor([m.result() for m in self.loss]),
        }


@torch.no_grad()
def drop_one_layer_scores(
    model, parts, batches, device, progress: ProgressFn | None = None, start: float = 0.0
) -> dict:
    """{"kl": [L], "loss": [L]} from removing each layer in turn."""
    n_layers = len(parts.layers)
    scores = DropOneLayer(n_layers)
    steps = [(b, layer) for b in range(len(batches)) for layer in [None, *range(n_layers)]]
    for batch_index, layer in track(steps, len(steps), "importance: drop-one-layer", progress, start, 1.0):
        inputs = {k: (v.to(device) if v is not None else None) for k, v in batches[batch_index].items()}
        if layer is None:  # the full model, once per batch
            logprobs = next_token_logprobs(model(**inputs, use_cache=False).logits)
            scores.reference(logprobs, inputs["input_ids"], inputs["attention_mask"])
            continue
        with skipped(parts.layers[layer].block, parts.layers[layer].skip_output):
            scores.add(layer, next_token_logprobs(model(**inputs, use_cache=False).logits))
    return scores.result()
