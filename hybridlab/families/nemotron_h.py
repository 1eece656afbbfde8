"""NVIDIA Nemotron-H (transformers' NemotronHForCausalLM): Mamba2, ReLU² MLP, GQA attention and
mixture-of-experts layers (Nemotron-3-Nano), each one mixer behind a pre-RMSNorm and a residual.

A `moe` layer's mixer (E routed experts of F neurons, in = hidden or moe_latent_size, S shared neurons):

    mixer.gate.weight                       [E, h]   router logits; kept in float32
    mixer.gate.e_score_correction_bias      [E]      buffer, added to sigmoid(logits) to choose experts only
    mixer.experts.up_proj                   [E, F, in]   ReLU² experts, no gate
    mixer.experts.down_proj                 [E, in, F]
    mixer.shared_experts.{up,down}_proj     [S, h] [h, S]    (bias: mlp_bias)
    mixer.fc1_latent_proj / fc2_latent_proj [in, h] [h, in]  only with moe_latent_size (bias: mlp_bias)

Routing: sigmoid scores, plus the correction bias for choosing; the experts form n_group groups, a group
scores the sum of its two best experts, each token keeps its topk_group best groups and picks its top-k
experts in them; the gates are the chosen experts' sigmoid scores, renormalised to sum 1 when
norm_topk_prob, times routed_scaling_factor.
"""

from __future__ import annotations

from torch import nn

from hybridlab.families.base import ATTENTION, MAMBA, MLP, MOE, Family, Layer, MLPParts, ModelParts, MoEParts, Widths
from hybridlab.families.hf_experts import check_expert_alignment
from hybridlab.families.hf_hybrid import attention_parts
from hybridlab.families.hf_mamba2_mixer import mamba_parts

# config.layers_block_type names -> engine kinds
BLOCK_TYPES = {"linear_attention": MAMBA, "mlp": MLP, "full_attention": ATTENTION, "moe": MOE}
KIND_TO_BLOCK_TYPE = {kind: block for block, kind in BLOCK_TYPES.items()}
MOE_BLOCK = KIND_TO_BLOCK_TYPE[MOE]
GROUP_SCORE_EXPERTS = 2  # the router scores a group by the sum of its two best experts' choice scores


def widths(config) -> Widths:
    unsupported = sorted(set(config.layers_block_type) - set(BLOCK_TYPES))
    if unsupported:
        raise ValueError(
            f"NemotronH layers of type {unsupported} cannot be pruned; supported layer types are {sorted(BLOCK_TYPES)}."
        )
    # As transformers builds it: both Mamba projections take `use_bias`; `mamba_proj_bias` and
    # `attention_bias` are read by nothing (attention never has biases).
    biases = {"mamba_conv"} if config.use_conv_bias else set()
    if config.use_bias:
        biases |= {"mamba_in_proj", "mamba_out_proj"}
    if config.mlp_bias:
        biases.add("mlp")  # the MLPs and the shared experts
    moe = MOE_BLOCK in config.layers_block_type
    if moe and config.mlp_bias and config.moe_latent_size:
        biases.add("moe_latent")
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
        **(_moe_widths(config) if moe else {}),
    )


def _moe_widths(config) -> dict:
    return dict(
        num_moe_experts=config.n_routed_experts,
        moe_top_k=config.num_experts_per_tok,
        moe_ffn_hidden_size=config.moe_intermediate_size,
        moe_shared_expert_intermediate_size=config.moe_shared_expert_intermediate_size,
        moe_n_group=config.n_group,
        moe_topk_group=config.topk_group,
        moe_latent_size=config.moe_latent_size or 0,
        moe_gated=False,
    )


def check(new: Widths, old: Widths) -> None:
    per_group = new.num_moe_experts // max(new.moe_n_group, 1)
    if old.has(MOE) and per_group < GROUP_SCORE_EXPERTS:
        raise ValueError(
            f"num_moe_experts={new.num_moe_experts} leaves {per_group} expert(s) in each of the router's "
            f"{new.moe_n_group} group(s), but NemotronH scores a group by its {GROUP_SCORE_EXPERTS} best experts; "
            f"keep at least {GROUP_SCORE_EXPERTS * new.moe_n_group} experts"
        )
    check_expert_alignment(new, old, "NemotronHForCausalLM")
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
    if new.num_moe_experts:  # n_group and topk_group stay: every group keeps the same number of experts
        values.update(
            n_routed_experts=new.num_moe_experts,
            moe_intermediate_size=new.moe_ffn_hidden_size,
            moe_shared_expert_intermediate_size=new.moe_shared_expert_intermediate_size,
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
        elif kind == MOE:
            mixer_parts = _moe_parts(mixer)
        else:
            mixer_parts = attention_parts(mixer)
        layers.append(Layer.single(index, kind, block, block.norm, mixer_parts))
    return ModelParts(backbone.embeddings, layers, backbone.norm_f, model.lm_head)


def _moe_parts(mixer: nn.Module) -> MoEParts:
    experts, shared = mixer.experts, mixer.shared_experts
    latent = isinstance(mixer.fc1_latent_proj, nn.Linear)  # nn.Identity without moe_latent_size
    return MoEParts(
        module=mixer,
        experts=experts,
        router_weight=mixer.gate.weight,
        router_bias=mixer.gate.e_score_correction_bias,
        up_proj=experts.up_proj,
        down_proj=experts.down_proj,
        act_fn=experts.act_fn,
        shared_expert=MLPParts(up_proj=shared.up_proj, down_proj=shared.down_proj),
        latent_in=mixer.fc1_latent_proj if latent else None,
        latent_out=mixer.fc2_latent_proj if latent else None,
    )


FAMILY = Family(
    name="nemotron_h",
    model_types=("nemotron_h",),
    architectures=("NemotronHForCausalLM",),
    widths=widths,
    config_with=config_with,
    parts=parts,
    check=check,
)
