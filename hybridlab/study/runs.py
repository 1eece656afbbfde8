"""The trained models of the ablation study: one distilled student per arm and seed, the
from-scratch baseline, and their prefill latencies (each timed in pairs with the teacher). Each run lives in its own folder
(runs/<student>/seed-<n>/) and is reused when the study is resumed (arm.json / scratch.json
mark a finished run). Losses are kept per validation window, so arms can be compared in pairs."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hybridlab.compression.prune import prune
from hybridlab.core.atomic import write_json
from hybridlab.data.tokens import TokenBatches
from hybridlab.measure.bench import measure_paired
from hybridlab.measure.evaluate import validation_loss
from hybridlab.training.distill import DistillSettings, distill
from hybridlab.training.pretrain import lm_loss
from hybridlab.training.trainer import TrainerSettings, train


@dataclass
class RunResult:
    model: torch.nn.Module
    zero_shot_windows: list[float]  # fp32 loss per validation window, right after pruning
    distilled_windows: list[float]  # the same windows after distillation
    tokens: int  # distillation tokens
    curve_final_loss: float  # the run's last in-training evaluation (as the curves are measured)
    calibration_rows: list[int]  # which calibration windows scored this student's units
    wall_s: float  # pruning, scoring and distilling this student

    @property
    def zero_shot_loss(self) -> float:
        return float(np.mean(self.zero_shot_windows))

    @property
    def distilled_loss(self) -> float:
        return float(np.mean(self.distilled_windows))


@torch.inference_mode()
def window_losses(model, tokens, seq_len: int, max_tokens: int, batch_size: int = 8) -> np.ndarray:
    """Mean next-token cross entropy (nats, fp32) of each validation window: [W], validation_loss's."""
    result = validation_loss(model, tokens, seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens)
    return np.asarray(result["window_losses"])


def distil_arm(
    teacher,
    tokenizer,
    arm,
    scores,
    train_tokens,
    val_tokens,
    kd: DistillSettings,
    run_dir: Path,
    cache,
    windows_of,
    zero_shot_windows: np.ndarray | None,
    layer_metric: str,
    seed: int,
    calibration_rows: list[int],
    progress=None,
) -> RunResult:
    """Prune the arm's student from the teacher with this seed's scores (and, for the random
    control, this seed's draw), score it per window, distil it on this seed's batches; reuse a
    finished run. windows_of(model) -> [W] losses on the study's validation windows."""
    record = run_dir / "arm.json"
    if record.exists() and (run_dir / "model" / "config.json").exists():
        return RunResult(model=_load(run_dir / "model"), **json.loads(record.read_text()))
    started = time.perf_counter()
    student = prune(
        teacher,
        arm.spec,
        scores,
        ranking=arm.ranking,
        mamba_ranking=arm.mamba_ranking,
        layer_metric=layer_metric,
        seed=seed,
    )
    zero_shot = windows_of(student) if zero_shot_windows is None else zero_shot_windows
    resume = (run_dir / "checkpoint" / "state.pt").exists()
    result = distill(
        student,
        None if cache is not None else teacher,
        train_tokens,
        val_tokens,
        kd,
        run_dir,
        resume=resume,
        progress=progress,
        logits_cache=cache,
        student_tokenizer=tokenizer,
        teacher_tokenizer=tokenizer,
    )
    student.eval()
    values = {
        "zero_shot_windows": [float(v) for v in zero_shot],
        "distilled_windows": [float(v) for v in windows_of(student)],
        "tokens": int(result["tokens"]),
        "curve_final_loss": last_eval_loss(run_dir),
        "calibration_rows": [int(i) for i in calibration_rows],
    }
    values["wall_s"] = round(time.perf_counter() - started, 2)  # of this attempt, when resumed
    write_json(record, values)
    return RunResult(model=student, **values)


def train_from_scratch(
    template,
    tokenizer,
    arm,
    distill_tokens: int,
    target_curve_loss: float,
    train_tokens,
    val_tokens,
    settings,
    run_dir: Path,
    loss_of,
    curve_loss_of,
    progress=None,
) -> dict:
    """Train a randomly initialised model of `template`'s architecture with next-token loss and
    find the first evaluation whose validation loss (curve_loss_of, the windows the distillation
    curves use) reaches `target_curve_loss`, the distilled students' last curve point."""
    record = run_dir / "scratch.json"
    if record.exists():
        return {"arm": arm, **json.loads(record.read_text())}
    torch.manual_seed(settings.seed)
    model = type(template)(copy.deepcopy(template.config))  # random init, same architecture
    initial = loss_of(model)
    per_step = settings.batch_size * settings.seq_len
    steps = settings.scratch_budget // per_step
    trainer_settings = TrainerSettings(
        total_steps=steps,
        lr=settings.scratch_lr,
        min_lr_ratio=0.1,
        warmup_steps=min(100, max(1, steps // 10)),
        weight_decay=0.1,
        grad_clip=1.0,
        bf16_autocast=settings.bf16_autocast,
        log_every=10,
        eval_every=max(1, steps // settings.scratch_curve_points),
        checkpoint_every=max(1, steps // 4),
        tokens_per_step=per_step,
    )
    batches = TokenBatches(train_tokens, settings.batch_size, settings.seq_len, seed=settings.seed)
    resume = (run_dir / "checkpoint" / "state.pt").exists()
    if not resume:
        write_json(run_dir / "scratch_init.json", {"initial_loss": initial})
    else:  # the loss at initialisation was measured before the interruption
        initial = json.loads((run_dir / "scratch_init.json").read_text())["initial_loss"]
    result = train(
        model,
        batches.batch,
        lm_loss,
        trainer_settings,
        run_dir,
        eval_fn=lambda m: {"val_loss": curve_loss_of(m)},
        progress=progress,
        resume=resume,
    )
    model.eval()
    curve = eval_curve(run_dir)
    values = {
        "initial_loss": initial,
        "final_loss": loss_of(model),
        "tokens": int(result["tokens"]),
        "distill_tokens": distill_tokens,
        "target_curve_loss": target_curve_loss,
        "tokens_to_match": tokens_to_match(curve, target_curve_loss),
        "best_curve_loss": min(loss for _, loss in curve),
        "eval_every_tokens": trainer_settings.eval_every * per_step,
        "seed": settings.seed,
    }
    write_json(record, values)
    return {"arm": arm, **values}


def tokens_to_match(curve: list[tuple[int, float]], target: float) -> int | None:
    """Tokens at the first evaluation whose loss is at or below `target`; None if none is."""
    for tokens, loss in curve:
        if loss <= target:
            return tokens
    return None


def eval_curve(run_dir: Path) -> list[tuple[int, float]]:
    """[(tokens, val_loss)] of a run's in-training evaluations, in order."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["tokens"], r["val_loss"]) for r in records if r["kind"] == "eval" and "val_loss" in r]


def last_eval_loss(run_dir: Path) -> float:
    curve = eval_curve(run_dir)
    if not curve:
        raise RuntimeError(f"{run_dir} has no validation evaluations in metrics.jsonl")
    return curve[-1][1]


def read_curve(run_dir: Path, run: str, training: str, seed: int) -> pd.DataFrame:
    """The run's metrics.jsonl as tidy rows: run, training, kind, step, tokens, loss, kd_loss, val_loss, lr,
    wall_s, seed."""
    columns = ["step", "tokens", "loss", "kd_loss", "val_loss", "lr", "wall_s"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [
        {"run": run, "training": training, "kind": r["kind"], **{c: r.get(c) for c in columns}, "seed": seed}
        for r in records
    ]
    return pd.DataFrame(rows, columns=["run", "training", "kind", *columns, "seed"])


def paired_latencies(models: dict, teacher, seq_len: int, rounds: int, progress=None) -> dict[str, dict]:
    """Prefill of one sequence of seq_len tokens, each model timed interleaved with the teacher
    (hybridlab.measure.bench.measure_paired: model then teacher in every round, after a warm-up round):
    {key: {"latency_ms", "latency_ms_low", "latency_ms_high" (median and its order-statistic interval),
    "teacher_ms", "speedup", "speedup_low", "speedup_high" (teacher / model, t-interval on paired log ratios)}}."""
    out = {}
    for i, (key, model) in enumerate(models.items()):
        timed = measure_paired(model, teacher, seq_len=seq_len, rounds=rounds, warmup=1, decode=False)
        prefill = timed["paired"]["prefill"]
        out[key] = {
            "latency_ms": prefill["model_ms"],
            "latency_ms_low": prefill["model_ms_low"],
            "latency_ms_high": prefill["model_ms_high"],
            "teacher_ms": prefill["reference_ms"],
            "speedup": prefill["speedup"],
            "speedup_low": prefill["speedup_low"],
            "speedup_high": prefill["speedup_high"],
        }
        if progress is not None:
            progress((i + 1) / len(models), f"paired latency {i + 1}/{len(models)}", None)
    return out


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
