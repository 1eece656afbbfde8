"""IBM Granite-4.0-H (transformers' GraniteMoeHybridForCausalLM), dense configs. Every decoder layer
is a mixer (Mamba2, or GQA attention, by config.layer_types) and then a shared gated MLP; each behind
its own RMSNorm, each branch scaled by residual_multiplier:

    x = x + rm * mixer(input_layernorm(x));  x = x + rm * shared_mlp(post_attention_layernorm(x))

so a layer is "mamba+mlp" or "attention+mlp". Tensors (h hidden, S shared_intermediate_size):

    model.embed_tokens.weight                          [V, h]
    model.layers.{i}.input_layernorm.weight            [h]
    model.layers.{i}.mamba.*                           Mamba2 mixer (mamba_layout.py); in/out bias: mamba_proj_bias
    model.layers.{i}.self_attn.{q,k,v,o}_proj          [n*hd, h] [kv*hd, h] [kv*hd, h] [h, n*hd] (bias: attention_bias)
    model.layers.{i}.post_attention_layernorm.weight   [h]
    model.layers.{i}.shared_mlp.input_linear.weight    [2S, h]  rows [0:S] gate (activated), [S:2S] up
    model.layers.{i}.shared_mlp.output_linear.weight   [h, S]
    model.norm.weight                                  [h]
    lm_head.weight                                     [V, h]   (tied iff tie_word_embeddings)

The scalar multipliers (embedding, residual, attention, logits) act elementwise, so a kept unit
computes what it did: pruning leaves them as they are. Layers with routed experts
(num_local_experts > 0) are refused until expert pruning exists.
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

ARCHITECTURE = "GraniteMoeHybridForCausalLM"
MAMBA_LAYER, ATTENTION_LAYER = MAMBA + THEN + MLP, ATTENTION + THEN + MLP
BLOCK_TYPES = {"linear_attention": MAMBA_LAYER, "full_attention": ATTENTION_LAYER}  # config.layer_types (remapped)
KIND_TO_BLOCK_TYPE = {kind: block for block, kind in BLOCK_TYPES.items()}


def widths(config) -> Widths:
    if config.num_local_experts:
        raise ValueError(
            f"{ARCHITECTURE} with routed experts (num_local_experts={config.num_local_experts}) cannot be pruned "
            "yet: mixture-of-experts pruning is not built; dense configs (num_local_experts=0, shared_mlp only), "
            "such as granite-4.0-h-1b and -micro, can"
        )
    biases = mamba_biases(config)
    if config.mamba_proj_bias:
        biases.add("mamba_out_proj")
    if config.attention_bias:
        biases.add("attention")
    return Widths(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layer_kinds=tuple(BLOCK_TYPES[t] for t in config.layer_types),
        ffn_hidden_size=config.shared_intermediate_size,
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
        shared_intermediate_size=new.ffn_hidden_size,
        layer_types=[KIND_TO_BLOCK_TYPE[k] for k in new.layer_kinds],
        num_hidden_layers=new.num_layers,
        num_attention_heads=new.num_attention_heads,
        num_key_value_heads=new.num_key_value_heads,
        head_dim=new.attention_head_dim,  # written, or a new hidden/heads ratio would change it
        **mamba_config(new),
        mamba_expand=expand_of(new),
    )
    return type(config).from_dict(values)


def parts(model: nn.Module) -> ModelParts:
    backbone = model.model
    layers = []
    for index, block in enumerate(backbone.layers):
        if block.mamba is not None:
            mixer = Sublayer(MAMBA, block.input_layernorm, mamba_parts(block.mamba))
        else:
            mixer = Sublayer(ATTENTION, block.input_layernorm, attention_parts(block.self_attn))
        shared = block.shared_mlp
        mlp = Sublayer(
            MLP, block.post_attention_layernorm, MLPParts(shared.output_linear, gate_up_proj=shared.input_linear)
        )
        layers.append(Layer(index, BLOCK_TYPES[block.block_type], block, [mixer, mlp]))
    return ModelParts(backbone.embed_tokens, layers, backbone.norm, model.lm_head)


FAMILY = Family(
    name="granite_moe_hybrid",
    model_types=("granitemoehybrid",),
    architectures=(ARCHITECTURE,),
    widths=widths,
    config_with=config_with,
    parts=parts,
    check=check,
)
