"""NVIDIA Nemotron-H (transformers' NemotronHForCausalLM): Mamba2, ReLU² MLP and GQA
attention layers, each one mixer behind a pre-RMSNorm and a residual."""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import ATTENTION, MAMBA, MLP, Family, Layer, MLPParts, ModelParts, Widths
from hybridlab.families.hf_hybrid import attention_parts
from hybridlab.families.hf_mamba2_mixer import mamba_parts

# config.layers_block_type names -> engine kinds. MoE layers ("moe") are not prunable yet.
BLOCK_TYPES = {"linear_attention": MAMBA, "mlp": MLP, "full_attention": ATTENTION}
KIND_TO_BLOCK_TYPE = {kind: block for block, kind in BLOCK_TYPES.items()}


def widths(config) -> Widths:
    unsupported = sorted(set(config.layers_block_type) - set(BLOCK_TYPES))
    if unsupported:
        raise ValueError(
            f"NemotronH layers of type {unsupported} (mixture of experts) cannot be pruned yet; "
            "supported layer types are Mamba2, MLP and attention."
        )
    # As transformers builds it: both Mamba projections take `use_bias`; `mamba_proj_bias` and
    # `attention_bias` are read by nothing (attention never has biases).
    biases = {"mamba_conv"} if config.use_conv_bias else set()
    if config.use_bias:
        biases |= {"mamba_in_proj", "mamba_out_proj"}
    if config.mlp_bias:
        biases.add("mlp")
    return Widths(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        layer_kinds=tuple(BLOCK_TYPES[t] for t in config.layers_block_type),
        ffn_hidden_size=config.intermediate_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        attention_head_dim=config.head_dim,
        mamba_num_heads=config.mamba_num_heads,
        mamba_head_dim=config.mamba_head_dim,
        mamba_n_groups=config.n_groups,
        mamba_state_size=config.ssm_state_size,
        mamba_conv_kernel=config.conv_kernel,
        tied_embeddings=False,  # NemotronHForCausalLM ties nothing, whatever tie_word_embeddings says
        biases=frozenset(biases),
    )


def check(new: Widths, old: Widths) -> None:
    if ATTENTION in old.layer_kinds and ATTENTION not in new.layer_kinds:  # a model without one never had a cache
        raise ValueError(
            "this plan removes every attention layer, but transformers' NemotronHForCausalLM needs at least one "
            "to build its generation cache; keep one attention layer and drop others instead"
        )


def config_with(config, new: Widths):
    values = config.to_dict()
    values.update(
        hidden_size=new.hidden_size,
        layers_block_type=[KIND_TO_BLOCK_TYPE[k] for k in new.layer_kinds],
        intermediate_size=new.ffn_hidden_size,
        num_attention_heads=new.num_attention_heads,
        mamba_num_heads=new.mamba_num_heads,
        mamba_head_dim=new.mamba_head_dim,
    )
    values.pop("num_hidden_layers", None)  # derived from layers_block_type
    return type(config).from_dict(values)


def parts(model: nn.Module) -> ModelParts:
    backbone = model.model
    layers = []
    for index, block in enumerate(backbone.layers):
        kind = BLOCK_TYPES[block.block_type]
        mixer = block.mixer
        if kind == MAMBA:
            mixer_parts = mamba_parts(mixer)
        elif kind == MLP:
            mixer_parts = MLPParts(up_proj=mixer.up_proj, down_proj=mixer.down_proj)
        else:
            mixer_parts = attention_parts(mixer)
        layers.append(Layer.single(index, kind, block, block.norm, mixer_parts))
    return ModelParts(backbone.embeddings, layers, backbone.norm_f, model.lm_head)


FAMILY = Family(
    name="nemotron_h",
    model_types=("nemotron_h",),
    architectures=("NemotronHForCausalLM",),
    widths=widths,
    config_with=config_with,
    parts=parts,
    check=check,
)
