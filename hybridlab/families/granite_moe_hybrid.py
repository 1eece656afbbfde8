"""IBM Granite-4.0-H (transformers' GraniteMoeHybridForCausalLM). Every decoder layer is a mixer (Mamba2,
or GQA attention, by config.layer_types) and then a shared gated MLP, beside routed experts when
num_local_experts > 0; each behind its own RMSNorm, each branch scaled by residual_multiplier:

    x = x + rm * mixer(input_layernorm(x));  x = x + rm * shared_mlp(post_attention_layernorm(x))     dense
    x = x + rm * mixer(input_layernorm(x));  y = post_attention_layernorm(x)
    x = x + rm * (block_sparse_moe(y) + shared_mlp(y))                                                 with experts

so a layer is "mamba+mlp" or "attention+mlp", or with experts "mamba+moe" or "attention+moe", whose
shared_mlp is the mixture's shared expert. Tensors (h hidden, S shared_intermediate_size, E experts of
F = intermediate_size neurons):

    model.embed_tokens.weight                          [V, h]
    model.layers.{i}.input_layernorm.weight            [h]
    model.layers.{i}.mamba.*                           Mamba2 mixer (mamba_layout.py); in/out bias: mamba_proj_bias
    model.layers.{i}.self_attn.{q,k,v,o}_proj          [n*hd, h] [kv*hd, h] [kv*hd, h] [h, n*hd] (bias: attention_bias)
    model.layers.{i}.post_attention_layernorm.weight   [h]
    model.layers.{i}.shared_mlp.input_linear.weight    [2S, h]  rows [0:S] gate (activated), [S:2S] up
    model.layers.{i}.shared_mlp.output_linear.weight   [h, S]
    model.layers.{i}.block_sparse_moe.router.weight    [E, h]   logits; softmax over the top-k chosen
    model.layers.{i}.block_sparse_moe.experts.gate_up_proj  [E, 2F, h]  rows [0:F] gate (activated), [F:2F] up
    model.layers.{i}.block_sparse_moe.experts.down_proj     [E, h, F]
    model.norm.weight                                  [h]
    lm_head.weight                                     [V, h]   (tied iff tie_word_embeddings)

The scalar multipliers (embedding, residual, attention, logits) act elementwise, so a kept unit
computes what it did: pruning leaves them as they are.
"""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import (
    ATTENTION,
    MAMBA,
    MLP,
    MOE,
    THEN,
    Family,
    Layer,
    MLPParts,
    ModelParts,
    MoEParts,
    Sublayer,
    Widths,
)
from hybridlab.families.hf_experts import check_expert_alignment
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
MAMBA_MOE_LAYER, ATTENTION_MOE_LAYER = MAMBA + THEN + MOE, ATTENTION + THEN + MOE
# config.layer_types (remapped) -> layer kinds, for dense configs and for configs with experts
DENSE_BLOCK_TYPES = {"linear_attention": MAMBA_LAYER, "full_attention": ATTENTION_LAYER}
MOE_BLOCK_TYPES = {"linear_attention": MAMBA_MOE_LAYER, "full_attention": ATTENTION_MOE_LAYER}
KIND_TO_BLOCK_TYPE = {kind: block for types in (DENSE_BLOCK_TYPES, MOE_BLOCK_TYPES) for block, kind in types.items()}


def _block_types(config) -> dict[str, str]:
    return MOE_BLOCK_TYPES if config.num_local_experts else DENSE_BLOCK_TYPES


def widths(config) -> Widths:
    experts = config.num_local_experts or 0
    biases = mamba_biases(config)
    if config.mamba_proj_bias:
        biases.add("mamba_out_proj")
    if config.attention_bias:
        biases.add("attention")
    return Widths(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layer_kinds=tuple(_block_types(config)[t] for t in config.layer_types),
        ffn_hidden_size=0 if experts else config.shared_intermediate_size,  # with experts: the shared expert's
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        attention_head_dim=attention_head_dim(config),
        **mamba_widths(config),
        tied_embeddings=bool(config.tie_word_embeddings),
        biases=frozenset(biases),
        mlp_gated=True,
        **(_moe_widths(config) if experts else {}),
    )


def _moe_widths(config) -> dict:
    return dict(
        num_moe_experts=config.num_local_experts,
        moe_top_k=config.num_experts_per_tok,
        moe_ffn_hidden_size=config.intermediate_size,
        moe_shared_expert_intermediate_size=config.shared_intermediate_size,
        moe_gated=True,
    )


def check(new: Widths, old: Widths) -> None:
    check_keeps_attention(new, old, ATTENTION_MOE_LAYER if old.has(MOE) else ATTENTION_LAYER, ARCHITECTURE)
    check_integer_expand(new, ARCHITECTURE)
    check_expert_alignment(new, old, ARCHITECTURE)


def config_with(config, new: Widths):
    values = config.to_dict()
    if new.num_moe_experts:
        sizes = dict(
            num_local_experts=new.num_moe_experts,
            intermediate_size=new.moe_ffn_hidden_size,
            shared_intermediate_size=new.moe_shared_expert_intermediate_size,
        )
    else:
        sizes = dict(shared_intermediate_size=new.ffn_hidden_size)
    values.update(
        **sizes,
        hidden_size=new.hidden_size,
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
        shared = MLPParts(block.shared_mlp.output_linear, gate_up_proj=block.shared_mlp.input_linear)
        if block.block_sparse_moe is not None:
            ffn = Sublayer(MOE, block.post_attention_layernorm, _moe_parts(block.block_sparse_moe, shared))
        else:
            ffn = Sublayer(MLP, block.post_attention_layernorm, shared)
        layers.append(Layer(index, _block_types(model.config)[block.block_type], block, [mixer, ffn]))
    return ModelParts(backbone.embed_tokens, layers, backbone.norm, model.lm_head)


def _moe_parts(moe: nn.Module, shared: MLPParts) -> MoEParts:
    experts = moe.experts
    return MoEParts(
        module=moe,
        experts=experts,
        router_weight=moe.router.weight,
        gate_up_proj=experts.gate_up_proj,
        down_proj=experts.down_proj,
        act_fn=experts.act_fn,
        shared_expert=shared,  # the decoder layer runs shared_mlp beside the experts, on the same input
    )


FAMILY = Family(
    name="granite_moe_hybrid",
    model_types=("granitemoehybrid",),
    architectures=(ARCHITECTURE,),
    widths=widths,
    config_with=config_with,
    parts=parts,
    check=check,
)
