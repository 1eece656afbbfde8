"""Logit distillation of a pruned student from its teacher (Minitron: forward KL on
next-token distributions, temperature 1, no cross-entropy term by default).

    result = distill(student, teacher, train_tokens, val_tokens, DistillSettings(tokens=2_000_000), "runs/kd")

The loop is hybridlab.training.trainer's (AdamW, warm-up + cosine, clipping, bf16 autocast,
resumable checkpoints, JSONL metrics); this file supplies the loss, the data and the
checks. Under `torchrun` it runs data-parallel (see hybridlab.training.distributed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hybridlab.core.atomic import write_json
from hybridlab.core.errors import UserError, shown
from hybridlab.core.progress import ProgressFn
from hybridlab.core.settings import (
    batch_count,
    check_settings,
    fraction,
    parse_token_count,
    positive,
    seed_value,
    sequence_length,
    setting,
    step_count,
    token_budget,
)
from hybridlab.data.tokens import TokenBatches
from hybridlab.measure.evaluate import validation_loss
from hybridlab.training import distributed
from hybridlab.training.checkpoint import restore_checkpoint
from hybridlab.training.trainer import TrainerSettings, next_token_loss, train


@dataclass
class DistillSettings:
    tokens: int = setting(check=token_budget, parse=parse_token_count, help="token budget, e.g. 2M or 500k")
    seq_len: int = setting(256, check=sequence_length, help="tokens per training sequence")
    batch_size: int = setting(8, check=batch_count, help="global batch size, split over data-parallel ranks")
    lr: float = setting(1e-3, check=positive, help="peak learning rate")
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float = setting(1.0, check=positive)
    top_k: int | None = setting(
        None, check=positive, help="distil from the teacher's top-k logits only (the paper's alignment stage: 100)"
    )
    lm_loss_weight: float = setting(
        0.0, check=fraction, help="w mixes (1 - w) * KD + w * next-token cross entropy; 0 = pure KD"
    )
    bf16_autocast: bool | None = setting(
        None,
        flag="--bf16",
        key="bf16",
        help="bf16 autocast (--no-bf16: fp32); by default only where bf16 is native (GPUs, CPUs with AMX or "
        "AVX512-BF16): elsewhere it is several times slower than fp32",
    )
    log_every: int = setting(10, check=step_count, help="steps between logged training losses")
    eval_every: int = setting(50, check=step_count, help="steps between validation evaluations")
    checkpoint_every: int = setting(50, check=step_count, help="steps between checkpoints")
    eval_tokens: int = setting(32_768, check=token_budget, help="validation tokens scored at each evaluation")
    seed: int = setting(0, check=seed_value)

    @property
    def total_steps(self) -> int:
        return self.tokens // (self.batch_size * self.seq_len)

    def validate(self) -> None:
        check_settings(self)  # each field's type and checks first: a bool or NaN never reaches the arithmetic
        if self.tokens <= 0:
            raise ValueError(f"the token budget must be positive, got {self.tokens}; e.g. --tokens 2M")
        if self.total_steps < 1:
            raise ValueError(
                f"a budget of {self.tokens} tokens is less than one batch of {self.batch_size} x {self.seq_len}; raise --tokens"
            )


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    teacher_top: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean forward KL(teacher || student) per token.

    student_logits [B, T, V]; teacher_logits [B, T, V], or teacher_top = (log-probs [B, T, k],
    indices [B, T, k]) of the teacher's k likeliest tokens, e.g. from a cache. With top-k, the
    KL runs over those k tokens plus one "tail" bucket holding the rest of each distribution,
    so the student is not pushed to move the tail's mass onto the k tokens.
    """
    if teacher_top is None and top_k is None:
        # KL = cross entropy to the teacher's soft targets - the teacher's entropy; the fused
        # soft-target cross entropy is cheaper than materialising p * (log p - log q).
        with torch.no_grad():
            t_logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # [B, T, V]
            t_p = t_logp.exp()
            neg_entropy = (t_p * t_logp).sum(-1).mean()
        vocab = student_logits.shape[-1]
        soft_ce = F.cross_entropy((student_logits.float() / temperature).reshape(-1, vocab), t_p.reshape(-1, vocab))
        return soft_ce + neg_entropy
    s_logp = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [B, T, V]
    if teacher_top is None:
        teacher_top = torch.topk(F.log_softmax(teacher_logits.float() / temperature, dim=-1), top_k, dim=-1)
    t_top, indices = teacher_top[0].float(), teacher_top[1].long()  # [B, T, k]
    s_top = s_logp.gather(-1, indices)  # [B, T, k]
    t_tail, s_tail = _log_rest(t_top), _log_rest(s_top)  # [B, T]: log of the mass outside the k tokens
    kl = (t_top.exp() * (t_top - s_top)).sum(-1) + t_tail.exp() * (t_tail - s_tail)
    return kl.mean()


def _log_rest(top_logp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(top_logp))): the log-probability of every token not listed."""
    covered = torch.logsumexp(top_logp, dim=-1).clamp(max=0.0)
    return torch.log((-torch.expm1(covered)).clamp_min(1e-30))


SETTINGS_FILE = "distill_settings.json"  # in the run folder: the settings the run was started with


def check_resume(out_dir: str | Path, settings: DistillSettings, label=lambda name: name) -> None:
    """Refuse to resume what cannot be resumed honestly: a run folder that does not exist or has no
    checkpoint, or settings that differ from those the run was started with (a resumed run would
    then report results its recorded settings did not produce). `label(field)` names a setting
    as the caller's user knows it (a CLI flag, a job key)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"nothing to resume: run folder {out_dir} does not exist; give the folder of the run to resume")
    restore_checkpoint(out_dir / "checkpoint")  # one a crash stranded between the two renames of a save
    missing = [name for name in ("state.pt", "model.safetensors") if not (out_dir / "checkpoint" / name).is_file()]
    if missing:
        raise UserError(f"nothing to resume in {out_dir}: it has no checkpoint/{missing[0]}; start without resume")
    file = out_dir / SETTINGS_FILE
    if not file.is_file():
        return  # a run from before the settings were recorded: nothing to compare
    try:
        recorded = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise UserError(f"{file} cannot be read ({err}); the run's settings are unknown, so start a new run") from None
    current = asdict(settings)
    for name, value in current.items():
        if isinstance(recorded, dict) and name in recorded and recorded[name] != value:
            who = label(name)
            if who.strip("'-").replace("-", "_") != name:  # e.g. --no-bf16 for bf16_autocast
                who = f"{who} ({name})"
            raise UserError(
                f"{who} is {_shown_setting(value)}, but the run in {out_dir} was started with "
                f"{_shown_setting(recorded[name])}; "
                "resume with the same setting, or start a new run in another folder"
            )


def _shown_setting(value) -> str:
    return "unset (decided by the device)" if value is None else shown(value)


def _check_ids(tokens, vocab_size: int, name: str) -> None:
    """Token ids the student has embeddings for (else an IndexError deep inside a forward)."""
    if tokens is None or len(tokens) == 0:
        return
    values = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise UserError(
            f"the {name} tokens hold id {bad:,}, outside the student's vocabulary of {vocab_size:,} (ids 0 to "
            f"{vocab_size - 1:,}); tokenize the data with the teacher's tokenizer"
        )


def check_pair(student, teacher_config, student_tokenizer=None, teacher_tokenizer=None) -> None:
    """Refuse a student and teacher that do not share a vocabulary, before any work."""
    s_vocab, t_vocab = student.config.vocab_size, teacher_config.vocab_size
    if s_vocab != t_vocab:
        raise ValueError(
            f"the student's vocabulary ({s_vocab} tokens) differs from the teacher's ({t_vocab}); "
            "distillation compares next-token distributions, so prune the student from this teacher"
        )
    if student_tokenizer is not None and teacher_tokenizer is not None:
        if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise ValueError(
                "the student's tokenizer differs from the teacher's; use the teacher's tokenizer for the student"
            )


def distill(
    student,
    teacher,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray | None,
    settings: DistillSettings,
    out_dir: str | Path,
    resume: bool = False,
    progress: ProgressFn | None = None,
    logits_cache=None,
    student_tokenizer=None,
    teacher_tokenizer=None,
) -> dict:
    """Distil `student` in place; writes metrics, checkpoints and the final model under out_dir.

    `teacher` may be None when `logits_cache` (hybridlab.training.logits_cache.LogitsCache) holds its top-k logits.
    """
    settings.validate()
    if teacher is None and logits_cache is None:
        raise ValueError("distillation needs a teacher model or a teacher logits cache")
    teacher_config = teacher.config if teacher is not None else logits_cache.teacher_config()
    check_pair(student, teacher_config, student_tokenizer, teacher_tokenizer)
    if logits_cache is not None:
        logits_cache.check_compatible(settings)
    if train_tokens is None or len(train_tokens) <= settings.seq_len:
        raise ValueError(f"need more than seq_len={settings.seq_len} training tokens for distillation")
    for name, tokens in (("training", train_tokens), ("validation", val_tokens)):
        _check_ids(tokens, int(student.config.vocab_size), name)
    out_dir = Path(out_dir)
    if resume:
        check_resume(out_dir, settings)

    dist = distributed.setup()
    student_class = type(student)
    # fp32 master weights: AdamW's small updates vanish in bf16 weights; bf16 autocast keeps the compute
    # cheap, and the final model is saved back in the dtype it came in (a bf16 checkpoint stays bf16)
    stored_dtype = next(student.parameters()).dtype
    student.float()
    train_model = distributed.wrap(student, dist)
    batches = TokenBatches(train_tokens, settings.batch_size, settings.seq_len, seed=settings.seed)
    if teacher is not None:
        teacher.eval().requires_grad_(False)

    def batch_at(step: int) -> tuple[int, torch.Tensor]:
        return step, dist.shard(batches.batch(step)).to(dist.device)

    def loss_fn(model, batch) -> tuple[torch.Tensor, dict]:
        step, input_ids = batch  # [b, T]
        # no cache: a training mixer then runs as one fused step (hybridlab.model.fast_mamba)
        logits = model(input_ids=input_ids, use_cache=False).logits  # [b, T, V]
        if logits_cache is not None:
            values, indices = logits_cache.targets(step)
            top = (dist.shard(values).to(dist.device), dist.shard(indices).to(dist.device))
            kd = kd_loss(logits, temperature=settings.temperature, teacher_top=top)
        else:
            with torch.no_grad():
                teacher_logits = teacher(input_ids=input_ids, use_cache=False).logits
            kd = kd_loss(logits, teacher_logits, settings.temperature, settings.top_k)
        w = settings.lm_loss_weight
        with torch.set_grad_enabled(w != 0):  # logged either way; differentiated only when it counts
            ce = next_token_loss(logits, input_ids)
        loss = kd if w == 0 else (1 - w) * kd + w * ce
        logged = {"loss": float(loss.detach()), "kd_loss": float(kd.detach()), "lm_loss": float(ce.detach())}
        return loss, distributed.mean_across_ranks(logged, dist)

    teacher_val = None
    if val_tokens is not None and teacher is not None:
        teacher_val = validation_loss(teacher, val_tokens, settings.seq_len, max_tokens=settings.eval_tokens)["loss"]

    def eval_fn(model) -> dict:
        metrics = {
            "val_loss": validation_loss(student, val_tokens, settings.seq_len, max_tokens=settings.eval_tokens)["loss"]
        }
        if teacher_val is not None:
            metrics["teacher_val_loss"] = teacher_val
        return metrics

    steps = settings.total_steps
    trainer_settings = TrainerSettings(
        total_steps=steps,
        lr=settings.lr,
        min_lr_ratio=settings.min_lr_ratio,
        warmup_steps=min(steps, max(1, round(settings.warmup_fraction * steps))),
        weight_decay=settings.weight_decay,
        grad_clip=settings.grad_clip,
        bf16_autocast=settings.bf16_autocast,
        log_every=settings.log_every,
        eval_every=settings.eval_every,
        checkpoint_every=settings.checkpoint_every,
        tokens_per_step=settings.batch_size * settings.seq_len,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        write_json(out_dir / SETTINGS_FILE, asdict(settings))
    result = train(
        train_model,
        batch_at,
        loss_fn,
        trainer_settings,
        out_dir,
        eval_fn=eval_fn if val_tokens is not None else None,
        progress=progress if dist.is_main else _silent,
        resume=resume,
        is_main=dist.is_main,
    )
    final = distributed.unsharded(student, dist, student_class)
    if dist.is_main:
        from hybridlab.model.loading import save_model

        save_model(final.to(stored_dtype), student_tokenizer, out_dir / "model", overwrite=True)
        result = {**result, "teacher_val_loss": teacher_val, "model_dir": str(out_dir / "model")}
        (out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    distributed.barrier(dist)
    return result


def _silent(fraction: float, message: str, metrics: dict | None) -> None:
    """Progress sink for non-zero ranks: only rank 0 reports."""
