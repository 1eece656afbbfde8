"""What Bamba, GraniteMoeHybrid and Falcon-H1 share in transformers: the Mamba2 config names
(`mamba_n_heads`, `mamba_d_head`, `mamba_n_groups`, `mamba_d_state`, `mamba_d_conv`, `mamba_conv_bias`,
`mamba_proj_bias`), an attention whose head_dim falls back to hidden // heads, and a generation cache
that needs one attention layer. Each adapter adds only what differs."""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import AttentionParts, Widths


def mamba_widths(config) -> dict:
    """The Mamba2 widths, as Widths fields."""
    return dict(
        mamba_num_heads=config.mamba_n_heads,
        mamba_head_dim=config.mamba_d_head,
        mamba_n_groups=config.mamba_n_groups,
        mamba_state_size=config.mamba_d_state,
        mamba_conv_kernel=config.mamba_d_conv,
    )


def mamba_biases(config) -> set[str]:
    """conv1d bias from mamba_conv_bias; in_proj bias from mamba_proj_bias (out_proj's differs per family)."""
    biases = {"mamba_conv"} if config.mamba_conv_bias else set()
    if config.mamba_proj_bias:
        biases.add("mamba_in_proj")
    return biases


def mamba_config(new: Widths) -> dict:
    """Config values for pruned Mamba2 widths."""
    return dict(mamba_n_heads=new.mamba_num_heads, mamba_d_head=new.mamba_head_dim)


def attention_head_dim(config) -> int:
    # the model reads an optional head_dim and falls back to hidden // heads (published configs omit it)
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def attention_parts(attn: nn.Module) -> AttentionParts:
    return AttentionParts(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)


def check_keeps_attention(new: Widths, old: Widths, attention_layer: str, architecture: str) -> None:
    """A model that has attention layers must keep one: transformers builds its generation cache from it."""
    if attention_layer in old.layer_kinds and attention_layer not in new.layer_kinds:
        raise ValueError(
            f"this plan removes every attention layer, but transformers' {architecture} needs at least one to build "
            "its generation cache; keep one attention layer and drop others instead"
        )
