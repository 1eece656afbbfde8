"""Activation-based importance (Minitron-SSM), one forward per calibration batch.

Every width axis is scored from activations collected by forward hooks, aggregated
as the mean magnitude over the sequence, then the L2 norm over samples. Padded
positions (attention_mask 0) contribute nothing. Higher score = more important.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from hybridlab.compression.layer_importance import LAYER_METRICS, block_cosine_hook, drop_one_layer_scores
from hybridlab.core.atomic import atomic_directory
from hybridlab.core.progress import ProgressFn, track
from hybridlab.families import ATTENTION, MAMBA, MLP, ModelDescription, describe

SCORES_FILE, META_FILE = "scores.safetensors", "scores.json"
# The prunable axes, as named in the tidy frame and in hybridlab.compression.kept.KeptUnits.
HIDDEN, FFN_NEURON, ATTENTION_HEAD = "hidden", "ffn_neuron", "attention_head"
MAMBA_HEAD, MAMBA_CHANNEL = "mamba_head", "mamba_channel"


@dataclass
class ImportanceScores:
    family: str
    layer_kinds: tuple[str, ...]
    n_groups: int  # Mamba groups (heads are ranked within them)
    num_key_value_heads: int  # attention heads are ranked within KV groups
    hidden: torch.Tensor  # [hidden]: summed over every norm that feeds a mixer, and the final norm
    ffn: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [F], the input of down_proj
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [heads], L2 over o_proj input channels
    mamba: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [H, P], the x part of in_proj
    layers: dict[str, torch.Tensor] = field(default_factory=dict)  # metric -> [L]
    meta: dict = field(default_factory=dict)

    # -- derived Mamba scores (paper Eqs. 19-24) --------------------------------------
    def mamba_channel_scores(self, layer: int) -> torch.Tensor:
        """[P]: s_d = L2 over heads of channel d."""
        return self.mamba[layer].norm(dim=0)

    def mamba_head_scores(self, layer: int, channels: torch.Tensor | None = None) -> torch.Tensor:
        """[H]: f_h = L2 of head h over the kept channels (all channels when None)."""
        per_head = self.mamba[layer] if channels is None else self.mamba[layer][:, channels]
        return per_head.norm(dim=1)

    # -- persistence: safetensors + JSON, no pickle --------------------------------------
    def save(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir).expanduser().resolve()
        tensors = {"hidden": self.hidden}
        for name, table in (("ffn", self.ffn), ("attention", self.attention), ("mamba", self.mamba)):
            tensors.update({f"{name}.{layer}": t for layer, t in table.items()})
        tensors.update({f"layers.{metric}": t for metric, t in self.layers.items()})
        meta = dict(
            family=self.family,
            layer_kinds=list(self.layer_kinds),
            n_groups=self.n_groups,
            num_key_value_heads=self.num_key_value_heads,
            meta=self.meta,
        )
        with atomic_directory(out, overwrite=True) as tmp:
            save_file({k: v.contiguous().float() for k, v in tensors.items()}, tmp / SCORES_FILE)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImportanceScores":
        path = Path(path).expanduser()
        if not (path / SCORES_FILE).exists() or not (path / META_FILE).exists():
            raise FileNotFoundError(
                f"{path} holds no importance scores (expected {SCORES_FILE} and {META_FILE}); run `hybridlab importance` first"
            )
        meta = json.loads((path / META_FILE).read_text())
        tensors = load_file(path / SCORES_FILE)
        tables: dict[str, dict] = {"ffn": {}, "attention": {}, "mamba": {}, "layers": {}}
        for key, tensor in tensors.items():
            if key == "hidden":
                continue
            table, sub = key.split(".", 1)
            tables[table][sub if table == "layers" else int(sub)] = tensor
        return cls(
            family=meta["family"],
            layer_kinds=tuple(meta["layer_kinds"]),
            n_groups=meta["n_groups"],
            num_key_value_heads=meta["num_key_value_heads"],
            hidden=tensors["hidden"],
            meta=meta.get("meta", {}),
            **tables,
        )

    # -- a tidy table for plots ---------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Columns: layer, layer_kind, axis, index, group, score (layer -1 = model-wide)."""
        rows: list[pd.DataFrame] = [_rows(-1, "model", HIDDEN, self.hidden)]
        for layer, scores in self.ffn.items():
            rows.append(_rows(layer, MLP, FFN_NEURON, scores))
        for layer, scores in self.attention.items():
            per_group = len(scores) // max(self.num_key_value_heads, 1)
            rows.append(_rows(layer, ATTENTION, ATTENTION_HEAD, scores, per_group))
        for layer in self.mamba:
            heads = self.mamba_head_scores(layer)
            rows.append(_rows(layer, MAMBA, MAMBA_HEAD, heads, len(heads) // self.n_groups))
            rows.append(_rows(layer, MAMBA, MAMBA_CHANNEL, self.mamba_channel_scores(layer)))
        for metric, scores in self.layers.items():
            frame = _rows(-1, "model", f"layer_{metric}", scores)
            frame["layer"] = frame["index"]
            frame["layer_kind"] = [self.layer_kinds[i] for i in frame["index"]]
            rows.append(frame)
        return pd.concat(rows, ignore_index=True)


def _rows(layer: int, kind: str, axis: str, scores: torch.Tensor, group_size: int | None = None) -> pd.DataFrame:
    n = len(scores)
    index = range(n)
    return pd.DataFrame(
        {
            "layer": layer,
            "layer_kind": kind,
            "axis": axis,
            "index": list(index),
            "group": [i // group_size for i in index] if group_size else [None] * n,
            "score": scores.float().tolist(),
        }
    )


class _SquaredSum:
    """Accumulates the squared per-sample sequence means; sqrt gives the L2 over samples."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def add(self, per_sample: torch.Tensor) -> None:  # [B, C]
        update = per_sample.pow(2).sum(0)
        self.value = update if self.value is None else self.value + update

    def result(self) -> torch.Tensor:
        return self.value.sqrt()


def sequence_mean_magnitude(act: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, C] -> [B, C]: mean |activation| over the valid positions of each sample.
    Magnitudes, because signed activations of the residual stream cancel over a sequence."""
    act = act.detach().float().abs()
    if mask is None:
        return act.mean(1)
    weights = mask.to(act.dtype).unsqueeze(-1)  # [B, T, 1]
    return (act * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def as_model_inputs(batch) -> dict:
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch, "attention_mask": None}
    if isinstance(batch, dict) and "input_ids" in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    raise ValueError(
        "calibration batches must be LongTensors [batch, seq] or dicts with input_ids (and attention_mask)"
    )


@torch.no_grad()
def estimate_importance(
    model,
    batches: Iterable,
    layer_metric: str | None = "kl",
    progress: ProgressFn | None = None,
    layer_samples: int | None = None,
    description: ModelDescription | None = None,
) -> ImportanceScores:
    """Score every prunable unit of `model` on calibration `batches`.

    layer_metric: "kl" or "loss" (drop-one-layer passes, both recorded), "cosine"
    (block importance, free), or None (width axes only; cosine is still recorded).
    layer_samples: use only the first batches holding this many samples for the
    drop-one-layer passes (each costs one forward per layer); None uses every batch.
    description: describe(model), when the caller already has it.
    """
    if layer_metric not in LAYER_METRICS:
        raise ValueError(f"layer_metric must be one of {LAYER_METRICS}, got {layer_metric!r}")
    description = describe(model) if description is None else description.checked_for(model)
    widths, layout = description.widths, description.mamba_layout
    parts = description.parts(model)
    batches = [as_model_inputs(b) for b in batches]
    if not batches:
        raise ValueError("no calibration batches: pass at least one batch of token ids")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    current_mask: list[torch.Tensor | None] = [None]
    hidden, cosine = _SquaredSum(), {}
    ffn = {l.index: _SquaredSum() for l in parts.layers if l.kind == MLP}
    attn = {l.index: _SquaredSum() for l in parts.layers if l.kind == ATTENTION}
    mamba = {l.index: _SquaredSum() for l in parts.layers if l.kind == MAMBA}
    hidden_per_batch: list[torch.Tensor] = []

    def norm_hook(module, args, output):  # output [B, T, hidden]
        hidden_per_batch.append(sequence_mean_magnitude(output, current_mask[0]))

    def input_hook(acc):
        def hook(module, args):  # args[0] [B, T, channels]
            acc.add(sequence_mean_magnitude(args[0], current_mask[0]))

        return hook

    def mamba_x_hook(acc):
        def hook(module, args, output):  # output [B, T, 2HP + 2GN + H] = [z | x | B | C | dt]
            acc.add(sequence_mean_magnitude(output[..., layout.x], current_mask[0]))  # x: [B, T, HP]

        return hook

    handles = [parts.final_norm.register_forward_hook(norm_hook)]
    for layer in parts.layers:
        handles.append(layer.norm.register_forward_hook(norm_hook))
        handles.append(
            layer.block.register_forward_hook(block_cosine_hook(cosine, layer.index, current_mask), with_kwargs=True)
        )
        if layer.kind == MLP:
            handles.append(layer.mixer.down_proj.register_forward_pre_hook(input_hook(ffn[layer.index])))
        elif layer.kind == ATTENTION:
            handles.append(layer.mixer.o_proj.register_forward_pre_hook(input_hook(attn[layer.index])))
        else:
            handles.append(layer.mixer.in_proj.register_forward_hook(mamba_x_hook(mamba[layer.index])))

    drop_passes = layer_metric in ("kl", "loss")
    tokens = 0
    try:
        layer_share = len(_first_samples(batches, layer_samples)) * (1 + widths.num_layers) if drop_passes else 0
        width_share = len(batches) / (len(batches) + layer_share)
        for inputs in track(batches, len(batches), "importance: activations", progress, 0.0, width_share):
            inputs = {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}
            current_mask[0] = inputs["attention_mask"]
            model(**inputs, use_cache=False)
            hidden.add(torch.stack(hidden_per_batch).sum(0))  # summed over all consumers
            hidden_per_batch.clear()
            tokens += (
                int(inputs["attention_mask"].sum())
                if inputs["attention_mask"] is not None
                else inputs["input_ids"].numel()
            )
    finally:
        for handle in handles:
            handle.remove()
        current_mask[0] = None

    layer_scores = {"cosine": torch.tensor([cosine[i].result() for i in range(widths.num_layers)])}
    if drop_passes:
        layer_batches = _first_samples(batches, layer_samples)
        layer_scores.update(drop_one_layer_scores(model, parts, layer_batches, device, progress, width_share))
    model.train(was_training)

    heads_scores = {}
    for index, acc in attn.items():
        per_channel = acc.result()  # [heads * head_dim]
        heads_scores[index] = per_channel.view(widths.num_attention_heads, widths.attention_head_dim).norm(dim=1)
    return ImportanceScores(
        family=description.family.name,
        layer_kinds=widths.layer_kinds,
        n_groups=widths.mamba_n_groups,
        num_key_value_heads=widths.num_key_value_heads,
        hidden=hidden.result(),
        ffn={i: acc.result() for i, acc in ffn.items()},
        attention=heads_scores,
        mamba={i: acc.result().view(widths.mamba_num_heads, widths.mamba_head_dim) for i, acc in mamba.items()},
        layers=layer_scores,
        meta={
            "samples": sum(len(b["input_ids"]) for b in batches),
            "tokens": tokens,
            "layer_metric": layer_metric,
            "layer_samples": sum(len(b["input_ids"]) for b in layer_batches) if drop_passes else 0,
        },
    )


def _first_samples(batches: list[dict], samples: int | None) -> list[dict]:
    if samples is None:
        return batches
    if samples < 1:
        raise ValueError(f"layer_samples must be at least 1, got {samples}")
    chosen, count = [], 0
    for batch in batches:
        if count >= samples:
            break
        chosen.append(batch)
        count += len(batch["input_ids"])
    return chosen
