"""Which units a plan keeps: the one rule behind the pruner, the dashboard's overlays and the
study. Given importance scores (or the seeded random control) and a spec, `kept_units` names
the embedding channels, the FFN neurons, attention heads, Mamba heads and Mamba head channels
of every kept layer, and the dropped layers; `prune` only slices weights by it.

- Every axis keeps its top-k units by score, in ascending index order (the layout stays).
- Attention heads are ranked within their KV group; every group keeps the same count.
- Mamba is nested and group-aware (paper Eqs. 19-24): the same head channels in every head,
  then heads scored over those channels and ranked within their group, the same number per
  group, so every kept head still reads its own group's B and C. mamba_ranking="global" ranks
  heads over the whole layer (the ablation's strawman that mispairs heads with B/C).
- Mixtures of experts: the top num_moe_experts routed experts by `expert_metric` (routing_mass,
  gated_output_norm, or "random", the seeded control), the same number from every routing group;
  then, inside each kept expert, its own top moe_ffn_hidden_size neurons; the shared expert's top
  neurons like an FFN's.
- Layers: the spec's drop_layers, or the least important by a layer metric that the family
  can lose (e.g. NemotronH keeps one attention layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hybridlab.compression.importance import (
    ATTENTION_HEAD,
    EXPERT_METRICS,
    FFN_NEURON,
    HIDDEN,
    MAMBA_CHANNEL,
    MAMBA_HEAD,
    MOE_EXPERT,
    MOE_NEURON,
    SHARED_EXPERT_NEURON,
    ImportanceScores,
)
from hybridlab.compression.scores_fit import check_scores_fit
from hybridlab.families import ATTENTION, MAMBA, MLP, MOE, ModelDescription, Widths, describe, mixers_of
from hybridlab.model.spec import PruneSpec, kept_layer_count, resolve

RANKINGS = ("importance", "random")
MAMBA_RANKINGS = ("group", "global")
EXPERT_RANKINGS = (*EXPERT_METRICS, "random")  # how routed experts are chosen; "random" is the control
LAYER_AXES = (FFN_NEURON, ATTENTION_HEAD, MAMBA_HEAD, MAMBA_CHANNEL, MOE_EXPERT, MOE_NEURON, SHARED_EXPERT_NEURON)


@dataclass(frozen=True)
class KeptUnits:
    """What a plan keeps. Every index tensor is a LongTensor in ascending order.

    Per-layer axes are mappings {axis: {original layer index: kept indices}}, one entry per
    kept layer that has the axis, so a new axis (e.g. MoE experts) is one more key."""

    old: Widths  # the model's
    new: Widths  # the pruned model's
    dropped_layers: tuple[int, ...]
    hidden: torch.Tensor  # [hidden'] embedding channels, shared by every layer
    by_layer: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    # by_layer[FFN_NEURON][l]: [F'];  by_layer[ATTENTION_HEAD][l]: [heads'] (KV-group aware)
    # by_layer[MAMBA_HEAD][l]: [H'];  by_layer[MAMBA_CHANNEL][l]: [P'], the same in every kept head
    # by_layer[MOE_EXPERT][l]: [E'] routed experts (group-aware);  by_layer[MOE_NEURON][l]: [E', F'], row i the
    # neurons kept in kept expert i;  by_layer[SHARED_EXPERT_NEURON][l]: [S']

    @property
    def kept_layers(self) -> tuple[int, ...]:
        """Original indices of the layers the pruned model keeps, in order."""
        dropped = set(self.dropped_layers)
        return tuple(i for i in range(self.old.num_layers) if i not in dropped)

    def units(self, axis: str, layer: int = -1) -> torch.Tensor | None:
        """Kept indices of `axis` in `layer` (HIDDEN is model-wide); None for a dropped layer
        or an axis the layer does not have."""
        if axis == HIDDEN:
            return self.hidden
        return self.by_layer.get(axis, {}).get(layer)


def kept_units(
    scores: ImportanceScores | None,
    model,
    spec: PruneSpec,
    ranking: str = "importance",
    mamba_ranking: str = "group",
    layer_metric: str = "kl",
    seed: int = 0,
    expert_metric: str = "routing_mass",
) -> KeptUnits:
    """The units `spec` keeps in `model` (a model, its config or its ModelDescription).

    ranking: "importance", or "random" (a seeded control on every axis; scores may be None).
    expert_metric: which expert score chooses routed experts ("routing_mass", "gated_output_norm"), or
    "random": experts by a seeded draw of their own while every other axis follows `ranking`.
    Raises ValueError for an impossible spec, missing scores, or scores of another model."""
    check_mamba_ranking(mamba_ranking)
    check_expert_metric(expert_metric)
    description = describe(model)
    old = description.widths
    resolve(spec, old)  # validate widths before any work
    rank = _Ranker(scores, ranking, seed)
    if scores is None and ranking == "importance" and _needs_ranking(spec, old):
        raise ValueError(
            "pruning by importance needs ImportanceScores; run estimate_importance first or use ranking='random'"
        )
    if scores is not None:  # another model's scores would index past these weights mid-prune
        check_scores_fit(scores, description)

    dropped = choose_dropped_layers(spec, description, scores, layer_metric, rank)
    kept_layers = [i for i in range(old.num_layers) if i not in set(dropped)]
    new = description.derive(resolve(spec, old, kept_kinds=tuple(old.layer_kinds[i] for i in kept_layers)))
    description.check(new)

    # The random control draws from one generator in this order (hidden, then layer by layer):
    # changing the order changes which units a seed keeps.
    real = scores or _uniform_scores(old)
    hidden = top_k(rank(real.hidden), new.hidden_size)
    expert_rank = _ExpertRanker(rank, expert_metric, seed)
    by_layer: dict[str, dict[int, torch.Tensor]] = {axis: {} for axis in LAYER_AXES}
    chosen: dict[tuple[str, int], dict[str, torch.Tensor]] = {}  # (kind, scored layer) -> {axis: units}
    for index in kept_layers:
        for kind in mixers_of(old.layer_kinds[index]):  # a layer holds at most one mixer of each kind
            scored = old.score_layer(index, kind)  # every use of a shared block keeps the block's units
            if (kind, scored) not in chosen:
                chosen[kind, scored] = _units(kind, real, scored, old, new, rank, mamba_ranking, expert_rank)
            for axis, units in chosen[kind, scored].items():
                by_layer[axis][index] = units
    return KeptUnits(old, new, tuple(dropped), hidden, by_layer)


def _units(kind: str, scores, layer: int, old: Widths, new: Widths, rank, mamba_ranking: str, expert_rank) -> dict:
    """{axis: kept indices} of one mixer, from its scores at `layer`."""
    if kind == MLP:
        return {FFN_NEURON: top_k(rank(scores.ffn[layer]), new.ffn_hidden_size)}
    if kind == ATTENTION:
        return {ATTENTION_HEAD: _attention_heads(rank(scores.attention[layer]), old, new)}
    if kind == MOE:
        return _moe_units(scores, layer, old, new, rank, expert_rank)
    heads, channels = _mamba_units(scores, layer, old, new, rank, mamba_ranking)
    return {MAMBA_HEAD: heads, MAMBA_CHANNEL: channels}


def _attention_heads(scores: torch.Tensor, old: Widths, new: Widths) -> torch.Tensor:
    """[heads'] kept query heads: the same number from every KV group (GQA), or the top heads
    overall when every head has its own KV head (MHA, whose K and V go with it)."""
    if old.is_multi_head:
        return top_k(scores, new.num_attention_heads)
    groups = old.num_key_value_heads
    return top_k_within_groups(scores, groups, new.num_attention_heads // groups)


def _mamba_units(scores, layer: int, old: Widths, new: Widths, rank, mamba_ranking: str):
    """(kept heads [H'], kept head channels [P']), nested as in the paper."""
    channels = top_k(rank(scores.mamba_channel_scores(layer)), new.mamba_head_dim)
    head_scores = rank(scores.mamba_head_scores(layer, channels))  # [H], over the kept channels only
    if mamba_ranking == "global":
        heads = top_k(head_scores, new.mamba_num_heads)
    else:
        heads = top_k_within_groups(head_scores, old.mamba_n_groups, new.mamba_num_heads // old.mamba_n_groups)
    return heads, channels


def _moe_units(scores, layer: int, old: Widths, new: Widths, rank, expert_rank) -> dict:
    """Routed experts [E'] (the same number from every routing group, so n_group stays valid), the neurons
    [E', F'] each kept expert keeps by its own scores, and the shared expert's neurons [S']."""
    groups = old.moe_n_group
    expert_scores = expert_rank(scores, layer, old.num_moe_experts)  # [E]
    experts = top_k_within_groups(expert_scores, groups, new.num_moe_experts // groups)
    neuron_scores = rank(scores.moe_neurons[layer])[experts]  # [E', F]
    units = {MOE_EXPERT: experts, MOE_NEURON: top_k_rows(neuron_scores, new.moe_ffn_hidden_size)}
    if old.moe_shared_expert_intermediate_size:
        shared = rank(scores.shared_experts[layer])
        units[SHARED_EXPERT_NEURON] = top_k(shared, new.moe_shared_expert_intermediate_size)
    return units


class _ExpertRanker:
    """Scores that choose routed experts: the expert metric's (through the main ranking, so ranking="random"
    draws them too), or, for expert_metric="random", a seeded draw from a generator of their own."""

    def __init__(self, rank, expert_metric: str, seed: int):
        self.rank, self.metric = rank, expert_metric
        self.own = _Ranker(None, "random", seed) if expert_metric == "random" else None

    def __call__(self, scores, layer: int, experts: int) -> torch.Tensor:
        if self.own is not None:
            return self.own(torch.zeros(experts))
        return self.rank(scores.experts[self.metric][layer])


def check_mamba_ranking(mamba_ranking: str) -> None:
    if mamba_ranking not in MAMBA_RANKINGS:
        raise ValueError(f"mamba_ranking must be one of {MAMBA_RANKINGS}, got {mamba_ranking!r}")


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (keeps the layout stable)."""
    return torch.sort(torch.topk(scores.float(), k, sorted=False).indices).values


def top_k_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[n, m] -> [n, k]: each row's k highest scores' indices, in ascending order."""
    return torch.sort(torch.topk(scores.float(), k, dim=1, sorted=False).indices, dim=1).values


def check_expert_metric(expert_metric: str) -> None:
    if expert_metric not in EXPERT_RANKINGS:
        raise ValueError(f"expert_metric must be one of {EXPERT_RANKINGS}, got {expert_metric!r}")


def top_k_within_groups(scores: torch.Tensor, groups: int, k_per_group: int) -> torch.Tensor:
    """[n] scores in `groups` equal contiguous groups -> the top k_per_group of each group."""
    per_group = scores.view(groups, -1)  # [G, n/G]
    kept = [top_k(row, k_per_group) + g * per_group.shape[1] for g, row in enumerate(per_group)]
    return torch.cat(kept)


class _Ranker:
    """Scores used to choose units: importance, or seeded random numbers (the control)."""

    def __init__(self, scores: ImportanceScores | None, ranking: str, seed: int):
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
        self.scores, self.random = scores, ranking == "random"
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, real: torch.Tensor) -> torch.Tensor:
        return torch.rand(real.shape, generator=self.generator) if self.random else real


# -- layers ---------------------------------------------------------------------------------


def plan_drop_layers(
    model,
    spec: PruneSpec,
    scores: ImportanceScores | None = None,
    layer_metric: str = "kl",
    ranking: str = "importance",
    seed: int = 0,
) -> tuple[int, ...]:
    """The layers `prune` would remove for this spec (exact sizes need them); `model` may be
    a model, a config or a ModelDescription."""
    return choose_dropped_layers(spec, describe(model), scores, layer_metric, _Ranker(scores, ranking, seed))


def choose_dropped_layers(
    spec: PruneSpec, description: ModelDescription, scores: ImportanceScores | None, layer_metric: str, rank: _Ranker
) -> tuple[int, ...]:
    if spec.drop_layers is not None:
        return spec.drop_layers
    widths = description.widths
    n_drop = widths.num_layers - kept_layer_count(spec, widths)
    if n_drop == 0:
        return ()
    if rank.random:
        layer_scores = rank(torch.zeros(widths.num_layers))
    elif scores is None or layer_metric not in scores.layers:
        available = sorted(scores.layers) if scores else []
        raise ValueError(
            f"num_layers needs layer scores for metric {layer_metric!r} (have {available}); "
            "rerun importance with that layer metric or give drop_layers explicitly"
        )
    else:
        layer_scores = scores.layers[layer_metric]
    return least_important_layers(layer_scores, n_drop, description)


def least_important_layers(layer_scores: torch.Tensor, count: int, description: ModelDescription) -> tuple[int, ...]:
    """The `count` lowest-scoring layers, skipping any whose removal the family forbids
    (e.g. NemotronH's last attention layer)."""
    widths = description.widths
    dropped: list[int] = []
    for index in torch.argsort(layer_scores.float()).tolist():
        if len(dropped) == count:
            break
        kept = tuple(k for i, k in enumerate(widths.layer_kinds) if i not in {*dropped, index})
        try:
            description.check(widths.with_(layer_kinds=kept))
        except ValueError:
            continue
        dropped.append(index)
    if len(dropped) < count:
        raise ValueError(f"cannot drop {count} layers: the model family needs some of them (see its adapter's check)")
    return tuple(sorted(dropped))


# -- helpers ------------------------------------------------------------------------------------


def _needs_ranking(spec: PruneSpec, widths: Widths) -> bool:
    """Whether any unit must be chosen (explicit drop_layers alone choose nothing)."""
    shrinks = resolve(spec, widths) != widths.with_()
    return shrinks or (spec.num_layers is not None and spec.drop_layers is None and spec.num_layers < widths.num_layers)


def _uniform_scores(widths: Widths) -> ImportanceScores:
    """Flat scores for random ranking without importance (ties are broken by the noise)."""
    ones = lambda n: torch.ones(n)
    of_kind = lambda kind: sorted({widths.score_layer(i, kind) for i in widths.uses(kind)})
    return ImportanceScores(
        family="",
        layer_kinds=widths.layer_kinds,
        n_groups=widths.mamba_n_groups,
        num_key_value_heads=widths.num_key_value_heads,
        hidden=ones(widths.hidden_size),
        ffn={i: ones(widths.ffn_hidden_size) for i in of_kind(MLP)},
        attention={i: ones(widths.num_attention_heads) for i in of_kind(ATTENTION)},
        mamba={i: torch.ones(widths.mamba_num_heads, widths.mamba_head_dim) for i in of_kind(MAMBA)},
        experts={metric: {i: ones(widths.num_moe_experts) for i in of_kind(MOE)} for metric in EXPERT_METRICS},
        moe_neurons={i: torch.ones(widths.num_moe_experts, widths.moe_ffn_hidden_size) for i in of_kind(MOE)},
        shared_experts={i: ones(widths.moe_shared_expert_intermediate_size) for i in of_kind(MOE)},
    )
