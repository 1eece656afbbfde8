"""Zyphra Zamba2 (transformers' Zamba2ForCausalLM): Mamba2 layers, and hybrid layers that first run a
shared transformer block on [stream | original embeddings], project its output into the stream and then
run their own Mamba2:

    mamba layer:   x = x + mamba(input_layernorm(x))
    hybrid layer:  t = mlp(pre_ff_layernorm(attn(input_layernorm(cat[x, e]))))     (the shared block)
                   x = x + mamba(input_layernorm(x + linear(t)))

The shared blocks cycle over the hybrid layers: use u (the u-th hybrid layer) runs block u % M
(M = num_mem_blocks); transformers ties the blocks' weights across their uses. Each use has its own
LoRA adapters (slot u of its block's adapter lists) and its own `linear`. So a hybrid layer is
"attention+mlp+mamba" with the attention and MLP shared: scored over all uses, pruned once. Tensors
(h hidden, n heads of hd = 2h/n, F intermediate_size, r adapter_rank; per hybrid layer i, use u):

    model.embed_tokens.weight                                          [V, h]   (lm_head tied to it)
    model.layers.{i}.input_layernorm.weight | .mamba.*                 a Mamba layer: [h] + Mamba2 mixer
    model.layers.{i}.mamba_decoder.input_layernorm.weight | .mamba.*   the hybrid layer's own Mamba
    model.layers.{i}.linear.weight                                     [h, h]   per use
    ...shared_transformer.input_layernorm.weight                      [2h]     [0:h] stream, [h:2h] embeddings
    ...shared_transformer.self_attn.{q,k,v}_proj.weight               [n*hd, 2h] (MHA: kv = n), o_proj [h, n*hd]
    ...shared_transformer.self_attn.linear_{q,k,v}_adapter_list.{u}   [r, 2h], [n*hd, r]  (use_shared_attention_adapter)
    ...shared_transformer.pre_ff_layernorm.weight                     [h]
    ...shared_transformer.feed_forward.gate_up_proj.weight            [2F, h]  rows [gate | up] (+bias add_bias_linear)
    ...shared_transformer.feed_forward.gate_up_proj_adapter_list.{u}  [r, h], [2F, r]
    ...shared_transformer.feed_forward.down_proj.weight               [h, F]   (+bias)
    model.final_layernorm.weight                                       [h]

The config derives attention_head_dim = 2h/n and mamba_headdim = expand*h/H (integer expand), so a plan
keeps hd: the heads follow the hidden size (n' = 2h'/hd), and H'P' is a whole multiple of h'.
"""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import (
    ATTENTION,
    MAMBA,
    MLP,
    THEN,
    Adapter,
    AttentionParts,
    Family,
    Layer,
    MLPParts,
    ModelParts,
    Sublayer,
    Widths,
)
from hybridlab.families.hf_mamba2_mixer import mamba_parts
from hybridlab.families.mamba_width import check_integer_expand, expand_of

ARCHITECTURE = "Zamba2ForCausalLM"
HYBRID = ATTENTION + THEN + MLP + THEN + MAMBA  # "attention+mlp+mamba"
BLOCK_TYPES = {"linear_attention": MAMBA, "hybrid": HYBRID}  # config.layers_block_type (remapped)
KIND_TO_BLOCK_TYPE = {kind: block for block, kind in BLOCK_TYPES.items()}
# derived by the config from the others; a stale copy in config.json would override the new values
DERIVED_KEYS = (
    "attention_hidden_size",
    "attention_head_dim",
    "head_dim",
    "mamba_headdim",
    "kv_channels",
    "num_query_groups",
    "hybrid_layer_ids",
)


def widths(config) -> Widths:
    if not config.tie_word_embeddings:
        raise ValueError(
            f"{ARCHITECTURE} with tie_word_embeddings=False gives every hybrid layer its own copy of the shared "
            "blocks (transformers ties them only with the embeddings); hybridlab prunes the tied form, which the "
            "published Zamba2 configs use"
        )
    biases = {"mamba_conv"}  # the Mamba conv1d always has a bias (use_conv_bias is not read)
    if config.add_bias_linear:
        biases |= {"mamba_in_proj", "mamba_out_proj", "mlp"}
    adapted = {MLP} | ({ATTENTION} if config.use_shared_attention_adapter else set())
    return Widths(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layer_kinds=tuple(BLOCK_TYPES[t] for t in config.layers_block_type),
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        attention_head_dim=config.attention_head_dim,
        mamba_num_heads=config.n_mamba_heads,
        mamba_head_dim=config.mamba_headdim,
        mamba_n_groups=config.mamba_ngroups,
        mamba_state_size=config.mamba_d_state,
        mamba_conv_kernel=config.mamba_d_conv,
        tied_embeddings=True,
        biases=frozenset(biases),
        mlp_gated=True,
        shared_kinds=frozenset({ATTENTION, MLP}),
        shared_blocks=config.num_mem_blocks,
        attention_input_copies=2,
        adapter_rank=config.adapter_rank,
        adapted_kinds=frozenset(adapted),
        shared_output_proj=True,
        derived_axes=("num_attention_heads",),
    )


def derive(old: Widths, new: Widths) -> Widths:
    """Heads follow the hidden size at the model's head dim (the config derives hd = 2h/n), unless the plan
    names them; a multi-head model's key/value heads follow the heads."""
    if new.num_attention_heads == old.num_attention_heads and (2 * new.hidden_size) % old.attention_head_dim == 0:
        heads = 2 * new.hidden_size // old.attention_head_dim
        new = new.with_(num_attention_heads=heads)
        if old.is_multi_head:
            new = new.with_(num_key_value_heads=heads)
    return new


def check(new: Widths, old: Widths) -> None:
    if HYBRID in old.layer_kinds and HYBRID not in new.layer_kinds:  # a model without one never had a cache
        raise ValueError(
            f"this plan removes every hybrid layer, but transformers' {ARCHITECTURE} needs at least one to build "
            "its generation cache; keep one hybrid layer and drop others instead"
        )
    if old.shared_blocks > 1 and new.count(ATTENTION) != old.count(ATTENTION):
        raise ValueError(
            f"this {ARCHITECTURE} cycles {old.shared_blocks} shared blocks over its hybrid layers (num_mem_blocks): "
            "dropping a hybrid layer would hand the later ones another block's weights; drop Mamba layers instead"
        )
    hd = old.attention_head_dim
    if new.num_attention_heads * hd != 2 * new.hidden_size:
        fits = [f"hidden_size={h} (its heads follow)" for h in range(new.hidden_size, 0, -1) if (2 * h) % hd == 0][:1]
        if new.num_attention_heads != old.num_attention_heads and (new.num_attention_heads * hd) % 2 == 0:
            fits.insert(0, f"hidden_size={new.num_attention_heads * hd // 2} for {new.num_attention_heads} heads")
        raise ValueError(
            f"{ARCHITECTURE} derives the attention head dim as 2 * hidden_size / num_attention_heads and the head "
            f"dim must stay {hd}, so hidden_size={new.hidden_size} needs num_attention_heads = "
            f"{2 * new.hidden_size / hd:g} (leave num_attention_heads out: it follows the hidden size); nearest "
            f"plans it can build: {' or '.join(fits) or 'keep the hidden size'}"
        )
    if not old.is_multi_head and new.num_attention_heads % new.num_key_value_heads:
        raise ValueError(
            f"hidden_size={new.hidden_size} gives {new.num_attention_heads} attention heads, not a multiple of the "
            f"{new.num_key_value_heads} key/value heads: choose a hidden size whose heads fill every KV group"
        )
    check_integer_expand(new, ARCHITECTURE)


def config_with(config, new: Widths):
    values = {k: v for k, v in config.to_dict().items() if k not in DERIVED_KEYS}
    values.update(
        hidden_size=new.hidden_size,
        intermediate_size=new.ffn_hidden_size,
        layers_block_type=[KIND_TO_BLOCK_TYPE[k] for k in new.layer_kinds],
        num_hidden_layers=new.num_layers,
        num_attention_heads=new.num_attention_heads,
        num_key_value_heads=new.num_key_value_heads,
        n_mamba_heads=new.mamba_num_heads,
        mamba_expand=expand_of(new),  # mamba_headdim = expand * hidden / heads follows
    )
    return type(config).from_dict(values)


def _adapter(adapters: nn.ModuleList, use: int) -> Adapter:
    down, up = adapters[use]  # Sequential(Linear [r, in], Linear [out, r])
    return Adapter(down, up)


def parts(model: nn.Module) -> ModelParts:
    backbone, config = model.model, model.config
    layers, use = [], 0
    for index, block in enumerate(backbone.layers):
        if config.layers_block_type[index] != "hybrid":
            layers.append(Layer.single(index, MAMBA, block, block.input_layernorm, mamba_parts(block.mamba)))
            continue
        shared = block.shared_transformer
        attn, ff = shared.self_attn, shared.feed_forward
        adapted = config.use_shared_attention_adapter
        attention = AttentionParts(
            attn.q_proj,
            attn.k_proj,
            attn.v_proj,
            attn.o_proj,
            q_adapter=_adapter(attn.linear_q_adapter_list, use) if adapted else None,
            k_adapter=_adapter(attn.linear_k_adapter_list, use) if adapted else None,
            v_adapter=_adapter(attn.linear_v_adapter_list, use) if adapted else None,
        )
        mlp = MLPParts(
            ff.down_proj, gate_up_proj=ff.gate_up_proj, gate_up_adapter=_adapter(ff.gate_up_proj_adapter_list, use)
        )
        mamba = block.mamba_decoder
        sublayers = [
            Sublayer(ATTENTION, shared.input_layernorm, attention, input_copies=2),
            Sublayer(MLP, shared.pre_ff_layernorm, mlp),
            Sublayer(MAMBA, mamba.input_layernorm, mamba_parts(mamba.mamba)),
        ]
        layers.append(Layer(index, HYBRID, block, sublayers, hidden_projections=[block.linear]))
        use += 1
    return ModelParts(backbone.embed_tokens, layers, backbone.final_layernorm, model.lm_head)


FAMILY = Family(
    name="zamba2",
    model_types=("zamba2",),
    architectures=(ARCHITECTURE,),
    widths=widths,
    config_with=config_with,
    parts=parts,
    check=check,
    derive=derive,
)
