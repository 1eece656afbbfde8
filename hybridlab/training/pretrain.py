"""Train a causal language model from scratch on token arrays (the demo teacher, from-scratch baselines).

Inputs: a corpus folder from `hybridlab data build` (train.npy, val.npy, tokenizer/). Outputs in `out_dir`:
    run.json         the run record: config, seed, settings, data hashes and every segment it ran in
                     (see hybridlab.training.run_record)
    metrics.jsonl    the loss curve (see hybridlab.training.trainer)
    checkpoint/      latest resumable checkpoint (weights, AdamW moments, RNG)
    tokenizer/       the corpus' tokenizer, so a snapshot of the run is a loadable model folder
    model/           the final model (safetensors + config + tokenizer), loadable offline
    summary.json     tokens seen, wall time, validation loss / perplexity, unigram entropy

Three ways to start (each recorded as a segment): fresh; `resume=True` from `checkpoint/` (same machine,
bit-exact); `resume_weights=DIR` from a training snapshot (`hybridlab.training.snapshot`), which carries only
the weights, the run record and the curve, so it can be committed and resumed on another machine: the
weights become the fp32 master weights, AdamW starts with fresh moments, and the learning rate ramps back
to the schedule's value over `rewarm_steps` steps. The schedule is a function of the step number and
batch `step` a function of (seed, step) over the train array, so the continuation sees the batches an
uninterrupted run would have seen, provided train.npy is the same (its hash is checked).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from hybridlab.core.errors import UserError
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
    step_count_or_zero,
    token_budget,
)
from hybridlab.data.tokenizer import load_tokenizer
from hybridlab.data.tokens import (
    TokenBatches,
    contiguous_windows,
    load_tokens,
    sha256_file,
    spread_windows,
    unigram_entropy,
)
from hybridlab.model.loading import save_model
from hybridlab.training.run_record import (
    RUN_RECORD,
    read_record,
    save_record,
    start_segment,
    update_segment,
)
from hybridlab.training.trainer import TrainerSettings, next_token_loss, train

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
    # bf16 autocast pays only where the hardware computes bf16 natively (GPUs, CPUs with AMX or AVX512-BF16);
    # on this project's AVX2 CPUs a demo training step ran ~15x slower with it.
    bf16_autocast: bool = setting(False, flag="--bf16", key="bf16", help="train under bf16 autocast (fp32 otherwise)")
    eval_every: int = setting(100, check=step_count, help="steps between validations")
    checkpoint_every: int = setting(100, check=step_count, help="steps between checkpoints")
    eval_windows: int = 32  # val windows used for the periodic (in-training) validation
    # spread evenly over the validation split; the split's first windows (runs recorded before this setting)
    # came from one or two documents and read ~0.9 nats above the split's average on the demo corpus
    eval_spread: bool = True
    log_every: int = 10  # steps between train records in metrics.jsonl
    seed: int = setting(0, check=seed_value)
    threads: int | None = setting(None, check=positive, help="torch threads (1 is fastest on a busy CPU)")
    rewarm_steps: int = setting(
        50,
        check=step_count_or_zero,
        help="after --resume-weights: steps over which the learning rate ramps back to the schedule while the "
        "fresh AdamW moments settle (0: none)",
    )

    @classmethod
    def for_preset(cls, name: str) -> "TrainSettings":
        return build(cls, {"preset": name}, label=lambda item: item.name)

    def validate(self) -> None:
        check_settings(self)

    @property
    def total_steps(self) -> int:
        return self.token_budget // (self.batch_size * self.seq_len)


# What fixes the batches and the schedule's shape: a resumed run must use the recorded values. The token
# budget (the schedule's length), evaluation and checkpoint intervals, threads and re-warming may change;
# each segment records the ones it used.
RESUME_FIXED = (
    "preset",
    "batch_size",
    "seq_len",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "bf16_autocast",
    "eval_windows",
    "eval_spread",
    "seed",
)
SNAPSHOT_STATE = "snapshot.json"  # step, tokens and wall time of a weights-only snapshot


def switch_on_fast_mamba(model) -> bool:
    """The fast CPU Mamba2 path, as hybridlab's loaders use it (absent from older checkouts)."""
    try:
        from hybridlab.model.fast_mamba import enable_if_suitable
    except ImportError:
        return False
    return enable_if_suitable(model) > 0


def build_model(preset: str, vocab_size: int, bos: int, eos: int, pad: int, overrides: dict | None = None):
    from transformers import NemotronHConfig, NemotronHForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    kwargs = {**PRESETS[preset], **(overrides or {})}
    config = NemotronHConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **kwargs)
    return NemotronHForCausalLM(config)


def lm_loss(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy over a [B, T] batch (fp32 softmax). Without a cache, which
    training never reads, transformers hands a mixer's whole step to the fused kernel."""
    return next_token_loss(model(input_ids=input_ids, use_cache=False).logits, input_ids), {}


@torch.no_grad()
def validation_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) over every predicted token of `windows` [N, T]: an exact token average."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]  # [b, T]
        total += float(next_token_loss(model(input_ids=batch, use_cache=False).logits, batch, reduction="sum"))
        count += batch[:, 1:].numel()
    return total / count


def train_language_model(
    data_dir: str | Path,
    out_dir: str | Path,
    settings: TrainSettings,
    config_overrides: dict | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    resume_weights: str | Path | None = None,
    allow_new_data: bool = False,
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
    if resume and resume_weights is not None:
        raise UserError("--resume and --resume-weights exclude each other: give one")
    data_hashes = {name: sha256_file(data_dir / name) for name in ("train.npy", "val.npy", "tokenizer/tokenizer.json")}
    previous, snapshot = _previous_record(out_dir, resume, resume_weights)
    if previous is not None:
        # not an option, so a resumed run keeps the recorded windows; recorded before the setting: the first ones
        settings = replace(settings, eval_spread=previous["settings"].get("eval_spread", False))
        _check_resumable(previous, settings, config_overrides, data_hashes, allow_new_data)
        if snapshot is not None and snapshot["step"] >= settings.total_steps:
            raise UserError(
                f"the snapshot is at step {snapshot['step']:,} but --tokens {settings.token_budget:,} ends at step "
                f"{settings.total_steps:,}: raise --tokens to continue"
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
    snapshot_dtype = load_snapshot_weights(model, Path(resume_weights)) if snapshot is not None else None
    fast_path = switch_on_fast_mamba(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))  # travels with snapshots of this run
    record = previous or {
        "settings": asdict(settings),
        "config_overrides": config_overrides or {},
        "config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": data_hashes,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if snapshot is not None:  # the curve so far travels with the snapshot
        shutil.copyfile(Path(resume_weights) / "metrics.jsonl", out_dir / "metrics.jsonl")
    ckpt_state = _checkpoint_state(out_dir) if resume else None
    kind = "weights" if snapshot is not None else ("checkpoint" if ckpt_state is not None else "fresh")
    if kind == "fresh":
        record["segments"] = []
    start = snapshot or ckpt_state or {"step": 0, "tokens": 0, "wall_s": 0.0}
    extra = {"settings": asdict(settings), "data": data_hashes}
    if kind == "weights":
        extra.update(snapshot_dtype=snapshot_dtype, rewarm_steps=settings.rewarm_steps, snapshot=str(resume_weights))
    schedule = {"token_budget": settings.token_budget, "total_steps": settings.total_steps}
    segment = start_segment(record, kind, start, schedule, fast_path, **extra)
    record["settings"], record["threads"] = asdict(settings), torch.get_num_threads()
    save_record(out_dir / RUN_RECORD, record)

    def on_event(event: str, state: dict) -> None:
        update_segment(segment, event, state)
        save_record(out_dir / RUN_RECORD, record)

    batches = TokenBatches(train_tokens, settings.batch_size, settings.seq_len, seed=settings.seed)
    window = spread_windows if settings.eval_spread else contiguous_windows
    eval_windows = window(val_tokens, settings.seq_len, settings.eval_windows)
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
        log_every=settings.log_every,
        rewarm_from=snapshot["step"] if snapshot is not None else None,
        rewarm_steps=settings.rewarm_steps if snapshot is not None else 0,
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
        initial_state=snapshot,
        on_event=on_event,
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
        "parameters": record["parameters"],
        "segments": len(record["segments"]),
    }
    save_model(model, tokenizer, out_dir / "model", overwrite=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _previous_record(out_dir: Path, resume: bool, resume_weights) -> tuple[dict | None, dict | None]:
    """The run record to continue (and the snapshot's state for a weights-only resume), checked before work."""
    if resume_weights is not None:
        folder = Path(resume_weights)
        needed = [folder / n for n in ("config.json", "model.safetensors", RUN_RECORD, "metrics.jsonl", SNAPSHOT_STATE)]
        missing = [p.name for p in needed if not p.is_file()]
        if missing:
            raise UserError(
                f"--resume-weights {folder} is not a training snapshot (missing {', '.join(missing)}); export one "
                "with `hybridlab snapshot --run RUN --out DIR`"
            )
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(
                f"--out {out_dir} is not empty: a run resumed from a snapshot starts in a new folder; pick another --out"
            )
        return read_record(folder / RUN_RECORD), json.loads((folder / SNAPSHOT_STATE).read_text())
    if resume and (out_dir / RUN_RECORD).is_file() and _checkpoint_state(out_dir) is not None:
        return read_record(out_dir / RUN_RECORD), None
    return None, None


def _checkpoint_state(out_dir: Path) -> dict | None:
    from hybridlab.training.checkpoint import has_checkpoint

    if not has_checkpoint(out_dir / "checkpoint"):
        return None
    state = torch.load(out_dir / "checkpoint" / "state.pt", weights_only=True)
    return {"step": int(state["step"]), "tokens": int(state["tokens"]), "wall_s": float(state["wall_s"])}


def _check_resumable(record: dict, settings: TrainSettings, overrides, data_hashes: dict, allow_new_data: bool):
    """A resumed run must draw the same batches on the same schedule shape as the recorded one."""
    recorded = record["settings"]
    for name in RESUME_FIXED:
        if name in recorded and recorded[name] != getattr(settings, name):
            raise UserError(
                f"the run was recorded with {name}={recorded[name]!r}, not {getattr(settings, name)!r}: resume "
                f"with the recorded value (or start a new run)"
            )
    if (record.get("config_overrides") or {}) != (overrides or {}):
        raise UserError(
            f"the run was recorded with config overrides {record.get('config_overrides')}, not {overrides or {}}: "
            "resume with the recorded --config"
        )
    if record["data"]["tokenizer/tokenizer.json"] != data_hashes["tokenizer/tokenizer.json"]:
        raise UserError("--data has a different tokenizer from the recorded run's: resume on the same corpus")
    if record["data"]["train.npy"] != data_hashes["train.npy"] and not allow_new_data:
        raise UserError(
            f"--data train.npy (sha256 {data_hashes['train.npy'][:16]}…) is not the recorded run's "
            f"({record['data']['train.npy'][:16]}…), so batches would differ: rebuild the same corpus, or pass "
            "--allow-new-data to continue on this one (recorded in the run record)"
        )


def load_snapshot_weights(model: torch.nn.Module, folder: Path) -> str:
    """Load a snapshot's weights (bf16 or fp32 safetensors, save_pretrained's names) into `model`'s fp32
    parameters; returns the stored dtype."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        stored_dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    stored = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).state_dict()
    expected = model.state_dict()
    if set(stored) != set(expected) or any(stored[k].shape != v.shape for k, v in expected.items()):
        differ = sorted(set(stored) ^ set(expected)) or [k for k, v in expected.items() if stored[k].shape != v.shape]
        raise UserError(
            f"--resume-weights {folder}: its tensors do not match the preset's model (first differences: "
            f"{differ[:3]}); resume with the recorded preset and --config"
        )
    model.load_state_dict(stored)
    names = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}
    return "/".join(sorted(names.get(d, d) for d in stored_dtypes))
