"""Candidate architectures at a parameter budget (the paper's search space).

Widths shrink in steps of a divisor down to `1 - max_width_prune` of the original;
depth down to `1 - max_depth_prune` of the layers, dropping the least important ones
by a layer metric (or the least important contiguous block). Every candidate carries
explicit drop_layers, so its parameter count is exact.

A mixture of experts adds its axes to the same space: routed experts (in whole routing groups, never
fewer than the router's top-k needs), the width of every routed expert and, with prune_shared_expert,
the shared expert's; so experts, expert width and the dense axes compete at one budget, in total or in
active parameters per token (`param_budget`). `moe_axes_of` names which expert axes a candidate cuts,
and `pick_diverse` takes turns between them as it does between width, depth and both.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from hybridlab.compression.kept import least_important_layers
from hybridlab.compression.layer_importance import LAYER_METRICS
from hybridlab.core.errors import UserError
from hybridlab.core.settings import below_one, check_settings, parse_token_count, positive, setting
from hybridlab.families import ATTENTION, MAMBA, MLP, MOE, ModelDescription, Widths, describe
from hybridlab.model.sizes import PARAM_BUDGETS, planned_widths, sizes_of
from hybridlab.model.spec import PruneSpec, fewest_experts

STRATEGIES = ("width", "depth", "mixed")  # what a candidate prunes: widths only, layers only, both
ANY_STRATEGY = "any"


@dataclass(frozen=True)
class SearchSpace:
    # modelopt's default is 0.4; the paper's 8B -> 4B space went to 0.5
    max_width_prune: float = setting(0.5, check=below_one, help="largest share of each width removed")
    # modelopt's default is 0.2; the paper dropped up to 26 of 52 layers
    max_depth_prune: float = setting(0.5, check=below_one, help="largest share of the layers removed")
    hidden_divisor: int | None = setting(None, check=positive, help="hidden size step (default hidden/16)")
    ffn_divisor: int | None = setting(None, check=positive, help="FFN and shared-expert size step (default size/32)")
    head_dim_divisor: int = setting(8, check=positive, help="Mamba head dimension step (modelopt's)")
    layer_divisor: int = setting(1, check=positive, help="layer count step (modelopt's is 2)")
    prune_attention: bool = setting(False, help="also search attention head counts (the paper keeps them)")
    contiguous_depth: bool = setting(False, help="drop a contiguous block of layers instead of single layers")
    layer_metric: str = setting(
        "kl", choices=[m for m in LAYER_METRICS if m is not None], help="layer score that picks layers to drop"
    )
    param_budget: str = setting(
        "total",
        choices=PARAM_BUDGETS,
        help="count the target in total parameters, or in active parameters per token (mixtures of experts)",
    )
    strategy: str = setting(
        ANY_STRATEGY,
        choices=(ANY_STRATEGY, *STRATEGIES),
        help="only candidates that prune widths alone, layers alone, or both (default: any of them)",
    )

    expert_divisor: int | None = setting(
        None, check=positive, help="routed-expert count step (default experts/8, in whole routing groups)"
    )
    moe_ffn_divisor: int | None = setting(
        None, check=positive, help="routed-expert width step (default width/8, a multiple of 8 as grouped_mm needs)"
    )
    prune_shared_expert: bool = setting(False, help="also search the shared expert's width (mixtures of experts)")

    def validate(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class Candidate:
    name: str
    spec: PruneSpec
    params: int  # counted as the space's param_budget says (total, or active per token)
    flops_per_token: float
    strategy: str  # "width", "depth" or "mixed"


def parse_target(target: str | int | float, total_params: int) -> int:
    """'50%' of the model, or an absolute count such as 4.5e9, '4.5B' or 2_000_000."""
    text = str(target).strip()
    if text.endswith("%"):
        try:
            fraction = float(text[:-1]) / 100
        except ValueError:
            raise ValueError(f"cannot read a percentage from {target!r}; write e.g. 50%") from None
        if not 0 < fraction < 1:
            raise ValueError(f"target {target} must be between 0% and 100% of the model")
        return round(total_params * fraction)
    count = parse_token_count(text)
    if not 0 < count < total_params:
        raise ValueError(f"target {count:,} parameters must be positive and below the model's {total_params:,}")
    return count


def width_values(current: int, divisor: int, max_prune: float) -> list[int]:
    """current, then multiples of divisor down to (1 - max_prune) * current, largest first."""
    floor = math.ceil(current * (1 - max_prune))
    values = {current} | {k * divisor for k in range(1, current // divisor + 1) if floor <= k * divisor < current}
    return sorted(values, reverse=True)


def layers_to_drop(
    layer_scores: torch.Tensor, count: int, contiguous: bool, description: ModelDescription | None = None
) -> tuple[int, ...]:
    """The least important `count` layers (that the described family can lose), or the least
    important contiguous block."""
    if count == 0:
        return ()
    if not contiguous:
        if description is None:
            return tuple(sorted(int(i) for i in torch.argsort(layer_scores.float())[:count]))
        return least_important_layers(layer_scores, count, description)
    sums = torch.stack([layer_scores[i : i + count].sum() for i in range(len(layer_scores) - count + 1)])
    start = int(sums.argmin())
    return tuple(range(start, start + count))


def check_reachable(config, target_params: int, tolerance: float, space: SearchSpace) -> None:
    """Fail before any model work when even the most pruned architecture in bounds is too big.
    `config` may be a ModelDescription."""
    from hybridlab.model.sizes import proportional_kinds

    description = describe(config)
    widths = description.widths
    width_prune = 0.0 if space.strategy == "depth" else space.max_width_prune
    shrink = lambda value, step: max(min(width_values(value, step, width_prune)), 1) if value else value
    keep = (
        widths.num_layers if space.strategy == "width" else math.ceil(widths.num_layers * (1 - space.max_depth_prune))
    )
    smallest = widths.with_(
        hidden_size=shrink(widths.hidden_size, space.hidden_divisor or max(1, widths.hidden_size // 16)),
        ffn_hidden_size=shrink(widths.ffn_hidden_size, space.ffn_divisor or max(1, widths.ffn_hidden_size // 32)),
        mamba_num_heads=shrink(widths.mamba_num_heads, widths.mamba_n_groups),
        mamba_head_dim=shrink(widths.mamba_head_dim, space.head_dim_divisor),
        num_attention_heads=shrink(widths.num_attention_heads, widths.num_key_value_heads)
        if space.prune_attention
        else widths.num_attention_heads,
        layer_kinds=proportional_kinds(widths.layer_kinds, keep),
        **{key: min(values) for key, values in moe_axis_values(widths, space, width_prune).items()},
    )
    floor = sizes_of(description.derive(smallest)).budget_params(space.param_budget)  # with what the family derives
    if floor > target_params * (1 + tolerance):
        raise ValueError(
            f"the budget of {target_params:,} parameters is below the smallest architecture the bounds allow "
            f"(about {floor:,}: width pruning <= {width_prune:.0%}, depth pruning <= "
            f"{0.0 if space.strategy == 'width' else space.max_depth_prune:.0%}{_only(space)}); "
            "raise --max-width-prune / --max-depth-prune, allow another --strategy or aim for a larger target"
        )


def enumerate_candidates(
    config, scores, target_params: int, tolerance: float, space: SearchSpace = SearchSpace(), seq_len: int = 4096
) -> list[Candidate]:
    """Every spec of the space whose exact parameter count is within tolerance of the target.
    `config` may be a ModelDescription; the family is resolved once for the whole space."""
    space.validate()
    description = describe(config)
    widths = description.widths
    if space.layer_metric not in scores.layers:
        raise ValueError(f"these scores have no {space.layer_metric!r} layer metric (have {sorted(scores.layers)})")
    w_prune = space.max_width_prune
    axes = {
        "hidden_size": width_values(
            widths.hidden_size, space.hidden_divisor or max(1, widths.hidden_size // 16), w_prune
        ),
        "ffn_hidden_size": width_values(
            widths.ffn_hidden_size, space.ffn_divisor or max(1, widths.ffn_hidden_size // 32), w_prune
        )
        if widths.has(MLP)
        else [None],
        "mamba_num_heads": width_values(widths.mamba_num_heads, widths.mamba_n_groups, w_prune)
        if widths.has(MAMBA)
        else [None],
        "mamba_head_dim": width_values(widths.mamba_head_dim, space.head_dim_divisor, w_prune)
        if widths.has(MAMBA)
        else [None],
        "num_attention_heads": width_values(widths.num_attention_heads, widths.num_key_value_heads, w_prune)
        if space.prune_attention and widths.has(ATTENTION) and "num_attention_heads" not in widths.derived_axes
        else [None],
        **moe_axis_values(widths, space, w_prune),
    }
    min_layers = math.ceil(widths.num_layers * (1 - space.max_depth_prune))
    depths = [
        n for n in range(widths.num_layers, min_layers - 1, -1) if (widths.num_layers - n) % space.layer_divisor == 0
    ]
    layer_scores = scores.layers[space.layer_metric]
    drops = {}
    for n in depths:
        try:
            drops[n] = layers_to_drop(layer_scores, widths.num_layers - n, space.contiguous_depth, description)
        except ValueError:  # the family cannot lose that many layers
            continue

    low, high = target_params * (1 - tolerance), target_params * (1 + tolerance)
    found: list[Candidate] = []
    for values in itertools.product(*axes.values()):
        width_spec = {k: v for k, v in zip(axes, values) if v is not None and v != getattr(widths, k)}
        for drop in drops.values():
            spec = PruneSpec(**width_spec, drop_layers=drop or None)
            if spec.is_empty():
                continue
            try:
                new = planned_widths(description, spec)
            except ValueError:  # a family limit (e.g. Mamba2's integer expand)
                continue
            sizes = sizes_of(new, seq_len)
            params = sizes.budget_params(space.param_budget)
            strategy = "mixed" if width_spec and drop else ("width" if width_spec else "depth")
            if low <= params <= high and space.strategy in (ANY_STRATEGY, strategy):
                found.append(Candidate(spec.short_name(), spec, params, sizes.flops_per_token, strategy))
    if not found:
        raise UserError(
            f"no candidate within {tolerance:.0%} of {target_params:,} parameters fits the search bounds "
            f"(width pruning <= {space.max_width_prune:.0%}, depth pruning <= {space.max_depth_prune:.0%}"
            f"{_only(space)}); raise --max-width-prune / --max-depth-prune, widen --tolerance, or aim for a larger "
            "target"
        )
    return found


def moe_axis_values(widths: Widths, space: SearchSpace, max_prune: float) -> dict[str, list[int]]:
    """{spec key: values, largest first} of a mixture of experts' axes ({} for a dense model). Routed
    experts step in whole routing groups and stop at the fewest the router can use."""
    if not widths.has(MOE):
        return {}
    groups, experts, width = widths.moe_n_group, widths.num_moe_experts, widths.moe_ffn_hidden_size
    expert_step = space.expert_divisor or groups * max(1, experts // 8 // groups)
    fewest = fewest_experts(widths)
    values = {
        "num_moe_experts": [n for n in width_values(experts, expert_step, max_prune) if n >= fewest] or [experts],
        "moe_ffn_hidden_size": width_values(width, space.moe_ffn_divisor or max(8, -(-width // 8 // 8) * 8), max_prune),
    }
    shared = widths.moe_shared_expert_intermediate_size
    if space.prune_shared_expert and shared:
        values["moe_shared_expert_intermediate_size"] = width_values(
            shared, space.ffn_divisor or max(1, shared // 32), max_prune
        )
    return values


MOE_AXIS_NAMES = {
    "num_moe_experts": "experts",
    "moe_ffn_hidden_size": "expert width",
    "moe_shared_expert_intermediate_size": "shared expert",
}


def moe_axes_of(spec: PruneSpec) -> str:
    """Which mixture-of-experts axes a spec cuts, e.g. "experts+expert width"; "" when none."""
    values = spec.to_dict()
    return "+".join(name for key, name in MOE_AXIS_NAMES.items() if key in values)


def _only(space: SearchSpace) -> str:
    return "" if space.strategy == ANY_STRATEGY else f", {space.strategy} pruning only"


def pick_diverse(candidates: list[Candidate], limit: int, target_params: int) -> list[Candidate]:
    """At most `limit` candidates, taken in turn from each strategy (and, in a mixture of experts, from
    each combination of expert axes it cuts: none, experts, expert width, ...), closest to the target first."""
    by_kind: dict[tuple[str, str], list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: (abs(c.params - target_params), c.name)):
        by_kind.setdefault((candidate.strategy, moe_axes_of(candidate.spec)), []).append(candidate)
    order = sorted(by_kind, key=lambda kind: (("width", "mixed", "depth").index(kind[0]), kind[1]))
    return round_robin([by_kind[kind] for kind in order], limit)


def round_robin(queues: list[list], limit: int) -> list:
    """Take one item from each queue in turn (queues are consumed) until `limit` items or all are empty."""
    picked: list = []
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


def within_latency(candidates: list[Candidate], config, latency, budget: float, seq_len: int) -> list[Candidate]:
    """The candidates whose prefill of `seq_len` tokens `latency` (a LatencyModel) predicts at most `budget`
    times the teacher's; UserError naming the fastest one when none is."""
    from hybridlab.core.errors import UserError
    from hybridlab.measure.latency_model import predicted_speedup

    description = describe(config)
    ratios = {c.name: predicted_speedup(latency, description, c.spec, seq_len)["latency_ratio"] for c in candidates}
    kept = [c for c in candidates if ratios[c.name] <= budget]
    if not kept:
        fastest = min(candidates, key=lambda c: ratios[c.name])
        raise UserError(
            f"no candidate at this parameter budget is predicted within {budget:.0%} of the teacher's latency "
            f"(the fastest, {fastest.name}, is predicted at {ratios[fastest.name]:.0%}; {latency.label}); "
            "raise --latency-budget or aim for fewer parameters"
        )
    return kept
