"""A checkpoint run one decoder layer at a time, so a model larger than memory can be scored and pruned.

The model is built on the meta device. Its decoder layers are swapped for pass-through stand-ins, and
only the layer being run gets real weights, read tensor by tensor from the safetensors files. A layer is
run through the model's own forward (masks, position embeddings, multipliers are the model's code, not
ours): a pre-hook hands the layer the cached hidden states and a hook stops the forward right after it.
So the streamed hidden states are bit-identical to a whole-model forward in the same dtype.

    streamed = StreamedModel("ckpt/")                     # reads config and safetensors headers only
    stream = streamed.embed(ids, mask)                    # .hidden [B, T, hidden]: the input of layer 0
    for i in range(streamed.num_layers):
        with streamed.layer(i):                           # layer i's weights in memory, nothing else
            stream = streamed.run_layer(i, stream)
    logits = streamed.logits(stream)                      # final norm, lm_head, the model's scaling
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from hybridlab.families import family_for
from hybridlab.model.weight_files import WeightFiles, read_weight_files


class _Stop(Exception):
    """Raised from a hook to end the model's forward once the wanted tensor is captured."""


class _PassThrough(nn.Module):
    """Stands in for a decoder layer: returns its input, shaped as the layer returns its output (a tensor, or
    a tuple whose first item is the hidden states: `arity` items). Keeps the layer's plain attributes (e.g.
    NemotronH's `block_type`, which the model's loop reads to pick each layer's mask) and, unregistered, its
    submodules (which some models' code reaches through the layer list)."""

    def __init__(self, layer: nn.Module, arity: int = 0):
        super().__init__()
        self.arity = arity
        for key, value in vars(layer).items():
            if not key.startswith("_") and not isinstance(value, (nn.Module, torch.Tensor)) and key != "training":
                setattr(self, key, value)
        for key, child in layer.named_children():
            object.__setattr__(self, key, child)  # reachable, but not this module's parameters

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states, *[None] * (self.arity - 1)) if self.arity else hidden_states


@dataclass(frozen=True)
class Stream:
    """One batch on its way through the layers."""

    hidden: torch.Tensor  # [B, T, hidden]: the next layer's input
    embeds: torch.Tensor  # [B, T, hidden]: the embedding output, as the model's forward gets it
    mask: torch.Tensor | None  # [B, T] attention mask (1 = real token)


class StreamedModel:
    def __init__(
        self,
        folder: str | os.PathLike,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.folder = Path(folder)
        self.config = AutoConfig.from_pretrained(self.folder, trust_remote_code=trust_remote_code)
        self.family = family_for(self.config)
        self.files: WeightFiles = read_weight_files(self.folder)
        self.dtype = dtype or self.files.dtype
        self.device = torch.device(device)
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(
                self.config, dtype=self.dtype, trust_remote_code=trust_remote_code
            )
        self.model.eval()
        parts = self.family.parts(self.model)
        self._embeddings, self._lm_head = parts.embeddings, parts.lm_head
        self._blocks = [layer.block for layer in parts.layers]
        self._layer_list = _parent_list(self.model, self._blocks[0])
        self._sources = _checkpoint_names(self.model, self.files)
        self._module_names = {module: name for name, module in self.model.named_modules()}
        for i, block in enumerate(self._blocks):
            self._layer_list[i] = _PassThrough(block)
        self._head_held = False
        self._arity: dict[int, int] = {}  # layer -> how many items its forward returns (0: a tensor)
        self._materialise_rest()

    @property
    def num_layers(self) -> int:
        return len(self._blocks)

    def block(self, i: int) -> nn.Module:
        return self._blocks[i]

    @contextmanager
    def layer(self, i: int) -> Iterator[nn.Module]:
        """Layer i with real weights on the device for the duration of the block; freed afterwards."""
        block = self._blocks[i]
        self._load(block)
        self._layer_list[i] = block
        try:
            yield block
        finally:
            self._layer_list[i] = _PassThrough(block, self._arity.get(i, 0))
            _free(block)

    def layer_parts(self, i: int, description):
        """The family's parts of layer i (see hybridlab.families); call it inside `with streamed.layer(i):`."""
        with self._originals():
            return description.parts(self.model).layers[i]

    def final_norm(self) -> nn.Module:
        """The norm applied to the last layer's output (kept in memory)."""
        with self._originals():
            return self.family.parts(self.model).final_norm

    @contextmanager
    def head(self) -> Iterator[None]:
        """lm_head loaded once for many `logits` calls."""
        self._load(self._lm_head)
        self._head_held = True
        try:
            yield
        finally:
            self._head_held = False
            self._lm_head.to_empty(device="meta")

    @contextmanager
    def ends(self) -> Iterator[object]:
        """Embeddings and lm_head in memory; yields the family's parts (for the first and last tensors)."""
        self._load(self._embeddings)
        self._load(self._lm_head)
        try:
            with self._originals():
                yield self.family.parts(self.model)
        finally:
            self._embeddings.to_empty(device="meta")
            self._lm_head.to_empty(device="meta")

    @contextmanager
    def _originals(self) -> Iterator[None]:
        """The real (mostly meta) layers back in the list, for the family adapter to find its parts."""
        standing_in = list(self._layer_list)
        for i, block in enumerate(self._blocks):
            self._layer_list[i] = block
        try:
            yield
        finally:
            for i, module in enumerate(standing_in):
                self._layer_list[i] = module

    @torch.no_grad()
    def embed(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Stream:
        """Token ids [B, T] -> the stream entering layer 0 (the embedding, and any scaling the model applies)."""
        self._load(self._embeddings)
        captured = {}
        handle = self._embeddings.register_forward_hook(lambda module, args, output: captured.update(embeds=output))
        try:
            mask = _on(attention_mask, self)
            hidden = self._capture_input(self._layer_list[0], input_ids=ids.to(self.device), attention_mask=mask)
            return Stream(hidden, captured["embeds"], mask)
        finally:
            handle.remove()
            self._embeddings.to_empty(device="meta")

    @torch.no_grad()
    def run_layer(self, i: int, stream: Stream) -> Stream:
        """The stream after layer i; the layer must be materialised (see `layer`)."""
        layer = self._layer_list[i]
        if layer is not self._blocks[i]:
            raise RuntimeError(f"layer {i} is not in memory; run it inside `with streamed.layer({i}):`")
        hidden = stream.hidden.to(self.device)  # keep its dtype: some layers carry an fp32 residual

        def feed(module, args, kwargs):
            return (hidden, *args[1:]), kwargs

        captured = {}

        def stop(module, args, kwargs, output):
            captured["out"] = output[0] if isinstance(output, tuple) else output
            self._arity[i] = len(output) if isinstance(output, tuple) else 0
            raise _Stop

        handles = [
            layer.register_forward_pre_hook(feed, with_kwargs=True),
            layer.register_forward_hook(stop, with_kwargs=True),
        ]
        try:
            self._forward(stream)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return replace(stream, hidden=captured["out"])

    @torch.no_grad()
    def logits(self, stream: Stream) -> torch.Tensor:
        """Logits [B, T, vocab] from the last layer's output: the model's final norm, lm_head and scaling."""
        held = self._head_held
        if not held:
            self._load(self._lm_head)
        last = self._layer_list[self.num_layers - 1]
        hidden = stream.hidden.to(self.device)
        handle = last.register_forward_hook(lambda m, a, out: (hidden, *out[1:]) if isinstance(out, tuple) else hidden)
        try:
            return self._forward(stream).logits
        finally:
            handle.remove()
            if not held:
                self._lm_head.to_empty(device="meta")

    def _forward(self, stream: Stream):
        """The model's forward on the stream's embeddings (which some families hand to every layer, e.g.
        Zamba2's shared blocks) and mask; hooks decide what the layers see."""
        return self.model(inputs_embeds=stream.embeds.to(self.device), attention_mask=stream.mask, use_cache=False)

    def _capture_input(self, layer: nn.Module, **model_kwargs) -> torch.Tensor:
        captured = {}

        def grab(module, args, kwargs):
            captured["in"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model(use_cache=False, **model_kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured["in"]

    def _load(self, module: nn.Module) -> None:
        """Give `module` its checkpoint tensors, in the model's dtype, on the device."""
        prefix = self._module_names[module]
        tensors = self._read([f"{prefix}.{key}" for key in module.state_dict()])
        state = {
            name[len(prefix) + 1 :]: tensor.to(self.device, _dtype_for(tensor, self.dtype))
            for name, tensor in tensors.items()
        }
        module.load_state_dict(state, assign=True, strict=True)

    def _read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Module tensor name -> its tensor from the files (stacked from its stored slices where the checkpoint
        stores it as several, e.g. NemotronH's one tensor per expert)."""
        sources = {name: self._sources[name] for name in names}
        tensors = self.files.load_many(s for source in sources.values() for s in _stored_names(source))
        return {
            name: tensors[source] if isinstance(source, str) else torch.stack([tensors[s] for s in source])
            for name, source in sources.items()
        }

    def _materialise_rest(self) -> None:
        """Everything but the layers, embeddings and lm_head (final norm, rotary tables): small, kept in memory.
        Non-persistent buffers, inside the layers too (rotary inverse frequencies, Falcon-H1's muP vector),
        are real from the start and come from the model's own initialisation (on meta parameters a no-op)."""
        with self._originals():
            for module in self.model.modules():
                for key in module._non_persistent_buffers_set:
                    if module._buffers.get(key) is not None and module._buffers[key].is_meta:
                        module._buffers[key] = torch.empty_like(module._buffers[key], device=self.device)
            for module in self.model.modules():
                self.model._init_weights(module)
        skip = {id(m) for m in (self._embeddings, self._lm_head, *self._blocks)}
        for module in _modules_outside(self.model, skip):
            module.to_empty(device=self.device, recurse=False)
            self.model._init_weights(module)
            own = [k for k in module.state_dict(keep_vars=True) if "." not in k]
            if own:
                prefix = self._module_names[module]
                full = {k: (f"{prefix}.{k}" if prefix else k) for k in own}
                tensors = self._read(list(full.values()))
                for key, name in full.items():
                    value = tensors[name]
                    getattr(module, key).data = value.to(self.device, _dtype_for(value, self.dtype))


def _stored_names(source: str | tuple[str, ...]) -> tuple[str, ...]:
    return (source,) if isinstance(source, str) else source


def _natural_order(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _free(module: nn.Module) -> None:
    """Back to meta: every parameter and persistent buffer (non-persistent buffers stay: they are small and
    only the model's initialisation can make them again)."""
    for sub in module.modules():
        for key, param in list(sub.named_parameters(recurse=False)):
            sub._parameters[key] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
        for key in list(sub._buffers):
            if key not in sub._non_persistent_buffers_set and sub._buffers[key] is not None:
                sub._buffers[key] = torch.empty_like(sub._buffers[key], device="meta")


def _modules_outside(model: nn.Module, skip: set[int]) -> list[nn.Module]:
    out = []

    def walk(module: nn.Module) -> None:
        if id(module) in skip:
            return
        out.append(module)
        for child in module.children():
            walk(child)

    walk(model)
    return out


def _parent_list(model: nn.Module, block: nn.Module) -> nn.ModuleList:
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and any(child is block for child in module):
            return module
    raise ValueError(f"{type(model).__name__}: cannot find the list that holds its decoder layers")


def _checkpoint_names(model: nn.Module, files: WeightFiles) -> dict[str, str | tuple[str, ...]]:
    """Module tensor name -> the name it has in the checkpoint files (transformers' own renamings, e.g.
    NemotronH's `backbone.` -> `model.`), or the names of the slices it is stacked from (transformers'
    conversions that stack a list along dimension 0, e.g. NemotronH's `experts.{e}.up_proj.weight`)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import MergeModulelist, WeightConverter, WeightRenaming

    def stacks(transform) -> bool:
        operations = getattr(transform, "operations", None) or [None]
        return isinstance(transform, WeightConverter) and all(
            isinstance(op, MergeModulelist) and op.dim == 0 for op in operations
        )

    transforms = [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming) or stacks(t)]
    sources: dict[str, str | tuple[str, ...]] = {}
    stacked: dict[str, list[str]] = {}
    for stored in files.tensors:
        name, stacking = stored, False
        for transform in transforms:
            renamed, matched = transform.rename_source_key(name)
            if matched is not None:
                name, stacking = renamed, stacking or isinstance(transform, WeightConverter)
        if stacking:
            stacked.setdefault(name, []).append(stored)
        else:
            sources[name] = stored
    for name, slices in stacked.items():  # in the order of their list index (expert 2 before expert 10)
        sources[name] = tuple(sorted(slices, key=_natural_order))
    state = model.state_dict(keep_vars=True)
    by_tensor = {id(tensor): name for name, tensor in state.items() if name in sources}
    for name, tensor in state.items():  # tied weights (e.g. lm_head = embeddings) are stored once
        if name not in sources and id(tensor) in by_tensor:
            sources[name] = sources[by_tensor[id(tensor)]]
    missing = sorted(set(state) - set(sources))
    if missing:
        raise ValueError(
            f"{files.folder} lacks {len(missing)} of the model's tensors (first: {missing[0]}); streaming needs "
            "every tensor stored under its own name: pass --no-streaming, or re-save the model with save_pretrained"
        )
    return sources


def _dtype_for(tensor: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    return dtype if tensor.is_floating_point() else tensor.dtype


def _on(tensor: torch.Tensor | None, streamed: StreamedModel) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(streamed.device)
