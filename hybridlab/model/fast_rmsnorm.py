"""A native RMSNorm for the residual stream of the hybrid families (transformers' NemotronHRMSNorm,
Mamba2RMSNorm, ...: weight * x / sqrt(mean(x^2) + eps) in float32), part of the fast CPU path that
`use_fast_mamba` switches on.

transformers' forward is five elementwise passes over [tokens, hidden] (pow, mean, add + rsqrt, two
multiplies), each a fresh tensor, and autograd differentiates every one of them. The native kernels
(the gated norm's, without a gate; native/functions.py NativeRMSNorm) read the row once forward and
twice backward. The class's forward is patched once and each instance switched by an attribute, so
the module tree, state_dict names and save_pretrained stay as they are; anything the kernels do not
cover (not float32, not on the CPU, no compiler) runs transformers' forward."""

from __future__ import annotations

import functools

import torch
from torch import nn

from hybridlab.families.hf_mamba2_mixer import RMS_NORM_CLASS_NAMES
from hybridlab.model.native.functions import NativeRMSNorm

SWITCH = "_hybridlab_fused_rmsnorm"  # the instance attribute that turns a norm's fused forward on


def _covered(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dim() >= 1
        and x.numel() > 0
        and x.shape[-1] == weight.shape[0]
    )


def _dispatching(original):
    @functools.wraps(original)
    def forward(self, hidden_states, *args, **kwargs):
        if getattr(self, SWITCH, False) and not args and not kwargs and _covered(hidden_states, self.weight):
            from hybridlab.model import native

            kernels = native.kernels()
            if kernels is not None:
                d = hidden_states.shape[-1]
                x = hidden_states.reshape(-1, d).contiguous()
                out = NativeRMSNorm.apply(kernels, x, self.weight, float(self.variance_epsilon))
                return out.view(hidden_states.shape)
        return original(self, hidden_states, *args, **kwargs)

    forward.hybridlab_original = original
    return forward


def use_fused_rmsnorm(model: nn.Module, enabled: bool = True) -> int:
    """Switch every residual-stream RMSNorm of `model` to the native kernels (or back); returns how many."""
    switched = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ not in RMS_NORM_CLASS_NAMES:
            continue
        if enabled and not hasattr(cls.forward, "hybridlab_original"):
            cls.forward = _dispatching(cls.forward)
        setattr(module, SWITCH, enabled)
        switched += 1
    return switched
