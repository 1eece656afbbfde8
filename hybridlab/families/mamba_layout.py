"""transformers' Mamba2 mixer layout (as in mamba_ssm's mamba2_simple.py): which rows of
`in_proj` and which channels of `conv1d` hold which part. Shared by every family that
reuses that mixer (NemotronH, Mamba2; Bamba and GraniteMoeHybrid copy it too).

    in_proj output   [ z   | x   | B   | C   | dt ]
    sizes            [ H*P | H*P | G*N | G*N | H  ]
    conv1d channels        [ x   | B   | C   ]      (depthwise; x, B and C leave it through SiLU)

H heads of dim P, G groups, state size N; head h reads B and C of group h // (H/G).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybridlab.families.base import Widths


@dataclass(frozen=True)
class MambaLayout:
    num_heads: int  # H
    head_dim: int  # P
    n_groups: int  # G
    state_size: int  # N

    @classmethod
    def of(cls, widths: Widths) -> "MambaLayout":
        return cls(widths.mamba_num_heads, widths.mamba_head_dim, widths.mamba_n_groups, widths.mamba_state_size)

    @property
    def inner(self) -> int:
        """H*P: the width of z, x, the gated norm and out_proj's input."""
        return self.num_heads * self.head_dim

    @property
    def group_state(self) -> int:
        """G*N: the width of B, and of C."""
        return self.n_groups * self.state_size

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.n_groups

    @property
    def in_proj_size(self) -> int:
        return 2 * self.inner + 2 * self.group_state + self.num_heads

    @property
    def conv_channels(self) -> int:
        return self.inner + 2 * self.group_state

    # -- slices of in_proj's output (last axis) ------------------------------------------
    @property
    def z(self) -> slice:  # [H*P], the gate
        return slice(0, self.inner)

    @property
    def x(self) -> slice:  # [H*P], the SSM input (and what importance scores)
        return slice(self.inner, 2 * self.inner)

    @property
    def B(self) -> slice:  # [G*N]
        return slice(2 * self.inner, 2 * self.inner + self.group_state)

    @property
    def C(self) -> slice:  # [G*N]
        return slice(2 * self.inner + self.group_state, 2 * self.inner + 2 * self.group_state)

    @property
    def dt(self) -> slice:  # [H]
        return slice(2 * self.inner + 2 * self.group_state, self.in_proj_size)

    @property
    def xBC(self) -> slice:  # [H*P + 2*G*N], what conv1d reads
        return slice(self.x.start, self.C.stop)

    # -- slices of conv1d's channels ------------------------------------------------------
    @property
    def conv_x(self) -> slice:  # [H*P]
        return slice(0, self.inner)

    @property
    def conv_B(self) -> slice:  # [G*N]
        return slice(self.inner, self.inner + self.group_state)

    @property
    def conv_C(self) -> slice:  # [G*N]
        return slice(self.inner + self.group_state, self.conv_channels)

    # -- index helpers for a pruned mixer ---------------------------------------------------
    def group_of(self, heads: torch.Tensor) -> torch.Tensor:
        """[H'] head indices -> [H'] the group whose B and C each head reads."""
        return heads // self.heads_per_group

    def inner_channels(self, heads: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """[H'] kept heads, [P'] kept head channels (the same in every head) -> [H'*P'] indices
        into the H*P axis, head-major: head h owns channels [h*P, (h+1)*P)."""
        return (heads[:, None] * self.head_dim + channels[None, :]).flatten()

    def in_proj_rows(self, heads: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """[2*H'*P' + 2*G*N + H'] rows of in_proj a pruned mixer keeps: z and x follow the kept
        (head, channel) pairs, B and C stay whole (G is unchanged), dt follows the heads."""
        inner = self.inner_channels(heads, channels)
        group_state = torch.arange(self.group_state)
        return torch.cat(
            [
                self.z.start + inner,
                self.x.start + inner,
                self.B.start + group_state,
                self.C.start + group_state,
                self.dt.start + heads,
            ]
        )

    def conv_rows(self, heads: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """[H'*P' + 2*G*N] conv1d channels a pruned mixer keeps: x follows the kept pairs, B and C stay."""
        group_state = torch.arange(self.group_state)
        inner = self.inner_channels(heads, channels)
        return torch.cat([self.conv_x.start + inner, self.conv_B.start + group_state, self.conv_C.start + group_state])
