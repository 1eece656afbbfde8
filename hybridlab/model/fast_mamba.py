"""A fast CPU path for transformers' Mamba2 mixer, exact to its PyTorch implementation.

transformers' mixers (NemotronH, Mamba2, Bamba, GraniteMoeHybrid, Falcon-H1, Zamba2) all run the same
forward, which calls module-level kernel functions: `mamba2_chunk_scan` (training and prefill) and
`mamba2_selective_state_update` (one cached decoding step). transformers itself swaps those for the
`mamba_ssm` CUDA kernels when they are installed; on the CPU they are a pure-PyTorch reference whose
chunked scan materialises [b, c, l, l, h] tensors, repeats B and C over the heads of a group and lets
autograd differentiate its einsums. This module replaces just those functions (and the convolution, below), so everything
family-specific around them (Falcon-H1's multipliers, gated-norm variants, masks, the caches) stays
transformers' own code:

- `chunk_scan`: the same chunked SSD algorithm, reordered into batched matmuls on per-group
  (un-repeated) B and C with a hand-written backward (`_SSDScan`). Within-chunk decays come from
  float64 cumulative sums, and the gradient of the decays is summed as transformers' segment sum
  does, so outputs and gradients agree with the reference to float32 rounding (tests/test_fast_mamba.py).
- `selective_state_update`: one decoding step on the head values of the expanded dt/A/D views
  and per-group B and C; `causal_conv1d_update`: the step's convolution as a sum over the window.

Where hybridlab.model.native compiles (a C++ extension built by scripts/setup.sh or on first use),
three kernels run natively instead, each an autograd Function with a hand-written backward:
`chunk_scan` becomes a sequential recurrence per (batch, head) (`_NativeScan`; dt's bias, softplus
and limits stay in PyTorch), and transformers' `causal_conv1d_fn` (conv + bias + SiLU) is replaced
by a fused channel-last kernel (`_NativeConv`). Without a compiler the PyTorch code here runs.

`use_fast_mamba(model)` switches a model's mixers over (a forward pre-hook and an always-called
forward hook mark "inside a fast mixer" for the dispatching kernel functions); the kernels apply only
to CPU tensors, so a model moved to CUDA runs transformers' (or mamba_ssm's) code unchanged.
`hybridlab.model.loading.load_model` and the demo loader call `enable_if_suitable`, which
HYBRIDLAB_FAST_MAMBA=0 turns off.
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from hybridlab.families.hf_mamba2_mixer import GATED_NORM_CLASS_NAMES, MIXER_CLASS_NAMES

ENV_SWITCH = "HYBRIDLAB_FAST_MAMBA"  # "0" keeps transformers' implementation for models hybridlab loads

_inside_fast_mixer = contextvars.ContextVar("hybridlab_fast_mamba", default=False)


# ---------------------------------------------------------------------------------------------
# The chunked scan


def _decay_matrix(wide: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """exp(acs[l] - acs[s]) for s <= l, else 0: [..., Q] -> [..., Q, Q]. `wide` holds float64
    cumulative sums, so a large sum does not cost the small differences their digits."""
    q = wide.size(-1)
    seg = (wide[..., :, None] - wide[..., None, :]).to(dtype)
    causal = torch.ones(q, q, dtype=torch.bool, device=wide.device).tril()
    return torch.exp(seg.masked_fill_(~causal, -torch.inf))


class _SSDScan(torch.autograd.Function):
    """The chunked SSD scan on chunk-padded inputs (b batch, c chunks of Q, h heads of p, g groups,
    r = h / g heads per group, n state):

        x  [b, c*Q, h, p]  x * dt        a  [b, c*Q, h]  A * dt        B, C  [b, c*Q, g, n]
        s0 [b, h, p, n] or None (the state before the first token)
        -> y [b, c*Q, h, p] (without the D term), final state [b, h, p, n]

    Within a chunk y[l] = sum_{s<=l} (C_l . B_s) exp(acs_l - acs_s) x_s (acs: cumulative a); across
    chunks the state entering chunk i+1 is exp(a summed over chunk i) * entering[i] + chunk i's own
    end state, and y[l] += exp(acs_l) C_l . entering. Per-group matmuls use r*p rows at once."""

    @staticmethod
    def forward(ctx, x, a, B, C, s0, chunk):
        b, length, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        r, q = h // g, chunk
        c = length // q
        N = b * c
        xn = x.view(N, q, h, p)
        wide = a.view(N, q, h).transpose(1, 2).double().cumsum(-1)  # [N, h, Q]
        acs = wide.to(x.dtype)
        Bg = B.view(N, q, g, n).transpose(1, 2).contiguous()  # [N, g, Q, n]
        Cg = C.view(N, q, g, n).transpose(1, 2).contiguous()
        decay = _decay_matrix(wide, x.dtype)  # [N, h, Q, Q]
        G = torch.matmul(Cg, Bg.transpose(-1, -2))  # [N, g, Q, Q]
        M = (G.view(N, g, 1, q, q) * decay.view(N, g, r, q, q)).view(N, h, q, q)
        xh = xn.transpose(1, 2).contiguous()  # [N, h, Q, p]
        y_diag = torch.matmul(M, xh)  # [N, h, Q, p]
        to_end = torch.exp(acs[..., -1:] - acs)  # [N, h, Q]
        xd = torch.empty(N, g, q, r * p, dtype=x.dtype, device=x.device)  # x decayed to its chunk's end
        torch.mul(
            xn.view(N, q, g, r, p).transpose(1, 2),
            to_end.view(N, g, r, q).transpose(2, 3)[..., None],
            out=xd.view(N, g, q, r, p),
        )
        own = torch.matmul(xd.transpose(-1, -2), Bg).view(b, c, h, p * n)  # each chunk's own end state
        through = torch.exp(acs[..., -1]).view(b, c, h, 1)  # decay over a whole chunk
        entering = torch.empty(b, c + 1, h, p * n, dtype=x.dtype, device=x.device)
        if s0 is None:
            entering[:, 0].zero_()
        else:
            entering[:, 0].copy_(s0.reshape(b, h, p * n))
        for i in range(c):
            torch.addcmul(own[:, i], entering[:, i], through[:, i], out=entering[:, i + 1])
        state_in = entering[:, :c].reshape(N, g, r * p, n)
        z = torch.matmul(Cg, state_in.transpose(-1, -2))  # [N, g, Q, r*p]
        from_start = torch.exp(acs)  # [N, h, Q]
        y = torch.empty(b, length, h, p, dtype=x.dtype, device=x.device)
        torch.mul(
            z.view(N, g, q, r, p).transpose(1, 2),
            from_start.view(N, g, r, q).permute(0, 3, 1, 2)[..., None],
            out=y.view(N, q, g, r, p),
        )
        y.view(N, q, h, p).add_(y_diag.transpose(1, 2))
        final = entering[:, c].reshape(b, h, p, n).clone()
        ctx.save_for_backward(xh, xd, Bg, Cg, decay, M, acs, entering, z, to_end, from_start)
        ctx.dims = (b, c, q, h, g, r, p, n)
        ctx.has_s0 = s0 is not None
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        xh, xd, Bg, Cg, decay, M, acs, entering, z, to_end, from_start = ctx.saved_tensors
        b, c, q, h, g, r, p, n = ctx.dims
        N = b * c
        dyn = dy.contiguous().view(N, q, h, p)
        # within chunks
        dyh = dyn.transpose(1, 2).contiguous()  # [N, h, Q, p]
        dM = torch.matmul(dyh, xh.transpose(-1, -2))  # [N, h, Q, Q]
        dxh = torch.matmul(M.transpose(-1, -2), dyh)  # [N, h, Q, p]
        # d/da[k] of exp(sum_{s<k'<=l} a[k']) collects the entries with s < k <= l, summed in the
        # order of transformers' segment sum (a difference of two sums would cancel digits away)
        below = torch.ones(q, q, dtype=torch.bool, device=dy.device).tril(-1)
        da = (dM * M).flip(-2).cumsum(-2).flip(-2).masked_fill_(~below, 0).sum(-1)  # [N, h, Q]
        dG = dM.mul_(decay).view(N, g, r, q, q).sum(2)  # [N, g, Q, Q]
        dC = torch.matmul(dG, Bg)
        dB = torch.matmul(dG.transpose(-1, -2), Cg)
        # from the entering state
        dz = torch.empty(N, g, q, r * p, dtype=dy.dtype, device=dy.device)
        torch.mul(
            dyn.view(N, q, g, r, p).transpose(1, 2),
            from_start.view(N, g, r, q).transpose(2, 3)[..., None],
            out=dz.view(N, g, q, r, p),
        )
        dlog_from_start = (dz * z).view(N, g, q, r, p).sum(-1).transpose(2, 3).reshape(N, h, q)
        da += dlog_from_start.flip(-1).cumsum(-1).flip(-1)  # exp(acs_l): every k <= l
        state_in = entering[:, :c].reshape(N, g, r * p, n)
        dC += torch.matmul(dz, state_in)
        d_state_in = torch.matmul(dz.transpose(-1, -2), Cg).view(b, c, h, p * n)
        # across chunks, backwards
        through = torch.exp(acs[..., -1]).view(b, c, h, 1)
        d_entering = torch.empty(b, c + 1, h, p * n, dtype=dy.dtype, device=dy.device)
        if dfinal is None:
            d_entering[:, c].zero_()
        else:
            d_entering[:, c].copy_(dfinal.reshape(b, h, p * n))
        for i in range(c - 1, -1, -1):
            torch.addcmul(d_state_in[:, i], d_entering[:, i + 1], through[:, i], out=d_entering[:, i])
        d_through = (d_entering[:, 1:] * entering[:, :c]).sum(-1) * through[..., 0]  # [b, c, h]
        da += d_through.view(N, h, 1)  # a whole chunk's decay: every k
        # each chunk's own end state
        d_own = d_entering[:, 1:].reshape(N, g, r * p, n)
        dxd = torch.matmul(Bg, d_own.transpose(-1, -2))  # [N, g, Q, r*p]
        dB += torch.matmul(xd, d_own)
        dlog_to_end = (dxd * xd).view(N, g, q, r, p).sum(-1).transpose(2, 3).reshape(N, h, q)
        da[..., 1:] += dlog_to_end[..., :-1].cumsum(-1)  # exp(acs_last - acs_l): every k > l
        dx = torch.empty(b, c * q, h, p, dtype=dy.dtype, device=dy.device)
        torch.mul(
            dxd.view(N, g, q, r, p).transpose(1, 2),
            to_end.view(N, g, r, q).permute(0, 3, 1, 2)[..., None],
            out=dx.view(N, q, g, r, p),
        )
        dx.view(N, q, h, p).add_(dxh.transpose(1, 2))
        da = da.transpose(1, 2).reshape(b, c * q, h)
        dB = dB.transpose(1, 2).reshape(b, c * q, g, n)
        dC = dC.transpose(1, 2).reshape(b, c * q, g, n)
        ds0 = d_entering[:, 0].reshape(b, h, p, n) if ctx.has_s0 else None
        return dx, da, dB, dC, ds0, None


def _native():
    """The compiled kernels (hybridlab.model.native), or None: then the PyTorch code below runs."""
    from hybridlab.model import native

    return native.kernels()


def _all_float32(*tensors) -> bool:
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu") for t in tensors)


class _NativeScan(torch.autograd.Function):
    """The sequential selective scan in C++ (mamba_cpu.cpp scan_forward / scan_backward):
    x [b, L, h, p], dt [b, L, h] (after bias, softplus and limits), A [h], B, C [b, L, g, n], D [h]
    or None, s0 [b, h, p, n] or None -> y [b, L, h, p] (with the D term), final state [b, h, p, n]."""

    @staticmethod
    def forward(ctx, kernels, x, dt, A, B, C, D, s0):
        none = torch.empty(0)
        y, final, checkpoints = kernels.scan_forward(
            x, dt, A, B, C, none if D is None else D, none if s0 is None else s0
        )  # checkpoints [b, h, L / 32, n, p]: the states the backward restarts from
        ctx.kernels = kernels
        ctx.has_s0 = s0 is not None
        ctx.save_for_backward(x, dt, A, B, C, D, checkpoints)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, checkpoints = ctx.saved_tensors
        none = torch.empty(0)
        dx, ddt, dA, dB, dC, dD, ds0 = ctx.kernels.scan_backward(
            x, dt, A, B, C, none if D is None else D, checkpoints, dy, none if dfinal is None else dfinal
        )
        return (
            None,
            dx,
            ddt,
            dA.sum(0),
            dB,
            dC,
            None if D is None else dD.sum(0),
            ds0 if ctx.has_s0 else None,
        )


class _NativeConv(torch.autograd.Function):
    """Causal depthwise conv1d + bias + SiLU in C++ on channel-last x [b, L, ch] (last dimension
    contiguous), weight [ch, k], bias [ch] or None -> [b, L, ch]."""

    @staticmethod
    def forward(ctx, kernels, x, weight, bias):
        ctx.kernels = kernels
        ctx.save_for_backward(x, weight, bias)
        return kernels.conv_forward(x, weight, torch.empty(0) if bias is None else bias)

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = ctx.kernels.conv_backward(x, weight, torch.empty(0) if bias is None else bias, dout)
        return None, dx, dweight, None if bias is None else dbias


class _NativeGatedNorm(torch.autograd.Function):
    """weight * rmsnorm(y * silu(z)) over groups of group_size channels in C++: y [rows, d]
    contiguous, z [rows, d] (last dimension contiguous) -> [rows, d]."""

    @staticmethod
    def forward(ctx, kernels, y, z, weight, group_size, eps):
        out, rstd = kernels.gated_norm_forward(y, z, weight, group_size, eps)
        ctx.kernels, ctx.group_size = kernels, group_size
        ctx.save_for_backward(y, z, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, dout):
        y, z, weight, rstd = ctx.saved_tensors
        dy, dz, dweight = ctx.kernels.gated_norm_backward(y, z, weight, rstd, dout, ctx.group_size)
        return None, dy, dz, dweight, None, None


def _gated_norm_forward(original):
    """The norm class's forward, natively inside a switched-on mixer (float32 CPU, with a gate)."""

    @functools.wraps(original)
    def forward(self, hidden_states, gate=None):
        kernels = _native() if _inside_fast_mixer.get() and gate is not None else None
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
            out = _NativeGatedNorm.apply(kernels, y, z, self.weight, self.group_size, self.variance_epsilon)
            return out.view(hidden_states.shape)
        return original(self, hidden_states, gate)

    forward.hybridlab_original = original
    return forward


def _install_norm_dispatch(norm: nn.Module) -> None:
    cls = type(norm)
    if cls.__name__ in GATED_NORM_CLASS_NAMES and not hasattr(cls.forward, "hybridlab_original"):
        cls.forward = _gated_norm_forward(cls.forward)


def causal_conv1d(hidden_states, weight, bias=None, activation=None, _original=None, **kwargs):
    """transformers' `causal_conv1d_fn` with SiLU: hidden_states [b, ch, L] (in the mixers a
    transposed view of channel-last memory), weight [ch, k] -> [b, ch, L], natively when it can."""
    kernels = _native()
    if kernels is None or activation != "silu" or not _all_float32(hidden_states, weight, bias) or weight.dim() != 2:
        return _original(hidden_states, weight, bias, activation=activation, **kwargs)
    channel_last = hidden_states.transpose(1, 2)  # [b, L, ch]
    if channel_last.stride(2) != 1:
        channel_last = channel_last.contiguous()
    return _NativeConv.apply(kernels, channel_last, weight, bias).transpose(1, 2)


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
        y, final = _NativeScan.apply(kernels, hidden_states, dt.contiguous(), A.contiguous(), B, C, D, initial_states)
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
    y, final = _SSDScan.apply(xdt.contiguous(), a.contiguous(), B.contiguous(), C.contiguous(), s0, chunk_size)
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
    if not _inside_fast_mixer.get():
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


def _enter(module, args):
    module._hybridlab_fast_mamba_token = _inside_fast_mixer.set(True)


def _leave(module, args, output):
    token = module.__dict__.pop("_hybridlab_fast_mamba_token", None)
    if token is not None:
        _inside_fast_mixer.reset(token)


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
    tensors the original (or mamba_ssm) kernels still run."""
    mixers = fast_mixers(model)
    for mixer in mixers:
        for hooks in (mixer._forward_pre_hooks, mixer._forward_hooks):
            for key in [k for k, hook in hooks.items() if hook in (_enter, _leave)]:
                del hooks[key]
        if enabled:
            _install_dispatch(type(mixer).__module__)
            _install_norm_dispatch(mixer.norm)
            mixer.register_forward_pre_hook(_enter)
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
