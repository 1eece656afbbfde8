"""The arms of the ablation study (`hybridlab study`): which pruned students the paper's
comparisons need, with exact parameter counts, planned from the teacher's config and
importance scores. Functions that take a config take its ModelDescription too.

Comparisons (paper section and what it found):
- width_vs_depth: width-only (hidden, FFN, Mamba heads) versus dropping the least
  important layers, both at the parameter target (Table 1: width 1.380 vs depth 1.533);
- heads_vs_channels: pruning Mamba heads versus head channels at equal SSM width, a
  sweep over fractions of the SSM width (Figure 7: heads win in loss and latency);
- group_vs_global: one spec, heads ranked within their groups versus over the layer;
- ssm_pruned_vs_whole: a width mix that prunes Mamba heads versus one that leaves the
  SSM whole, at equal parameters (Table 1, candidates 1 and 2: equal loss);
- importance_vs_random: one spec, importance ranking versus seeded random ranking.
- experts_vs_expert_width (a mixture-of-experts teacher only; run with the others by default): fewer
  routed experts versus narrower ones, at the same parameter count (Nemotron-3-Nano 30B -> 22B cut both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hybridlab.compression.importance import MAMBA_HEAD
from hybridlab.compression.kept import kept_units
from hybridlab.compression.prune import prune
from hybridlab.families import ATTENTION, MAMBA, MOE, MambaLayout, ModelDescription, describe
from hybridlab.model.sizes import planned_widths, sizes_of
from hybridlab.model.spec import PruneSpec, fewest_experts
from hybridlab.search.space import Candidate, SearchSpace, enumerate_candidates, round_robin

WIDTH_VS_DEPTH = "width_vs_depth"
HEADS_VS_CHANNELS = "heads_vs_channels"
GROUP_VS_GLOBAL = "group_vs_global"
SSM_PRUNED_VS_WHOLE = "ssm_pruned_vs_whole"
IMPORTANCE_VS_RANDOM = "importance_vs_random"
FROM_SCRATCH = "from_scratch"
COMPARISONS = (
    WIDTH_VS_DEPTH,
    HEADS_VS_CHANNELS,
    GROUP_VS_GLOBAL,
    SSM_PRUNED_VS_WHOLE,
    IMPORTANCE_VS_RANDOM,
    FROM_SCRATCH,
)
EXPERTS_VS_EXPERT_WIDTH = "experts_vs_expert_width"
MOE_COMPARISONS = (EXPERTS_VS_EXPERT_WIDTH,)  # only a mixture-of-experts teacher has them


@dataclass(frozen=True)
class Arm:
    comparison: str
    arm: str  # a short label within the comparison
    spec: PruneSpec
    ranking: str = "importance"  # or "random"
    mamba_ranking: str = "group"  # or "global"
    note: str = ""

    @property
    def run_key(self) -> str:
        """Arms with the same key are the same student: it is pruned and distilled once."""
        parts = [self.spec.short_name(layer_ids=True)]
        if self.ranking != "importance":
            parts.append(self.ranking)
        if self.mamba_ranking != "group":
            parts.append(self.mamba_ranking)
        return "-".join(parts)


def spec_json(spec: PruneSpec) -> str:
    return json.dumps(spec.to_dict(), separators=(",", ":"))


def params_of(config, spec: PruneSpec) -> int:
    return sizes_of(planned_widths(config, spec)).params


# -- width-only candidates (the paper's search space without depth or head-dim pruning) ----


def width_candidates(
    config, scores, target: int, tolerance: float, max_width_prune: float, layer_metric: str
) -> list[Candidate]:
    """Width-only specs within tolerance of the target: hidden, FFN and Mamba heads shrink;
    the Mamba head dim stays (the paper's candidates 1 and 2 keep it)."""
    description = describe(config)
    widths = description.widths
    space = SearchSpace(
        max_width_prune=max_width_prune,
        max_depth_prune=0.0,
        head_dim_divisor=max(widths.mamba_head_dim, 1),
        layer_metric=layer_metric,
    )
    return enumerate_candidates(description, scores, target, tolerance, space)


def prunes_heads(spec: PruneSpec, config) -> bool:
    widths = describe(config).widths
    return spec.mamba_num_heads is not None and spec.mamba_num_heads < widths.mamba_num_heads


def shortlist(candidates: list[Candidate], config, target: int, limit: int) -> list[Candidate]:
    """At most `limit` width candidates to rank zero-shot, spread over the space: per (prunes Mamba
    heads?, hidden size) the closest to the target first, then the next closest, and so on, taking
    turns between the two SSM groups so both are covered."""
    description = describe(config)
    by_key: dict[tuple[bool, int], list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: (abs(c.params - target), c.name)):
        key = (prunes_heads(candidate.spec, description), candidate.spec.hidden_size or 0)
        by_key.setdefault(key, []).append(candidate)
    groups = []
    for pruned in (True, False):
        keys = sorted((k for k in by_key if k[0] == pruned), key=lambda k: -(k[1] or 10**9))  # widest hidden first
        depth = max((len(by_key[k]) for k in keys), default=0)
        groups.append([by_key[k][rank] for rank in range(depth) for k in keys if rank < len(by_key[k])])
    return round_robin(groups, limit)


# -- depth-only ---------------------------------------------------------------------------


def depth_only_spec(config, layer_scores: torch.Tensor, target: int) -> PruneSpec:
    """Drop the least important layers (lowest score first) until the parameter count is
    closest to the target. At least one layer stays, and every layer the family cannot lose is
    passed over (e.g. Nemotron-H's last attention layer: transformers cannot build its cache, so
    cannot generate, without one; a Zamba2 layer that uses a cycled shared block)."""
    description = describe(config)
    dropped: list[int] = []
    best: tuple[int, PruneSpec] | None = None
    for index in (int(i) for i in torch.argsort(layer_scores.float())):
        if len(dropped) == description.num_layers - 1:
            break
        spec = PruneSpec(drop_layers=tuple([*dropped, index]))
        try:
            params = params_of(description, spec)
        except ValueError:  # the family cannot lose this layer (given those already dropped)
            continue
        dropped.append(index)
        gap = abs(params - target)
        if best is None or gap < best[0]:
            best = (gap, spec)
    if best is None:
        raise ValueError("depth-only pruning needs a model with at least two layers it can lose")
    return best[1]


# -- Mamba heads versus head channels (Figure 7) --------------------------------------------


def mamba_sweep_specs(config, fraction: float) -> tuple[PruneSpec, PruneSpec]:
    """(heads spec, channels spec) removing about `fraction` of the SSM width H*P each way:
    heads in steps of n_groups, then the head dim that gives the same H*P. When the family cannot
    build that pair (e.g. Bamba's H*P must stay a whole multiple of the hidden size), the nearest
    cut it can build."""
    description = describe(config)
    w = description.widths
    if not w.has(MAMBA):
        raise ValueError("the heads-versus-channels sweep needs a model with Mamba layers")
    groups = w.mamba_n_groups
    heads = max(groups, groups * round(w.mamba_num_heads * (1 - fraction) / groups))
    head_dim = max(1, round(heads * w.mamba_head_dim / w.mamba_num_heads))
    if heads == w.mamba_num_heads or head_dim == w.mamba_head_dim:
        raise ValueError(
            f"a {fraction:.0%} SSM cut rounds to no change with {w.mamba_num_heads} heads in {groups} groups; "
            "choose larger --ssm-sweep fractions"
        )
    nearest = sorted(range(groups, w.mamba_num_heads, groups), key=lambda h: (abs(h - heads), -h))
    for candidate in [heads, *nearest]:
        specs = _same_width_cut(description, candidate)
        if specs is not None:
            return specs
    raise ValueError(
        f"no SSM cut keeps about the same width both ways ({w.mamba_num_heads} heads in {groups} groups, head "
        f"dim {w.mamba_head_dim}) in a plan this family can build"
    )


def _same_width_cut(description, heads: int) -> tuple[PruneSpec, PruneSpec] | None:
    """(heads, head dim) specs with about the same H'*P = H*P' (P' rounded), if the family builds both."""
    w = description.widths
    head_dim = max(1, round(heads * w.mamba_head_dim / w.mamba_num_heads))
    if head_dim == w.mamba_head_dim:
        return None
    specs = PruneSpec(mamba_num_heads=heads), PruneSpec(mamba_head_dim=head_dim)
    try:
        for spec in specs:
            params_of(description, spec)
    except ValueError:
        return None
    return specs


def sweep_arms(config, fractions: list[float]) -> list[Arm]:
    description = describe(config)
    w = description.widths
    arms: list[Arm] = []
    for fraction in fractions:
        by_heads, by_channels = mamba_sweep_specs(description, fraction)
        cut = 1 - by_heads.mamba_num_heads / w.mamba_num_heads
        label = f"-{cut:.0%} SSM"
        arms.append(Arm(HEADS_VS_CHANNELS, f"heads {label}", by_heads))
        arms.append(Arm(HEADS_VS_CHANNELS, f"channels {label}", by_channels))
    return arms


# -- group-aware versus global ranking --------------------------------------------------------


def mispaired_heads(scores, config, spec: PruneSpec) -> tuple[int, int]:
    """(kept heads that global ranking moves into another group, kept heads in all), summed over
    the kept Mamba layers: with global ranking the j-th kept head reads the B/C of group j // (H'/G)."""
    description = describe(config)
    kept = kept_units(scores, description, spec, mamba_ranking="global")
    old_layout, new_layout = description.mamba_layout, MambaLayout.of(kept.new)
    moved = total = 0
    for heads in kept.by_layer[MAMBA_HEAD].values():  # [H'] ascending
        own_group = old_layout.group_of(heads)  # the B/C each head was trained with
        read_group = new_layout.group_of(torch.arange(len(heads)))  # the B/C its new position reads
        moved += int((own_group != read_group).sum())
        total += len(heads)
    return moved, total


# -- routed experts versus expert width (mixtures of experts) ------------------------------------------


def experts_vs_width_specs(config, target: int) -> tuple[PruneSpec, PruneSpec]:
    """(fewer experts, narrower experts) at one budget: the routed-expert count (that the router can use)
    whose model is closest to `target` parameters, then the expert width whose model is closest to that."""
    description = describe(config)
    w = description.widths
    if not w.has(MOE):
        raise ValueError("the experts-versus-expert-width comparison needs a mixture-of-experts teacher")
    fewer = _closest(description, "num_moe_experts", range(fewest_experts(w), w.num_moe_experts), target)
    narrower = fewer and _closest(
        description, "moe_ffn_hidden_size", range(1, w.moe_ffn_hidden_size), params_of(description, fewer)
    )
    if not narrower:
        raise ValueError(
            f"this teacher's {w.num_moe_experts} routed experts of {w.moe_ffn_hidden_size} neurons cannot lose "
            "experts and neurons in plans it can build; leave experts_vs_expert_width out"
        )
    return fewer, narrower


def _closest(description, key: str, values, goal: int) -> PruneSpec | None:
    """The buildable PruneSpec(key=value) whose parameter count is closest to `goal`."""
    best: tuple[int, PruneSpec] | None = None
    for value in values:
        spec = PruneSpec(**{key: value})
        try:
            gap = abs(params_of(description, spec) - goal)
        except ValueError:  # the router or the family cannot take it (groups, top-k, grouped_mm widths)
            continue
        if best is None or gap < best[0]:
            best = (gap, spec)
    return best and best[1]


def wanted_comparisons(comparisons, config) -> set[str]:
    """The comparisons to plan: those asked for, plus, for a mixture-of-experts teacher asked for every
    comparison, the ones only such a teacher has."""
    wanted = set(comparisons)
    if describe(config).widths.has(MOE) and set(COMPARISONS) <= wanted:
        wanted |= set(MOE_COMPARISONS)
    return wanted


def expert_arms(config, target: int) -> list[Arm]:
    fewer, narrower = experts_vs_width_specs(config, target)
    counts = {spec: f"{params_of(config, spec):,} parameters" for spec in (fewer, narrower)}
    return [
        Arm(EXPERTS_VS_EXPERT_WIDTH, "fewer experts", fewer, note=counts[fewer]),
        Arm(EXPERTS_VS_EXPERT_WIDTH, "narrower experts", narrower, note=counts[narrower]),
    ]


# -- the plan -----------------------------------------------------------------------------------


def plan_arms(
    teacher,
    scores,
    target: int,
    settings,
    windows_of,
    layer_metric: str = "kl",
    description: ModelDescription | None = None,
):
    """(arms, zero-shot ranking of the width candidates, zero-shot losses per validation window by run key,
    facts for the report). windows_of(model) -> [W] losses; a candidate ranks by their mean.
    description: describe(teacher), when the caller already has it."""
    description = describe(teacher) if description is None else description.checked_for(teacher)
    wanted = wanted_comparisons(settings.comparisons, description)
    facts: dict = {}
    arms: list[Arm] = []
    ranked = pd.DataFrame(columns=["name", "spec", "params", "prunes_mamba_heads", "zero_shot_loss"])
    zero_shot: dict[str, np.ndarray] = {}
    if wanted - {HEADS_VS_CHANNELS, *MOE_COMPARISONS}:
        candidates = width_candidates(
            description, scores, target, settings.tolerance, settings.max_width_prune, layer_metric
        )
        rows = []
        for candidate in shortlist(candidates, description, target, settings.max_candidates):
            windows = windows_of(
                prune(teacher, candidate.spec, scores, layer_metric=layer_metric, description=description)
            )
            loss = float(np.mean(windows))
            rows.append(
                {
                    "name": candidate.name,
                    "spec": spec_json(candidate.spec),
                    "params": candidate.params,
                    "prunes_mamba_heads": prunes_heads(candidate.spec, description),
                    "zero_shot_loss": loss,
                    "_spec": candidate.spec,
                }
            )
            zero_shot[Arm("", "", candidate.spec).run_key] = windows
        rows.sort(key=lambda r: r["zero_shot_loss"])
        width_best = rows[0]["_spec"]
        pruned = [r["_spec"] for r in rows if r["prunes_mamba_heads"]]
        whole = [r["_spec"] for r in rows if not r["prunes_mamba_heads"]]
        ranked = pd.DataFrame([{k: v for k, v in r.items() if k != "_spec"} for r in rows])
        needs_pruned = wanted & {SSM_PRUNED_VS_WHOLE, GROUP_VS_GLOBAL, IMPORTANCE_VS_RANDOM}
        if needs_pruned and not pruned:
            raise ValueError(
                f"no width-only candidate near {target:,} parameters prunes Mamba heads; widen --tolerance or --max-width-prune"
            )
        if WIDTH_VS_DEPTH in wanted:
            depth = depth_only_spec(description, scores.layers[layer_metric], target)
            arms += [
                Arm(WIDTH_VS_DEPTH, "width-only", width_best, note="best width-only candidate zero-shot"),
                Arm(
                    WIDTH_VS_DEPTH,
                    "depth-only",
                    depth,
                    note=f"drops {len(depth.drop_layers)} of {description.num_layers} layers, the least important by KL"
                    + ("; the last attention layer always stays" if description.widths.has(ATTENTION) else ""),
                ),
            ]
        if SSM_PRUNED_VS_WHOLE in wanted:
            if not whole:
                raise ValueError(
                    f"no width-only candidate near {target:,} parameters keeps the SSM whole; widen --tolerance"
                )
            arms += [
                Arm(SSM_PRUNED_VS_WHOLE, "prunes Mamba heads", pruned[0]),
                Arm(SSM_PRUNED_VS_WHOLE, "SSM whole", whole[0]),
            ]
        if GROUP_VS_GLOBAL in wanted:
            moved, kept = mispaired_heads(scores, description, pruned[0])
            facts["global_ranking_moved_heads"], facts["global_ranking_kept_heads"] = moved, kept
            arms += [
                Arm(GROUP_VS_GLOBAL, "group-aware", pruned[0]),
                Arm(
                    GROUP_VS_GLOBAL,
                    "global",
                    pruned[0],
                    mamba_ranking="global",
                    note=f"global ranking pairs {moved} of {kept} kept heads with another group's B/C",
                ),
            ]
        if IMPORTANCE_VS_RANDOM in wanted:
            arms += [
                Arm(IMPORTANCE_VS_RANDOM, "importance", pruned[0]),
                Arm(IMPORTANCE_VS_RANDOM, "random", pruned[0], ranking="random", note="a seeded random draw per seed"),
            ]
    if HEADS_VS_CHANNELS in wanted:
        arms += sweep_arms(description, list(settings.ssm_sweep))
    if EXPERTS_VS_EXPERT_WIDTH in wanted:
        arms += expert_arms(description, target)
    return arms, ranked, zero_shot, facts
