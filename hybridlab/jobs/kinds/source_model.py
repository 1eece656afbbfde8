"""The model an importance or prune job reads: whole in memory, or streamed one layer at a time from its
files (hybridlab.model.streamed) when it would not fit comfortably, or when the spec says so."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from hybridlab.core.settings import setting


@dataclass
class Streaming:
    streaming: bool | None = setting(
        None,
        help="hold one layer at a time, read from the checkpoint's files (--no-streaming: the whole model); "
        "default: stream when the model would not fit comfortably in memory",
    )


@dataclass
class SourceModel:
    model: object  # a transformers model, or a StreamedModel
    tokenizer: object | None
    description: object  # hybridlab.families.ModelDescription
    streamed: bool

    @property
    def config(self):
        return self.model.config


def calibration_sizes(spec: dict) -> dict:
    """The token counts a Calibration spec keeps in memory (see hybridlab.model.memory.memory_need)."""
    drop_one = spec["layer_metric"] in ("kl", "loss")
    return {
        "tokens": spec["samples"] * spec["seq_len"],
        "batch_tokens": spec["batch_size"] * spec["seq_len"],
        "drop_one_tokens": min(spec["layer_samples"], spec["samples"]) * spec["seq_len"] if drop_one else 0,
    }


def open_source(spec: dict, command: str, ctx, tokens: int, batch_tokens: int, drop_one_tokens: int = 0) -> SourceModel:
    """The spec's model for `command` ("importance" or "prune"), streamed or not; says which on the console
    and in the job's progress. A model that cannot fit even streamed is refused before any weight is read."""
    import torch

    from hybridlab.families import describe
    from hybridlab.jobs.kinds.common import device, load
    from hybridlab.model.checks import read_config, resolve_model_dir
    from hybridlab.model.loading import load_tokenizer, torch_dtype
    from hybridlab.model.memory import choose_streaming
    from hybridlab.model.streamed import StreamedModel
    from hybridlab.model.weight_files import read_weight_files

    folder = resolve_model_dir(spec["model"])
    trust = spec.get("trust_remote_code", False)
    dtype = torch_dtype(spec.get("dtype", "auto"))
    where = device(spec.get("device", "cpu"))
    description = describe(read_config(folder, trust))
    try:
        stored = read_weight_files(folder).dtype if dtype is None else dtype
    except ValueError:  # pickle .bin weights: only transformers reads them, whole, when the spec allows it
        if not spec.get("allow_pickle_weights") or spec.get("streaming"):
            raise
        model, tokenizer = load(spec["model"], spec)
        return SourceModel(model, tokenizer, describe(model), False)
    streamed, why = choose_streaming(
        spec.get("streaming"),
        command,
        description,
        torch.empty((), dtype=stored).element_size(),
        where,
        tokens=tokens,
        batch_tokens=batch_tokens,
        drop_one_tokens=drop_one_tokens,
    )
    print(f"{command}: {why}", file=sys.stderr)
    ctx.progress(0.0, why)
    if streamed:
        model = StreamedModel(folder, dtype=dtype, device=where, trust_remote_code=trust)
        return SourceModel(model, load_tokenizer(folder, trust), describe(model.model), True)
    model, tokenizer = load(spec["model"], spec)
    return SourceModel(model, tokenizer, describe(model), False)
