"""A generic training loop. What is trained, and on what loss, is the caller's business.

    train(model, batch_at, loss_fn, settings, out_dir, eval_fn=None, progress=None, resume=False,
          initial_state=None, on_event=None)

- `batch_at(step) -> batch` must be a pure function of the step, so the data position is the step
  and a resumed run sees the same batches as an uninterrupted one.
- `loss_fn(model, batch) -> (loss, metrics)` is pluggable: next-token cross-entropy for training from
  scratch, a KL to teacher logits for distillation. `metrics` is a dict of floats that gets logged.
- `eval_fn(model) -> metrics` runs under no_grad in eval mode every `eval_every` steps and at the end.

AdamW, linear warm-up then cosine decay to `min_lr_ratio * lr`, gradient clipping, optional bf16
autocast (None: where the device computes bf16 natively, see hybridlab.core.hardware). Metrics go to `<out_dir>/metrics.jsonl` (one JSON object per
line, `"kind": "train"` or `"eval"`); the latest checkpoint lives in `<out_dir>/checkpoint/`.
If `progress` raises `Cancelled` (or Ctrl-C arrives), a checkpoint is saved and the exception re-raised.

Resuming: `resume=True` restores `<out_dir>/checkpoint/` (weights, AdamW moments, RNG: bit-exact).
`initial_state={"step", "tokens", "wall_s"}` instead continues a model whose weights the caller already
loaded (a weights-only snapshot from another machine) at that step with fresh AdamW moments; the
schedule stays a function of the step, and `rewarm_from`/`rewarm_steps` ramp the learning rate up
linearly over the first steps after such a resume, while the fresh moments settle.
`on_event(kind, state)` hears "checkpoint" after each save and "end" (with "ended": finished, cancelled,
interrupted or crashed) once the loop stops, so the caller can keep an honest record of every segment.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hybridlab.core.atomic import write_text
from hybridlab.core.hardware import native_bf16
from hybridlab.core.progress import Cancelled, ProgressFn
from hybridlab.model.fast_loss import IGNORED, token_losses
from hybridlab.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, dict]"]
EvalFn = Callable[[torch.nn.Module], dict]


@dataclass
class TrainerSettings:
    total_steps: int
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    bf16_autocast: bool | None = None  # None: only where bf16 is native (GPUs, AMX / AVX512-BF16 CPUs)
    log_every: int = 10
    eval_every: int = 250
    checkpoint_every: int = 250
    tokens_per_step: int = 0  # for logging only
    rewarm_from: int | None = None  # the step a weights-only resume started at
    rewarm_steps: int = 0  # steps over which the learning rate ramps back up after it

    def validate(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps} must be >= 1: raise the token budget")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be in [0, total_steps={self.total_steps}]")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if self.rewarm_steps < 0:
            raise ValueError(f"rewarm_steps={self.rewarm_steps} must be >= 0")


def learning_rate(step: int, s: TrainerSettings) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then cosine to min_lr_ratio * lr;
    times a linear ramp over `rewarm_steps` steps from `rewarm_from` (a resume with fresh AdamW moments)."""
    return scheduled_learning_rate(step, s) * rewarm_factor(step, s)


def scheduled_learning_rate(step: int, s: TrainerSettings) -> float:
    """The schedule alone: what an uninterrupted run uses at `step`."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * cosine)


def rewarm_factor(step: int, s: TrainerSettings) -> float:
    if s.rewarm_from is None or s.rewarm_steps == 0 or step < s.rewarm_from:
        return 1.0
    return min(1.0, (step - s.rewarm_from + 1) / s.rewarm_steps)


def make_optimizer(model: torch.nn.Module, s: TrainerSettings) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and other 1-D parameters (A_log, D, dt_bias)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel updates every tensor in one pass (~4% of a demo-teacher step on the CPU)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, fused=fused)


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (fp32 softmax) of logits [B, T, V] at position t against input_ids [B, T] at t + 1.
    The targets are shifted and the last position ignored instead of the logits sliced: a [B, T - 1, V]
    slice copies the logits forward and back, ~12% of a demo-teacher training step on the CPU. On the
    CPU the native kernel computes it where it is built (hybridlab.model.fast_loss)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    targets = F.pad(input_ids[:, 1:], (0, 1), value=IGNORED).flatten()  # [B*T]
    flat = logits.float().flatten(0, 1)  # [B*T, V]
    losses = token_losses(flat, targets)  # [B*T], 0 where ignored
    if losses is None:
        return F.cross_entropy(flat, targets, ignore_index=IGNORED, reduction=reduction)
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    return losses.sum() / (targets != IGNORED).sum()


def _autocast(s: TrainerSettings, model: torch.nn.Module):
    device_type = next(model.parameters()).device.type
    wanted = native_bf16(device_type) if s.bf16_autocast is None else s.bf16_autocast
    return torch.autocast(device_type, dtype=torch.bfloat16) if wanted else nullcontext()


def train(
    model: torch.nn.Module,
    batch_at: Callable[[int], Any],
    loss_fn: LossFn,
    settings: TrainerSettings,
    out_dir: str | Path,
    eval_fn: EvalFn | None = None,
    progress: ProgressFn | None = None,
    resume: bool = False,
    is_main: bool = True,
    initial_state: dict | None = None,
    on_event: Callable[[str, dict], None] | None = None,
) -> dict:
    """Train until `settings.total_steps`; returns the last train and eval metrics.

    `is_main=False` (data-parallel ranks other than 0) trains identically but writes nothing."""
    settings.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, metrics_path = out_dir / "checkpoint", out_dir / "metrics.jsonl"
    optimizer = make_optimizer(model, settings)
    state = {"step": 0, "tokens": 0, "wall_s": 0.0}
    if resume and has_checkpoint(ckpt_dir):  # also puts back one a crash left mid-rename
        state = load_checkpoint(ckpt_dir, model, optimizer)
        if is_main:
            _truncate_metrics(metrics_path, state["step"])
    elif initial_state is not None:  # weights already loaded by the caller; fresh AdamW moments
        state = {"step": int(initial_state["step"]), "tokens": int(initial_state["tokens"])}
        state["wall_s"] = float(initial_state.get("wall_s", 0.0))
        if is_main:
            _truncate_metrics(metrics_path, state["step"])  # the curve carried over from the snapshot
    elif metrics_path.exists() and is_main:
        metrics_path.unlink()  # a fresh run starts a fresh curve
    notify = on_event if (on_event is not None and is_main) else (lambda kind, info: None)
    if is_main:
        (out_dir / "trainer_settings.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    log = (lambda record: _append(metrics_path, record)) if is_main else (lambda record: None)

    bar = _Reporter(progress, settings.total_steps, state["step"])
    started = time.perf_counter() - state["wall_s"]
    last_train: dict = {}
    last_eval: dict = {}

    def checkpoint() -> None:
        state["wall_s"] = time.perf_counter() - started
        save_checkpoint(ckpt_dir, model, optimizer, state, is_main=is_main)
        notify("checkpoint", dict(state))

    ended = "crashed"

    try:
        while state["step"] < settings.total_steps:
            step = state["step"]
            lr = learning_rate(step, settings)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            with _autocast(settings, model):
                loss, metrics = loss_fn(model, batch_at(step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            state["step"] = step + 1
            state["tokens"] += settings.tokens_per_step
            last_train = {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}
            if state["step"] % settings.log_every == 0 or state["step"] == settings.total_steps:
                log(
                    {
                        "kind": "train",
                        "step": state["step"],
                        "tokens": state["tokens"],
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "wall_s": round(time.perf_counter() - started, 2),
                        **last_train,
                    }
                )
            is_last = state["step"] == settings.total_steps
            if eval_fn is not None and (state["step"] % settings.eval_every == 0 or is_last):
                last_eval = evaluate(model, eval_fn, settings)
                log(
                    {
                        "kind": "eval",
                        "step": state["step"],
                        "tokens": state["tokens"],
                        "wall_s": round(time.perf_counter() - started, 2),
                        **last_eval,
                    }
                )
            if state["step"] % settings.checkpoint_every == 0 or is_last:
                checkpoint()
            bar.update(state["step"], {**last_train, **last_eval})
        ended = "finished"
    except (Cancelled, KeyboardInterrupt) as stop:
        ended = "cancelled" if isinstance(stop, Cancelled) else "interrupted"
        checkpoint()
        raise
    finally:
        bar.close()
        state["wall_s"] = time.perf_counter() - started
        notify("end", {**state, "ended": ended})
    return {"step": state["step"], "tokens": state["tokens"], "wall_s": state["wall_s"], **last_train, **last_eval}


def evaluate(model: torch.nn.Module, eval_fn: EvalFn, settings: TrainerSettings) -> dict:
    was_training = model.training
    model.eval()
    with torch.no_grad(), _autocast(settings, model):
        result = {k: float(v) for k, v in eval_fn(model).items()}
    model.train(was_training)
    return result


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records logged after the checkpoint, so the resumed curve continues without duplicates."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in kept))


class _Reporter:
    """tqdm in a terminal when no callback is given; otherwise progress(fraction, message, metrics)."""

    def __init__(self, progress: ProgressFn | None, total: int, initial: int):
        self.progress, self.total, self.bar = progress, total, None
        if progress is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", file=sys.stderr, dynamic_ncols=True)

    def update(self, step: int, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "val_loss")})
        else:
            self.progress(step / self.total, f"step {step}/{self.total}", {"step": step, **metrics})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
