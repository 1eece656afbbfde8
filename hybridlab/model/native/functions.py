"""The native kernels (scan.cpp, conv.cpp, time_step.cpp, gated_norm.cpp, cross_entropy.cpp) as
autograd Functions, each with its hand-written backward. hybridlab.model.fast_mamba decides when they
apply (float32 CPU tensors inside a switched-on mixer) and falls back to PyTorch otherwise; these
classes only call the kernels. Shapes: b batch, L tokens, h heads of p channels, g groups of B/C with
n states each, d = h p."""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F


class NativeScan(torch.autograd.Function):
    """The sequential selective scan in C++ (scan.cpp scan_forward / scan_backward):
    x [b, L, h, p], dt [b, L, h] (after bias, softplus and limits), A [h], B, C [b, L, g, n], D [h]
    or None, s0 [b, h, p, n] or None -> y [b, L, h, p] (with the D term), final state [b, h, p, n]."""

    @staticmethod
    def forward(ctx, kernels, x, dt, A, B, C, D, s0):
        none = torch.empty(0)
        y, final, entering = kernels.scan_forward(
            x, dt, A, B, C, none if D is None else D, none if s0 is None else s0, none
        )  # entering [b, h, L / 256, n, p]: the states the backward replays each segment of 256 tokens from
        ctx.kernels = kernels
        ctx.has_s0 = s0 is not None
        ctx.save_for_backward(x, dt, A, B, C, D, entering)
        return y, final

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is no graph: a second derivative errs
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, entering = ctx.saved_tensors
        none = torch.empty(0)
        dx, ddt, dA, dB, dC, dD, ds0 = ctx.kernels.scan_backward(
            x,
            dt,
            A,
            B,
            C,
            none if D is None else D,
            entering,
            dy,
            none if dfinal is None else dfinal,
            none,
            none,
            none,
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


class NativeConv(torch.autograd.Function):
    """Causal depthwise conv1d + bias + SiLU in C++ on channel-last x [b, L, ch] (last dimension
    contiguous), weight [ch, k], bias [ch] or None -> [b, L, ch]. With keep_slope (the caller's
    torch.is_grad_enabled(): inside forward it is always off) the forward also keeps the SiLU's slope
    for the backward, which then needs no sigmoid of its own."""

    @staticmethod
    def forward(ctx, kernels, x, weight, bias, keep_slope):
        none = torch.empty(0)
        slope = torch.empty(x.shape, dtype=x.dtype) if keep_slope else none
        out = kernels.conv_forward(x, weight, none if bias is None else bias, none, slope)
        ctx.kernels = kernels
        ctx.save_for_backward(x, weight, bias, slope)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is no graph: a second derivative errs
    def backward(ctx, dout):
        x, weight, bias, slope = ctx.saved_tensors
        none = torch.empty(0)
        dx, dweight, dbias = ctx.kernels.conv_backward(x, weight, none if bias is None else bias, dout, none, slope)
        return None, dx, dweight, None if bias is None else dbias, None


class NativeGatedNorm(torch.autograd.Function):
    """weight * rmsnorm(y * silu(z)) over groups of group_size channels in C++: y [rows, d]
    contiguous, z [rows, d] (last dimension contiguous) -> [rows, d]."""

    @staticmethod
    def forward(ctx, kernels, y, z, weight, group_size, eps):
        out, rstd = kernels.gated_norm_forward(y, z, weight, group_size, eps, torch.empty(0))
        ctx.kernels, ctx.group_size = kernels, group_size
        ctx.save_for_backward(y, z, weight, rstd)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is no graph: a second derivative errs
    def backward(ctx, dout):
        y, z, weight, rstd = ctx.saved_tensors
        none = torch.empty(0)
        dy, dz, dweight = ctx.kernels.gated_norm_backward(y, z, weight, rstd, dout, ctx.group_size, none, none)
        return None, dy, dz, dweight, None, None


class NativeRMSNorm(torch.autograd.Function):
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension in C++ (the gated norm's kernels
    without a gate): x [rows, d] contiguous, weight [d] -> [rows, d]."""

    @staticmethod
    def forward(ctx, kernels, x, weight, eps):
        none = torch.empty(0)
        out, rstd = kernels.gated_norm_forward(x, none, weight, x.shape[1], eps, none)
        ctx.kernels = kernels
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is no graph: a second derivative errs
    def backward(ctx, dout):
        x, weight, rstd = ctx.saved_tensors
        none = torch.empty(0)
        dx, _, dweight = ctx.kernels.gated_norm_backward(x, none, weight, rstd, dout, x.shape[1], none, none)
        return None, dx, dweight, None


class NativeCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy in C++ (cross_entropy.cpp): logits [N, V] float32 with
    contiguous rows, targets [N] int64 -> losses [N], 0 where the target is ignore_index. It keeps only
    each row's log-sum-exp and writes the gradient (softmax - one-hot) x dloss in one pass."""

    @staticmethod
    def forward(ctx, kernels, logits, targets, ignore_index):
        losses, lse = kernels.cross_entropy_forward(logits, targets, ignore_index)
        ctx.kernels, ctx.ignore_index = kernels, ignore_index
        ctx.save_for_backward(logits, targets, lse)
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is no graph: a second derivative errs
    def backward(ctx, dlosses):
        logits, targets, lse = ctx.saved_tensors
        # the gradient, as large as the logits (64 MB on a demo batch), goes into a buffer an earlier step
        # has finished with: glibc maps anything over 32 MB afresh, and its pages faulted in for ~20 ms
        dlogits = ctx.kernels.cross_entropy_backward(
            logits, targets, lse, dlosses.float(), ctx.ignore_index, _recycled("dlogits", logits.shape, logits.dtype)
        )
        return None, dlogits, None, None


class RecycledLinear(torch.autograd.Function):
    """F.linear(x, weight, bias) whose output goes into a _recycled buffer under `name`: for an output
    over 32 MB (a demo batch's logits are 64 MB), which glibc maps afresh on every call and whose pages
    then fault in for ~20 ms. The same GEMM as F.linear (addmm with a bias, mm without) and the
    linear backward's."""

    @staticmethod
    def forward(ctx, x, weight, bias, name):
        rows = x.reshape(-1, x.shape[-1])  # [tokens, in]
        out = _recycled(name, (rows.shape[0], weight.shape[0]), x.dtype)  # [tokens, out]
        if bias is None:
            torch.mm(rows, weight.t(), out=out)
        else:
            torch.addmm(bias, rows, weight.t(), out=out)
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is no graph: a second derivative errs
    def backward(ctx, dout):
        rows, weight = ctx.saved_tensors
        d_rows = dout.reshape(-1, weight.shape[0])
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        dx = (d_rows @ weight).view(*dout.shape[:-1], weight.shape[1]) if needs_x else None
        dweight = d_rows.t() @ rows if needs_weight else None
        dbias = d_rows.sum(0) if needs_bias and ctx.has_bias else None
        return dx, dweight, dbias, None


SCRATCH_LIMIT = 64 << 20  # bytes: larger temporaries are allocated each time
_scratch_buffers = threading.local()


def _scratch(name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A temporary that never leaves the backward, kept between calls: a fresh tensor's pages fault
    in again on every call, which costs about as much as the kernel that fills it on this size."""
    numel = math.prod(shape)
    if numel * dtype.itemsize > SCRATCH_LIMIT:
        return torch.empty(shape, dtype=dtype)
    buffers = _scratch_buffers.__dict__
    buffer = buffers.get(name)
    if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
        buffer = buffers[name] = torch.empty(numel, dtype=dtype)
    return buffer[:numel].view(shape)


def _recycled(name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A buffer for a tensor that outlives the call (a gradient the backward returns, an activation the
    forward saves): one an earlier call handed out if nothing holds it any more (this cache is its
    storage's only owner: autograd has used and dropped it), else a fresh one, kept for later calls
    while the cache holds under RECYCLE_LIMIT bytes. Fresh blocks of this size fault their pages in
    again on every call: for a demo mixer's gradient (10.6 MB) that was ~2 ms of each backward."""
    numel = math.prod(shape)
    pool = _recycled_buffers.__dict__.setdefault(name, [])
    for buffer in pool:
        if buffer.dtype == dtype and buffer.numel() == numel and _unowned(buffer):
            return buffer.view(shape)
    with torch.inference_mode(False):  # an inference tensor made here would fail every later save_for_backward
        buffer = torch.empty(shape, dtype=dtype)
    pool[:] = [t for t in pool if t.numel() == numel or not _unowned(t)]  # sizes of an earlier shape go
    held = sum(t.numel() * t.dtype.itemsize for ts in _recycled_buffers.__dict__.values() for t in ts)
    if hasattr(torch._C, "_storage_Use_Count") and held + numel * dtype.itemsize <= RECYCLE_LIMIT:
        pool.append(buffer)
    return buffer.view(shape)  # a tensor of its own: whoever keeps it counts as an owner of the storage


def _unowned(buffer: torch.Tensor) -> bool:
    return torch._C._storage_Use_Count(buffer.untyped_storage()._cdata) == 2  # the cache, and this question


RECYCLE_LIMIT = 512 << 20  # bytes per thread: a demo teacher's training step keeps ~300 MB
_recycled_buffers = threading.local()


class NativeMixerTail(torch.autograd.Function):
    """All a training mixer does after in_proj, as one Function: split, conv + SiLU, dt's bias,
    softplus and limits (time_step.cpp), the scan, the gated norm and out_proj (transformers'
    `mamba2_split_conv1d_scan_combined`). Its gain over the kernels one by one is the backward:
    d(zxbcdt) is written part by part into one buffer, and the scan writes d(x, B, C) into the
    convolution's dout, where autograd would join each split's gradients with a cat.

        zxbcdt [b, L, d + ch + h] (gate z | x B C, ch = d + 2 g n | dt), d = h p
        -> out_proj(norm(scan(conv(xBC), dt), z)) [b, L, hidden]"""

    @staticmethod
    def forward(ctx, kernels, zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, out_w, out_b, shape):
        h, p, g, n, group_size, eps, dt_limit = shape
        b, L, _ = zxbcdt.shape
        d, gn = h * p, g * n
        ch = d + 2 * gn
        none = torch.empty(0)
        gate, xbc, dt_in = zxbcdt.split([d, ch, h], dim=-1)
        # the saved activations go into buffers earlier steps have finished with (_recycled)
        conv_slope = _recycled("conv_slope", (b, L, ch), zxbcdt.dtype)  # silu' for the backward
        conv_out = kernels.conv_forward(
            xbc, conv_w, none if conv_b is None else conv_b, _recycled("conv_out", (b, L, ch), zxbcdt.dtype), conv_slope
        )  # [b, L, ch]
        x, B, C = _split_xbc(conv_out, h, p, g, n)
        dt = kernels.time_step_forward(dt_in, dt_bias, *dt_limit)  # clamp(softplus(dt_in + dt_bias)) [b, L, h]
        y, _, entering = kernels.scan_forward(
            x, dt, A, B, C, none if D is None else D, none, _recycled("y", (b, L, h, p), zxbcdt.dtype)
        )
        normed, rstd = kernels.gated_norm_forward(
            y.view(b * L, d), gate.reshape(b * L, d), norm_w, group_size, eps, _recycled("normed", (b * L, d), y.dtype)
        )
        out = F.linear(normed, out_w, out_b)
        ctx.kernels, ctx.shape = kernels, shape
        ctx.save_for_backward(
            zxbcdt,
            conv_w,
            conv_b,
            dt_bias,
            dt,
            A,
            D,
            conv_out,
            conv_slope,
            entering,
            y,
            rstd,
            normed,
            norm_w,
            out_w,
            out_b,
        )
        return out.view(b, L, out_w.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable  # its backward is no graph: a second derivative errs
    def backward(ctx, dout):
        (
            zxbcdt,
            conv_w,
            conv_b,
            dt_bias,
            dt,
            A,
            D,
            conv_out,
            conv_slope,
            entering,
            y,
            rstd,
            normed,
            norm_w,
            out_w,
            out_b,
        ) = ctx.saved_tensors
        h, p, g, n, group_size, eps, dt_limit = ctx.shape
        kernels = ctx.kernels
        b, L, width = zxbcdt.shape
        d, gn = h * p, g * n
        ch = d + 2 * gn
        none = torch.empty(0)
        dout = dout.reshape(b * L, -1)
        d_normed = torch.mm(dout, out_w, out=_scratch("d_normed", (b * L, out_w.shape[1]), dout.dtype))
        d_out_w = dout.t() @ normed
        d_out_b = None if out_b is None else dout.sum(0)
        d_zxbcdt = _recycled("d_zxbcdt", (b, L, width), zxbcdt.dtype)
        d_gate, d_xbc, d_dt_in = d_zxbcdt.split([d, ch, h], dim=-1)
        gate, xbc, dt_in = zxbcdt.split([d, ch, h], dim=-1)
        dy, _, d_norm_w = kernels.gated_norm_backward(
            y.view(b * L, d),
            gate.reshape(b * L, d),
            norm_w,
            rstd,
            d_normed,
            group_size,
            d_gate.reshape(b * L, d),
            _scratch("dy", (b * L, d), y.dtype),  # read by the scan's backward below, then done with
        )
        d_conv_out = _scratch("d_conv_out", (b, L, ch), zxbcdt.dtype)
        x, B, C = _split_xbc(conv_out, h, p, g, n)
        _, ddt, dA, _, _, dD, _ = kernels.scan_backward(
            x,
            dt,
            A,
            B,
            C,
            none if D is None else D,
            entering,
            dy.view(b, L, h, p),
            none,
            *_split_xbc(d_conv_out, h, p, g, n),
        )
        _, d_conv_w, d_conv_b = kernels.conv_backward(
            xbc, conv_w, none if conv_b is None else conv_b, d_conv_out, d_xbc, conv_slope
        )
        d_dt_bias = kernels.time_step_backward(dt_in, dt_bias, *dt_limit, ddt, d_dt_in)
        return (
            None,
            d_zxbcdt,
            d_conv_w,
            None if conv_b is None else d_conv_b,
            d_dt_bias,
            dA.sum(0),
            None if D is None else dD.sum(0),
            d_norm_w,
            d_out_w,
            d_out_b,
            None,
        )


def _split_xbc(xbc: torch.Tensor, h: int, p: int, g: int, n: int):
    """[b, L, h p + 2 g n] -> views x [b, L, h, p], B, C [b, L, g, n]."""
    b, L, _ = xbc.shape
    x, B, C = xbc.split([h * p, g * n, g * n], dim=-1)
    return x.view(b, L, h, p), B.view(b, L, g, n), C.view(b, L, g, n)
