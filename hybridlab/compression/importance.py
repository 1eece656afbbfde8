"""Activation-based importance (Minitron-SSM), one forward per calibration batch.

Every width axis is scored from activations collected by forward hooks, aggregated
as the mean magnitude over the sequence, then the L2 norm over samples. Padded
positions (attention_mask 0) contribute nothing. Higher score = more important.

Mixtures of experts add three axes. Routed experts get two scores, summed over every
calibration token (so an expert seldom chosen scores low): "routing_mass", the gate the
router gives the expert (0 when the token does not choose it; after any renormalisation
and scaling, i.e. the weight its output is added with), and "gated_output_norm", the L2
norm of the expert's output times that gate (in the latent space when the experts have
one). Expert neurons are scored by the activation entering the expert's down projection,
over the tokens routed to it, aggregated as dense FFN neurons are (a token not routed to
the expert contributes zero); the shared expert's neurons exactly as a dense FFN's.
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
from tqdm.auto import tqdm

from hybridlab.compression.layer_importance import (
    LAYER_METRICS,
    DropOneLayer,
    block_cosine_hook,
    drop_one_layer_scores,
    next_token_logprobs,
)
from hybridlab.core.atomic import atomic_directory
from hybridlab.core.progress import ProgressFn, track
from hybridlab.families import ATTENTION, MAMBA, MLP, MOE, ModelDescription, MoEParts, describe
from hybridlab.model.streamed import Stream, StreamedModel

SCORES_FILE, META_FILE = "scores.safetensors", "scores.json"
# The prunable axes, as named in the tidy frame and in hybridlab.compression.kept.KeptUnits.
HIDDEN, FFN_NEURON, ATTENTION_HEAD = "hidden", "ffn_neuron", "attention_head"
MAMBA_HEAD, MAMBA_CHANNEL = "mamba_head", "mamba_channel"
MOE_EXPERT, MOE_NEURON, SHARED_EXPERT_NEURON = "moe_expert", "moe_neuron", "shared_expert_neuron"
EXPERT_METRICS = ("routing_mass", "gated_output_norm")  # how routed experts are scored (see the module doc)


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
    # mixtures of experts (E routed experts of F neurons, S shared-expert neurons); empty for dense models
    experts: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)  # EXPERT_METRICS -> layer -> [E]
    moe_neurons: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [E, F], down_proj inputs
    shared_experts: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [S], like ffn

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
        for name, table in self._layer_tables().items():
            tensors.update({f"{name}.{layer}": t for layer, t in table.items()})
        tensors.update({f"layers.{metric}": t for metric, t in self.layers.items()})
        for metric, table in self.experts.items():  # experts.<metric>.<layer>
            tensors.update({f"experts.{metric}.{layer}": t for layer, t in table.items()})
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
        tables: dict[str, dict] = {name: {} for name in (*LAYER_TABLES, "layers", "experts")}
        for key, tensor in tensors.items():  # files written before an axis existed simply lack its table
            if key == "hidden":
                continue
            table, sub = key.split(".", 1)
            if table == "experts":
                metric, layer = sub.rsplit(".", 1)
                tables[table].setdefault(metric, {})[int(layer)] = tensor
            else:
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

    def _layer_tables(self) -> dict[str, dict[int, torch.Tensor]]:
        return {name: getattr(self, name) for name in LAYER_TABLES}

    # -- a tidy table for plots ---------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Columns: layer, layer_kind, axis, index, group, score (layer -1 = model-wide). Routed experts
        appear once per metric (axis "moe_expert_<metric>"); an expert neuron's group is its expert."""
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
        for metric, table in self.experts.items():
            for layer, scores in table.items():
                rows.append(_rows(layer, MOE, f"{MOE_EXPERT}_{metric}", scores))
        for layer, scores in self.moe_neurons.items():
            rows.append(_rows(layer, MOE, MOE_NEURON, scores.flatten(), scores.shape[1]))
        for layer, scores in self.shared_experts.items():
            rows.append(_rows(layer, MOE, SHARED_EXPERT_NEURON, scores))
        for metric, scores in self.layers.items():
            frame = _rows(-1, "model", f"layer_{metric}", scores)
            frame["layer"] = frame["index"]
            frame["layer_kind"] = [self.layer_kinds[i] for i in frame["index"]]
            rows.append(frame)
        return pd.concat(rows, ignore_index=True)


LAYER_TABLES = ("ffn", "attention", "mamba", "moe_neurons", "shared_experts")  # {layer: tensor} tables


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

    model: a model in memory, or a StreamedModel (hybridlab.model.streamed) to score a checkpoint
    larger than memory one layer at a time; both give the same scores.
    layer_metric: "kl" or "loss" (drop-one-layer passes, both recorded), "cosine"
    (block importance, free), or None (width axes only; cosine is still recorded).
    layer_samples: use only the first batches holding this many samples for the
    drop-one-layer passes (each costs one forward per layer); None uses every batch.
    description: describe(model), when the caller already has it.
    """
    if layer_metric not in LAYER_METRICS:
        raise ValueError(f"layer_metric must be one of {LAYER_METRICS}, got {layer_metric!r}")
    streamed = model if isinstance(model, StreamedModel) else None
    if streamed is not None:
        description = describe(streamed.model) if description is None else description.checked_for(streamed.model)
    else:
        description = describe(model) if description is None else description.checked_for(model)
    batches = [as_model_inputs(b) for b in batches]
    if not batches:
        raise ValueError("no calibration batches: pass at least one batch of token ids")
    layer_batches = _first_samples(batches, layer_samples) if layer_metric in ("kl", "loss") else []
    stats = _Statistics(description, len(batches))
    if streamed is not None:
        layer_scores = _streamed_pass(streamed, description, batches, layer_batches, stats, progress)
    else:
        layer_scores = _in_memory_pass(model, description, batches, layer_batches, stats, progress)
    return stats.scores(layer_scores, batches, layer_batches, layer_metric)


def _in_memory_pass(model, description, batches, layer_batches, stats: _Statistics, progress) -> dict:
    parts = description.parts(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    handles = [stats.hook_final_norm(parts.final_norm)]
    for layer in parts.layers:
        handles += stats.hook_layer(layer)
    width_share = len(batches) / (len(batches) + len(layer_batches) * (1 + description.num_layers))
    try:
        for index, inputs in enumerate(
            track(batches, len(batches), "importance: activations", progress, 0.0, width_share)
        ):
            inputs = {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}
            stats.at_batch(index, inputs["attention_mask"])
            model(**inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        stats.at_batch(0, None)
    layer_scores = {}
    if layer_batches:
        layer_scores = drop_one_layer_scores(model, parts, layer_batches, device, progress, width_share)
    model.train(was_training)
    return layer_scores


def _streamed_pass(streamed: StreamedModel, description, batches, layer_batches, stats: _Statistics, progress) -> dict:
    """Layer-major: every batch through layer 0, then layer 1, ...; only the calibration activations stay
    in memory between layers. Drop-one-layer: the model without layer j is the stream that skipped j,
    carried through every later layer (one extra layer forward per stream, L * (L - 1) / 2 in all)."""
    n = description.num_layers
    streams = [streamed.embed(b["input_ids"], b["attention_mask"]) for b in batches]
    skipping: dict[int, list[Stream]] = {}  # dropped layer j -> its streams at the current layer
    steps = [len(batches) + len(layer_batches) * k for k in range(n)]
    total = sum(steps) + len(layer_batches) * (n + 1)
    done = 0
    reporter = tqdm(total=total, desc="importance (streamed)", disable=progress is not None, leave=False)
    for k in range(n):
        with streamed.layer(k):
            layer = streamed.layer_parts(k, description)
            if layer_batches:
                skipping[k] = streams[: len(layer_batches)]  # without layer k, layer k's input goes on
            handles = stats.hook_layer(layer)
            try:
                for b, stream in enumerate(streams):
                    stats.at_batch(b, stream.mask)
                    streams[b] = streamed.run_layer(k, stream)
            finally:
                for handle in handles:
                    handle.remove()
                stats.at_batch(0, None)
            for j, skipped_streams in skipping.items():
                if j != k:
                    skipping[j] = [streamed.run_layer(k, s) for s in skipped_streams]
        done += steps[k]
        reporter.update(steps[k])
        if progress is not None:
            progress(done / total, f"importance (streamed): layer {k + 1}/{n}", None)
    final_norm = streamed.final_norm()
    handle = stats.hook_final_norm(final_norm)
    try:
        for b, stream in enumerate(streams):
            stats.at_batch(b, stream.mask)
            final_norm(stream.hidden)
    finally:
        handle.remove()
        stats.at_batch(0, None)
    layer_scores = {}
    if layer_batches:
        scores = DropOneLayer(n)
        with streamed.head():
            for b, batch in enumerate(layer_batches):
                full = next_token_logprobs(streamed.logits(streams[b]))
                scores.reference(full, batch["input_ids"].to(streamed.device), streams[b].mask)
                for j in range(n):
                    scores.add(j, next_token_logprobs(streamed.logits(skipping[j][b])))
                reporter.update(n + 1)
        layer_scores = scores.result()
    reporter.close()
    return layer_scores


class _Statistics:
    """The activation statistics of one model, gathered by hooks on each layer's parts. Each batch's
    contributions arrive in layer order whether the layers run all at once (in memory) or one at a time
    (streamed), so both give the same scores."""

    def __init__(self, description: ModelDescription, num_batches: int):
        self.description = description
        self.batch, self.mask = 0, [None]  # the batch being run and its attention mask (a list: hooks read it)
        self.hidden_sums: list[torch.Tensor | None] = [None] * num_batches  # [B, hidden] per batch
        self.cosine: dict = {}
        self.ffn: dict[int, _SquaredSum] = {}
        self.attn: dict[int, _SquaredSum] = {}
        self.mamba: dict[int, _SquaredSum] = {}
        self.moe: dict[int, _ExpertSums] = {}
        self.shared: dict[int, _SquaredSum] = {}

    def at_batch(self, index: int, mask: torch.Tensor | None) -> None:
        self.batch, self.mask[0] = index, mask

    def _add_hidden(self, module, args, output) -> None:  # output [B, T, hidden]: a norm feeding a consumer
        self._add_hidden_value(sequence_mean_magnitude(output, self.mask[0]))

    def _add_hidden_copies(self, copies: int):
        """For a norm over `copies` hidden-wide inputs side by side ([B, T, copies * hidden], e.g. Zamba2's
        [stream | embeddings]): channel c is at c, hidden + c, ...; its score sums them."""

        def hook(module, args, output):
            value = sequence_mean_magnitude(output, self.mask[0])  # [B, copies * hidden]
            self._add_hidden_value(value.view(len(value), copies, -1).sum(1))

        return hook

    def _add_hidden_value(self, value: torch.Tensor) -> None:  # [B, hidden]
        current = self.hidden_sums[self.batch]
        self.hidden_sums[self.batch] = value if current is None else current + value

    def hook_final_norm(self, norm):
        return norm.register_forward_hook(self._add_hidden)

    def hook_layer(self, layer) -> list:
        """Hooks on one layer: each distinct pre-norm (hidden channels), the block (cosine), and
        the activation that scores each of its mixers' units."""
        handles = [
            norm.register_forward_hook(self._add_hidden if copies == 1 else self._add_hidden_copies(copies))
            for norm, copies in layer.normed_inputs
        ]
        handles.append(
            layer.block.register_forward_hook(block_cosine_hook(self.cosine, layer.index, self.mask), with_kwargs=True)
        )
        widths = self.description.widths
        for sub in layer.sublayers:  # a shared block's uses add to the scores of its first use
            handles += self._hook_mixer(sub.kind, sub.parts, widths.score_layer(layer.index, sub.kind))
        return handles

    def _hook_mixer(self, kind: str, parts, index: int) -> list:
        if kind == MOE:
            return self._hook_moe(parts, index)
        return [self._hook_dense_mixer(kind, parts, index)]

    def _hook_moe(self, parts: MoEParts, index: int) -> list:
        """The routed experts' inputs and routing decisions (a pre-hook on the experts), the batch's shape
        (a pre-hook on the whole mixture: the experts see tokens flattened) and the shared expert's neurons."""
        acc = self.moe.setdefault(index, _ExpertSums())
        shape: list = [None]  # (B, T) of the batch being run

        def batch_shape(module, args, kwargs):
            shape[0] = _first_input(args, kwargs).shape[:2]

        def routed(module, args, kwargs):  # x [N, in], top_k_index [N, k], top_k_weights [N, k]
            x, top_k_index, top_k_weights = (*args, *kwargs.values())[:3]
            acc.add(parts, x, top_k_index, top_k_weights, shape[0], self.mask[0])

        handles = [
            parts.module.register_forward_pre_hook(batch_shape, with_kwargs=True),
            parts.experts.register_forward_pre_hook(routed, with_kwargs=True),
        ]
        if parts.shared_expert is not None:  # neurons: the input of its down_proj [B, T, S]
            shared = self.shared.setdefault(index, _SquaredSum())
            handles.append(parts.shared_expert.down_proj.register_forward_pre_hook(self._input_hook(shared)))
        return handles

    def _hook_dense_mixer(self, kind: str, parts, index: int):
        if kind == MLP:  # neurons: the input of down_proj [B, T, F]
            acc = self.ffn.setdefault(index, _SquaredSum())
            return parts.down_proj.register_forward_pre_hook(self._input_hook(acc))
        if kind == ATTENTION:  # heads: the input of o_proj [B, T, heads * head_dim]
            acc = self.attn.setdefault(index, _SquaredSum())
            return parts.o_proj.register_forward_pre_hook(self._input_hook(acc))
        layout = self.description.mamba_layout
        acc = self.mamba.setdefault(index, _SquaredSum())

        def mamba_x(module, args, output):  # output [B, T, 2HP + 2GN + H] = [z | x | B | C | dt]
            acc.add(sequence_mean_magnitude(output[..., layout.x], self.mask[0]))  # x: [B, T, HP]

        return parts.in_proj.register_forward_hook(mamba_x)

    def _input_hook(self, acc: _SquaredSum):
        def hook(module, args):  # args[0] [B, T, channels]
            acc.add(sequence_mean_magnitude(args[0], self.mask[0]))

        return hook

    def scores(
        self, layer_scores: dict, batches: list[dict], layer_batches: list[dict], layer_metric
    ) -> ImportanceScores:
        widths = self.description.widths
        hidden = _SquaredSum()
        for per_batch in self.hidden_sums:  # summed over all consumers, then squared per sample
            hidden.add(per_batch)
        tokens = sum(
            int(b["attention_mask"].sum()) if b["attention_mask"] is not None else b["input_ids"].numel()
            for b in batches
        )
        heads = {
            index: acc.result().view(widths.num_attention_heads, widths.attention_head_dim).norm(dim=1)
            for index, acc in self.attn.items()
        }
        return ImportanceScores(
            family=self.description.family.name,
            layer_kinds=widths.layer_kinds,
            n_groups=widths.mamba_n_groups,
            num_key_value_heads=widths.num_key_value_heads,
            hidden=hidden.result(),
            ffn={i: self.ffn[i].result() for i in sorted(self.ffn)},
            attention={i: heads[i] for i in sorted(heads)},
            mamba={
                i: self.mamba[i].result().view(widths.mamba_num_heads, widths.mamba_head_dim)
                for i in sorted(self.mamba)
            },
            experts={metric: {i: self.moe[i].metric(metric) for i in sorted(self.moe)} for metric in EXPERT_METRICS}
            if self.moe
            else {},
            moe_neurons={i: self.moe[i].neurons.result() for i in sorted(self.moe)},
            shared_experts={i: self.shared[i].result() for i in sorted(self.shared)},
            layers={
                "cosine": torch.tensor([self.cosine[i].result() for i in range(widths.num_layers)]),
                **layer_scores,
            },
            meta={
                "samples": sum(len(b["input_ids"]) for b in batches),
                "tokens": tokens,
                "layer_metric": layer_metric,
                "layer_samples": sum(len(b["input_ids"]) for b in layer_batches),
            },
        )


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


class _ExpertSums:
    """One mixture of experts' statistics: per routed expert, its routing mass and gated output norm summed
    over tokens, and the squared per-sample means of its neuron activations (see the module docstring)."""

    def __init__(self):
        self.routing_mass: torch.Tensor | None = None  # [E]
        self.gated_output_norm: torch.Tensor | None = None  # [E]
        self.neurons = _SquaredSum()  # [E, F]

    def metric(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    @torch.no_grad()
    def add(self, parts: MoEParts, x, top_k_index, top_k_weights, shape, mask) -> None:
        """x [N, in]: the experts' input, N = B*T tokens in row-major order; top_k_index / top_k_weights
        [N, k]: the experts each token chose and their gates; mask [B, T] or None."""
        experts, width = parts.down_proj.shape[0], parts.down_proj.shape[2]
        batch, steps = shape
        x, tokens = x.detach().float(), x.shape[0]
        valid = torch.ones(tokens, device=x.device) if mask is None else mask.reshape(-1).to(x.device).float()  # [N]
        chosen = torch.zeros(tokens, experts + 1, device=x.device)  # [N, E + 1]: some code pads choices with E
        gates = chosen.scatter_add(1, top_k_index, top_k_weights.float())[:, :experts]  # [N, E]
        chosen = chosen.scatter(1, top_k_index, 1.0)[:, :experts] * valid[:, None]
        routing_mass = (gates * valid[:, None]).sum(0)  # [E]
        output_norm = torch.zeros(experts, device=x.device)
        sample = torch.arange(tokens, device=x.device) // steps  # [N]: each token's sample
        sums = torch.zeros(experts, batch, width, device=x.device)  # |activation| summed per sample
        for e in chosen.sum(0).nonzero().flatten().tolist():
            routed = chosen[:, e].nonzero().flatten()  # [n]
            activation = _expert_activation(parts, e, x[routed])  # [n, F]
            output = activation @ parts.down_proj[e].float().T  # [n, in]
            output_norm[e] = (output * gates[routed, e, None]).norm(dim=-1).sum()
            sums[e].index_add_(0, sample[routed], activation.abs())
        counts = valid.view(batch, steps).sum(1).clamp_min(1.0)  # [B] valid positions per sample
        means = sums / counts[None, :, None]  # [E, B, F]: mean |activation| over each sample's positions
        self.routing_mass = _summed(self.routing_mass, routing_mass)
        self.gated_output_norm = _summed(self.gated_output_norm, output_norm)
        update = means.pow(2).sum(1)  # [E, F]
        self.neurons.value = _summed(self.neurons.value, update)


def _summed(total: torch.Tensor | None, update: torch.Tensor) -> torch.Tensor:
    return update if total is None else total + update


def _expert_activation(parts: MoEParts, expert: int, x: torch.Tensor) -> torch.Tensor:
    """[n, in] -> [n, F]: what enters routed expert `expert`'s down projection."""
    if parts.gate_up_proj is not None:  # rows [gate | up]
        gate, up = (x @ parts.gate_up_proj[expert].float().T).chunk(2, dim=-1)
        return parts.act_fn(gate) * up
    return parts.act_fn(x @ parts.up_proj[expert].float().T)


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
