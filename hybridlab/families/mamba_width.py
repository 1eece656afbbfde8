"""The Mamba width rule of families whose config stores the mixer width as an integer multiple of
the hidden size (Mamba2, Bamba, GraniteMoeHybrid, Zamba2: `int(expand * hidden_size)` with an
integer `expand`), and the nearest plans such a family can build when a plan breaks it."""

from __future__ import annotations

from hybridlab.families.base import Widths


def expand_of(widths: Widths) -> int:
    """H*P / hidden: the integer `expand` a config must store."""
    return widths.mamba_num_heads * widths.mamba_head_dim // widths.hidden_size


def check_integer_expand(new: Widths, architecture: str) -> None:
    """ValueError, naming the nearest expressible plans, unless H*P is a whole multiple of hidden."""
    heads, head_dim, hidden = new.mamba_num_heads, new.mamba_head_dim, new.hidden_size
    inner = heads * head_dim
    if inner % hidden == 0:
        return
    raise ValueError(
        f"{architecture} needs mamba_num_heads * mamba_head_dim ({heads} * {head_dim} = {inner}) to be a whole "
        f"multiple of hidden_size ({hidden}), because its config stores the Mamba width as an integer `expand`; "
        f"nearest plans it can build: {' or '.join(nearest_integer_expand(new))}"
    )


def nearest_integer_expand(new: Widths) -> list[str]:
    """One fix per axis, each the closest smaller-or-equal value that makes H*P a multiple of hidden."""
    heads, head_dim, hidden, groups = new.mamba_num_heads, new.mamba_head_dim, new.hidden_size, new.mamba_n_groups
    fixes = []
    fewer_heads = [n for n in range(heads, 0, -1) if n % groups == 0 and (n * head_dim) % hidden == 0]
    if fewer_heads:
        fixes.append(f"mamba_num_heads={fewer_heads[0]}")
    smaller_dim = [p for p in range(head_dim, 0, -1) if (heads * p) % hidden == 0]
    if smaller_dim:
        fixes.append(f"mamba_head_dim={smaller_dim[0]}")
    fixes.append(f"hidden_size={next(h for h in range(hidden, 0, -1) if (heads * head_dim) % h == 0)}")
    return fixes
