"""Architecture search at a parameter budget (the paper's procedure, scaled down):

1. enumerate candidate specs near the budget (hybridlab.search.space);
2. prune each from one set of importance scores and rank by zero-shot validation
   loss (or KL to the teacher);
3. distil the top k for a token budget and measure their latency;
4. pick the lowest distilled loss, breaking near-ties by measured latency.
Every candidate's numbers are recorded, so the Pareto frontier can be drawn from them.

With a latency budget (e.g. 0.6), only candidates whose prefill this device's latency model
(hybridlab.measure.latency_model) predicts at <= 60% of the teacher's are ranked. Every row's
`estimated_latency_ms` is the teacher's measured prefill times the predicted ratio (the FLOP ratio
without a calibration; `latency_basis` says which), and finalists are timed in pairs with the
teacher (hybridlab.measure.bench.measure_paired): `speedup` with its interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hybridlab.compression.importance import ImportanceScores, estimate_importance
from hybridlab.compression.prune import prune
from hybridlab.core.progress import ProgressFn, subrange, track
from hybridlab.core.settings import (
    check_settings,
    finite,
    parse_token_count,
    positive,
    seed_value,
    sequence_length,
    setting,
    step_count,
    step_count_or_zero,
    token_budget,
    token_budget_or_zero,
)
from hybridlab.families import describe
from hybridlab.measure.evaluate import kl_to_teacher, validation_loss
from hybridlab.measure.latency_model import predicted_speedup
from hybridlab.model.sizes import estimate_sizes
from hybridlab.search.space import (
    Candidate,
    SearchSpace,
    check_reachable,
    enumerate_candidates,
    parse_target,
    pick_diverse,
    within_latency,
)
from hybridlab.training.distill import DistillSettings, distill

RANK_BY = ("loss", "kl")
PAIRED_ROUNDS = 5  # finalist vs teacher rounds (hybridlab.measure.paired)


def latency_fraction(value):
    """A latency budget: above 0 and at most 1 (a fraction of the teacher's predicted prefill)."""
    if not 0 < finite(value) <= 1:
        raise ValueError(
            f"must be above 0 and at most 1 (a fraction of the teacher's latency, e.g. 0.6), got {value!r}"
        )
    return value


@dataclass
class SearchSettings:
    target_params: str | int = setting(
        "50%", required=True, help="'50%' of the model or an absolute count (4.5e9, 4.5B)"
    )
    tolerance: float = setting(0.03, check=positive, help="relative distance to the target a candidate may have")
    space: SearchSpace = field(default_factory=SearchSpace)
    max_candidates: int = setting(16, check=step_count, help="candidates ranked zero-shot (the paper: >100)")
    rank_by: str = setting("loss", choices=RANK_BY, help="zero-shot validation loss or KL to the teacher")
    top_k: int = setting(2, check=step_count_or_zero, help="candidates distilled (the paper: 22)")
    distill_tokens: int = setting(
        200_000,
        check=token_budget_or_zero,
        parse=parse_token_count,
        cli_default="200k",
        key="tokens",
        help="distillation budget per finalist, e.g. 200k (0: rank zero-shot only)",
    )
    distill_lr: float = 1e-3
    seq_len: int = setting(256, check=sequence_length)
    batch_size: int = 8
    eval_tokens: int = setting(16_384, check=token_budget, help="validation tokens scored per candidate")
    tie_tolerance: float = 0.01  # nats: closer distilled losses count as a tie, broken by latency
    latency_budget: float | None = setting(
        None,
        check=latency_fraction,
        help="keep candidates whose prefill this device's latency model predicts at most this fraction of the "
        "teacher's (e.g. 0.6); needs `hybridlab latency-calibrate` first",
    )
    measure_latency: bool = setting(
        True, flag="--no-latency", help="time the finalists in pairs with the teacher (speedup with an interval)"
    )
    accuracy_task: str | None = setting(None, help="an eval task for the finalists, e.g. continuation_mc")
    accuracy_limit: int = 100
    seed: int = setting(0, check=seed_value)

    def validate(self) -> None:
        if self.distill_tokens and self.top_k and self.distill_tokens < self.batch_size * self.seq_len:
            raise ValueError(
                f"distill_tokens={self.distill_tokens} is less than one batch ({self.batch_size} x {self.seq_len})"
            )
        self.space.validate()
        check_settings(self)


@dataclass
class SearchResult:
    candidates: pd.DataFrame  # one row per ranked candidate (plus the teacher as reference)
    best: dict
    best_model: object
    out_dir: Path | None


def search(
    model,
    tokenizer,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    settings: SearchSettings,
    scores: ImportanceScores | None = None,
    calib_batches: list | None = None,
    out_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    latency_model=None,
    latency_folder: str | Path | None = None,
) -> SearchResult:
    """`latency_model`: this device's LatencyModel for predicted latencies (default: the newest calibration
    for this model's device, dtype and threads in `latency_folder`, else the workspace's); a latency budget
    without one is refused before any work."""
    settings.validate()
    description = describe(model)  # the family and widths, resolved once for every step below
    total = estimate_sizes(description).budget_params(settings.space.param_budget)  # total, or active per token
    target = parse_target(settings.target_params, total)
    check_reachable(description, target, settings.tolerance, settings.space)
    latency = latency_model_for(model, description, settings, latency_model, latency_folder)  # before any work
    if scores is None:
        if not calib_batches:
            raise ValueError("search needs importance scores or calibration batches to compute them")
        scores = estimate_importance(
            model,
            calib_batches,
            layer_metric=settings.space.layer_metric,
            progress=subrange(progress, 0.0, 0.1),
            description=description,
        )
    candidates = enumerate_candidates(description, scores, target, settings.tolerance, settings.space, settings.seq_len)
    if settings.latency_budget is not None:
        candidates = within_latency(candidates, description, latency, settings.latency_budget, settings.seq_len)
    chosen = pick_diverse(candidates, settings.max_candidates, target)
    out = Path(out_dir) if out_dir is not None else None

    teacher_row = _teacher_row(model, description, val_tokens, settings)
    rows = [
        _zero_shot(model, description, c, scores, val_tokens, settings, teacher_row, latency)
        for c in track(chosen, len(chosen), "search: zero-shot ranking", progress, 0.1, 0.4)
    ]
    rows.sort(key=lambda r: r["zero_shot_" + settings.rank_by])
    for rank, row in enumerate(rows, 1):
        row["zero_shot_rank"] = rank

    finalists = rows[: settings.top_k] if settings.distill_tokens > 0 else []
    for i, row in enumerate(track(finalists, len(finalists), "search: distil the top candidates", progress, 0.4, 0.95)):
        _distil_finalist(model, tokenizer, row, scores, train_tokens, val_tokens, settings, out, i)
    best = _choose(rows if not finalists else finalists, settings)
    best_model = best.pop("_model")
    for row in rows:
        row.pop("_model", None)

    frame = pd.DataFrame([teacher_row, *rows])
    if out is not None:
        from hybridlab.model.loading import save_model

        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "candidates.csv", index=False)
        best["model_dir"] = str(save_model(best_model, tokenizer, out / "best", overwrite=True))
        (out / "search.json").write_text(json.dumps({"target_params": target, "best": best}, indent=2, default=str))
    if progress:
        progress(1.0, f"search: chose {best['name']}", None)
    return SearchResult(frame, best, best_model, out)


def _teacher_row(model, description, val_tokens, settings: SearchSettings) -> dict:
    sizes = estimate_sizes(description, seq_len=settings.seq_len)
    row = {
        "name": "teacher",
        "strategy": "teacher",
        "spec": "{}",
        "params": sizes.params,
        "flops_per_token": sizes.flops_per_token,
        "zero_shot_loss": validation_loss(model, val_tokens, settings.seq_len, max_tokens=settings.eval_tokens)["loss"],
        "zero_shot_kl": 0.0,
    }
    if settings.measure_latency:
        row["latency_ms"] = _prefill_ms(model, settings)
        row["estimated_latency_ms"] = row["latency_ms"]
    return row


def _zero_shot(
    teacher,
    description,
    candidate: Candidate,
    scores,
    val_tokens,
    settings: SearchSettings,
    teacher_row: dict,
    latency=None,
) -> dict:
    student = prune(teacher, candidate.spec, scores, layer_metric=settings.space.layer_metric, description=description)
    if settings.rank_by == "kl":
        measured = kl_to_teacher(student, teacher, val_tokens, settings.seq_len, max_tokens=settings.eval_tokens)
        loss, kl = measured["loss"], measured["kl"]
    else:
        loss, kl = validation_loss(student, val_tokens, settings.seq_len, max_tokens=settings.eval_tokens)["loss"], None
    row = {
        "name": candidate.name,
        "strategy": candidate.strategy,
        "spec": json.dumps(candidate.spec.to_dict()),
        "params": candidate.params,
        "flops_per_token": candidate.flops_per_token,
        "zero_shot_loss": loss,
        "zero_shot_kl": kl,
        "_model": student,
    }
    if latency is not None:
        ratio = predicted_speedup(latency, description, candidate.spec, settings.seq_len)["latency_ratio"]
        row["latency_basis"] = "latency model"
    else:  # latency scales with FLOPs to first order
        ratio = candidate.flops_per_token / teacher_row["flops_per_token"]
        row["latency_basis"] = "FLOPs"
    row["predicted_latency_ratio"] = ratio
    if "latency_ms" in teacher_row:
        row["estimated_latency_ms"] = teacher_row["latency_ms"] * ratio
    return row


def _distil_finalist(
    teacher, tokenizer, row, scores, train_tokens, val_tokens, settings: SearchSettings, out, index: int
):
    student = row["_model"]
    run_dir = (out / "runs" / row["name"]) if out is not None else Path(_tempdir()) / row["name"]
    kd = DistillSettings(
        tokens=settings.distill_tokens,
        seq_len=settings.seq_len,
        batch_size=settings.batch_size,
        lr=settings.distill_lr,
        eval_every=10**9,
        checkpoint_every=10**9,
        eval_tokens=settings.eval_tokens,
        seed=settings.seed + index,
    )
    result = distill(
        student,
        teacher,
        train_tokens,
        val_tokens,
        kd,
        run_dir,
        resume=(run_dir / "checkpoint" / "state.pt").exists(),
        student_tokenizer=tokenizer,
        teacher_tokenizer=tokenizer,
    )
    row["distilled_loss"] = result["val_loss"]
    row["distill_tokens"] = result["tokens"]
    if settings.measure_latency:
        row.update(_paired_prefill(student, teacher, settings))
    if settings.accuracy_task:
        from hybridlab.measure.evaluate import evaluate

        report = evaluate(
            student, tokenizer, [settings.accuracy_task], val_tokens=val_tokens, limit=settings.accuracy_limit
        )
        row["accuracy"] = report[settings.accuracy_task].get("acc")


def _choose(rows: list[dict], settings: SearchSettings) -> dict:
    key = "distilled_loss" if "distilled_loss" in rows[0] else "zero_shot_" + settings.rank_by
    best_loss = min(r[key] for r in rows)
    tied = [r for r in rows if r[key] <= best_loss + settings.tie_tolerance]
    pick = min(tied, key=lambda r: (r.get("latency_ms") or r.get("estimated_latency_ms") or 0.0, r[key]))
    pick["chosen"] = True
    return pick


def _prefill_ms(model, settings: SearchSettings) -> float:
    from hybridlab.measure.bench import measure_latency

    return measure_latency(model, batch_size=1, seq_len=settings.seq_len, new_tokens=2, repeats=3, warmup=1)[
        "prefill_ms"
    ]


def _paired_prefill(student, teacher, settings: SearchSettings) -> dict:
    """The finalist's prefill timed in pairs with the teacher: its median, the speedup and its interval."""
    from hybridlab.measure.bench import measure_paired
    from hybridlab.measure.latency_calibration import match_mamba_path

    match_mamba_path(teacher, student)  # the teacher's Mamba path (fast CPU scan or not) for both
    report = measure_paired(
        student, teacher, seq_len=settings.seq_len, new_tokens=2, rounds=PAIRED_ROUNDS, warmup=1, decode=False
    )
    prefill = report["paired"]["prefill"]
    return {
        "latency_ms": prefill["model_ms"],
        "teacher_latency_ms": prefill["reference_ms"],
        "speedup": prefill["speedup"],
        "speedup_low": prefill["speedup_low"],
        "speedup_high": prefill["speedup_high"],
    }


def latency_model_for(model, description, settings: SearchSettings, given=None, folder=None):
    """The latency model a search predicts with: `given`, else the calibration matching the model's device,
    dtype and threads; UserError when a latency budget needs one and there is none."""
    from hybridlab.measure.bench import describe_run
    from hybridlab.measure.latency_model import find_latency_model, missing_calibration

    if given is not None:
        return given
    where = describe_run(model)
    found = find_latency_model(description, where["device_name"], where["dtype"], where["torch_threads"], folder)
    if found is None and settings.latency_budget is not None:
        raise missing_calibration(description, where["device_name"], where["dtype"], where["torch_threads"])
    return found


def _tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="hybridlab-search-")
