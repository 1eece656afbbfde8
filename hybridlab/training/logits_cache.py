"""Teacher top-k logits computed once and stored on disk, so distillation need not keep
a large teacher in memory beside the student.

Layout of a cache folder:
    cache.json               settings the batches depend on, teacher config, shard size
    shard-00000.safetensors  values [S, B, T, k] (bf16) and indices [S, B, T, k] (int32) for S steps
Batches are the deterministic TokenBatches of the distillation run, keyed by step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hybridlab.core.atomic import atomic_directory
from hybridlab.core.progress import ProgressFn, track
from hybridlab.data.tokens import TokenBatches

BATCH_KEYS = ("seq_len", "batch_size", "seed", "temperature")


def build_logits_cache(
    teacher,
    train_tokens,
    settings,
    out_dir: str | os.PathLike,
    top_k: int = 32,
    shard_steps: int = 32,
    progress: ProgressFn | None = None,
) -> Path:
    """Run the teacher over every batch of a distillation with `settings` (DistillSettings)."""
    settings.validate()
    if top_k < 1 or top_k > teacher.config.vocab_size:
        raise ValueError(f"top_k must be in [1, vocab size {teacher.config.vocab_size}], got {top_k}")
    out = Path(out_dir).expanduser().resolve()
    batches = TokenBatches(train_tokens, settings.batch_size, settings.seq_len, seed=settings.seed)
    device = next(teacher.parameters()).device
    steps = settings.total_steps
    teacher.eval()
    with atomic_directory(out) as tmp:
        values, indices = [], []
        for step in track(range(steps), steps, "teacher logits", progress):
            with torch.no_grad():
                logits = teacher(input_ids=batches.batch(step).to(device), use_cache=False).logits.float()  # [B, T, V]
            # log-probs over the whole vocabulary, so the student's KD loss knows the tail's mass
            top = torch.topk(torch.log_softmax(logits / settings.temperature, dim=-1), top_k, dim=-1)
            values.append(top.values.to(torch.bfloat16).cpu())
            indices.append(top.indices.to(torch.int32).cpu())
            if len(values) == shard_steps or step == steps - 1:
                shard = step // shard_steps
                save_file(
                    {"values": torch.stack(values), "indices": torch.stack(indices)},
                    tmp / f"shard-{shard:05d}.safetensors",
                )
                values, indices = [], []
        meta = {
            **{key: getattr(settings, key) for key in BATCH_KEYS},
            "steps": steps,
            "top_k": top_k,
            "shard_steps": shard_steps,
            "teacher_config": teacher.config.to_dict(),
        }
        (tmp / "cache.json").write_text(json.dumps(meta, indent=2, default=str))
    return out


class LogitsCache:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        meta_file = self.path / "cache.json"
        if not meta_file.exists():
            raise FileNotFoundError(
                f"{self.path} is not a teacher logits cache (no cache.json); build one with `hybridlab cache-logits`"
            )
        self.meta = json.loads(meta_file.read_text())
        self._shard_index, self._shard = None, None

    def teacher_config(self):
        from transformers import AutoConfig

        values = dict(self.meta["teacher_config"])
        return AutoConfig.for_model(values.pop("model_type"), **values)

    def check_compatible(self, settings) -> None:
        for key in BATCH_KEYS:
            if self.meta[key] != getattr(settings, key):
                raise ValueError(
                    f"the logits cache was built with {key}={self.meta[key]}, this run uses {getattr(settings, key)}; rebuild the cache or match the setting"
                )
        if settings.total_steps > self.meta["steps"]:
            raise ValueError(
                f"the logits cache covers {self.meta['steps']} steps, this run needs {settings.total_steps}; rebuild it with a larger --tokens"
            )

    def targets(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [B, T, k], indices [B, T, k]) of the teacher for batch `step`."""
        shard = step // self.meta["shard_steps"]
        if shard != self._shard_index:
            path = self.path / f"shard-{shard:05d}.safetensors"
            if not path.exists():
                raise FileNotFoundError(f"logits cache shard {path.name} is missing; rebuild the cache")
            self._shard, self._shard_index = load_file(path), shard
        offset = step % self.meta["shard_steps"]
        return self._shard["values"][offset], self._shard["indices"][offset]
