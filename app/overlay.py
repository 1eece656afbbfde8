"""Which units a plan keeps, for the heatmap overlays: the same choices `hybridlab.compression.prune`
makes (group-aware Mamba heads, KV-group-aware attention heads, least important layers),
computed from the scores alone, as a tidy frame that joins `ImportanceScores.to_frame()`.
"""

from __future__ import annotations

import pandas as pd
import torch

from hybridlab.compression.importance import ImportanceScores
from hybridlab.compression.prune import plan_drop_layers, top_k, top_k_within_groups
from hybridlab.families import family_for
from hybridlab.model.spec import PruneSpec, resolve


def units_frame(scores: ImportanceScores, config, spec: PruneSpec | None, layer_metric: str = "kl") -> pd.DataFrame:
    """scores.to_frame() plus a boolean `kept` column (all True without a plan) and, for
    layer rows, whether the plan drops the layer. Raises ValueError for an impossible spec."""
    frame = scores.to_frame()
    frame["kept"] = True
    if spec is None or spec.is_empty():
        return frame
    widths = family_for(config).widths(config)
    new = resolve(spec, widths)
    dropped = set(dropped_layers(scores, config, spec, layer_metric) or ())

    kept: dict[tuple[int, str], set[int]] = {(-1, "hidden"): _ids(top_k(scores.hidden, new.hidden_size))}
    for layer, s in scores.ffn.items():
        kept[(layer, "ffn_neuron")] = _ids(top_k(s, new.ffn_hidden_size))
    for layer, s in scores.attention.items():
        per_group = new.num_attention_heads // max(widths.num_key_value_heads, 1)
        kept[(layer, "attention_head")] = _ids(top_k_within_groups(s, max(widths.num_key_value_heads, 1), per_group))
    for layer in scores.mamba:
        channels = top_k(scores.mamba_channel_scores(layer), new.mamba_head_dim)  # [P'], shared by every head
        head_scores = scores.mamba_head_scores(layer, channels)  # [H] over the kept channels
        heads = top_k_within_groups(head_scores, widths.mamba_n_groups, new.mamba_num_heads // widths.mamba_n_groups)
        kept[(layer, "mamba_head")], kept[(layer, "mamba_channel")] = _ids(heads), _ids(channels)

    def is_kept(row) -> bool:
        if row.axis.startswith("layer_"):
            return row.layer not in dropped
        if row.layer in dropped:
            return False
        chosen = kept.get((row.layer, row.axis))
        return True if chosen is None else row.index in chosen

    frame["kept"] = [is_kept(row) for row in frame.itertuples(index=False)]
    return frame


def dropped_layers(
    scores: ImportanceScores | None, config, spec: PruneSpec, layer_metric: str = "kl"
) -> tuple[int, ...] | None:
    """The exact layers the plan drops when scores are known (None: sizes use the proportional estimate)."""
    if scores is None or (spec.num_layers is None and spec.drop_layers is None):
        return spec.drop_layers
    metric = layer_metric if layer_metric in scores.layers else next(iter(scores.layers), None)
    if metric is None:
        return None
    return plan_drop_layers(config, spec, scores, layer_metric=metric)


def _ids(indices: torch.Tensor) -> set[int]:
    return {int(i) for i in indices}
