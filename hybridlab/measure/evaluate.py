"""Held-out quality of a model: validation loss / perplexity, KL to a teacher, lm-eval tasks.

Token streams are cut into non-overlapping windows of `seq_len` inputs; consecutive windows
share one boundary token, so every token after the first is predicted exactly once:

    window k covers tokens[k*seq_len : (k+1)*seq_len + 1]  ->  inputs [:-1], targets [1:]

All functions are deterministic, run in eval mode without gradients and restore the model's
training flag afterwards.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from hybridlab.core.progress import ProgressFn, subrange, track
from hybridlab.measure.lmeval.harness import check_task_inputs, prepare_task_manager, run_lm_eval

VAL_LOSS_TASK = "val_loss"


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _as_long_tensor(tokens) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        flat = tokens.reshape(-1) if tokens.dim() <= 1 else None
    else:
        array = np.asarray(tokens)
        flat = torch.from_numpy(array.astype(np.int64)) if array.ndim <= 1 else None
    if flat is None:
        raise ValueError("tokens must be a 1-D array of token ids (a .npy token file), not a batch")
    return flat.long()


def token_windows(tokens, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """[n_windows, seq_len + 1] LongTensor of non-overlapping windows (see module docstring)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 (or None for all), got {max_tokens}")
    flat = _as_long_tensor(tokens)
    n_windows = (len(flat) - 1) // seq_len
    if max_tokens is not None:
        n_windows = min(n_windows, max_tokens // seq_len)
    if n_windows < 1:
        raise ValueError(
            f"need at least seq_len + 1 = {seq_len + 1} tokens (and max_tokens >= seq_len), got {len(flat)} "
            f"tokens with max_tokens={max_tokens}: pass more validation tokens or a smaller seq_len"
        )
    return flat[: n_windows * seq_len + 1].unfold(0, seq_len + 1, seq_len)  # [n, seq_len + 1]


@contextlib.contextmanager
def _inference(*models) -> Iterator[None]:
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)


def _batches(windows: torch.Tensor, batch_size: int, desc: str, progress) -> Iterator[torch.Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    starts = range(0, len(windows), batch_size)
    for start in track(starts, total=len(starts), desc=desc, progress=progress):
        yield windows[start : start + batch_size]


def _logits(model, inputs: torch.Tensor) -> torch.Tensor:
    return model(input_ids=inputs, use_cache=False).logits.float()  # [B, T, V]


def validation_loss(
    model,
    tokens,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    """{"loss": mean next-token cross entropy (nats), "perplexity": exp(loss), "tokens": predicted count,
    "window_losses": each window's mean loss, in window order (every window predicts seq_len tokens, so
    their mean is the loss up to rounding; bootstrap intervals resample them)}."""
    windows = token_windows(tokens, seq_len, max_tokens)
    device = _model_device(model)
    total, count, per_window = 0.0, 0, []
    with _inference(model):
        for batch in _batches(windows, batch_size, "validation loss", progress):
            batch = batch.to(device)
            logits = _logits(model, batch[:, :-1])  # [B, T, V]
            targets = batch[:, 1:]  # [B, T]
            by_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").double()  # [B, T]
            total += float(by_token.sum())
            count += targets.numel()
            per_window += by_token.mean(dim=1).tolist()  # [B]
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count, "window_losses": per_window}


def kl_to_teacher(
    student,
    teacher,
    tokens,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
    temperature: float = 1.0,
    progress: ProgressFn | None = None,
) -> dict:
    """Mean forward KL(teacher || student) per predicted token, plus the student's loss.

    KL = sum_v p_teacher(v) * (log p_teacher(v) - log p_student(v)), both at `temperature`:
    the quantity logit distillation minimises, so it ranks pruned candidates without training.
    Returns {"kl", "loss" (student cross entropy), "tokens"}.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s_vocab, t_vocab = student.config.vocab_size, teacher.config.vocab_size
    if s_vocab != t_vocab:
        raise ValueError(
            f"student vocabulary ({s_vocab}) differs from the teacher's ({t_vocab}): KL needs the same tokenizer"
        )
    windows = token_windows(tokens, seq_len, max_tokens)
    s_device, t_device = _model_device(student), _model_device(teacher)
    kl_total, loss_total, count = 0.0, 0.0, 0
    with _inference(student, teacher):
        for batch in _batches(windows, batch_size, "KL to teacher", progress):
            inputs, targets = batch[:, :-1], batch[:, 1:].to(s_device)  # [B, T]
            s_logits = _logits(student, inputs.to(s_device))  # [B, T, V]
            t_logits = _logits(teacher, inputs.to(t_device)).to(s_device)  # [B, T, V]
            s_logp = F.log_softmax(s_logits / temperature, dim=-1)
            t_logp = F.log_softmax(t_logits / temperature, dim=-1)
            kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # [B, T]
            kl_total += float(kl.double().sum())
            loss_total += float(F.cross_entropy(s_logits.flatten(0, 1), targets.flatten(), reduction="sum").double())
            count += targets.numel()
    return {"kl": kl_total / count, "loss": loss_total / count, "tokens": count}


def evaluate(
    model,
    tokenizer,
    tasks: list[str],
    val_tokens=None,
    seq_len: int = 256,
    batch_size: int = 8,
    max_tokens: int | None = None,
    limit: int | float | None = None,
    include_path=None,
    task_manager=None,
    progress: ProgressFn | None = None,
) -> dict[str, dict]:
    """Run `val_loss` and/or lm-eval tasks: {task: metrics}. Inputs are checked before any model work.

    `task_manager`: one from `hybridlab.measure.lmeval.harness.prepare_task_manager`, when the caller
    already checked the task names (building it for standard tasks takes seconds).
    """
    tasks = [name.strip() for name in tasks if name.strip()]
    if not tasks:
        raise ValueError("no tasks given: pass e.g. --tasks val_loss,continuation_mc")
    lm_tasks = [name for name in tasks if name != VAL_LOSS_TASK]
    if VAL_LOSS_TASK in tasks and val_tokens is None:
        raise ValueError("val_loss needs validation tokens: pass --val-tokens FILE.npy")
    if VAL_LOSS_TASK in tasks:
        token_windows(val_tokens, seq_len, max_tokens)  # fail early on too few tokens
    if lm_tasks:
        check_task_inputs(lm_tasks, val_tokens, tokenizer)
        task_manager = task_manager or prepare_task_manager(lm_tasks, include_path)  # fail early on unknown names
    report: dict[str, dict] = {}
    split = 1.0 / len(tasks) if VAL_LOSS_TASK in tasks else 0.0

    if VAL_LOSS_TASK in tasks:
        report[VAL_LOSS_TASK] = validation_loss(
            model, val_tokens, seq_len, batch_size, max_tokens, progress=subrange(progress, 0.0, split)
        )
    if lm_tasks:
        report.update(
            run_lm_eval(
                model,
                tokenizer,
                lm_tasks,
                val_tokens=val_tokens,
                limit=limit,
                batch_size=batch_size,
                include_path=include_path,
                task_manager=task_manager,
                progress=subrange(progress, split, 1.0),
            )
        )
    return {name: report[name] for name in tasks}
