"""TII Falcon-H1 (transformers' FalconH1ForCausalLM). Every decoder layer runs Mamba2 and GQA attention
side by side on one normed input, sums them, then a gated MLP behind its own RMSNorm:

    u = input_layernorm(x)
    x = x + ssm_out_mult * mamba(u) + attn_out_mult * attn(attn_in_mult * u)
    x = x + feed_forward(pre_ff_layernorm(x))

so every layer is "mamba|attention+mlp", and a layer goes whole (Mamba, attention and MLP). Tensors
(h hidden, d = mamba_d_ssm = H*P):

    model.embed_tokens.weight                      [V, h]
    model.layers.{i}.input_layernorm.weight        [h]       read by both the Mamba and the attention
    model.layers.{i}.mamba.*                       Mamba2 mixer (mamba_layout.py); in_proj bias: mamba_proj_bias,
                                                   out_proj bias: projectors_bias, norm [d] only if mamba_rms_norm
    model.layers.{i}.mamba.mup_vector              [1, 1, 2d + 2GN + H] buffer (not saved): ssm_multipliers per
                                                   in_proj segment [z | x | B | C | dt], rebuilt from the config
    model.layers.{i}.self_attn.{q,k,v,o}_proj      [n*hd, h] [kv*hd, h] [kv*hd, h] [h, n*hd] (bias: attention_bias)
    model.layers.{i}.pre_ff_layernorm.weight       [h]
    model.layers.{i}.feed_forward.{gate,up}_proj   [F, h]; down_proj [h, F]   (bias: mlp_bias)
    model.final_layernorm.weight                   [h]
    lm_head.weight                                 [V, h]   (tied iff tie_word_embeddings)

The Mamba width is its own config field (mamba_d_ssm), free of the hidden size. The muP multipliers are
scalars (ssm_multipliers: one per in_proj segment), so a kept unit computes what it did; only the
length of mup_vector follows the pruned widths.
"""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import (
    ATTENTION,
    BESIDE,
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
    mamba_biases,
    mamba_config,
    mamba_widths,
)
from hybridlab.families.hf_mamba2_mixer import mamba_parts

ARCHITECTURE = "FalconH1ForCausalLM"
LAYER = MAMBA + BESIDE + ATTENTION + THEN + MLP  # "mamba|attention+mlp"


def widths(config) -> Widths:
    biases = mamba_biases(config)
    if config.projectors_bias:
        biases.add("mamba_out_proj")
    if config.mlp_bias:
        biases.add("mlp")
    if config.attention_bias:
        biases.add("attention")
    return Widths(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layer_kinds=(LAYER,) * config.num_hidden_layers,
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        attention_head_dim=attention_head_dim(config),
        **mamba_widths(config),
        tied_embeddings=bool(config.tie_word_embeddings),
        biases=frozenset(biases),
        mlp_gated=True,
        mamba_norm=bool(config.mamba_rms_norm),
    )


def config_with(config, new: Widths):
    values = config.to_dict()
    values.update(
        hidden_size=new.hidden_size,
        intermediate_size=new.ffn_hidden_size,
        num_hidden_layers=new.num_layers,
        num_attention_heads=new.num_attention_heads,
        num_key_value_heads=new.num_key_value_heads,
        head_dim=new.attention_head_dim,  # written, or a new hidden/heads ratio would change it (and RoPE)
        **mamba_config(new),
        mamba_d_ssm=new.mamba_num_heads * new.mamba_head_dim,  # the width, free of hidden_size
    )
    return type(config).from_dict(values)


def rebuild_buffers(model: nn.Module) -> set[str]:
    """mup_vector follows the Mamba widths: rebuilt from the pruned config, as the model itself builds it
    (its segments shrink with z, x and dt; each keeps its multiplier)."""
    from transformers.models.falcon_h1.modeling_falcon_h1 import compute_mup_vector

    mup = compute_mup_vector(model.config)  # [1, 1, 2d + 2GN + H]
    names = set()
    for index, layer in enumerate(model.model.layers):
        layer.mamba.mup_vector.copy_(mup)
        names.add(f"model.layers.{index}.mamba.mup_vector")
    return names


def _skip_output(hidden_states):
    return (hidden_states,)  # the model's layer loop takes the first element of a tuple


def parts(model: nn.Module) -> ModelParts:
    backbone = model.model
    layers = []
    for index, block in enumerate(backbone.layers):
        attn, ff = block.self_attn, block.feed_forward
        sublayers = [
            Sublayer(MAMBA, block.input_layernorm, mamba_parts(block.mamba)),
            Sublayer(ATTENTION, block.input_layernorm, attention_parts(attn)),
            Sublayer(MLP, block.pre_ff_layernorm, MLPParts(ff.down_proj, up_proj=ff.up_proj, gate_proj=ff.gate_proj)),
        ]
        layers.append(Layer(index, LAYER, block, sublayers, skip_output=_skip_output))
    return ModelParts(backbone.embed_tokens, layers, backbone.final_layernorm, model.lm_head)


FAMILY = Family(
    name="falcon_h1",
    model_types=("falcon_h1",),
    architectures=(ARCHITECTURE,),
    widths=widths,
    config_with=config_with,
    parts=parts,
    rebuild_buffers=rebuild_buffers,
)
