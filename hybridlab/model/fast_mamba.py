"""A fast CPU path for transformers' Mamba2 mixer, exact to its PyTorch implementation.

transformers' mixers (NemotronH, Mamba2, Bamba, GraniteMoeHybrid, Falcon-H1, Zamba2) all run the same
forward, which calls module-level kernel functions: `mamba2_split_conv1d_scan_combined` (training
without a cache: everything after in_proj; its PyTorch stand-in returns None and the mixer goes on step
by step), `causal_conv1d_fn` and `mamba2_chunk_scan` (training with a cache, prefill) and
`mamba2_selective_state_update` / `causal_conv1d_update` (one cached decoding step). transformers swaps
those for the `mamba_ssm` CUDA kernels when they are installed; on the CPU they are a pure-PyTorch
reference whose chunked scan materialises [b, c, l, l, h] tensors, repeats B and C over the heads of a
group and lets autograd differentiate its einsums. This module replaces just those functions, so
everything family-specific around them (Falcon-H1's multipliers, gated-norm variants, masks, the caches)
stays transformers' own code.

Where hybridlab.model.native compiles (a C++ extension built by scripts/setup.sh or on first use), its
kernels run as autograd Functions (native/functions.py): the whole training step after in_proj as one
(`split_conv1d_scan_combined`, where the mixer's steps are the plain ones), else the scan as a
sequential recurrence per (batch, head), the convolution + SiLU channel-last, and the gated norm.
Without a compiler `chunk_scan` runs the chunked algorithm reordered into batched matmuls
(ssd_scan.py) and the rest stays transformers'. Decoding steps run the small PyTorch functions here.
Outputs and gradients agree with transformers to float32 rounding (tests/test_fast_mamba.py).

`use_fast_mamba(model)` switches a model's mixers over (a forward pre-hook and an always-called
forward hook mark "inside this fast mixer" for the dispatching kernel functions); the kernels apply only
to CPU tensors, so a model moved to CUDA runs transformers' (or mamba_ssm's) code unchanged.
`hybridlab.model.loading.load_model` and the demo loader call `enable_if_suitable`, which
HYBRIDLAB_FAST_MAMBA=0 turns off.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hybridlab.families.hf_mamba2_mixer import GATED_NORM_CLASS_NAMES, MIXER_CLASS_NAMES
from hybridlab.model.fast_loss import use_fast_loss
from hybridlab.model.fast_relu2 import use_fused_relu2
from hybridlab.model.fast_rmsnorm import use_fused_rmsnorm
from hybridlab.model.native.functions import NativeConv, NativeGatedNorm, NativeMixerTail, NativeScan
from hybridlab.model.ssd_scan import SSDScan

ENV_SWITCH = "HYBRIDLAB_FAST_MAMBA"  # "0" keeps transformers' implementation for models hybridlab loads

# the switched-on mixer whose forward is running (None outside one), and whether its attention mask pads
_inside_fast_mixer = contextvars.ContextVar("hybridlab_fast_mamba", default=None)


class _FastCall(NamedTuple):
    mixer: nn.Module
    attention_mask: torch.Tensor | None


# ---------------------------------------------------------------------------------------------
# Training and prefill


def _native():
    """The compiled kernels (hybridlab.model.native), or None: then the PyTorch code below runs."""
    from hybridlab.model import native

    return native.kernels()


def _all_float32(*tensors) -> bool:
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu") for t in tensors)


def _gated_norm_forward(original):
    """The norm class's forward, natively inside a switched-on mixer (float32 CPU, with a gate)."""

    @functools.wraps(original)
    def forward(self, hidden_states, gate=None):
        kernels = _native() if _inside_fast_mixer.get() is not None and gate is not None else None
        if (
            kernels is not None
            and _all_float32(hidden_states, gate, self.weight)
            and hidden_states.shape == gate.shape
            and hidden_states.shape[-1] % self.group_size == 0
        ):
            d = hidden_states.shape[-1]
            y = hidden_states.reshape(-1, d).contiguous()  # [rows, d]
            z = gate.reshape(-1, d)  # a slice of the projection: rows strided, channels contiguous
            if z.stride(-1) != 1:
                z = z.contiguous()
            out = NativeGatedNorm.apply(kernels, y, z, self.weight, self.group_size, self.variance_epsilon)
            return out.view(hidden_states.shape)
        return original(self, hidden_states, gate)

    forward.hybridlab_original = original
    return forward


def _install_norm_dispatch(norm: nn.Module) -> None:
    cls = type(norm)
    if cls.__name__ in GATED_NORM_CLASS_NAMES and not hasattr(cls.forward, "hybridlab_original"):
        cls.forward = _gated_norm_forward(cls.forward)


def split_conv1d_scan_combined(
    zxbcdt,
    conv1d_weight,
    conv1d_bias,
    dt_bias,
    A,
    D,
    chunk_size,
    initial_states=None,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
    activation="silu",
    rmsnorm_weight=None,
    rmsnorm_eps=1e-6,
    outproj_weight=None,
    outproj_bias=None,
    headdim=None,
    ngroups=1,
    norm_before_gate=True,
    _original=None,
    **kwargs,
):
    """transformers' `mamba2_split_conv1d_scan_combined`, which a training mixer tries first and
    whose PyTorch stand-in returns None (then the mixer runs step by step). Natively it returns the
    mixer's output, equal to that step-by-step PyTorch path, wherever the mixer's steps are the ones
    NativeMixerTail takes: a plain gated norm after the scan (not Falcon-H1's), no padding mask
    (the step-by-step path multiplies by the mask after the convolution), the norm and out_proj as
    transformers made them (this path does not call them), float32."""
    call = _inside_fast_mixer.get()
    kernels = _native()
    norm, out_proj = getattr(call.mixer, "norm", None), getattr(call.mixer, "out_proj", None)
    h = A.shape[0]
    d = h * (headdim or 0)
    n = (zxbcdt.shape[-1] - 2 * d - h) // (2 * ngroups)
    if (
        kernels is None
        or _masks_anything(call.attention_mask)
        or type(norm).__name__ not in GATED_NORM_CLASS_NAMES
        or type(out_proj) is not nn.Linear
        or not all(_runs_as_defined(m) for m in (norm, out_proj))
        or norm.weight is not rmsnorm_weight
        or out_proj.weight is not outproj_weight
        or activation != "silu"
        or norm_before_gate
        or initial_states is not None
        or return_final_states
        or headdim is None
        or conv1d_weight.dim() != 2
        or not _all_float32(
            zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, rmsnorm_weight, outproj_weight, outproj_bias
        )
        or zxbcdt.dim() != 3
        or zxbcdt.stride(-1) != 1
        or zxbcdt.shape[-1] != 2 * d + 2 * ngroups * n + h
        or h % ngroups
        or d % norm.group_size
    ):
        return _original(
            zxbcdt,
            conv1d_weight,
            conv1d_bias,
            dt_bias,
            A,
            D,
            chunk_size,
            initial_states=initial_states,
            dt_limit=dt_limit,
            return_final_states=return_final_states,
            activation=activation,
            rmsnorm_weight=rmsnorm_weight,
            rmsnorm_eps=rmsnorm_eps,
            outproj_weight=outproj_weight,
            outproj_bias=outproj_bias,
            headdim=headdim,
            ngroups=ngroups,
            norm_before_gate=norm_before_gate,
            **kwargs,
        )
    shape = (h, headdim, ngroups, n, norm.group_size, float(rmsnorm_eps), tuple(dt_limit))
    return NativeMixerTail.apply(
        kernels, zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, rmsnorm_weight, outproj_weight, outproj_bias, shape
    )


def _masks_anything(mask) -> bool:
    """Whether the mixer's step-by-step path would change anything multiplying by this mask (all ones
    leaves every value as it is; transformers' own test in create_recurrent_attention_mask)."""
    return isinstance(mask, torch.Tensor) and not bool((mask == 1).all())


def _runs_as_defined(module: nn.Module) -> bool:
    """No hook of any kind and no forward replaced on the instance (accelerate's hooks do that): the
    module would compute exactly its class's forward, which the fused path computes without calling it."""
    global_hooks = (
        torch.nn.modules.module._global_forward_hooks,
        torch.nn.modules.module._global_forward_pre_hooks,
        torch.nn.modules.module._global_backward_hooks,
        torch.nn.modules.module._global_backward_pre_hooks,
    )
    own_hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    return "forward" not in vars(module) and not any(own_hooks) and not any(global_hooks)


def causal_conv1d(hidden_states, weight, bias=None, activation=None, _original=None, **kwargs):
    """transformers' `causal_conv1d_fn` with SiLU: hidden_states [b, ch, L] (in the mixers a
    transposed view of channel-last memory), weight [ch, k] -> [b, ch, L], natively when it can."""
    kernels = _native()
    if kernels is None or activation != "silu" or not _all_float32(hidden_states, weight, bias) or weight.dim() != 2:
        return _original(hidden_states, weight, bias, activation=activation, **kwargs)
    channel_last = hidden_states.transpose(1, 2)  # [b, L, ch]
    if channel_last.stride(2) != 1:
        channel_last = channel_last.contiguous()
    return NativeConv.apply(kernels, channel_last, weight, bias, torch.is_grad_enabled()).transpose(1, 2)


def chunk_scan(
    hidden_states,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, float("inf")),
    return_final_states=False,
    **kwargs,
):
    """transformers' `mamba2_chunk_scan` (same arguments, dtypes and results), faster on the CPU.
    hidden_states [b, L, h, p], dt [b, L, h], A [h], B and C [b, L, g, n] -> y [b, L, h, p] float32
    (and the final state [b, h, p, n] with `return_final_states`)."""
    kernels = _native()
    if (
        kernels is not None
        and _all_float32(hidden_states, dt, A, B, C, D, dt_bias, initial_states)
        and hidden_states.shape[2] % B.shape[2] == 0
    ):
        # the kernel reads rows [h, p] and [g, n] as contiguous blocks (masked inputs may come channel-first)
        hidden_states, B, C = (
            t if t.stride(-1) == 1 and t.stride(-2) == t.shape[-1] else t.contiguous() for t in (hidden_states, B, C)
        )
        if dt_bias is not None:
            dt = dt + dt_bias
        if dt_softplus:
            dt = F.softplus(dt)
        dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1])
        y, final = NativeScan.apply(kernels, hidden_states, dt.contiguous(), A.contiguous(), B, C, D, initial_states)
        return (y, final) if return_final_states else y
    return _pytorch_chunk_scan(
        hidden_states, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_softplus, dt_limit, return_final_states
    )


def _pytorch_chunk_scan(
    hidden_states, dt, A, B, C, chunk_size, D, dt_bias, initial_states, dt_softplus, dt_limit, return_final_states
):
    length = hidden_states.shape[1]
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1]).float()
    x = hidden_states.float()
    xdt = x * dt[..., None]
    a = A.float() * dt
    B, C = B.float(), C.float()
    pad = (-length) % chunk_size
    if pad:
        xdt = F.pad(xdt, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    s0 = None if initial_states is None else initial_states.float()
    y, final = SSDScan.apply(xdt.contiguous(), a.contiguous(), B.contiguous(), C.contiguous(), s0, chunk_size)
    if pad:
        y = y[:, :length]
    if D is not None:
        y = y + D[..., None] * x
    return (y, final) if return_final_states else y


# ---------------------------------------------------------------------------------------------
# One cached decoding step


def selective_state_update(
    state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None, **kwargs
):
    """transformers' `mamba2_selective_state_update`: one token. state [b, h, p, n] (updated in
    place), hidden_states [b, h, p]; dt, A, D and dt_bias come as views expanded over p (and n), so
    the per-head values are read once instead of computed p*n times. B, C [b, g, n]."""
    b, h, p = hidden_states.shape
    g, n = B.shape[1], B.shape[-1]
    r = h // g
    dt = dt[..., 0]  # [b, h]
    if dt_bias is not None:
        dt = dt + dt_bias[..., 0].to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(dt.float() * A[:, 0, 0].float())  # [b, h]
    xdt = hidden_states * dt[..., None]  # [b, h, p]
    ssm = torch.addcmul(
        state.view(b, g, r, p, n) * decay.view(b, g, r, 1, 1),
        xdt.view(b, g, r, p, 1),
        B.view(b, g, 1, 1, n),
    ).view(b, h, p, n)
    state.copy_(ssm.to(state.dtype))
    ssm = ssm.to(dtype=C.dtype)
    out = torch.matmul(ssm.view(b, g, r * p, n), C.view(b, g, n, 1)).view(b, h, p)
    if D is not None:
        out = (out + hidden_states * D).to(out.dtype)
    if z is not None:
        out = out * F.silu(z)
    return out.to(hidden_states.dtype)


def causal_conv1d_update(hidden_states, conv_state, weight, bias=None, activation=None, _original=None, **kwargs):
    """transformers' `causal_conv1d_update` for one new token: hidden_states [b, ch, 1], conv_state
    [b, ch, k] (shifted in place), weight [ch, k] -> [b, ch, 1]. The original runs a grouped F.conv1d
    per token, whose setup cost ~40x this sum on the CPU at decoding's sizes."""
    if (
        hidden_states.shape[-1] != 1
        or weight.dim() != 2
        or conv_state.shape[-1] != weight.shape[-1]
        or activation not in (None, "silu")
    ):
        return _original(hidden_states, conv_state, weight, bias, activation=activation, **kwargs)
    # in the weights' dtype, as the original: the state stores a rounded copy, the output uses the token as is
    window = torch.cat([conv_state[..., 1:].to(weight.dtype), hidden_states.to(weight.dtype)], dim=-1)  # [b, ch, k]
    conv_state.copy_(window)
    out = (window * weight).sum(-1, keepdim=True)  # [b, ch, 1]
    if bias is not None:
        out = out + bias[:, None]
    if activation == "silu":
        out = F.silu(out)
    return out.to(hidden_states.dtype)


def _expanded_per_head(tensor, dims: int) -> bool:
    """True when the last `dims` dimensions of `tensor` are an expand (stride 0) of per-head values."""
    return tensor is None or all(tensor.stride(-1 - i) == 0 for i in range(dims))


def _applies(name: str, args, kwargs) -> bool:
    if _inside_fast_mixer.get() is None:
        return False
    if kwargs.get("cu_seqlens") is not None or kwargs.get("seq_idx") is not None:
        return False  # packed sequences: the original says what to install
    first = args[0] if args else None
    if not isinstance(first, torch.Tensor) or first.device.type != "cpu":
        return False
    if name == "mamba2_selective_state_update":
        params = dict(zip(("state", "hidden_states", "dt", "A"), args)) | kwargs
        return (
            _expanded_per_head(params.get("dt"), 1)
            and _expanded_per_head(params.get("A"), 2)
            and _expanded_per_head(params.get("dt_bias"), 1)
        )
    return True


FAST_KERNELS = {
    "mamba2_chunk_scan": chunk_scan,
    "mamba2_selective_state_update": selective_state_update,
    "causal_conv1d_fn": causal_conv1d,
    "causal_conv1d_update": causal_conv1d_update,
    "mamba2_split_conv1d_scan_combined": split_conv1d_scan_combined,
}


def _dispatching(name: str, original):
    """`original` (a transformers kernel function), or the fast kernel inside a switched-on mixer."""

    @functools.wraps(original)
    def dispatch(*args, **kwargs):
        if _applies(name, args, kwargs):
            return FAST_KERNELS[name](*args, _original=original, **kwargs)
        return original(*args, **kwargs)

    dispatch.hybridlab_original = original
    return dispatch


# ---------------------------------------------------------------------------------------------
# Switching models over


def _install_dispatch(module_name: str) -> None:
    """Route the modeling module's kernel functions through the dispatcher (once per module; a
    mixer that is not switched on still runs the original)."""
    modeling = sys.modules[module_name]
    for name in FAST_KERNELS:
        current = getattr(modeling, name, None)
        if current is not None and not hasattr(current, "hybridlab_original"):
            setattr(modeling, name, _dispatching(name, current))


_entered = threading.local()  # per thread, a stack of tokens: two threads may run one model at once


def _enter(module, args, kwargs):
    mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
    _entered.__dict__.setdefault("tokens", []).append((module, _inside_fast_mixer.set(_FastCall(module, mask))))


def _leave(module, args, output):
    tokens = _entered.__dict__.get("tokens")
    if tokens and tokens[-1][0] is module:  # (not when a pre-hook before ours failed: nothing entered)
        _inside_fast_mixer.reset(tokens.pop()[1])


def fast_mixers(model: nn.Module) -> list[nn.Module]:
    """The model's Mamba2 mixers that the fast path supports (transformers' classes named by the
    family adapters whose modeling module has the kernel functions this path replaces)."""
    found = []
    for module in model.modules():
        if type(module).__name__ not in MIXER_CLASS_NAMES:
            continue
        modeling = sys.modules.get(type(module).__module__)
        if modeling is not None and hasattr(modeling, "mamba2_chunk_scan"):
            found.append(module)
    return found


def is_fast(mixer: nn.Module) -> bool:
    return any(hook is _enter for hook in mixer._forward_pre_hooks.values())


def use_fast_mamba(model: nn.Module, enabled: bool = True) -> int:
    """Switch the fast CPU Mamba2 path on (or off) for a model loaded anywhere; returns how many
    mixers it covers. Outputs and gradients equal transformers' to float32 rounding; on CUDA
    tensors the original (or mamba_ssm) kernels still run. The MLPs' ReLU² activations (fast_relu2.py:
    the same bits, fused), the residual stream's RMSNorms (fast_rmsnorm.py) and the model's own loss,
    what `model(ids, labels=ids)` computes (fast_loss.py: the native cross-entropy), switch with it."""
    use_fused_relu2(model, enabled)
    use_fused_rmsnorm(model, enabled)
    use_fast_loss(model, enabled)
    mixers = fast_mixers(model)
    for mixer in mixers:
        for hooks in (mixer._forward_pre_hooks, mixer._forward_hooks):
            for key in [k for k, hook in hooks.items() if hook in (_enter, _leave)]:
                del hooks[key]
                mixer._forward_pre_hooks_with_kwargs.pop(key, None)
        if enabled:
            _install_dispatch(type(mixer).__module__)
            _install_norm_dispatch(mixer.norm)
            mixer.register_forward_pre_hook(_enter, with_kwargs=True)
            mixer.register_forward_hook(_leave, always_call=True)
    return len(mixers)


def switched_on_by_env() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _cuda_kernels_present() -> bool:
    import importlib.util

    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


def enable_if_suitable(model: nn.Module) -> int:
    """What hybridlab's loaders call: the fast path for a model on the CPU without the CUDA kernels,
    unless HYBRIDLAB_FAST_MAMBA=0."""
    if not switched_on_by_env() or _cuda_kernels_present():
        return 0
    first = next(model.parameters(), None)
    if first is not None and first.device.type != "cpu":
        return 0
    return use_fast_mamba(model)


__all__ = ["ENV_SWITCH", "chunk_scan", "enable_if_suitable", "fast_mixers", "selective_state_update", "use_fast_mamba"]
