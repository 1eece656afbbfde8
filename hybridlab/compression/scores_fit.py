"""Whether importance scores were computed for a model of these widths.

Scores of another model with the same layer pattern but other widths would index past the
ends of its weights mid-prune (a RuntimeError or IndexError after all the work of loading);
`check_scores_fit` compares every per-axis size first and names both models' values.
"""

from __future__ import annotations

import re

from hybridlab.compression.importance import EXPERT_METRICS, ImportanceScores
from hybridlab.core.errors import UserError
from hybridlab.families import ATTENTION, MAMBA, MLP, MOE, ModelDescription, describe

FIX = "run importance on this model or pass scores made for it"


def check_scores_fit(scores: ImportanceScores, model, source: object = None) -> None:
    """UserError unless `scores` fit `model` (a model, config or ModelDescription): family,
    layer kinds, Mamba groups, KV heads, and every per-axis size. `source` names the scores."""
    description: ModelDescription = describe(model)
    widths = description.widths
    where = f"the scores in {source}" if source is not None else "these importance scores"

    def refuse(what: str, theirs, ours) -> None:
        raise UserError(f"{where} were computed for a model with {what} {theirs}, but this model has {ours}; {FIX}")

    if scores.family != description.family.name:
        refuse("family", repr(scores.family), repr(description.family.name))
    if tuple(scores.layer_kinds) != tuple(widths.layer_kinds):
        raise UserError(
            f"{where} were computed for a different model (layer pattern differs): "
            f"{len(scores.layer_kinds)} layers {_pattern(scores.layer_kinds)}, but this model has "
            f"{widths.num_layers} layers {_pattern(widths.layer_kinds)}; {FIX}"
        )
    if scores.mamba and scores.n_groups != widths.mamba_n_groups:
        refuse("Mamba n_groups", scores.n_groups, widths.mamba_n_groups)
    if scores.attention and scores.num_key_value_heads != widths.num_key_value_heads:
        refuse("num_key_value_heads", scores.num_key_value_heads, widths.num_key_value_heads)
    if tuple(scores.hidden.shape) != (widths.hidden_size,):
        refuse("hidden_size", _size(scores.hidden), widths.hidden_size)
    experts = (widths.num_moe_experts,)
    expected = {
        "ffn": (MLP, (widths.ffn_hidden_size,), "ffn_hidden_size"),
        "attention": (ATTENTION, (widths.num_attention_heads,), "num_attention_heads"),
        "mamba": (MAMBA, (widths.mamba_num_heads, widths.mamba_head_dim), "mamba_num_heads x mamba_head_dim"),
        "moe_neurons": (MOE, (*experts, widths.moe_ffn_hidden_size), "num_moe_experts x moe_ffn_hidden_size"),
    }
    if widths.moe_shared_expert_intermediate_size:
        shared = (widths.moe_shared_expert_intermediate_size,)
        expected["shared_experts"] = (MOE, shared, "moe_shared_expert_intermediate_size")
    for metric in EXPERT_METRICS:
        expected[f"experts {metric}"] = (MOE, experts, f"num_moe_experts ({metric})")
    for table, (kind, shape, what) in expected.items():
        entries = _table(scores, table)
        for index, kinds in enumerate(widths.layer_kinds):
            scored = widths.score_layer(index, kind) if kind in _mixers(kinds) else None  # shared blocks: 1st use
            if scored is not None and scored not in entries:
                raise UserError(f"{where} have no {table if kind == MOE else kind} scores for layer {scored}; {FIX}")
        for index, tensor in entries.items():
            if not 0 <= index < widths.num_layers:
                raise UserError(f"{where} score layer {index}, but this model has layers 0..{widths.num_layers - 1}")
            if tuple(tensor.shape) != shape:
                refuse(f"{what} in layer {index} of", _size(tensor), " x ".join(map(str, shape)))
    for metric, tensor in scores.layers.items():
        if tuple(tensor.shape) != (widths.num_layers,):
            refuse(f"{metric!r} layer scores for", f"{_size(tensor)} layers", f"{widths.num_layers} layers")


def _table(scores: ImportanceScores, name: str) -> dict:
    """A {layer: tensor} table of the scores; "experts <metric>" names one expert metric's."""
    if name.startswith("experts "):
        return scores.experts.get(name.split(" ", 1)[1], {})
    return getattr(scores, name)


def _mixers(layer_kind: str) -> list[str]:
    """The mixer kinds of a layer kind string ("mamba", or composite ones like "mamba+mlp")."""
    return re.split(r"[+|]", layer_kind)


def _size(tensor) -> str:
    return " x ".join(str(n) for n in tensor.shape)


def _pattern(kinds) -> str:
    symbols = {MAMBA: "M", MLP: "-", ATTENTION: "*", MOE: "E"}
    if all(k in symbols for k in kinds):
        return "".join(symbols[k] for k in kinds)
    return ",".join(kinds)


def load_scores(path) -> ImportanceScores:
    """ImportanceScores.load, with a damaged scores folder (not JSON, not safetensors, fields
    missing) one UserError instead of a library's exception."""
    from safetensors import SafetensorError

    try:
        return ImportanceScores.load(path)
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError, SafetensorError) as err:
        detail = f"{type(err).__name__}: {err}" if isinstance(err, KeyError) else str(err)
        raise UserError(f"the importance scores in {path} cannot be read ({detail}); run importance again") from None
