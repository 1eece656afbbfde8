"""Structured pruning: a new, smaller model of the same class, built from slices of
the original's weights. The input model is never modified.

Which units stay is decided in hybridlab.compression.kept (one rule for the pruner,
the dashboard and the study); this module only slices the tensors by it.
"""

from __future__ import annotations

import torch

from hybridlab.compression.importance import ATTENTION_HEAD, FFN_NEURON, MAMBA_CHANNEL, MAMBA_HEAD, ImportanceScores
from hybridlab.compression.kept import check_mamba_ranking, kept_units
from hybridlab.families import ATTENTION, MLP, MambaLayout, ModelDescription, describe
from hybridlab.model.spec import PruneSpec


@torch.no_grad()
def prune(
    model,
    spec: PruneSpec,
    scores: ImportanceScores | None = None,
    ranking: str = "importance",
    mamba_ranking: str = "group",
    layer_metric: str = "kl",
    seed: int = 0,
    description: ModelDescription | None = None,
):
    """Return a new, smaller model of the same class pruned to `spec`.

    ranking: "importance" (default) or "random" (seeded control on every axis).
    mamba_ranking: "group" (the paper) or "global" (rank heads over the whole layer and
    let them fall into groups by position: the strawman that mispairs heads with B/C).
    layer_metric: which layer score chooses layers when only num_layers is given.
    description: describe(model), when the caller already has it.
    """
    check_mamba_ranking(mamba_ranking)
    description = describe(model) if description is None else description.checked_for(model)
    kept = kept_units(scores, description, spec, ranking, mamba_ranking, layer_metric, seed)
    old, hidden = kept.old, kept.hidden
    old_parts = description.parts(model)

    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        pruned = type(model)(description.config_with(kept.new))
    pruned.to_empty(device=next(model.parameters()).device)
    pruned.to(dtype)
    _copy_buffers(model, pruned)
    new_parts = description.parts(pruned)
    written: set[int] = set()

    def put(dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)
        written.add(id(dst))

    put(new_parts.embeddings.weight, old_parts.embeddings.weight[:, hidden])
    put(new_parts.lm_head.weight, old_parts.lm_head.weight[:, hidden])
    put(new_parts.final_norm.weight, old_parts.final_norm.weight[hidden])
    for new_layer, old_index in zip(new_parts.layers, kept.kept_layers):
        old_layer = old_parts.layers[old_index]
        put(new_layer.norm.weight, old_layer.norm.weight[hidden])
        src, dst = old_layer.mixer, new_layer.mixer
        if old_layer.kind == MLP:
            neurons = kept.units(FFN_NEURON, old_index)  # [F']
            _slice_linear(put, dst.up_proj, src.up_proj, rows=neurons, cols=hidden)
            _slice_linear(put, dst.down_proj, src.down_proj, rows=hidden, cols=neurons)
        elif old_layer.kind == ATTENTION:
            channels = _head_channels(kept.units(ATTENTION_HEAD, old_index), old.attention_head_dim)  # [heads' * d]
            _slice_linear(put, dst.q_proj, src.q_proj, rows=channels, cols=hidden)
            _slice_linear(put, dst.k_proj, src.k_proj, rows=None, cols=hidden)
            _slice_linear(put, dst.v_proj, src.v_proj, rows=None, cols=hidden)
            _slice_linear(put, dst.o_proj, src.o_proj, rows=hidden, cols=channels)
        else:
            heads, head_channels = kept.units(MAMBA_HEAD, old_index), kept.units(MAMBA_CHANNEL, old_index)
            _slice_mamba(put, dst, src, description.mamba_layout, heads, head_channels, hidden)

    missing = [name for name, p in pruned.named_parameters() if id(p) not in written]
    if missing:  # an adapter that forgot a tensor would otherwise leave garbage memory
        raise RuntimeError(f"pruning left parameters unset: {missing[:5]}")
    pruned.eval()
    return pruned


def _head_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Flat channel indices of whole heads: head h owns channels [h*d, (h+1)*d)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _slice_linear(put, dst, src, rows, cols) -> None:
    weight = src.weight
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    put(dst.weight, weight)
    if src.bias is not None:
        put(dst.bias, src.bias if rows is None else src.bias[rows])


def _slice_mamba(put, dst, src, layout: MambaLayout, heads, head_channels, hidden) -> None:
    """Keep heads [H'] and head channels [P'] of the mixer `layout` describes; B and C stay whole."""
    inner = layout.inner_channels(heads, head_channels)  # [H'*P'] into the H*P axis
    _slice_linear(put, dst.in_proj, src.in_proj, rows=layout.in_proj_rows(heads, head_channels), cols=hidden)
    conv_rows = layout.conv_rows(heads, head_channels)  # [H'*P' + 2GN]
    put(dst.conv1d.weight, src.conv1d.weight[conv_rows])
    if src.conv1d.bias is not None:
        put(dst.conv1d.bias, src.conv1d.bias[conv_rows])
    for name in ("dt_bias", "A_log", "D"):  # [H] -> [H']
        put(getattr(dst, name), getattr(src, name)[heads])
    put(dst.norm_weight, src.norm_weight[inner])
    _slice_linear(put, dst.out_proj, src.out_proj, rows=hidden, cols=inner)


def _copy_buffers(model, pruned) -> None:
    """Buffers (rotary tables and the like) hold no prunable axis: copy them by name."""
    old_buffers = dict(model.named_buffers())
    for name, buffer in pruned.named_buffers():
        source = old_buffers.get(name)
        if source is None or source.shape != buffer.shape:
            raise RuntimeError(f"cannot carry buffer {name} into the pruned model")
        buffer.copy_(source)
