"""Which units a plan keeps, for the heatmap overlays: `hybridlab.compression.kept.kept_units`
(the rule the pruner follows) laid over `ImportanceScores.to_frame()` as a `kept` column.
A routed expert's rows (one axis per expert metric) read the plan's kept experts; an expert neuron's
row (flat index expert * F + neuron) is kept when its expert and its neuron in that expert are.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from hybridlab.compression.importance import EXPERT_METRICS, HIDDEN, MOE_EXPERT, MOE_NEURON, ImportanceScores
from hybridlab.compression.kept import kept_units, plan_drop_layers
from hybridlab.families import describe
from hybridlab.model.spec import PruneSpec, resolve


def units_frame(
    scores: ImportanceScores,
    config,
    spec: PruneSpec | None,
    layer_metric: str = "kl",
    expert_metric: str = EXPERT_METRICS[0],
) -> pd.DataFrame:
    """scores.to_frame() plus a boolean `kept` column (all True without a plan) and, for
    layer rows, whether the plan drops the layer. `config` may be a ModelDescription.
    expert_metric: what ranks routed experts (kept.EXPERT_RANKINGS), as the prune job will.
    Raises ValueError for an impossible spec."""
    frame = scores.to_frame()
    frame["kept"] = True
    if spec is None or spec.is_empty():
        return frame
    description = describe(config)
    metric = _layer_metric(scores, layer_metric)
    if metric is None and spec.drop_layers is None:
        resolve(spec, description.widths)  # still reject an impossible num_layers
        spec = replace(spec, num_layers=None)  # no layer scores: overlay the widths, drop nothing
    kept = kept_units(scores, description, spec, layer_metric=metric, expert_metric=expert_metric)
    dropped = set(kept.dropped_layers)
    chosen = {(-1, HIDDEN): _ids(kept.hidden)}
    for axis, by_layer in kept.by_layer.items():
        chosen.update({(layer, axis): _ids(indices) for layer, indices in by_layer.items() if axis != MOE_NEURON})
    for layer, neurons in kept.by_layer.get(MOE_NEURON, {}).items():  # [E', F'], row i: kept expert i's
        experts = kept.units(MOE_EXPERT, layer)  # [E']
        chosen[layer, MOE_NEURON] = _ids((experts[:, None] * kept.old.moe_ffn_hidden_size + neurons).flatten())
    for layer, experts in kept.by_layer.get(MOE_EXPERT, {}).items():  # every metric's rows: the kept experts
        chosen.update({(layer, f"{MOE_EXPERT}_{name}"): _ids(experts) for name in EXPERT_METRICS})

    def is_kept(row) -> bool:
        if row.axis.startswith("layer_"):
            return row.layer not in dropped
        if row.layer in dropped:
            return False
        units = chosen.get((row.layer, row.axis))
        return True if units is None else row.index in units

    frame["kept"] = [is_kept(row) for row in frame.itertuples(index=False)]
    return frame


def dropped_layers(
    scores: ImportanceScores | None, config, spec: PruneSpec, layer_metric: str = "kl"
) -> tuple[int, ...] | None:
    """The exact layers the plan drops when scores are known (None: sizes use the proportional estimate)."""
    if scores is None or (spec.num_layers is None and spec.drop_layers is None):
        return spec.drop_layers
    metric = _layer_metric(scores, layer_metric)
    if metric is None:
        return None
    return plan_drop_layers(config, spec, scores, layer_metric=metric)


def _layer_metric(scores: ImportanceScores, wanted: str) -> str | None:
    """`wanted` if the scores have it, else any layer metric they have (None: none)."""
    return wanted if wanted in scores.layers else next(iter(scores.layers), None)


def _ids(indices) -> set[int]:
    return {int(i) for i in indices}
