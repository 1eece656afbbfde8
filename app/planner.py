"""The pruning planner's arithmetic, without Streamlit: slider ranges per axis, presets
that hit a target parameter fraction, and the analytic summary of a plan (its speedup predicted
by this device's latency model when one is calibrated, else the FLOP ratio).

Everything here reads only the config (hybridlab.model.sizes), so it is instant; each function
describes the model once and sizes every plan it tries from that description.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridlab.families import ATTENTION, MAMBA, MLP, MOE, Widths, describe
from hybridlab.model.sizes import estimate_sizes, planned_widths, sizes_of
from hybridlab.model.spec import PruneSpec, fewest_experts

PRESETS = ("width only", "depth only", "paper-like mix")
# The paper-like mix takes about this share of the reduction from depth (Nemotron-H 8B -> 4B
# pruned 52 -> 42 layers and narrowed hidden, FFN and Mamba heads) and keeps the head dim.
MIX_DEPTH_SHARE = 0.4
# Mixture-of-experts axes: typed in (any value; the library names what the router or the family refuses)
MOE_KEYS = ("num_moe_experts", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size")


@dataclass(frozen=True)
class Axis:
    key: str  # PruneSpec field
    label: str
    current: int
    minimum: int
    step: int


def axes(widths: Widths) -> list[Axis]:
    """One control per prunable axis that this model has (not those its family derives from others)."""
    return [a for a in _all_axes(widths) if a.key not in widths.derived_axes]


def _all_axes(widths: Widths) -> list[Axis]:
    found = [Axis("hidden_size", "hidden size", widths.hidden_size, *_step(widths.hidden_size))]
    if widths.has(MLP):
        found.append(Axis("ffn_hidden_size", "FFN neurons", widths.ffn_hidden_size, *_step(widths.ffn_hidden_size)))
    if widths.has(ATTENTION):
        kv = max(widths.num_key_value_heads, 1)
        found.append(Axis("num_attention_heads", "attention heads", widths.num_attention_heads, kv, kv))
    if widths.has(MAMBA):
        groups = widths.mamba_n_groups
        found.append(
            Axis("mamba_num_heads", f"Mamba heads (steps of n_groups={groups})", widths.mamba_num_heads, groups, groups)
        )
        found.append(Axis("mamba_head_dim", "Mamba head dim", widths.mamba_head_dim, 1, 1))
    if widths.has(MOE):
        found += _moe_axes(widths)
    found.append(Axis("num_layers", "layers", widths.num_layers, 1, 1))
    return found


def _moe_axes(widths: Widths) -> list[Axis]:
    """Routed experts (in steps of the routing groups, down to the fewest the router can use), the
    neurons of every routed expert and the shared expert's."""
    groups = widths.moe_n_group
    found = [
        Axis("num_moe_experts", "routed experts", widths.num_moe_experts, fewest_experts(widths), groups),
        Axis("moe_ffn_hidden_size", "expert width", widths.moe_ffn_hidden_size, *_step(widths.moe_ffn_hidden_size)),
    ]
    shared = widths.moe_shared_expert_intermediate_size
    if shared:
        found.append(Axis("moe_shared_expert_intermediate_size", "shared expert width", shared, *_step(shared)))
    return found


def offered(config, axis: Axis, values: dict) -> list[int]:
    """The values of `axis` (on its grid, ascending) that make a plan the family can build while every
    other control stays at `values`; so moving one control at a time never leaves the buildable plans
    (e.g. Bamba's Mamba heads x head dim must stay a whole multiple of the hidden size).
    `config` may be a ModelDescription."""
    description = describe(config)
    grid = sorted({*range(axis.minimum, axis.current + 1, axis.step), axis.current})
    found = []
    for value in grid:
        try:
            planned_widths(description, spec_from_values({**values, axis.key: value}, description.widths))
        except ValueError:
            continue
        found.append(value)
    return found or [axis.current]


def grid_of(axis: Axis) -> list[int]:
    return list(range(axis.minimum, axis.current + 1, axis.step))


def is_free(config, axis: Axis) -> bool:
    """Whether every value on the axis' grid is buildable with the other axes unpruned (a plain slider
    serves it); else the control offers a list that follows the other controls."""
    widths = describe(config).widths
    return offered(config, axis, {a.key: a.current for a in axes(widths) if a.key != axis.key}) == grid_of(axis)


def _step(size: int) -> tuple[int, int]:
    """(minimum, step): multiples of 8 for wide axes keep the pruned model GPU-friendly."""
    step = 8 if size >= 64 and size % 8 == 0 else 1
    return step, step


def spec_from_values(values: dict, widths: Widths) -> PruneSpec:
    """Control values -> PruneSpec; an axis left at the model's size stays None (keep)."""
    current = {a.key: a.current for a in axes(widths)}
    return PruneSpec.from_dict({k: int(v) for k, v in values.items() if k in current and int(v) != current[k]})


def snap(value: float, step: int, minimum: int, maximum: int) -> int:
    return int(min(max(round(value / step) * step, minimum), maximum))


def _width_spec(widths: Widths, scale: float, keep_head_dim: bool = True) -> dict:
    values = {}
    for axis in axes(widths):
        if axis.key == "num_layers" or (keep_head_dim and axis.key == "mamba_head_dim"):
            continue
        if axis.key == "num_attention_heads":
            continue  # the paper keeps attention heads whole (few, and cheap)
        values[axis.key] = snap(axis.current * scale, axis.step, axis.minimum, axis.current)
    return values


def preset_spec(config, preset: str, target_fraction: float) -> PruneSpec:
    """A spec whose parameter count is as close as the steps allow to target_fraction of the model."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if not 0.0 < target_fraction <= 1.0:
        raise ValueError(f"the target must be between 0% and 100% of the parameters, got {target_fraction:.0%}")
    description = describe(config)
    widths = description.widths
    total = estimate_sizes(description).params
    target = target_fraction * total
    layers = widths.num_layers

    def best(candidates):
        scored = []
        for values in candidates:
            try:
                spec = spec_from_values(values, widths)
                scored.append((abs(estimate_sizes(description, spec).params - target), spec))
            except ValueError:
                continue  # a combination the family cannot build
        if not scored:
            raise ValueError(f"no {preset} plan reaches {target_fraction:.0%} of the parameters; try a larger target")
        return min(scored, key=lambda pair: pair[0])[1]

    if preset == "depth only":
        return best({"num_layers": n} for n in range(1, layers + 1))
    scales = [i / 200 for i in range(1, 201)]
    if preset == "width only":
        return best(_width_spec(widths, s) for s in scales)
    depth_fraction = 1.0 - MIX_DEPTH_SHARE * (1.0 - target_fraction)
    kept_layers = max(1, round(layers * depth_fraction))
    return best({**_width_spec(widths, s), "num_layers": kept_layers} for s in scales)


def plan_summary(
    config,
    spec: PruneSpec,
    drop_layers: tuple[int, ...] | None = None,
    seq_len: int = 4096,
    latency=None,
    speed_seq_len: int = 256,
    latency_folder=None,
) -> dict:
    """Parent vs plan: params, FLOPs/token, inference state, ratios, and the speedup of a prefill of
    `speed_seq_len` tokens: predicted by this device's latency model (`latency`, else the newest
    calibration in `latency_folder` / the workspace), else the FLOP ratio; `speedup_basis` and
    `speedup_label` say which. Raises ValueError (with the library's message) for an impossible spec."""
    from hybridlab.measure.latency_model import speedup_estimate

    description = describe(config)
    speed = speedup_estimate(description, spec, speed_seq_len, 1, drop_layers, latency=latency, folder=latency_folder)
    parent = estimate_sizes(description, seq_len=seq_len)
    plan = sizes_of(planned_widths(description, spec, drop_layers=drop_layers), seq_len=seq_len)
    return {
        "has_experts": description.widths.has(MOE),
        "active_params": plan.active_params,  # per token (== params without a mixture of experts)
        "active_ratio": plan.active_params / parent.active_params,
        "parent_active_params": parent.active_params,
        "params": plan.params,
        "param_ratio": plan.params / parent.params,
        "flops_per_token": plan.flops_per_token,
        "flops_ratio": plan.flops_per_token / parent.flops_per_token,
        "state_bytes": plan.state_bytes,
        "state_ratio": plan.state_bytes / parent.state_bytes if parent.state_bytes else 1.0,
        "flops_speedup": parent.flops_per_token / plan.flops_per_token,
        "speedup": speed["speedup"],
        "speedup_basis": speed["basis"],  # "latency model" or "FLOPs"
        "speedup_label": speed["label"],
        "speedup_seq_len": speed_seq_len,
        "parent_params": parent.params,
        "params_by_kind": plan.params_by_kind,
    }


def params_per_unit(config) -> dict:
    """Parameters that one step of each axis is worth (what the model page shows 'by axis')."""
    description = describe(config)
    widths = description.widths
    total = estimate_sizes(description).params
    out = {}
    for axis in axes(widths):
        if axis.current - axis.step < axis.minimum:
            continue
        spec = PruneSpec.from_dict({axis.key: axis.current - axis.step})
        try:
            out[axis.label] = {
                "size": axis.current,
                "step": axis.step,
                "params per step": total - estimate_sizes(description, spec).params,
            }
        except ValueError:
            continue
    return out
