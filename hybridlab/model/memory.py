"""How much memory a command needs for a model, from its config and settings alone, and whether to stream.

In memory, importance holds the whole model and prune holds the model and its pruned copy. Streamed
(hybridlab.model.streamed), both hold one decoder layer at a time (two for prune: the old and the new),
the embeddings or lm_head while those run, the calibration activations, and for prune one shard being
written. Distillation holds the teacher in its dtype and the student with fp32 master weights, gradients
and AdamW's two moments (16 bytes a parameter).

    need = memory_need("importance", description, dtype_bytes=2, streamed=True, tokens=16 * 256)
    need.total, need.parts                  # bytes; {"weights": ..., "activations": ...}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from hybridlab.core.errors import UserError
from hybridlab.core.outputs import gib
from hybridlab.families import ModelDescription, Widths
from hybridlab.model.sizes import count_params, layer_params

COMMANDS = ("importance", "prune", "distill", "eval", "bench")
STREAM_ABOVE = 0.6  # stream when the in-memory need exceeds this share of the available memory
DEFAULT_SHARD_BYTES = 1024**3  # the streamed pruner's output shards (Hugging Face uses up to 5 GB)


@dataclass(frozen=True)
class MemoryNeed:
    command: str
    streamed: bool
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {gib(size)}" for name, size in self.parts.items() if size)
        return f"{self.command} ({'streamed' if self.streamed else 'in memory'}): {gib(self.total)} ({parts})"


def memory_need(
    command: str,
    description: ModelDescription,
    dtype_bytes: int,
    streamed: bool = False,
    tokens: int = 16 * 256,
    batch_tokens: int = 8 * 256,
    drop_one_tokens: int = 0,
    pruned: Widths | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> MemoryNeed:
    """Bytes `command` needs for this model. tokens: calibration tokens kept between layers (streamed);
    batch_tokens: tokens of one forward batch; drop_one_tokens: calibration tokens of the drop-one-layer
    (KL/loss) passes, whose streams are kept for every layer; pruned: the pruned model's widths."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; one of {COMMANDS}")
    w = description.widths
    by_kind = count_params(w)
    weights = sum(by_kind.values()) * dtype_bytes
    ends = max(by_kind.get("embeddings", 0), by_kind.get("lm_head", 0)) * dtype_bytes
    layer = _largest_layer(description) * dtype_bytes
    hidden_bytes = w.hidden_size * 4  # activations are float32 (or bf16 with an fp32 residual) per token
    working = batch_tokens * _widest(description) * 4 * 3  # one forward: inputs, projections, outputs
    logits = batch_tokens * w.vocab_size * 4 * 2  # logits and their log-softmax
    parts: dict[str, int]
    if command == "importance" and streamed:
        parts = {
            # one layer, or the embeddings / lm_head while those run; a tensor being read also holds its
            # file pages mapped until it is copied out
            "weights": 2 * max(ends, layer),
            "activations": tokens * hidden_bytes + drop_one_tokens * hidden_bytes * w.num_layers + working,
            "logits": logits if drop_one_tokens else 0,
        }
    elif command == "prune" and streamed:
        new_by_kind = by_kind if pruned is None else count_params(pruned)
        new_layer = layer if pruned is None else _largest_layer(description, pruned) * dtype_bytes
        both_ends = (by_kind.get("embeddings", 0) + by_kind.get("lm_head", 0)) * dtype_bytes
        new_ends = (new_by_kind.get("embeddings", 0) + new_by_kind.get("lm_head", 0)) * dtype_bytes
        new_total = sum(new_by_kind.values()) * dtype_bytes
        # old and new embeddings and lm_head; the one being read also holds some of its file pages mapped
        # (between none and all of them: measured 0.78x-0.96x of counting them all), counted at half
        ends_step = both_ends + ends // 2 + new_ends
        layer_step = 2 * layer + new_layer  # the old layer (and its mapped pages) and the new one
        shard = min(shard_bytes, new_total)  # written tensors wait for their shard to fill
        if ends_step >= layer_step + shard:
            parts = {"embeddings and lm_head, old and new": ends_step}
        else:
            parts = {"a layer, old and new": layer_step, "output shard": shard}
        if tokens:  # no scores given: the model is scored first
            parts["activations"] = tokens * hidden_bytes + working
    elif command in ("importance", "prune"):
        new_weights = weights if pruned is None else sum(count_params(pruned).values()) * dtype_bytes
        parts = {
            "weights": weights + (new_weights if command == "prune" else 0),
            "activations": working,
            "logits": logits,
        }
    elif command == "distill":
        student = weights if pruned is None else sum(count_params(pruned).values()) * dtype_bytes
        student_params = student // dtype_bytes
        parts = {
            "teacher weights": weights,
            "student weights (fp32)": student_params * 4,
            "gradients": student_params * 4,
            "optimizer state": student_params * 8,
            "activations": working * w.num_layers,
            "logits": logits * 2,
        }
    else:  # eval, bench
        parts = {"weights": weights, "activations": working, "logits": logits}
    return MemoryNeed(command, streamed, parts)


def available_bytes(device: str | torch.device = "cpu") -> int:
    """Memory free for this process now: MemAvailable on Linux, free GPU memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def choose_streaming(
    streaming: bool | None, command: str, description: ModelDescription, dtype_bytes: int, device="cpu", **sizes
) -> tuple[bool, str]:
    """(stream?, why) for `streaming` True/False (forced) or None (automatic). Refuses, before any work,
    a model that cannot fit even streamed, naming the memory needed and the options."""
    free = available_bytes(device)
    whole = memory_need(command, description, dtype_bytes, streamed=False, **sizes)
    layered = memory_need(command, description, dtype_bytes, streamed=True, **sizes)
    if streaming is None:
        streaming = whole.total > STREAM_ABOVE * free
        why = (
            f"streaming one layer at a time: in memory it would need {gib(whole.total)} of {gib(free)} free"
            if streaming
            else f"in memory: {gib(whole.total)} of {gib(free)} free"
        )
    else:
        why = f"{'streaming' if streaming else 'in memory'}, as asked ({gib((layered if streaming else whole).total)})"
    need = layered if streaming else whole
    if need.total > free:
        options = (
            "free memory, or use a smaller --dtype, fewer --samples, or --layer-metric cosine"
            if streaming
            else "pass --streaming to hold one layer at a time"
        )
        raise UserError(f"{need.describe()} is more than the {gib(free)} free on {device}; {options}")
    return streaming, why


def _largest_layer(description: ModelDescription, widths: Widths | None = None) -> int:
    w = widths or description.widths
    return max(layer_params(w, kind) for kind in set(w.layer_kinds)) + 2 * w.hidden_size


def _widest(description: ModelDescription) -> int:
    w = description.widths
    layout_width = 2 * w.mamba_num_heads * w.mamba_head_dim + w.mamba_num_heads
    return max(w.hidden_size, w.ffn_hidden_size, layout_width, w.num_attention_heads * w.attention_head_dim)
