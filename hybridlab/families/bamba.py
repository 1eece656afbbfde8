"""IBM Bamba (transformers' BambaForCausalLM). Every decoder layer is a mixer, Mamba2 or GQA
attention (at config.attn_layer_indices), and then its own gated MLP; each behind its own RMSNorm:

    x = x + mixer(input_layernorm(x));  x = x + feed_forward(pre_ff_layernorm(x))

so a layer is "mamba+mlp" or "attention+mlp" and dropping it drops both. Tensors (h hidden):

    model.embed_tokens.weight                         [V, h]
    model.layers.{i}.input_layernorm.weight           [h]
    model.layers.{i}.mamba.*                          Mamba2 mixer (mamba_layout.py); in/out bias: mamba_proj_bias
    model.layers.{i}.self_attn.{q,k,v,o}_proj         [n*hd, h] [kv*hd, h] [kv*hd, h] [h, n*hd] (bias: attention_bias)
    model.layers.{i}.pre_ff_layernorm.weight          [h]
    model.layers.{i}.feed_forward.{gate,up}_proj      [F, h]; down_proj [h, F]   (bias: mlp_bias)
    model.final_layernorm.weight                      [h]
    lm_head.weight                                    [V, h]   (tied iff tie_word_embeddings)
"""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import (
    ATTENTION,
    MAMBA,
    MLP,
    THEN,
    Family,
    Layer,
    MLPParts,
    ModelParts,
    Sublayer,
    Widths,
)
from hybridlab.families.hf_hybrid import (
    attention_head_dim,
    attention_parts,
    check_keeps_attention,
    mamba_biases,
    mamba_config,
    mamba_widths,
)
from hybridlab.families.hf_mamba2_mixer import mamba_parts
from hybridlab.families.mamba_width import check_integer_expand, expand_of

ARCHITECTURE = "BambaForCausalLM"
MAMBA_LAYER, ATTENTION_LAYER = MAMBA + THEN + MLP, ATTENTION + THEN + MLP
BLOCK_TYPES = {"linear_attention": MAMBA_LAYER, "full_attention": ATTENTION_LAYER}  # config.layers_block_type


def widths(config) -> Widths:
    biases = mamba_biases(config)
    if config.mamba_proj_bias:
        biases.add("mamba_out_proj")
    if config.mlp_bias:
        biases.add("mlp")
    if config.attention_bias:
        biases.add("attention")
    return Widths(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layer_kinds=tuple(BLOCK_TYPES[t] for t in config.layers_block_type),
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        attention_head_dim=attention_head_dim(config),
        **mamba_widths(config),
        tied_embeddings=bool(config.tie_word_embeddings),
        biases=frozenset(biases),
        mlp_gated=True,
    )


def check(new: Widths, old: Widths) -> None:
    check_keeps_attention(new, old, ATTENTION_LAYER, ARCHITECTURE)
    check_integer_expand(new, ARCHITECTURE)


def config_with(config, new: Widths):
    values = config.to_dict()
    values.update(
        hidden_size=new.hidden_size,
        intermediate_size=new.ffn_hidden_size,
        num_hidden_layers=new.num_layers,
        attn_layer_indices=[i for i, kind in enumerate(new.layer_kinds) if kind == ATTENTION_LAYER],
        num_attention_heads=new.num_attention_heads,
        num_key_value_heads=new.num_key_value_heads,
        head_dim=new.attention_head_dim,  # written, or a new hidden/heads ratio would change it (and RoPE)
        **mamba_config(new),
        mamba_expand=expand_of(new),
    )
    return type(config).from_dict(values)


def _skip_output(hidden_states):
    return hidden_states, None  # (hidden_states, attention weights), as the model's layer loop unpacks


def parts(model: nn.Module) -> ModelParts:
    backbone = model.model
    layers = []
    for index, block in enumerate(backbone.layers):
        if block.block_type == "linear_attention":
            mixer = Sublayer(MAMBA, block.input_layernorm, mamba_parts(block.mamba))
        else:
            mixer = Sublayer(ATTENTION, block.input_layernorm, attention_parts(block.self_attn))
        ff = block.feed_forward
        mlp = Sublayer(MLP, block.pre_ff_layernorm, MLPParts(ff.down_proj, up_proj=ff.up_proj, gate_proj=ff.gate_proj))
        kind = BLOCK_TYPES[block.block_type]
        layers.append(Layer(index, kind, block, [mixer, mlp], skip_output=_skip_output))
    return ModelParts(backbone.embed_tokens, layers, backbone.final_layernorm, model.lm_head)


FAMILY = Family(
    name="bamba",
    model_types=("bamba",),
    architectures=(ARCHITECTURE,),
    widths=widths,
    config_with=config_with,
    parts=parts,
    check=check,
)
