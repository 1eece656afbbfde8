"""The native next-token cross-entropy: hybridlab's trainer computes its loss with it, and
`use_fast_mamba` makes it a model's own loss (what `model(ids, labels=ids).loss` runs) on the CPU.

F.cross_entropy writes the [N, V] log-probabilities, and its backward zero-fills an [N, V] gradient
before scattering into it: on a demo batch (2048 rows x 8192 tokens, 64 MB each) those passes took
~100 ms of a ~1.4 s training step on the 2-core CPU. The kernel (native/functions.py
NativeCrossEntropy) keeps one log-sum-exp per row and writes (softmax - one-hot) x dloss in one pass:
35 ms forward + backward, equal to F.cross_entropy to float32 rounding (tests/test_trainer.py)."""

from __future__ import annotations

import torch
from torch import nn

from hybridlab.model.native.functions import NativeCrossEntropy

IGNORED = -100  # F.cross_entropy's and transformers' ignore_index


def token_losses(flat: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORED) -> torch.Tensor | None:
    """Per-row cross-entropy of flat [N, V] logits against targets [N] (0 where ignored) by the native
    kernel, or None where it does not apply: logits not float32 on the CPU with contiguous rows, or no
    AVX2 build (the generic build's scalar exp is no faster than PyTorch's)."""
    if flat.device.type != "cpu" or flat.dtype != torch.float32 or flat.dim() != 2 or flat.stride(-1) != 1:
        return None
    from hybridlab.model import native

    if native.variant()[0] != "avx2":
        return None
    kernels = native.kernels()
    if kernels is None:
        return None
    return NativeCrossEntropy.apply(kernels, flat, targets.to(torch.long), ignore_index)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = IGNORED,
    shift_labels: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """transformers' ForCausalLMLoss (same arguments, same result) through the native kernel where it
    applies, else transformers' own function."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    losses = None
    if logits.device.type == "cpu":  # elsewhere the float32 copy below would be made twice
        if shift_labels is None:
            shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        targets = shift_labels.reshape(-1).to(logits.device)
        losses = token_losses(logits.float().reshape(-1, vocab_size), targets, ignore_index)
    if losses is None:
        return ForCausalLMLoss(logits, labels, vocab_size, num_items_in_batch, ignore_index, shift_labels, **kwargs)
    if num_items_in_batch is None:
        return losses.sum() / (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(losses.device)
    return losses.sum() / num_items_in_batch


def use_fast_loss(model: nn.Module, enabled: bool = True) -> bool:
    """Make causal_lm_loss the model's loss function (or give it back its own); only a model whose loss
    is transformers' ForCausalLMLoss is switched, so a loss someone set stays. Returns whether the
    model's loss is causal_lm_loss now."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    current = getattr(model, "loss_function", None)
    if enabled:
        if current is ForCausalLMLoss:
            model.loss_function = causal_lm_loss
        return getattr(model, "loss_function", None) is causal_lm_loss
    if model.__dict__.get("_loss_function") is causal_lm_loss:
        del model._loss_function
    return False
