"""Sizes of a model or a pruning plan, computed from the config alone (no weights).

Parameter counts are exact (tests compare them with what transformers builds on the
meta device). FLOPs and state memory are analytic estimates for inference.

A mixture of experts has two sizes: its total parameters (every routed expert), and the
parameters one token runs through (the router, its top-k routed experts, the shared expert and
the latent projections); `active_params` counts the second, and FLOPs per token follow it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hybridlab.families import ATTENTION, MAMBA, MLP, MOE, MambaLayout, Widths, describe, mixers_of, stages_of
from hybridlab.model.spec import PruneSpec, kept_layer_count, resolve


@dataclass(frozen=True)
class Sizes:
    params: int
    params_by_kind: dict  # "embeddings", "lm_head", "mamba", "mlp", "attention", "norms" (and "moe")
    flops_per_token: float  # forward pass, averaged over a prefill of seq_len tokens
    state_bytes: int  # inference state at seq_len: KV cache + Mamba conv and SSM states
    kv_cache_bytes: int
    mamba_state_bytes: int
    seq_len: int
    batch_size: int
    active_params: int = 0  # parameters a token runs through (== params without mixtures of experts)

    def to_dict(self) -> dict:
        return asdict(self)

    def budget_params(self, budget: str = "total") -> int:
        """The count a parameter budget is measured in: "total" or "active" (per token)."""
        if budget not in PARAM_BUDGETS:
            raise ValueError(f"a parameter budget is one of {PARAM_BUDGETS}, got {budget!r}")
        return self.params if budget == "total" else self.active_params


PARAM_BUDGETS = ("total", "active")


def mamba_params(w: Widths) -> int:
    layout = MambaLayout.of(w)
    n = w.hidden_size * layout.in_proj_size + ("mamba_in_proj" in w.biases and layout.in_proj_size)
    n += layout.conv_channels * w.mamba_conv_kernel + ("mamba_conv" in w.biases and layout.conv_channels)
    n += 3 * w.mamba_num_heads  # dt_bias, A_log, D
    n += w.mamba_norm and layout.inner  # gated norm
    n += layout.inner * w.hidden_size + ("mamba_out_proj" in w.biases and w.hidden_size)
    return int(n)


def mlp_params(w: Widths) -> int:
    matrices = 3 if w.mlp_gated else 2  # (gate,) up, down
    n = matrices * w.hidden_size * w.ffn_hidden_size
    return int(n + ("mlp" in w.biases and (matrices - 1) * w.ffn_hidden_size + w.hidden_size))


def attention_params(w: Widths) -> int:
    q = w.num_attention_heads * w.attention_head_dim
    kv = w.num_key_value_heads * w.attention_head_dim
    n = w.attention_input_copies * w.hidden_size * (q + 2 * kv) + q * w.hidden_size  # q, k, v read the copies
    return int(n + ("attention" in w.biases and q + 2 * kv + w.hidden_size))


def routed_expert_params(w: Widths) -> int:
    """One routed expert: (gate,) up [F, in] and down [in, F], no biases."""
    return (3 if w.moe_gated else 2) * w.moe_ffn_hidden_size * w.moe_expert_input


def moe_params(w: Widths, experts: int | None = None) -> int:
    """A mixture of experts with `experts` of its routed experts (all by default; moe_top_k: what one
    token runs through): the router [E, hidden], the experts, the shared expert and latent projections."""
    experts = w.num_moe_experts if experts is None else experts
    n = w.num_moe_experts * w.hidden_size + experts * routed_expert_params(w)
    if w.moe_shared_expert_intermediate_size:  # an MLP like the dense ones, of its own width
        n += mlp_params(w.with_(ffn_hidden_size=w.moe_shared_expert_intermediate_size))
    if w.moe_latent_size:  # [latent, hidden] in, [hidden, latent] out
        n += 2 * w.hidden_size * w.moe_latent_size + ("moe_latent" in w.biases and w.moe_latent_size + w.hidden_size)
    return int(n)


def active_moe_params(w: Widths) -> int:
    return moe_params(w, w.moe_top_k)


MIXER_PARAMS = {MAMBA: mamba_params, MLP: mlp_params, ATTENTION: attention_params, MOE: moe_params}
# what one token runs through: all of every mixer but a mixture of experts
ACTIVE_MIXER_PARAMS = {**MIXER_PARAMS, MOE: active_moe_params}


def stage_norm_width(w: Widths, stage: tuple[str, ...]) -> int:
    """The width of the pre-norm in front of a stage of mixers (the attention's copies side by side)."""
    return w.hidden_size * (w.attention_input_copies if ATTENTION in stage else 1)


def layer_params(w: Widths, layer_kind: str) -> int:
    """Parameters of one layer of `layer_kind` (e.g. "mamba+mlp"): its mixers and its pre-norms."""
    mixers = sum(MIXER_PARAMS[k](w) for k in mixers_of(layer_kind))
    return mixers + sum(stage_norm_width(w, stage) for stage in stages_of(layer_kind))


def per_use_params(w: Widths) -> int:
    """Parameters each use of a shared block adds: its adapters and its output projection."""
    n, r, h = 0, w.adapter_rank, w.hidden_size
    if ATTENTION in w.adapted_kinds:  # on q, k, v: down [r, copies*h], up [q or kv width, r]
        widths_out = (w.num_attention_heads + 2 * w.num_key_value_heads) * w.attention_head_dim
        n += r * (3 * w.attention_input_copies * h + widths_out)
    if MLP in w.adapted_kinds:  # on (gate|)up: down [r, h], up [(2)F, r]
        n += r * (h + (2 if w.mlp_gated else 1) * w.ffn_hidden_size)
    return n + (w.shared_output_proj and h * h)


def shared_uses(w: Widths) -> int:
    """Layers that use a shared block."""
    return sum(any(k in w.shared_kinds for k in mixers_of(kind)) for kind in w.layer_kinds)


def count_params(w: Widths) -> dict:
    """Parameters by part. A shared block's mixers and pre-norms count once per block, its per-use
    adapters and projections once per use."""
    shared = lambda stage: all(k in w.shared_kinds for k in stage)  # noqa: E731
    own_stages = [stage for kind in w.layer_kinds for stage in stages_of(kind) if not shared(stage)]
    shared_stages = {stage for kind in w.layer_kinds for stage in stages_of(kind) if shared(stage)}
    norms = w.hidden_size + sum(stage_norm_width(w, stage) for stage in own_stages)  # the final norm and the rest
    norms += sum(w.blocks(stage[0]) * stage_norm_width(w, stage) for stage in shared_stages)
    by_kind = {
        "embeddings": w.vocab_size * w.hidden_size,
        "lm_head": 0 if w.tied_embeddings else w.vocab_size * w.hidden_size,
        "norms": norms,
    }
    for kind, count_fn in MIXER_PARAMS.items():
        if kind != MOE or w.has(MOE):
            by_kind[kind] = w.blocks(kind) * count_fn(w)
    if w.shared_kinds:
        by_kind["shared_block_uses"] = shared_uses(w) * per_use_params(w)
    return by_kind


def inactive_params(w: Widths) -> int:
    """Parameters a token does not run through: the routed experts beyond its top-k, in every MoE layer."""
    return w.blocks(MOE) * (w.num_moe_experts - w.moe_top_k) * routed_expert_params(w)


def flops_per_token(w: Widths, seq_len: int) -> float:
    """2 FLOPs per multiply-add of every matmul a token runs through (a mixture of experts: the router,
    its top-k experts, the shared expert), plus attention scores over the average
    causal context (seq_len + 1) / 2, plus the SSM state update (about 3 multiply-adds per
    state element: decay, input, readout) and the depthwise convolution."""
    matmul_params = w.vocab_size * w.hidden_size  # the lm_head matmul (embedding lookup is free)
    for kind in (MAMBA, MLP, ATTENTION, MOE):  # a mixture of experts: its active path
        matmul_params += w.count(kind) * ACTIVE_MIXER_PARAMS[kind](w)  # every use of a shared block computes
    matmul_params += shared_uses(w) * per_use_params(w)
    flops = 2.0 * matmul_params
    context = (seq_len + 1) / 2
    flops += w.count(ATTENTION) * 4.0 * w.num_attention_heads * w.attention_head_dim * context
    layout = MambaLayout.of(w)
    flops += w.count(MAMBA) * (
        6.0 * layout.inner * w.mamba_state_size + 2.0 * layout.conv_channels * w.mamba_conv_kernel
    )
    return flops


def state_bytes(
    w: Widths, seq_len: int, batch_size: int, dtype_bytes: int = 2, ssm_dtype_bytes: int = 4
) -> tuple[int, int]:
    """(KV cache bytes, Mamba state bytes). The SSM state is kept in float32 by default
    (transformers' mamba_ssm_cache_dtype), the rest in the model dtype."""
    kv = w.count(ATTENTION) * 2 * w.num_key_value_heads * w.attention_head_dim * seq_len * batch_size * dtype_bytes
    layout = MambaLayout.of(w)
    conv = layout.conv_channels * w.mamba_conv_kernel * dtype_bytes
    ssm = layout.inner * w.mamba_state_size * ssm_dtype_bytes
    mamba = w.count(MAMBA) * (conv + ssm) * batch_size
    return int(kv), int(mamba)


def sizes_of(widths: Widths, seq_len: int = 4096, batch_size: int = 1, dtype_bytes: int = 2) -> Sizes:
    by_kind = count_params(widths)
    kv, mamba = state_bytes(widths, seq_len, batch_size, dtype_bytes)
    params = int(sum(by_kind.values()))
    return Sizes(
        params=params,
        active_params=params - inactive_params(widths),
        params_by_kind={k: int(v) for k, v in by_kind.items()},
        flops_per_token=flops_per_token(widths, seq_len),
        state_bytes=kv + mamba,
        kv_cache_bytes=kv,
        mamba_state_bytes=mamba,
        seq_len=seq_len,
        batch_size=batch_size,
    )


def planned_widths(config, spec: PruneSpec | None = None, drop_layers: tuple[int, ...] | None = None) -> Widths:
    """Widths after applying `spec` to `config` (or a ModelDescription). Without explicit
    drop_layers, a num_layers target is planned by dropping layers in proportion to the
    pattern (the exact layers are chosen by importance at prune time; the count per kind is
    what sizes depend on)."""
    description = describe(config)
    widths = description.widths
    spec = spec or PruneSpec()
    drop = drop_layers if drop_layers is not None else spec.drop_layers
    kinds = widths.layer_kinds
    if drop is not None:
        kept_layer_count(PruneSpec(drop_layers=drop), widths)
        kinds = tuple(k for i, k in enumerate(kinds) if i not in set(drop))
    elif spec.num_layers is not None:
        return _planned_depth(description, spec, kept_layer_count(spec, widths))
    new = description.derive(resolve(spec, widths, kept_kinds=kinds))
    description.check(new)
    return new


def _planned_depth(description, spec: PruneSpec, keep: int) -> Widths:
    """Widths for a num_layers target: the evenly spread layers, or, when the family cannot lose
    some of those (e.g. its last attention layer), the nearest pattern it can build."""
    widths = description.widths
    description.check(description.derive(resolve(spec, widths)))  # a width the family refuses: no pattern helps
    error = None
    for kinds in _patterns_near(widths.layer_kinds, _evenly_spread(len(widths.layer_kinds), keep)):
        new = description.derive(resolve(spec, widths, kept_kinds=kinds))
        try:
            description.check(new)
            return new
        except ValueError as err:
            error = error or err
    raise error


def _evenly_spread(n: int, keep: int) -> list[int]:
    return sorted({round(i * (n - 1) / max(keep - 1, 1)) for i in range(keep)}) if keep > 1 else [0]


def _patterns_near(kinds: tuple[str, ...], picked: list[int]):
    """The picked layers' pattern, then each pattern one swap (a kept layer for a dropped one) away."""
    yield tuple(kinds[i] for i in picked)
    seen = set()
    dropped = [i for i in range(len(kinds)) if i not in set(picked)]
    for out in dropped:
        for slot in range(len(picked)):
            swapped = tuple(kinds[i] for i in sorted([*picked[:slot], out, *picked[slot + 1 :]]))
            if swapped not in seen:
                seen.add(swapped)
                yield swapped


def proportional_kinds(kinds: tuple[str, ...], keep: int) -> tuple[str, ...]:
    """Keep `keep` layers spread evenly over the pattern (an estimate for planning)."""
    return tuple(kinds[i] for i in _evenly_spread(len(kinds), keep))


def estimate_sizes(
    config, spec: PruneSpec | None = None, seq_len: int = 4096, batch_size: int = 1, dtype_bytes: int = 2
) -> Sizes:
    """Parameters, FLOPs/token and inference-state memory for `config` (or a ModelDescription)
    pruned by `spec`."""
    return sizes_of(planned_widths(config, spec), seq_len, batch_size, dtype_bytes)
