"""Mamba2 (transformers' Mamba2ForCausalLM): a pure state-space model, every layer a
Mamba2 mixer behind a pre-RMSNorm and a residual."""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import MAMBA, Family, Layer, ModelParts, Widths
from hybridlab.families.hf_mamba2_mixer import mamba_parts
from hybridlab.families.mamba_width import check_integer_expand, expand_of


def widths(config) -> Widths:
    biases = {"mamba_conv"} if config.use_conv_bias else set()
    if config.use_bias:
        biases |= {"mamba_in_proj", "mamba_out_proj"}
    return Widths(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layer_kinds=(MAMBA,) * config.num_hidden_layers,
        mamba_num_heads=config.num_heads,
        mamba_head_dim=config.head_dim,
        mamba_n_groups=config.n_groups,
        mamba_state_size=config.state_size,
        mamba_conv_kernel=config.conv_kernel,
        tied_embeddings=bool(config.tie_word_embeddings),
        biases=frozenset(biases),
    )


def check(new: Widths, old: Widths) -> None:
    check_integer_expand(new, "Mamba2ForCausalLM")


def config_with(config, new: Widths):
    values = config.to_dict()
    values.update(
        hidden_size=new.hidden_size,
        num_hidden_layers=new.num_layers,
        num_heads=new.mamba_num_heads,
        head_dim=new.mamba_head_dim,
        expand=expand_of(new),
    )
    return type(config).from_dict(values)


def parts(model: nn.Module) -> ModelParts:
    backbone = model.backbone
    layers = [
        Layer.single(i, MAMBA, block, block.norm, mamba_parts(block.mixer)) for i, block in enumerate(backbone.layers)
    ]
    return ModelParts(backbone.embeddings, layers, backbone.norm_f, model.lm_head)


FAMILY = Family(
    name="mamba2",
    model_types=("mamba2",),
    architectures=("Mamba2ForCausalLM",),
    widths=widths,
    config_with=config_with,
    parts=parts,
    check=check,
)
