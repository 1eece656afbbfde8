"""PruneSpec: the target architecture, in NVIDIA Model Optimizer's export_config keys.

Every field left as None keeps the model's own size. `resolve` turns a spec into the
pruned model's `Widths` and rejects invalid specs before any work is done.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields

from hybridlab.core.errors import UserError, shown
from hybridlab.families.base import ATTENTION, MAMBA, MLP, MOE, Widths

WIDTH_KEYS = (
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "mamba_num_heads",
    "mamba_head_dim",
    "num_moe_experts",
    "moe_ffn_hidden_size",
    "moe_shared_expert_intermediate_size",
)


@dataclass(frozen=True)
class PruneSpec:
    hidden_size: int | None = None
    ffn_hidden_size: int | None = None
    num_attention_heads: int | None = None
    mamba_num_heads: int | None = None
    mamba_head_dim: int | None = None
    # mixture of experts: routed experts kept per MoE layer, neurons kept in every routed expert, shared expert width
    num_moe_experts: int | None = None
    moe_ffn_hidden_size: int | None = None
    moe_shared_expert_intermediate_size: int | None = None
    num_layers: int | None = None
    drop_layers: tuple[int, ...] | None = None

    def __post_init__(self):
        # Whole numbers only: 1.7 or True must not quietly become layer 1.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "drop_layers" and value is not None and not _is_whole(value):
                raise UserError(f"{f.name} must be a whole number, got {shown(value)}")
            if f.name != "drop_layers" and value is not None:
                object.__setattr__(self, f.name, int(value))
        if self.drop_layers is not None:
            layers = self.drop_layers
            if isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
                raise UserError(f"drop_layers must be a list of layer numbers, got {shown(layers)}")
            bad = [i for i in layers if not _is_whole(i)]
            if bad:
                raise UserError(f"drop_layers takes whole layer numbers, got {shown(bad[0])} in {shown(list(layers))}")
            object.__setattr__(self, "drop_layers", tuple(sorted(int(i) for i in layers)))

    @classmethod
    def from_dict(cls, values: dict) -> "PruneSpec":
        known = {f.name for f in fields(cls)}
        if not isinstance(values, dict):
            raise UserError(f"a prune spec is a dict of sizes, got {shown(values)}")
        unknown = sorted(map(str, set(values) - known))
        if unknown:
            raise UserError(f"unknown prune spec keys {shown(unknown)}; valid keys are {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict:
        values = asdict(self)
        if self.drop_layers is not None:
            values["drop_layers"] = list(self.drop_layers)
        return {k: v for k, v in values.items() if v is not None}

    def is_empty(self) -> bool:
        return not self.to_dict()

    def short_name(self, layer_ids: bool = False) -> str:
        """A name for file and chart labels: 'h208-ffn608-md24-drop7' (with layer_ids: 'drop0.5.9');
        'full' keeps everything."""
        values = self.to_dict()
        parts = [f"{SHORT_NAMES[k]}{values[k]}" for k in SHORT_NAMES if k in values]
        if self.drop_layers:
            dropped = ".".join(str(i) for i in self.drop_layers) if layer_ids else str(len(self.drop_layers))
            parts.append(f"drop{dropped}")
        return "-".join(parts) or "full"


SHORT_NAMES = {
    "hidden_size": "h",
    "ffn_hidden_size": "ffn",
    "num_attention_heads": "att",
    "mamba_num_heads": "mh",
    "mamba_head_dim": "md",
    "num_moe_experts": "ex",
    "moe_ffn_hidden_size": "exffn",
    "moe_shared_expert_intermediate_size": "shffn",
}


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_size(name: str, value: int | None, current: int, present: bool) -> int:
    if value is None:
        return current
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not present:
        raise ValueError(f"{name} was given but this model has no layers with that axis; drop the option")
    if value <= 0:
        raise ValueError(f"{name} must be at least 1 (got {value}); to remove layers use num_layers or drop_layers")
    if value > current:
        raise ValueError(f"{name}={value} is larger than the model's {current}; pruning can only shrink")
    return value


def kept_layer_count(spec: PruneSpec, widths: Widths) -> int:
    total = widths.num_layers
    if spec.drop_layers is not None:
        bad = [i for i in spec.drop_layers if not 0 <= i < total]
        if bad:
            raise ValueError(f"drop_layers {bad} are out of range: the model has layers 0..{total - 1}")
        if len(set(spec.drop_layers)) != len(spec.drop_layers):
            raise ValueError(f"drop_layers lists a layer twice: {list(spec.drop_layers)}")
        kept = total - len(spec.drop_layers)
        if spec.num_layers is not None and spec.num_layers != kept:
            raise ValueError(
                f"num_layers={spec.num_layers} contradicts drop_layers, which leaves {kept} layers; give one of them"
            )
    else:
        kept = _check_size("num_layers", spec.num_layers, total, True)
    if kept < 1:
        raise ValueError("the spec drops every layer; keep at least one")
    return kept


def fewest_experts(widths: Widths) -> int:
    """The fewest routed experts a MoE layer can keep so that every token still finds its top-k: groups
    keep the same number of experts each (the router's n_group stays), and the topk_group groups a token
    chooses among must hold at least top_k experts."""
    return widths.moe_n_group * math.ceil(widths.moe_top_k / widths.moe_topk_group)


def check_routable(kept: int, widths: Widths) -> None:
    """UserError unless keeping `kept` routed experts per MoE layer leaves the router valid."""
    groups, fewest = widths.moe_n_group, fewest_experts(widths)
    grouped = f" from its best {widths.moe_topk_group} of {groups} expert groups" if groups > 1 else ""
    if kept < fewest:
        raise UserError(
            f"num_moe_experts={kept} keeps too few experts: the router sends every token to its top "
            f"{widths.moe_top_k} experts{grouped}; keep at least {fewest}"
        )
    if kept % groups:
        raise UserError(
            f"num_moe_experts={kept} is not a multiple of the router's {groups} expert groups: every group keeps "
            f"the same number of experts; try {kept - kept % groups}"
        )


def resolve(spec: PruneSpec, widths: Widths, kept_kinds: tuple[str, ...] | None = None) -> Widths:
    """The pruned model's widths. `kept_kinds` is the layer pattern after dropping layers
    (known only once layers are chosen); without it the original pattern is checked."""
    kinds = kept_kinds if kept_kinds is not None else widths.layer_kinds
    kept_layer_count(spec, widths)
    new = widths.with_(
        hidden_size=_check_size("hidden_size", spec.hidden_size, widths.hidden_size, True),
        ffn_hidden_size=_check_size("ffn_hidden_size", spec.ffn_hidden_size, widths.ffn_hidden_size, widths.has(MLP)),
        num_attention_heads=_check_size(
            "num_attention_heads", spec.num_attention_heads, widths.num_attention_heads, widths.has(ATTENTION)
        ),
        mamba_num_heads=_check_size("mamba_num_heads", spec.mamba_num_heads, widths.mamba_num_heads, widths.has(MAMBA)),
        mamba_head_dim=_check_size("mamba_head_dim", spec.mamba_head_dim, widths.mamba_head_dim, widths.has(MAMBA)),
        num_moe_experts=_check_size("num_moe_experts", spec.num_moe_experts, widths.num_moe_experts, widths.has(MOE)),
        moe_ffn_hidden_size=_check_size(
            "moe_ffn_hidden_size", spec.moe_ffn_hidden_size, widths.moe_ffn_hidden_size, widths.has(MOE)
        ),
        moe_shared_expert_intermediate_size=_check_size(
            "moe_shared_expert_intermediate_size",
            spec.moe_shared_expert_intermediate_size,
            widths.moe_shared_expert_intermediate_size,
            widths.has(MOE) and widths.moe_shared_expert_intermediate_size > 0,
        ),
        layer_kinds=tuple(kinds),
    )
    if widths.has(MOE):
        check_routable(new.num_moe_experts, widths)
    if widths.is_multi_head:  # MHA: a pruned query head takes its own key/value head with it
        new = new.with_(num_key_value_heads=new.num_attention_heads)
    if new.mamba_num_heads % widths.mamba_n_groups:
        raise ValueError(
            f"mamba_num_heads={new.mamba_num_heads} is not a multiple of n_groups={widths.mamba_n_groups}: every group "
            f"must keep the same number of heads; try {new.mamba_num_heads - new.mamba_num_heads % widths.mamba_n_groups or widths.mamba_n_groups}"
        )
    if new.num_key_value_heads and new.num_attention_heads % new.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads={new.num_attention_heads} is not a multiple of the {new.num_key_value_heads} "
            "key/value heads: each KV group must keep the same number of query heads"
        )
    return new
