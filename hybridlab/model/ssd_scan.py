"""The chunked SSD scan in PyTorch (the fast path's scan where the native kernels do not build):
transformers' algorithm reordered into batched matmuls on per-group B and C, with a hand-written
backward. Exact to transformers' `mamba2_chunk_scan` to float32 rounding (tests/test_fast_mamba.py)."""

from __future__ import annotations

import torch


def decay_matrix(wide: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """exp(acs[l] - acs[s]) for s <= l, else 0: [..., Q] -> [..., Q, Q]. `wide` holds float64
    cumulative sums, so a large sum does not cost the small differences their digits."""
    q = wide.size(-1)
    seg = (wide[..., :, None] - wide[..., None, :]).to(dtype)
    causal = torch.ones(q, q, dtype=torch.bool, device=wide.device).tril()
    return torch.exp(seg.masked_fill_(~causal, -torch.inf))


class SSDScan(torch.autograd.Function):
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
        decay = decay_matrix(wide, x.dtype)  # [N, h, Q, Q]
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
