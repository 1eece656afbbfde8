"""A Hugging Face model folder's safetensors files, read from their headers and written shard by shard.

Nothing here holds a whole model: `read_weight_files` parses only the headers (8-byte length + JSON),
checks them against the file sizes and the shard index, and `WeightFiles.load(name)` reads one tensor.
`ShardWriter` writes a model's tensors as they are produced, Hugging Face style
(`model-00001-of-00004.safetensors` + `model.safetensors.index.json`, or one `model.safetensors`).

    files = read_weight_files("ckpt/")            # ValueError naming the file and the fix if anything is off
    files.dtype, files.nbytes                       # torch.bfloat16, 16_201_705_472
    w = files.load("model.layers.0.mixer.in_proj.weight")
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

# safetensors dtype names -> torch dtypes and element sizes
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class WeightFiles:
    folder: Path
    tensors: dict[str, TensorInfo]

    @property
    def nbytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    @property
    def dtype(self) -> torch.dtype:
        """The dtype most floating-point bytes are stored in (the checkpoint's dtype)."""
        by_dtype = Counter()
        for info in self.tensors.values():
            if info.dtype.is_floating_point:
                by_dtype[info.dtype] += info.nbytes
        return by_dtype.most_common(1)[0][0] if by_dtype else torch.float32

    def load(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        with safe_open(str(info.file), framework="pt") as handle:
            return handle.get_tensor(name)

    def load_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several tensors, opening each shard once."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.tensors[name].file, []).append(name)
        out = {}
        for file, file_names in by_file.items():
            with safe_open(str(file), framework="pt") as handle:
                for name in file_names:
                    out[name] = handle.get_tensor(name)
        return out


def read_weight_files(folder: str | os.PathLike) -> WeightFiles:
    """The folder's tensors from the safetensors headers; ValueError naming the problem and the fix."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        files = _shards_of(index)
    elif (folder / SINGLE_FILE).is_file():
        files = [folder / SINGLE_FILE]
    elif any((folder / name).is_file() for name in PICKLE_FILES):
        raise ValueError(
            f"{folder} holds only pickle weights (pytorch_model.bin), which can run code when read; "
            "convert them to safetensors with save_pretrained(..., safe_serialization=True)"
        )
    else:
        raise ValueError(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}; point at a folder written by save_pretrained")
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, info in _header(file).items():
            tensors[name] = info
    if index.is_file():
        _check_index(index, tensors)
    return WeightFiles(folder, tensors)


def plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped in order into shards of at most `max_shard_bytes` (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards if shards[0] else []


def stored_tensors(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """The tensors a checkpoint of `model` stores, in state-dict order: name -> (owning module, attribute).
    A tied tensor (lm_head = embeddings) is stored once, under its first name, as save_pretrained does."""
    persistent = model.state_dict(keep_vars=True)
    seen: set[int] = set()
    owners: dict[str, tuple[torch.nn.Module, str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        local = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for attr, tensor in local:
            name = f"{module_name}.{attr}" if module_name else attr
            if name in persistent and id(tensor) not in seen:
                seen.add(id(tensor))
                owners[name] = (module, attr)
    order = {name: i for i, name in enumerate(persistent)}
    return dict(sorted(owners.items(), key=lambda item: order[item[0]]))


class ShardWriter:
    """Writes a model's tensors as they are produced, a few modules at a time, into planned shards.

    Planned from the (meta) model's shapes and dtypes; a shard is written once all its tensors have
    arrived, so memory holds at most about one shard plus the modules being produced. Tensors get
    the names save_pretrained would give them (transformers' reverse renamings, e.g. `backbone.`)."""

    def __init__(self, model: torch.nn.Module, max_shard_bytes: int):
        self.model = model
        self._stored = stored_tensors(model)
        self._by_owner = {(id(module), attr): name for name, (module, attr) in self._stored.items()}
        sizes = [(name, _nbytes(getattr(module, attr))) for name, (module, attr) in self._stored.items()]
        self.shards = plan_shards(sizes, max_shard_bytes)
        self.pending: dict[str, torch.Tensor] = {}
        self.done: set[str] = set()
        self._next = 0
        self._weight_map: dict[str, str] = {}
        self._total = 0

    def open(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def add_tensors(self, slots: Iterable[tuple[torch.nn.Module, str]]) -> None:
        """Take the stored tensors in these (module, attribute) slots, write full shards."""
        for module, attr in slots:
            name = self._by_owner.get((id(module), attr))
            if name is not None and name not in self.done:
                tensor = module._parameters[attr] if attr in module._parameters else module._buffers[attr]
                self.pending[name] = tensor.detach().to("cpu")
        self._write_full_shards()

    def add_modules(self, modules: Iterable[torch.nn.Module], recurse: bool = True) -> None:
        """Take every stored tensor the modules own (copied: the caller frees the modules), write full shards."""
        for root in modules:
            for module in root.modules() if recurse else [root]:
                local = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
                for attr, tensor in local:
                    name = self._by_owner.get((id(module), attr))
                    if name is not None and name not in self.done:
                        self.pending[name] = tensor.detach().to(
                            "cpu"
                        )  # shares memory: the caller only frees its modules
        self._write_full_shards()

    def _write_full_shards(self) -> None:
        while self._next < len(self.shards) and all(n in self.pending for n in self.shards[self._next]):
            self._flush()

    def close(self, metadata: dict | None = None) -> None:
        missing = [name for name in self._stored if name not in self.done and name not in self.pending]
        if missing or self._next < len(self.shards):
            raise RuntimeError(
                f"the checkpoint is incomplete: {len(missing)} tensors never arrived (first: {missing[:1]})"
            )
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": self._total, **(metadata or {})}, "weight_map": self._weight_map}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    def _flush(self) -> None:
        from transformers.core_model_loading import revert_weight_conversion

        total = len(self.shards)
        file_name = SINGLE_FILE if total == 1 else f"model-{self._next + 1:05d}-of-{total:05d}.safetensors"
        shard = {name: self.pending.pop(name) for name in self.shards[self._next]}
        self.done.update(shard)
        stored = revert_weight_conversion(self.model, shard)
        save_file(
            {k: v.contiguous() for k, v in stored.items()}, str(self.folder / file_name), metadata={"format": "pt"}
        )
        self._weight_map.update(dict.fromkeys(stored, file_name))
        self._total += sum(_nbytes(v) for v in stored.values())
        self._next += 1


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _shards_of(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            f"{index} is not a valid shard index (JSON with a 'weight_map'); re-save the model with save_pretrained"
        ) from None
    missing = [f for f in files if not (index.parent / f).is_file()]
    if missing:
        raise ValueError(f"{index} names shard {missing[0]}, which is missing; copy every shard of the checkpoint")
    return [index.parent / f for f in files]


def _header(file: Path) -> dict[str, TensorInfo]:
    size = file.stat().st_size
    problem = f"{file} is not a complete safetensors file"
    fix = "copy or download it again"
    with open(file, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{problem} ({size} bytes); {fix}")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"{problem} (its header claims {length} bytes); {fix}")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise ValueError(f"{problem} (unreadable header); {fix}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{problem} (unreadable header); {fix}")
    tensors, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            start, stop = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{problem} (tensor {name!r} is described oddly); {fix}") from None
        tensors[name] = TensorInfo(file, dtype, shape)
        if stop - start != tensors[name].nbytes:
            raise ValueError(f"{problem} (tensor {name!r} has the wrong byte count); {fix}")
        end = max(end, stop)
    if 8 + length + end > size:
        raise ValueError(f"{problem}: it is truncated ({size} of {8 + length + end} bytes); {fix}")
    return tensors


def _check_index(index: Path, tensors: dict[str, TensorInfo]) -> None:
    weight_map = json.loads(index.read_text())["weight_map"]
    for name, file_name in weight_map.items():
        if name not in tensors or tensors[name].file.name != file_name:
            raise ValueError(
                f"{index} places {name} in {file_name}, which does not hold it; re-save the model with save_pretrained"
            )
