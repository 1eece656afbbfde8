"""Train a causal language model from scratch on token arrays (the demo teacher, from-scratch baselines).

Inputs: a corpus folder from `hybridlab data build` (train.npy, val.npy, tokenizer/). Outputs in `out_dir`:
    run.json         config, seed, settings, data hashes
    metrics.jsonl    the loss curve (see hybridlab.training.trainer)
    checkpoint/      latest resumable checkpoint
    model/           the final model (safetensors + config + tokenizer), loadable offline
    summary.json     tokens seen, wall time, validation loss / perplexity, unigram entropy
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hybridlab.core.progress import ProgressFn
from hybridlab.core.settings import (
    batch_count,
    build,
    check_settings,
    parse_token_count,
    positive,
    seed_value,
    sequence_length,
    setting,
    step_count,
    token_budget,
)
from hybridlab.data.tokenizer import load_tokenizer
from hybridlab.data.tokens import TokenBatches, contiguous_windows, load_tokens, sha256_file, unigram_entropy
from hybridlab.model.loading import save_model
from hybridlab.training.trainer import TrainerSettings, train

# A mini Nemotron-H in the 8B's style: Mamba2 (M), ReLU² MLP (-), one GQA attention layer (*).
PRESETS: dict[str, dict] = {
    "demo-teacher": dict(
        hybrid_override_pattern="M-M-M-M*-M-M-M-M-",
        hidden_size=256,
        intermediate_size=1024,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        mamba_num_heads=16,
        mamba_head_dim=32,
        n_groups=4,
        ssm_state_size=32,
        conv_kernel=4,
        chunk_size=32,  # fastest on CPU for the pure-PyTorch SSD scan
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    ),
}


@dataclass
class TrainSettings:
    preset: str = setting("demo-teacher", choices=tuple(PRESETS), help="model preset")
    batch_size: int = setting(8, check=batch_count)
    seq_len: int = setting(256, check=sequence_length)
    token_budget: int = setting(
        2_400_000, check=token_budget, parse=parse_token_count, flag="--tokens", help="token budget, e.g. 8e6 or 25M"
    )
    lr: float = setting(1.5e-3, check=positive)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bf16_autocast: bool = True
    eval_every: int = setting(100, check=step_count, help="steps between validations")
    checkpoint_every: int = setting(100, check=step_count, help="steps between checkpoints")
    eval_windows: int = 32  # val windows used for the periodic (in-training) validation
    seed: int = setting(0, check=seed_value)
    threads: int | None = setting(None, check=positive, help="torch threads (1 is fastest on a busy CPU)")

    @classmethod
    def for_preset(cls, name: str) -> "TrainSettings":
        return build(cls, {"preset": name}, label=lambda item: item.name)

    def validate(self) -> None:
        check_settings(self)

    @property
    def total_steps(self) -> int:
        return self.token_budget // (self.batch_size * self.seq_len)


def build_model(preset: str, vocab_size: int, bos: int, eos: int, pad: int, overrides: dict | None = None):
    from transformers import NemotronHConfig, NemotronHForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    kwargs = {**PRESETS[preset], **(overrides or {})}
    config = NemotronHConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **kwargs)
    return NemotronHForCausalLM(config)


def lm_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy over a [B, T] batch (fp32 softmax)."""
    logits = model(input_ids=input_ids).logits  # [B, T, V]
    loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].flatten())
    return loss, {}


@torch.no_grad()
def validation_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) over every predicted token of `windows` [N, T]: an exact token average."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]  # [b, T]
        logits = model(input_ids=batch).logits.float()  # [b, T, V]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total += float(nll)
        count += batch[:, 1:].numel()
    return total / count


def train_language_model(
    data_dir: str | Path,
    out_dir: str | Path,
    settings: TrainSettings,
    config_overrides: dict | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> dict:
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    for name in ("train.npy", "val.npy", "tokenizer/tokenizer.json"):
        if not (data_dir / name).exists():
            raise FileNotFoundError(
                f"{data_dir / name} missing: build the corpus with `hybridlab data build --out {data_dir}`"
            )
    if settings.total_steps < 1:
        raise ValueError(
            f"token budget {settings.token_budget} is less than one batch of {settings.batch_size}x{settings.seq_len}"
        )
    if settings.threads:
        torch.set_num_threads(settings.threads)
    train_tokens, val_tokens = load_tokens(data_dir / "train.npy"), load_tokens(data_dir / "val.npy")
    tokenizer = load_tokenizer(data_dir / "tokenizer")
    torch.manual_seed(settings.seed)
    model = build_model(
        settings.preset,
        len(tokenizer),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        config_overrides,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    run = {
        "settings": asdict(settings),
        "config_overrides": config_overrides or {},
        "config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {name: sha256_file(data_dir / name) for name in ("train.npy", "val.npy", "tokenizer/tokenizer.json")},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out_dir / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")

    batches = TokenBatches(train_tokens, settings.batch_size, settings.seq_len, seed=settings.seed)
    eval_windows = contiguous_windows(val_tokens, settings.seq_len, settings.eval_windows)
    trainer_settings = TrainerSettings(
        total_steps=settings.total_steps,
        lr=settings.lr,
        min_lr_ratio=settings.min_lr_ratio,
        warmup_steps=min(settings.warmup_steps, settings.total_steps),
        weight_decay=settings.weight_decay,
        grad_clip=settings.grad_clip,
        bf16_autocast=settings.bf16_autocast,
        eval_every=settings.eval_every,
        checkpoint_every=settings.checkpoint_every,
        tokens_per_step=settings.batch_size * settings.seq_len,
    )
    result = train(
        model,
        batches.batch,
        lm_loss,
        trainer_settings,
        out_dir,
        eval_fn=lambda m: {"val_loss": validation_loss(m, eval_windows)},
        progress=progress,
        resume=resume,
    )

    model.eval()
    full_val = validation_loss(model, contiguous_windows(val_tokens, settings.seq_len))  # fp32, all val
    entropy = unigram_entropy(val_tokens, len(tokenizer))
    summary = {
        "steps": result["step"],
        "tokens_seen": result["tokens"],
        "wall_s": round(result["wall_s"], 1),
        "val_loss": full_val,
        "val_perplexity": math.exp(full_val),
        "val_unigram_entropy": entropy,
        "val_tokens_evaluated": (len(val_tokens) // settings.seq_len) * (settings.seq_len - 1),
        "parameters": run["parameters"],
    }
    save_model(model, tokenizer, out_dir / "model", overwrite=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
