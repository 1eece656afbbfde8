"""The native next-token cross-entropy: hybridlab's trainer computes its loss with it, and
`use_fast_mamba` makes it a model's own loss (what `model(ids, labels=ids).loss` runs) on the CPU.

F.cross_entropy writes the [N, V] log-probabilities, and its backward zero-fills an [N, V] gradient
before scattering into it: on a demo batch (2048 rows x 8192 tokens, 64 MB each) those passes took
~100 ms of a ~1.4 s training step on the 2-core CPU. The kernel (native/functions.py
NativeCrossEntropy) keeps one log-sum-exp per row and writes (softmax - one-hot) x dloss in one pass:
35 ms forward + backward, equal to F.cross_entropy to float32 rounding (tests/test_trainer.py).

The logits and their gradient are the step's only tensors over glibc's 32 MB mapping threshold: each
was mapped afresh every step, and its pages faulted in for ~20 ms. The switched-on model writes both into
buffers an earlier step has finished with (native/functions.py `_recycled`): the output layer's forward
is RecycledLinear for the model's forward call (not while it runs elsewhere), and the kernel's gradient
goes into one (26 -> 6 ms of the backward)."""

from __future__ import annotations

import functools
import threading

import torch
from torch import nn

from hybridlab.model.native.functions import NativeCrossEntropy, RecycledLinear

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


_entered = threading.local()  # per thread, a stack of (model, output layer given a recycling forward or None)


def _enter_model(model, args):
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    recycling = type(head) is nn.Linear and "forward" not in vars(head)
    if recycling:  # for this call only: the layer keeps its class, and copies of the model stay plain
        head.forward = functools.partial(_recycling_forward, head)
    _entered.__dict__.setdefault("stack", []).append((model, head if recycling else None))


def _leave_model(model, args, output):
    stack = _entered.__dict__.get("stack")
    if stack and stack[-1][0] is model:  # (not when a pre-hook before ours failed: nothing entered)
        head = stack.pop()[1]
        if head is not None:
            vars(head).pop("forward", None)  # (another thread running the same model may have gone first)


def _recycling_forward(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's forward with the output in a recycled buffer, for float32 CPU tensors."""
    tensors = (x, linear.weight) if linear.bias is None else (x, linear.weight, linear.bias)
    if all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and x.dim() >= 2 and x.numel():
        return RecycledLinear.apply(x, linear.weight, linear.bias, "logits")
    return nn.functional.linear(x, linear.weight, linear.bias)


def _switch_logits_recycling(model: nn.Module, enabled: bool) -> None:
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, hook in hooks.items() if hook in (_enter_model, _leave_model)]:
            del hooks[key]
    if enabled:
        model.register_forward_pre_hook(_enter_model)
        model.register_forward_hook(_leave_model, always_call=True)


def use_fast_loss(model: nn.Module, enabled: bool = True) -> bool:
    """Make causal_lm_loss the model's loss function (or give it back its own) and write its logits into
    recycled buffers (or not); only a model whose loss is transformers' ForCausalLMLoss is switched, so a
    loss someone set stays. Returns whether the model's loss is causal_lm_loss now."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    _switch_logits_recycling(model, enabled)
    current = getattr(model, "loss_function", None)
    if enabled:
        if current is ForCausalLMLoss:
            model.loss_function = causal_lm_loss
        return getattr(model, "loss_function", None) is causal_lm_loss
    if model.__dict__.get("_loss_function") is causal_lm_loss:
        del model._loss_function
    return False
