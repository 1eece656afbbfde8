"""Structured pruning: a new, smaller model of the same class, built from slices of
the original's weights. The input model is never modified.

Which units stay is decided in hybridlab.compression.kept (one rule for the pruner,
the dashboard and the study); this module only slices the tensors by it.

Mixtures of experts. Keeping routed experts slices the router's rows, any per-expert router
bias (NemotronH's e_score_correction_bias) and dimension 0 of every per-expert tensor. The pruned
model computes exactly what the original computes when the removed experts can never be chosen:
- softmax over the top-k logits (GraniteMoeHybrid): the removed experts' router logits set to -inf;
  the same top-k is taken from the rest and the softmax over the chosen k is unchanged.
- sigmoid scores with a correction bias and grouped routing (NemotronH): the removed experts' choice
  scores (sigmoid(logit) + bias) set to -inf. Every group keeps the same number of experts, at least
  two, so the group scores (the sum of a group's two best choice scores), the chosen topk_group groups
  and the top-k inside them are the original's among the kept experts; the gates stay the chosen
  experts' sigmoid scores, renormalised over the chosen k when norm_topk_prob, times
  routed_scaling_factor (n_group, topk_group, top-k and the scaling factor are kept as they are).
Pruning expert neurons equals zeroing those neurons' activations in each expert; the shared
expert's neurons and a latent projection's columns are sliced like a dense MLP's.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from hybridlab.compression.importance import (
    ATTENTION_HEAD,
    FFN_NEURON,
    MAMBA_CHANNEL,
    MAMBA_HEAD,
    MOE_EXPERT,
    MOE_NEURON,
    SHARED_EXPERT_NEURON,
    ImportanceScores,
)
from hybridlab.compression.kept import KeptUnits, check_expert_metric, check_mamba_ranking, kept_units
from hybridlab.core.atomic import atomic_directory
from hybridlab.core.progress import ProgressFn, track
from hybridlab.families import ATTENTION, MLP, MOE, MambaLayout, ModelDescription, MoEParts, describe
from hybridlab.model.memory import DEFAULT_SHARD_BYTES
from hybridlab.model.spec import PruneSpec
from hybridlab.model.streamed import StreamedModel
from hybridlab.model.weight_files import INDEX_FILE, PICKLE_FILES, ShardWriter


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
    expert_metric: str = "routing_mass",
):
    """Return a new, smaller model of the same class pruned to `spec`.

    ranking: "importance" (default) or "random" (seeded control on every axis).
    mamba_ranking: "group" (the paper) or "global" (rank heads over the whole layer and
    let them fall into groups by position: the strawman that mispairs heads with B/C).
    layer_metric: which layer score chooses layers when only num_layers is given.
    description: describe(model), when the caller already has it.
    expert_metric: which expert score keeps routed experts: "routing_mass", "gated_output_norm" or
    "random" (the seeded control for experts alone); see the module docstring for what a pruned
    mixture of experts computes.
    """
    check_mamba_ranking(mamba_ranking)
    check_expert_metric(expert_metric)
    description = describe(model) if description is None else description.checked_for(model)
    kept = kept_units(scores, description, spec, ranking, mamba_ranking, layer_metric, seed, expert_metric)
    hidden = kept.hidden
    old_parts = description.parts(model)

    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        pruned = type(model)(description.config_with(kept.new))
    pruned.to_empty(device=next(model.parameters()).device)
    pruned.tie_weights()  # to_empty gives tied tensors (lm_head = embeddings) separate memory; tie them again
    _to_dtype(pruned, dtype)
    new_parts = description.parts(pruned)
    put = _Writes()
    _prune_ends(put, new_parts, old_parts, hidden)
    for new_layer, old_index in zip(new_parts.layers, kept.kept_layers):
        _prune_layer(put, new_layer, old_parts.layers[old_index], kept, description.mamba_layout)
    # the rest hold no prunable axis; the sliced ones (a router's per-expert bias) are written already
    _copy_buffers(model, pruned, skip=description.family.rebuild_buffers(pruned), written=put.written)
    put.check_written([pruned])
    pruned.eval()
    return pruned


@torch.no_grad()
def prune_checkpoint(
    source: StreamedModel,
    spec: PruneSpec,
    out_dir: str | os.PathLike,
    scores: ImportanceScores | None = None,
    ranking: str = "importance",
    mamba_ranking: str = "group",
    layer_metric: str = "kl",
    seed: int = 0,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
    expert_metric: str = "routing_mass",
) -> Path:
    """Prune a checkpoint to `spec` one layer at a time and write the result, shard by shard, to `out_dir`
    (a Hugging Face folder: sharded safetensors, index, config, the source's tokenizer files). Neither
    model is ever whole in memory; the written weights equal `prune(whole model, ...)` bit for bit."""
    check_mamba_ranking(mamba_ranking)
    check_expert_metric(expert_metric)
    description = describe(source.model)
    kept = kept_units(scores, description, spec, ranking, mamba_ranking, layer_metric, seed, expert_metric)
    with torch.device("meta"):
        pruned = type(source.model)(description.config_with(kept.new))
    _to_dtype(pruned, source.dtype)
    pruned.eval()
    pruned.tie_weights()
    new_parts, hidden = description.parts(pruned), kept.hidden
    blocks = [layer.block for layer in new_parts.layers]
    # Parameters that several layers share (Zamba2's shared blocks and their tied adapters) stay in memory
    # from the start to the end: each layer slices its own part of them, then they are written once.
    shared = _TensorSlots.shared_between(blocks)
    put = _Writes()
    writer = ShardWriter(pruned, max_shard_bytes)
    steps = [None, *range(kept.new.num_layers)]
    with atomic_directory(out_dir, overwrite) as tmp, shared.materialised(source.device):
        writer.open(tmp)
        for step in track(steps, len(steps), "prune (streamed)", progress):
            if step is None:  # embeddings, final norm, lm_head
                ends = [new_parts.embeddings, new_parts.final_norm, new_parts.lm_head]
                with source.ends() as old_ends, _materialised(ends, source.device):
                    _prune_ends(put, description.parts(pruned), old_ends, hidden)
                    put.check_written(ends)
                    writer.add_modules(ends)
                continue
            old_index = kept.kept_layers[step]
            own = _TensorSlots.of(blocks[step], skip=shared)
            with source.layer(old_index), own.materialised(source.device):
                old_layer = source.layer_parts(old_index, description)
                _copy_module_buffers(source.block(old_index), blocks[step])
                _prune_layer(put, description.parts(pruned).layers[step], old_layer, kept, description.mamba_layout)
                put.check_tensors(own.tensors())
                writer.add_tensors(own.slots())
        put.check_tensors(shared.tensors())
        writer.add_tensors(shared.slots())
        writer.close()
        pruned.config.save_pretrained(tmp)
        if pruned.can_generate():  # as save_pretrained does; the source's own, if any, is copied over it
            pruned.generation_config.save_pretrained(tmp)
        _copy_tokenizer_files(source.folder, tmp)
    return Path(out_dir).expanduser().resolve()


class _Writes:
    """Copies a slice into a new tensor and remembers which tensors were written."""

    def __init__(self):
        self.written: set[int] = set()

    def __call__(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)
        self.written.add(id(dst))

    def check_written(self, modules: list[nn.Module]) -> None:
        """An adapter that forgot a tensor would otherwise leave garbage memory in the pruned model."""
        self.check_tensors([(n, p) for m in modules for n, p in m.named_parameters()])

    def check_tensors(self, named: list[tuple[str, torch.Tensor]]) -> None:
        missing = [name for name, tensor in named if id(tensor) not in self.written]
        if missing:
            raise RuntimeError(f"pruning left parameters unset: {missing[:5]}")


def _prune_ends(put, new_parts, old_parts, hidden) -> None:
    """The embeddings, the final norm and lm_head: only the hidden (embedding-channel) axis."""
    put(new_parts.embeddings.weight, old_parts.embeddings.weight[:, hidden])
    put(new_parts.lm_head.weight, old_parts.lm_head.weight[:, hidden])
    put(new_parts.final_norm.weight, old_parts.final_norm.weight[hidden])


def _prune_layer(put, new_layer, old_layer, kept: KeptUnits, layout: MambaLayout) -> None:
    """One kept layer: its pre-norms and each of its mixers, sliced by the kept units of `old_layer.index`."""
    hidden, index, old = kept.hidden, old_layer.index, kept.old
    for (new_norm, copies), (old_norm, _) in zip(new_layer.normed_inputs, old_layer.normed_inputs):
        put(new_norm.weight, old_norm.weight[_copies(hidden, copies, old.hidden_size)])
    for dst, src in zip(new_layer.sublayers, old_layer.sublayers):
        if src.kind == MLP:
            _slice_mlp(put, dst.parts, src.parts, kept.units(FFN_NEURON, index), hidden)
        elif src.kind == MOE:
            _slice_moe(put, dst.parts, src.parts, kept, index)
        elif src.kind == ATTENTION:
            inputs = _copies(hidden, src.input_copies, old.hidden_size)  # q, k, v read the copies side by side
            _slice_attention(put, dst.parts, src.parts, kept.units(ATTENTION_HEAD, index), old, inputs, hidden)
        else:
            heads, head_channels = kept.units(MAMBA_HEAD, index), kept.units(MAMBA_CHANNEL, index)
            _slice_mamba(put, dst.parts, src.parts, layout, heads, head_channels, hidden)
    for dst, src in zip(new_layer.hidden_projections, old_layer.hidden_projections):
        _slice_linear(put, dst, src, rows=hidden, cols=hidden)


def _copies(hidden: torch.Tensor, copies: int, width: int) -> torch.Tensor:
    """[copies * hidden'] indices of the kept channels in each of `copies` hidden-wide inputs side by side."""
    return torch.cat([hidden + i * width for i in range(copies)])


def _slice_mlp(put, dst, src, neurons: torch.Tensor, hidden: torch.Tensor) -> None:
    """Keep neurons [F']: their rows of up (and gate, or both halves of a fused gate_up), their columns of down."""
    for name in ("up_proj", "gate_proj"):
        if getattr(src, name) is not None:
            _slice_linear(put, getattr(dst, name), getattr(src, name), rows=neurons, cols=hidden)
    if src.gate_up_proj is not None:  # rows [gate | up], F each
        width = src.down_proj.weight.shape[1]
        rows = torch.cat([neurons, width + neurons])
        _slice_linear(put, dst.gate_up_proj, src.gate_up_proj, rows=rows, cols=hidden)
        _slice_adapter(put, dst.gate_up_adapter, src.gate_up_adapter, rows=rows, cols=hidden)
    _slice_linear(put, dst.down_proj, src.down_proj, rows=hidden, cols=neurons)


def _slice_moe(put, dst: MoEParts, src: MoEParts, kept: KeptUnits, index: int) -> None:
    """Keep routed experts [E'] with their neurons [E', F'] (row i: kept expert i's), and the shared
    expert's neurons; the hidden channels in every tensor that reads or writes the hidden states."""
    hidden = kept.hidden
    experts, neurons = kept.units(MOE_EXPERT, index), kept.units(MOE_NEURON, index)
    put(dst.router_weight, src.router_weight[experts][:, hidden])
    if src.router_bias is not None:
        put(dst.router_bias, src.router_bias[experts])
    if src.latent_in is not None:  # the experts read and write the latent, which stays whole
        _slice_linear(put, dst.latent_in, src.latent_in, rows=None, cols=hidden)
        _slice_linear(put, dst.latent_out, src.latent_out, rows=hidden, cols=None)
        channels = slice(None)
    else:
        channels = hidden
    by_expert = experts[:, None]  # [E', 1]: indexes each kept expert's rows together with its own neurons
    if src.up_proj is not None:  # [E, F, in] -> [E', F', in']
        put(dst.up_proj, src.up_proj[by_expert, neurons][:, :, channels])
    if src.gate_up_proj is not None:  # [E, 2F, in]: rows [gate | up], the same neurons in both halves
        width = src.down_proj.shape[2]
        rows = torch.cat([neurons, width + neurons], dim=1)  # [E', 2F']
        put(dst.gate_up_proj, src.gate_up_proj[by_expert, rows][:, :, channels])
    down = torch.take_along_dim(src.down_proj[experts], neurons[:, None, :], dim=2)  # [E', in, F']
    put(dst.down_proj, down[:, channels])
    if src.shared_expert is not None:
        _slice_mlp(put, dst.shared_expert, src.shared_expert, kept.units(SHARED_EXPERT_NEURON, index), hidden)


def _slice_attention(put, dst, src, heads: torch.Tensor, old, inputs: torch.Tensor, hidden: torch.Tensor) -> None:
    """Keep query heads [heads']. With GQA every KV group keeps some heads, so K and V stay whole;
    with MHA (one KV head per query head) each kept head keeps its own K and V rows. `inputs` are the
    kept columns of q, k and v (the hidden channels, in each copy of the input)."""
    channels = _head_channels(heads, old.attention_head_dim)  # [heads' * d]
    kv_rows = channels if old.is_multi_head else None
    for name, rows in (("q", channels), ("k", kv_rows), ("v", kv_rows)):
        _slice_linear(put, getattr(dst, f"{name}_proj"), getattr(src, f"{name}_proj"), rows=rows, cols=inputs)
        _slice_adapter(put, getattr(dst, f"{name}_adapter"), getattr(src, f"{name}_adapter"), rows=rows, cols=inputs)
    _slice_linear(put, dst.o_proj, src.o_proj, rows=hidden, cols=channels)


def _slice_adapter(put, dst, src, rows, cols) -> None:
    """An adapter reads what its projection reads (columns) and writes what it writes (rows); its rank stays."""
    if src is not None:
        _slice_linear(put, dst.down, src.down, rows=None, cols=cols)
        _slice_linear(put, dst.up, src.up, rows=rows, cols=None)


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
    if src.norm_weight is not None:  # Falcon-H1 may have no gated norm
        put(dst.norm_weight, src.norm_weight[inner])
    _slice_linear(put, dst.out_proj, src.out_proj, rows=hidden, cols=inner)


def _copy_buffers(model, pruned, skip: set[str] = frozenset(), written: set[int] = frozenset()) -> None:
    """Buffers (rotary tables and the like) hold no prunable axis: copy them by name, except those
    the family rebuilt from the pruned config (`skip`, names: their shape follows the widths) and those
    already sliced (`written`, tensor ids: e.g. a router's per-expert bias)."""
    old_buffers = dict(model.named_buffers())
    for name, buffer in pruned.named_buffers():
        if name in skip or id(buffer) in written:
            continue
        source = old_buffers.get(name)
        if source is None or source.shape != buffer.shape:
            raise RuntimeError(f"cannot carry buffer {name} into the pruned model")
        buffer.copy_(source)


def _to_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """`model` in `dtype`, except what its class keeps in float32 in half precision, as from_pretrained
    does (`_keep_in_fp32_modules_strict`, e.g. NemotronH's router), so their slices are copied exactly."""
    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules_strict", None) or ()
    if not keep or dtype not in (torch.float16, torch.bfloat16):
        return
    for name, module in model.named_modules():
        for attr, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None and any(part in f"{name}.{attr}" for part in keep):
                tensor.data = tensor.data.float()


def _copy_module_buffers(source: nn.Module, target: nn.Module) -> None:
    """A streamed layer's persistent buffers (none are prunable): copied by name, as `_copy_buffers` does."""
    old_buffers = dict(source.named_buffers())
    for name, buffer in target.named_buffers():
        if name in old_buffers and old_buffers[name].shape == buffer.shape:
            buffer.copy_(old_buffers[name])


@contextmanager
def _materialised(modules: list[nn.Module], device) -> Iterator[None]:
    """Real (uninitialised) memory for these meta modules while they are filled and written, then freed."""
    for module in modules:
        module.to_empty(device=device)
    try:
        yield
    finally:
        for module in modules:
            module.to_empty(device="meta")


class _TensorSlots:
    """Parameter and buffer slots (module, attribute) of a meta model, given real memory together and freed
    together; slots that hold one tied tensor get one tensor again, so ties survive."""

    def __init__(self, groups: list[list[tuple[nn.Module, str]]]):
        self.groups = groups  # one list of slots per tensor

    @classmethod
    def shared_between(cls, blocks: list[nn.Module]) -> "_TensorSlots":
        """The tensors that appear in more than one block."""
        where: dict[int, set[int]] = {}
        slots: dict[int, list] = {}
        for b, block in enumerate(blocks):
            for module, attr, tensor in _slots(block):
                where.setdefault(id(tensor), set()).add(b)
                slots.setdefault(id(tensor), []).append((module, attr))
        return cls([slots[key] for key, users in where.items() if len(users) > 1])

    @classmethod
    def of(cls, block: nn.Module, skip: "_TensorSlots") -> "_TensorSlots":
        """The block's tensors but the skipped ones."""
        skipped = {(id(m), a) for group in skip.groups for m, a in group}
        groups: dict[int, list] = {}
        for module, attr, tensor in _slots(block):
            if (id(module), attr) not in skipped:
                groups.setdefault(id(tensor), []).append((module, attr))
        return cls(list(groups.values()))

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [(f"{type(m).__name__}.{a}", _slot(m, a)) for m, a in (group[0] for group in self.groups)]

    def slots(self) -> list[tuple[nn.Module, str]]:
        return [slot for group in self.groups for slot in group]

    @contextmanager
    def materialised(self, device) -> Iterator[None]:
        self._fill(lambda t: torch.empty_like(t, device=device))
        try:
            yield
        finally:
            self._fill(lambda t: torch.empty_like(t, device="meta"))

    def _fill(self, make) -> None:
        for group in self.groups:
            module, attr = group[0]
            old = _slot(module, attr)
            new = nn.Parameter(make(old), old.requires_grad) if attr in module._parameters else make(old)
            for module, attr in group:
                (module._parameters if attr in module._parameters else module._buffers)[attr] = new


def _slots(root: nn.Module):
    """(module, attribute, tensor) of every parameter and persistent buffer under `root`."""
    for module in root.modules():
        for attr, tensor in module._parameters.items():
            if tensor is not None:
                yield module, attr, tensor
        for attr, tensor in module._buffers.items():
            if tensor is not None and attr not in module._non_persistent_buffers_set:
                yield module, attr, tensor


def _slot(module: nn.Module, attr: str) -> torch.Tensor:
    return module._parameters[attr] if attr in module._parameters else module._buffers[attr]


def _copy_tokenizer_files(source: Path, dest: Path) -> None:
    """Everything beside the weights and the config (tokenizer, generation config, chat template)."""
    for path in source.iterdir():
        weights = path.suffix == ".safetensors" or path.name in (INDEX_FILE, *PICKLE_FILES)
        if path.is_file() and not weights and path.name != "config.json":
            shutil.copyfile(path, dest / path.name)
