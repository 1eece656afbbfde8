"""Structured pruning: a new, smaller model of the same class, built from slices of
the original's weights. The input model is never modified.

Mamba pruning is group-aware (paper Eqs. 19-24): the same head channels are kept in
every head, and the same number of heads in every group, chosen within the group, so
that every kept head still reads its own group's B and C.
"""

from __future__ import annotations

import torch

from hybridlab.compression.importance import ImportanceScores
from hybridlab.families import ATTENTION, MAMBA, MLP, Widths, family_for
from hybridlab.model.spec import PruneSpec, kept_layer_count, resolve

RANKINGS = ("importance", "random")
MAMBA_RANKINGS = ("group", "global")


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (keeps the layout stable)."""
    return torch.sort(torch.topk(scores.float(), k, sorted=False).indices).values


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


def choose_dropped_layers(
    spec: PruneSpec, widths: Widths, scores: ImportanceScores | None, layer_metric: str, rank: _Ranker, family=None
) -> tuple[int, ...]:
    if spec.drop_layers is not None:
        return spec.drop_layers
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
    return least_important_layers(layer_scores, n_drop, widths, family)


def least_important_layers(layer_scores: torch.Tensor, count: int, widths: Widths, family=None) -> tuple[int, ...]:
    """The `count` lowest-scoring layers, skipping any whose removal the family forbids
    (e.g. NemotronH's last attention layer)."""
    dropped: list[int] = []
    for index in torch.argsort(layer_scores.float()).tolist():
        if len(dropped) == count:
            break
        kept = tuple(k for i, k in enumerate(widths.layer_kinds) if i not in {*dropped, index})
        try:
            if family is not None:
                family.check(widths.with_(layer_kinds=kept))
        except ValueError:
            continue
        dropped.append(index)
    if len(dropped) < count:
        raise ValueError(f"cannot drop {count} layers: the model family needs some of them (see its adapter's check)")
    return tuple(sorted(dropped))


def plan_drop_layers(
    config,
    spec: PruneSpec,
    scores: ImportanceScores | None = None,
    layer_metric: str = "kl",
    ranking: str = "importance",
    seed: int = 0,
) -> tuple[int, ...]:
    """The layers `prune` would remove for this spec (exact sizes need them)."""
    widths = family_for(config).widths(config)
    return choose_dropped_layers(spec, widths, scores, layer_metric, _Ranker(scores, ranking, seed), family_for(config))


@torch.no_grad()
def prune(
    model,
    spec: PruneSpec,
    scores: ImportanceScores | None = None,
    ranking: str = "importance",
    mamba_ranking: str = "group",
    layer_metric: str = "kl",
    seed: int = 0,
):
    """Return a new, smaller model of the same class pruned to `spec`.

    ranking: "importance" (default) or "random" (seeded control on every axis).
    mamba_ranking: "group" (the paper) or "global" (rank heads over the whole layer and
    let them fall into groups by position: the strawman that mispairs heads with B/C).
    layer_metric: which layer score chooses layers when only num_layers is given.
    """
    if mamba_ranking not in MAMBA_RANKINGS:
        raise ValueError(f"mamba_ranking must be one of {MAMBA_RANKINGS}, got {mamba_ranking!r}")
    family = family_for(model)
    old = family.widths(model.config)
    resolve(spec, old)  # validate widths before any work
    rank = _Ranker(scores, ranking, seed)
    if scores is None and ranking == "importance" and _needs_ranking(spec, old):
        raise ValueError(
            "pruning by importance needs ImportanceScores; run estimate_importance first or use ranking='random'"
        )
    if scores is not None and tuple(scores.layer_kinds) != old.layer_kinds:
        raise ValueError("these importance scores were computed for a different model (layer pattern differs)")

    dropped = choose_dropped_layers(spec, old, scores, layer_metric, rank, family)
    kept_layers = [i for i in range(old.num_layers) if i not in set(dropped)]
    new = resolve(spec, old, kept_kinds=tuple(old.layer_kinds[i] for i in kept_layers))
    family.check(new)

    old_parts = family.parts(model)
    real = scores or _uniform_scores(old_parts, old)
    hidden_keep = top_k(rank(real.hidden), new.hidden_size)

    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        pruned = type(model)(family.config_with(model.config, new))
    pruned.to_empty(device=next(model.parameters()).device)
    pruned.to(dtype)
    _copy_buffers(model, pruned)
    new_parts = family.parts(pruned)
    written: set[int] = set()

    def put(dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)
        written.add(id(dst))

    put(new_parts.embeddings.weight, old_parts.embeddings.weight[:, hidden_keep])
    put(new_parts.lm_head.weight, old_parts.lm_head.weight[:, hidden_keep])
    put(new_parts.final_norm.weight, old_parts.final_norm.weight[hidden_keep])
    for new_layer, old_index in zip(new_parts.layers, kept_layers):
        old_layer = old_parts.layers[old_index]
        put(new_layer.norm.weight, old_layer.norm.weight[hidden_keep])
        src, dst = old_layer.mixer, new_layer.mixer
        if old_layer.kind == MLP:
            neurons = top_k(rank(real.ffn[old_index]), new.ffn_hidden_size)
            _slice_linear(put, dst.up_proj, src.up_proj, rows=neurons, cols=hidden_keep)
            _slice_linear(put, dst.down_proj, src.down_proj, rows=hidden_keep, cols=neurons)
        elif old_layer.kind == ATTENTION:
            heads = top_k_within_groups(
                rank(real.attention[old_index]),
                old.num_key_value_heads,
                new.num_attention_heads // old.num_key_value_heads,
            )
            channels = _head_channels(heads, old.attention_head_dim)
            _slice_linear(put, dst.q_proj, src.q_proj, rows=channels, cols=hidden_keep)
            _slice_linear(put, dst.k_proj, src.k_proj, rows=None, cols=hidden_keep)
            _slice_linear(put, dst.v_proj, src.v_proj, rows=None, cols=hidden_keep)
            _slice_linear(put, dst.o_proj, src.o_proj, rows=hidden_keep, cols=channels)
        else:
            heads, head_channels = choose_mamba_units(real, old_index, old, new, rank, mamba_ranking)
            _slice_mamba(put, dst, src, old, heads, head_channels, hidden_keep)

    missing = [name for name, p in pruned.named_parameters() if id(p) not in written]
    if missing:  # an adapter that forgot a tensor would otherwise leave garbage memory
        raise RuntimeError(f"pruning left parameters unset: {missing[:5]}")
    pruned.eval()
    return pruned


def _needs_ranking(spec: PruneSpec, widths: Widths) -> bool:
    """Whether any unit must be chosen (explicit drop_layers alone choose nothing)."""
    shrinks = resolve(spec, widths) != widths.with_()
    return shrinks or (spec.num_layers is not None and spec.drop_layers is None and spec.num_layers < widths.num_layers)


def choose_mamba_units(scores, layer: int, old: Widths, new: Widths, rank: _Ranker, mamba_ranking: str):
    """(kept heads [H'], kept head channels [P']), nested as in the paper."""
    channels = top_k(rank(scores.mamba_channel_scores(layer)), new.mamba_head_dim)
    head_scores = rank(scores.mamba_head_scores(layer, channels))
    if mamba_ranking == "global":
        heads = top_k(head_scores, new.mamba_num_heads)
    else:
        heads = top_k_within_groups(head_scores, old.mamba_n_groups, new.mamba_num_heads // old.mamba_n_groups)
    return heads, channels


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


def _slice_mamba(put, dst, src, old: Widths, heads, head_channels, hidden_keep) -> None:
    H, P = old.mamba_num_heads, old.mamba_head_dim
    GN = old.mamba_n_groups * old.mamba_state_size
    HP = H * P
    x_channels = (heads[:, None] * P + head_channels[None, :]).flatten()  # [H'*P'] into the H*P axis
    group_state = torch.arange(GN)
    # in_proj rows [z | x | B | C | dt]: z and x follow the kept (head, channel) pairs, B and C stay whole.
    in_rows = torch.cat(
        [x_channels, HP + x_channels, 2 * HP + group_state, 2 * HP + GN + group_state, 2 * HP + 2 * GN + heads]
    )
    _slice_linear(put, dst.in_proj, src.in_proj, rows=in_rows, cols=hidden_keep)
    # conv1d channels [x | B | C]
    conv_channels = torch.cat([x_channels, HP + group_state, HP + GN + group_state])
    put(dst.conv1d.weight, src.conv1d.weight[conv_channels])
    if src.conv1d.bias is not None:
        put(dst.conv1d.bias, src.conv1d.bias[conv_channels])
    for name in ("dt_bias", "A_log", "D"):
        put(getattr(dst, name), getattr(src, name)[heads])
    put(dst.norm_weight, src.norm_weight[x_channels])
    _slice_linear(put, dst.out_proj, src.out_proj, rows=hidden_keep, cols=x_channels)


def _copy_buffers(model, pruned) -> None:
    """Buffers (rotary tables and the like) hold no prunable axis: copy them by name."""
    old_buffers = dict(model.named_buffers())
    for name, buffer in pruned.named_buffers():
        source = old_buffers.get(name)
        if source is None or source.shape != buffer.shape:
            raise RuntimeError(f"cannot carry buffer {name} into the pruned model")
        buffer.copy_(source)


def _uniform_scores(parts, widths: Widths) -> ImportanceScores:
    """Flat scores for random ranking without importance (ties are broken by the noise)."""
    ones = lambda n: torch.ones(n)
    return ImportanceScores(
        family="",
        layer_kinds=widths.layer_kinds,
        n_groups=widths.mamba_n_groups,
        num_key_value_heads=widths.num_key_value_heads,
        hidden=ones(widths.hidden_size),
        ffn={l.index: ones(widths.ffn_hidden_size) for l in parts.layers if l.kind == MLP},
        attention={l.index: ones(widths.num_attention_heads) for l in parts.layers if l.kind == ATTENTION},
        mamba={
            l.index: torch.ones(widths.mamba_num_heads, widths.mamba_head_dim) for l in parts.layers if l.kind == MAMBA
        },
    )
