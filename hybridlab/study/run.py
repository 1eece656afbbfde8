"""The paper's ablation study on one teacher (`hybridlab study`), with error bars.

    result = run_study(teacher, tokenizer, train_tokens, val_tokens, calib_rows, StudySettings(), "runs/study")

1. per seed, importance scores on that seed's calibration subset (activations + drop-one-layer KL);
2. plan the arms once, from the first seed's scores (hybridlab.study.arms): width-only candidates at the
   target are ranked zero-shot to pick the width, SSM-pruned and SSM-whole arms; depth-only drops the least
   important layers; the Mamba sweep cuts heads or head channels. The architectures are then fixed;
3. per seed, every distinct student is pruned with that seed's scores, scored zero-shot on every
   validation window and distilled on that seed's batches (the teacher's top-k logits cached once per seed
   and shared by all its students), then scored on the same windows again;
4. a student of the best distilled architecture is trained from scratch (first seed) with a larger
   budget, to count the tokens it needs to match distillation;
5. prefill latency once per distinct architecture, each timed interleaved with the teacher (measure_paired), as a
   speedup with its interval;
6. paired bootstrap intervals (hybridlab.study.stats) on every arm and every difference.

What a seed s changes, and nothing else: (a) the calibration subset that scores the units (neurons, heads,
channels) the students keep: `calib_samples` windows drawn without replacement from the calibration pool by
numpy's default_rng([s, CALIB_STREAM]) (layer scores, which only plan the architectures, come from the first
seed); (b) the distillation data:
the windows and their order, TokenBatches(train, seed=s) (so each seed has its own teacher logits cache);
(c) the random control's draw (prune(ranking="random", seed=s)). Validation windows, architectures, budgets
and the from-scratch run are the same for every seed.

Output in out_dir: results.csv (one row per arm, means and intervals), results_comparisons.csv (every paired
difference and its verdict), results_seeds.csv (per arm and seed), results_windows.csv (every loss per
window), results_curves.csv (training and validation curves per seed with min/max bands), width_candidates.csv
(the zero-shot ranking), results.md (hybridlab.study.report), study.json, runs/<student>/seed-<s>/.
`publish` copies the report and its tables into docs/. An interrupted study resumes: finished students are
reused, a cut-off run continues from its checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import hybridlab.study.arms as arms_lib
import hybridlab.study.stats as stats
from hybridlab.compression.importance import ImportanceScores, estimate_importance
from hybridlab.core.atomic import atomic_file, write_json, write_text
from hybridlab.core.errors import UserError
from hybridlab.core.progress import ProgressFn, subrange
from hybridlab.core.settings import (
    at_most,
    below_one,
    check_settings,
    comma_list,
    parse_token_count,
    positive,
    seed_value,
    setting,
)
from hybridlab.families import MOE, describe
from hybridlab.model.sizes import estimate_sizes
from hybridlab.study.arms import COMPARISONS, FROM_SCRATCH, HEADS_VS_CHANNELS, MOE_COMPARISONS, Arm
from hybridlab.study.report import render
from hybridlab.study.runs import (
    RunResult,
    distil_arm,
    paired_latencies,
    read_curve,
    train_from_scratch,
    window_losses,
)
from hybridlab.training.distill import DistillSettings

LAYER_METRIC = "kl"  # the paper's drop-one-layer KL
CALIB_STREAM = 0xCA1B  # the calibration draw's stream, so it never coincides with another use of the seed
MAX_SEEDS = 64


def parse_compression(text: str) -> float:
    """'0.5' or '50%' -> 0.5 (validate() checks the range)."""
    value = str(text).strip()
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ValueError(f"cannot read a compression from {text!r}; write e.g. 0.5 or 50%") from None


def parse_percentages(text: str) -> tuple[float, ...]:
    """'25,50' -> (0.25, 0.5)."""
    try:
        return tuple(float(part) / 100 for part in comma_list(text))
    except ValueError:
        raise ValueError(f"{text!r} must be comma-separated percentages, e.g. 25,50") from None


def parse_teacher_top_k(text: str) -> int | None:
    """'64' -> 64; '0' -> None, the live teacher."""
    try:
        return int(text) or None
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number; 0 means the live teacher's full logits") from None


def seed_count(value):
    return at_most(MAX_SEEDS, "seeds per arm")(positive(value))


@dataclass
class StudySettings:
    compression: float = setting(
        0.5,
        parse=parse_compression,
        cli_default="0.5",
        help="fraction of the parameters to remove: 0.5 or 50% (half the size)",
    )
    # 3 seeds of every comparison in <= 30 minutes on the 2-core CPU even at 1 thread (estimated ~29 min from measured
    # step costs: 1.4 s per teacher forward of 8 x 256, 2.4 s per step of a half-size student); see the report's runtime
    tokens: int = setting(
        32_000, parse=parse_token_count, cli_default="32k", help="distillation tokens per arm and seed, e.g. 32k"
    )
    seeds: int = setting(
        3,
        check=seed_count,
        help="seeds per arm: each draws its own calibration subset, distillation batches and random control",
    )
    scratch_tokens: int | None = setting(
        None, parse=parse_token_count, help="from-scratch baseline budget (default 5x --tokens; 0 skips it)"
    )
    # fractions of the SSM width cut (0 is the teacher itself); each costs two near-teacher-size students per seed
    ssm_sweep: tuple[float, ...] = setting(
        (0.5,),
        parse=parse_percentages,
        cli_default="50",
        help="percent of the SSM width cut by heads or by channels, e.g. 25,50",
    )
    comparisons: tuple[str, ...] = setting(
        COMPARISONS,
        parse=lambda text: tuple(comma_list(text)),
        cli_default=None,
        help="comma list of comparisons (default: all)",
    )
    tolerance: float = setting(0.03, check=positive, help="relative distance to the parameter target")
    max_width_prune: float = setting(0.5, check=below_one)
    max_candidates: int = setting(8, check=positive, help="width-only candidates ranked zero-shot")
    seq_len: int = setting(256, check=positive)
    batch_size: int = setting(8, check=positive)
    lr: float = setting(1e-3, check=positive, help="distillation learning rate")
    scratch_lr: float = 1.5e-3  # the demo teacher's own pretraining recipe
    # k: the teacher's top-k log-probs plus the mass of the rest (kd_loss's tail bucket), cached once per seed and
    # shared by all its students; None: the live teacher's full logits (the paper), one teacher forward per step
    # and student
    teacher_top_k: int | None = setting(
        128,
        check=positive,
        parse=parse_teacher_top_k,
        cli_default="128",
        help="distil from the teacher's cached top-k log-probs plus their tail mass, shared by all students of a "
        "seed (default 128); 0 = the live teacher's full logits (slower)",
    )
    # the same validation windows score every model in every seed (the pairs of the bootstrap)
    eval_tokens: int = setting(16_384, check=positive, help="validation tokens (windows of seq_len) for every loss")
    curve_points: int = 4  # in-training evaluations per distillation run
    curve_eval_tokens: int = (
        4_096  # validation tokens per curve point (the curves show trends; the table uses eval_tokens)
    )
    scratch_curve_points: int = 12  # the resolution of the tokens-to-match count
    calib_samples: int = setting(32, check=positive, help="calibration windows per seed, drawn from the pool")
    calib_pool: int = 256  # calibration windows the seeds draw from
    # each layer costs one forward over these (drop-one-layer KL): the first of the seed's windows
    layer_samples: int = 16
    latency_repeats: int = setting(5, check=positive)
    # fp32 by default: on CPUs without bf16 matrix units bf16 autocast measured ~10x slower per training step
    bf16_autocast: bool = setting(False, flag="--bf16", help="train under bf16 autocast (fp32 otherwise)")
    seed: int = setting(0, check=seed_value, help="first seed; the study uses seed, seed + 1, ...")

    @property
    def scratch_budget(self) -> int:
        return 5 * self.tokens if self.scratch_tokens is None else self.scratch_tokens

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def validate(self) -> None:
        if not 0 < self.compression < 1:
            raise ValueError(
                f"compression must be between 0 and 1 (the fraction of parameters removed), got {self.compression}"
            )
        batch = self.batch_size * self.seq_len
        if self.tokens < batch:
            raise ValueError(
                f"--tokens {self.tokens} is less than one batch ({self.batch_size} x {self.seq_len} = {batch}); raise it, e.g. --tokens 32k"
            )
        if self.scratch_budget and self.scratch_budget < batch:
            raise ValueError(
                f"--scratch-tokens {self.scratch_budget} is less than one batch of {batch}; raise it or pass 0 to skip"
            )
        known = (*COMPARISONS, *MOE_COMPARISONS)
        unknown = sorted(set(self.comparisons) - set(known))
        if unknown or not self.comparisons:
            raise ValueError(
                f"unknown comparisons {unknown}; choose from {', '.join(known)} (the last: mixture-of-experts teachers)"
            )
        if any(not 0 < f < 1 for f in self.ssm_sweep) or (HEADS_VS_CHANNELS in self.comparisons and not self.ssm_sweep):
            raise ValueError(f"--ssm-sweep fractions must be between 0 and 1 (exclusive), got {list(self.ssm_sweep)}")
        if self.eval_tokens < self.seq_len:
            raise ValueError(f"eval_tokens ({self.eval_tokens}) must be at least seq_len ({self.seq_len})")
        check_settings(self)

    def distill_settings(self, seed: int) -> DistillSettings:
        steps = self.tokens // (self.batch_size * self.seq_len)
        return DistillSettings(
            tokens=self.tokens,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            lr=self.lr,
            bf16_autocast=self.bf16_autocast,
            eval_every=max(1, steps // self.curve_points),
            checkpoint_every=max(1, steps // 4),
            eval_tokens=min(self.curve_eval_tokens, self.eval_tokens),
            seed=seed,
        )


@dataclass
class StudyResult:
    results: pd.DataFrame
    curves: pd.DataFrame
    summary: dict
    out_dir: Path
    models: dict = field(default_factory=dict)  # (run key, seed) -> trained student
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)
    per_seed: pd.DataFrame = field(default_factory=pd.DataFrame)


def target_params(total: int, compression: float) -> int:
    return round(total * (1 - compression))


class Stages:
    """Wall and process CPU seconds per stage of this pass (CPU time counts every thread, so on a busy
    machine it shows the work, where wall time also shows the waiting)."""

    def __init__(self):
        self.times: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry = self.times.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] = round(entry["wall_s"] + time.perf_counter() - wall, 1)
            entry["cpu_s"] = round(entry["cpu_s"] + time.process_time() - cpu, 1)


def calibration_subset(pool_size: int, samples: int, seed: int) -> list[int]:
    """The calibration windows seed `seed` scores importance on: `samples` of the pool's rows drawn without
    replacement (all of them when the pool is no larger), ascending."""
    if samples >= pool_size:
        return list(range(pool_size))
    rng = np.random.default_rng([seed, CALIB_STREAM])
    return sorted(int(i) for i in rng.choice(pool_size, size=samples, replace=False))


def run_study(
    teacher,
    tokenizer,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    calib_rows: torch.Tensor | None,
    settings: StudySettings,
    out_dir: str | Path,
    teacher_pretraining_tokens: int | None = None,
    command: str | None = None,
    model_name: str | None = None,
    progress: ProgressFn | None = None,
) -> StudyResult:
    """calib_rows: the calibration pool, [N, seq_len] token windows (each seed draws calib_samples of them)."""
    settings.validate()
    if calib_rows is None or len(calib_rows) == 0:
        raise ValueError("the study needs calibration windows to compute importance; pass calib_rows [N, seq_len]")
    description = describe(teacher)  # the family and widths, resolved once for planning and sizes
    if set(settings.comparisons) & set(MOE_COMPARISONS) and not description.widths.has(MOE):
        raise UserError(
            f"--comparisons {','.join(MOE_COMPARISONS)} needs a mixture-of-experts teacher; this "
            f"{description.family.name} model has no routed experts: leave it out"
        )
    started = time.perf_counter()
    stage = Stages()
    out = Path(out_dir)
    _claim(out, settings)
    say = _reporter(progress)
    teacher.eval()
    config = teacher.config
    total = sum(p.numel() for p in teacher.parameters())
    target = target_params(total, settings.compression)
    seeds = settings.seed_list
    windows_of = lambda model: window_losses(model, val_tokens, settings.seq_len, settings.eval_tokens)
    loss_of = lambda model: float(np.mean(windows_of(model)))
    curve_loss_of = lambda model: float(
        np.mean(
            window_losses(model, val_tokens, settings.seq_len, min(settings.curve_eval_tokens, settings.eval_tokens))
        )
    )

    with stage("evaluate the teacher"):
        teacher_windows = windows_of(teacher)
    subsets = {seed: calibration_subset(len(calib_rows), settings.calib_samples, seed) for seed in seeds}
    scores: dict[int, ImportanceScores] = {}
    with stage("importance"):
        for i, seed in enumerate(seeds):
            say(0.05 * i / len(seeds), f"study: importance scores, seed {seed} ({i + 1}/{len(seeds)})")
            part = subrange(progress, 0.05 * i / len(seeds), 0.05 * (i + 1) / len(seeds))
            # layer scores only plan the depth arm, which is planned once from the first seed: later seeds skip
            # the drop-one-layer passes (17 forwards over the windows on the demo) and score units only
            metric = LAYER_METRIC if seed == seeds[0] else None
            saved = out / "importance" / f"seed-{seed}"
            scores[seed] = _scores(teacher, calib_rows, subsets[seed], settings, saved, metric, part)

    say(0.05, "study: planning the arms (zero-shot ranking of width-only candidates)")
    with stage("planning (zero-shot ranking)"):
        planned, ranked, zero_shot, facts = arms_lib.plan_arms(
            teacher, scores[seeds[0]], target, settings, windows_of, LAYER_METRIC, description
        )
    ranked.to_csv(out / "width_candidates.csv", index=False)

    runs: dict[str, Arm] = {}
    for arm in planned:
        runs.setdefault(arm.run_key, arm)
    done: dict[tuple[str, int], RunResult] = {}
    scratch_share = 0.2 if settings.scratch_budget and FROM_SCRATCH in settings.comparisons else 0.0
    distil_end = 0.95 - scratch_share
    jobs = [(seed, key) for seed in seeds for key in runs]
    for seed in seeds:
        kd = settings.distill_settings(seed)
        cache = None
        if settings.teacher_top_k:
            say(0.1, f"study: caching the teacher's top-{settings.teacher_top_k} logits for seed {seed}")
            with stage("teacher logits cache"):
                cache = _logits_cache(teacher, train_tokens, kd, settings.teacher_top_k, out, seed)
        for key, arm in runs.items():
            i = jobs.index((seed, key))
            lo, hi = (0.1 + (distil_end - 0.1) * j / len(jobs) for j in (i, i + 1))
            say(lo, f"study: distilling {key}, seed {seed} ({i + 1}/{len(jobs)})")
            with stage("distillation (prune, score, distil, score)"):
                done[key, seed] = distil_arm(
                    teacher,
                    tokenizer,
                    arm,
                    scores[seed],
                    train_tokens,
                    val_tokens,
                    kd,
                    out / "runs" / key / f"seed-{seed}",
                    cache,
                    windows_of,
                    zero_shot.get(key) if seed == seeds[0] else None,
                    LAYER_METRIC,
                    seed,
                    subsets[seed],
                    subrange(progress, lo, hi),
                )

    scratch = None
    at_target = [a for a in planned if a.comparison != HEADS_VS_CHANNELS]
    if scratch_share and at_target:
        best = min(at_target, key=lambda a: _mean(done, a.run_key, seeds, "distilled_loss"))
        say(distil_end, f"study: training {best.run_key} from scratch for {settings.scratch_budget:,} tokens")
        with stage("from scratch"):
            scratch = train_from_scratch(
                done[best.run_key, seeds[0]].model,
                tokenizer,
                best,
                done[best.run_key, seeds[0]].tokens,
                _mean(done, best.run_key, seeds, "curve_final_loss"),
                train_tokens,
                val_tokens,
                settings,
                out / "runs" / "scratch",
                loss_of,
                curve_loss_of,
                subrange(progress, distil_end, 0.95),
            )

    say(0.95, "study: prefill latency, paired with the teacher, once per architecture")
    with stage("latency"):
        by_spec = {}
        for key, arm in runs.items():
            by_spec.setdefault(arms_lib.spec_json(arm.spec), done[key, seeds[0]].model)
        latency_by_spec = paired_latencies(by_spec, teacher, settings.seq_len, settings.latency_repeats)
        # the teacher's row: its median over every pair it was timed in, the reference of every speedup
        teacher_ms = float(np.median([timed["teacher_ms"] for timed in latency_by_spec.values()]))
        latency_by_spec["teacher"] = {
            "latency_ms": teacher_ms,
            "latency_ms_low": None,
            "latency_ms_high": None,
            "teacher_ms": teacher_ms,
            "speedup": 1.0,
            "speedup_low": 1.0,
            "speedup_high": 1.0,
        }

    with stage("intervals and report"):
        results, per_seed, windows = _results(
            description, teacher_windows, planned, done, seeds, scratch, latency_by_spec, settings
        )
        comparisons = _comparisons(planned, done, seeds, latency_by_spec)
        curves = _curves(out, runs, seeds, scratch)
        summary = _summary(
            settings,
            total,
            target,
            teacher_windows,
            teacher_pretraining_tokens,
            ranked,
            planned,
            scores[seeds[0]],
            config,
            scratch,
            command,
        )
        summary.update(
            facts,
            model=model_name,
            bf16_autocast=settings.bf16_autocast,
            train_tokens_available=len(train_tokens),
            calibration_pool=len(calib_rows),
            calibration_subsets={str(seed): rows for seed, rows in subsets.items()},
            distinct_students=len(runs),
            distinct_architectures=len(by_spec),
            student_wall_s=round(sum(r.wall_s for r in done.values()), 1),
            training_wall_s=float(curves.groupby(["run", "seed"])["wall_s"].max().sum()) if len(curves) else 0.0,
        )
        _write_csv(results, out / "results.csv")
        _write_csv(comparisons, out / "results_comparisons.csv")
        _write_csv(per_seed, out / "results_seeds.csv")
        _write_csv(windows, out / "results_windows.csv")
        _write_csv(curves, out / "results_curves.csv")
    summary["stages"] = stage.times
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(out / "study.json", {"settings": _settings_dict(settings), "status": "done", **summary}, default=_plain)
    write_text(out / "results.md", render(results, comparisons, summary, _settings_dict(settings), ranked, per_seed))
    if progress:
        progress(1.0, "study: done", None)
    models = {key: r.model for key, r in done.items()}
    return StudyResult(results, curves, summary, out, models, comparisons, per_seed)


def _mean(done, key: str, seeds: list[int], attribute: str) -> float:
    return float(np.mean([getattr(done[key, seed], attribute) for seed in seeds]))


# -- results ----------------------------------------------------------------------------------


def _table(done, key: str, seeds: list[int], stage: str) -> np.ndarray:
    """[S, W] losses of one student over the seeds and validation windows."""
    return np.array([getattr(done[key, seed], f"{stage}_windows") for seed in seeds])


def _interval_columns(prefix: str, interval: stats.Interval | None) -> dict:
    if interval is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {prefix: interval.estimate, f"{prefix}_low": interval.low, f"{prefix}_high": interval.high}


def _results(description, teacher_windows, planned, done, seeds, scratch, latency_by_spec, settings):
    """(one row per arm with means and 95% intervals, one row per arm and seed, every loss per window)."""
    teacher_sizes = estimate_sizes(description, seq_len=settings.seq_len)
    teacher_loss = float(np.mean(teacher_windows))
    common = {"teacher_loss": teacher_loss, "ranking": "", "mamba_ranking": "", "note": ""}
    rows = [
        {
            "comparison": "reference",
            "arm": "teacher",
            "run": "teacher",
            "spec": "{}",
            "params": teacher_sizes.params,
            "flops_per_token": teacher_sizes.flops_per_token,
            **_interval_columns("zero_shot_loss", stats.bootstrap_mean(teacher_windows)),
            **_interval_columns("distilled_loss", None),
            "scratch_loss": None,
            "seeds": 1,
            **latency_by_spec["teacher"],
            "tokens": 0,
            **common,
        }
    ]
    per_seed, windows = [], []
    for arm in planned:
        sizes = estimate_sizes(description, arm.spec, seq_len=settings.seq_len)
        spec = arms_lib.spec_json(arm.spec)
        rows.append(
            {
                "comparison": arm.comparison,
                "arm": arm.arm,
                "run": arm.run_key,
                "spec": spec,
                "params": sizes.params,
                "flops_per_token": sizes.flops_per_token,
                **_interval_columns(
                    "zero_shot_loss", stats.bootstrap_mean(_table(done, arm.run_key, seeds, "zero_shot"))
                ),
                **_interval_columns(
                    "distilled_loss", stats.bootstrap_mean(_table(done, arm.run_key, seeds, "distilled"))
                ),
                "scratch_loss": None,
                "seeds": len(seeds),
                **latency_by_spec[spec],
                "tokens": done[arm.run_key, seeds[0]].tokens,
                **common,
                "ranking": arm.ranking,
                "mamba_ranking": arm.mamba_ranking,
                "note": arm.note,
            }
        )
        for seed in seeds:
            result = done[arm.run_key, seed]
            per_seed.append(
                {
                    "comparison": arm.comparison,
                    "arm": arm.arm,
                    "run": arm.run_key,
                    "seed": seed,
                    "zero_shot_loss": result.zero_shot_loss,
                    "distilled_loss": result.distilled_loss,
                    "curve_final_loss": result.curve_final_loss,
                    "calibration_rows": " ".join(map(str, result.calibration_rows)),
                    "wall_s": result.wall_s,
                }
            )
    for (key, seed), result in sorted(done.items()):
        for stage in ("zero_shot", "distilled"):
            for window, value in enumerate(getattr(result, f"{stage}_windows")):
                windows.append({"run": key, "seed": seed, "stage": stage, "window": window, "loss": value})
    windows += [
        {"run": "teacher", "seed": None, "stage": "teacher", "window": w, "loss": float(v)}
        for w, v in enumerate(teacher_windows)
    ]
    if scratch is not None:
        sizes = estimate_sizes(description, scratch["arm"].spec, seq_len=settings.seq_len)
        spec = arms_lib.spec_json(scratch["arm"].spec)
        rows.append(
            {
                "comparison": FROM_SCRATCH,
                "arm": "from scratch (random init)",
                "run": "scratch",
                "spec": spec,
                "params": sizes.params,
                "flops_per_token": sizes.flops_per_token,
                **_interval_columns("zero_shot_loss", None),
                **_interval_columns("distilled_loss", None),
                "zero_shot_loss": scratch["initial_loss"],
                "scratch_loss": scratch["final_loss"],
                "seeds": 1,
                **latency_by_spec[spec],
                "tokens": scratch["tokens"],
                **common,
                "note": f"same architecture as {scratch['arm'].run_key}, seed {scratch['seed']}",
            }
        )
    return pd.DataFrame(rows), pd.DataFrame(per_seed), pd.DataFrame(windows)


def arm_pairs(planned: list[Arm]) -> list[tuple[Arm, Arm]]:
    """The compared pairs: consecutive arms within each comparison (the heads-vs-channels sweep has one
    pair per cut)."""
    pairs = []
    for comparison in dict.fromkeys(a.comparison for a in planned):
        arms = [a for a in planned if a.comparison == comparison]
        pairs += [(arms[i], arms[i + 1]) for i in range(0, len(arms) - 1, 2)]
    return pairs


def _comparisons(planned, done, seeds, latency_by_spec) -> pd.DataFrame:
    """One row per compared pair and stage: A - B with its paired 95% interval and the verdict."""
    rows = []
    for a, b in arm_pairs(planned):
        for stage in ("zero_shot", "distilled"):
            difference = stats.paired_difference(
                _table(done, a.run_key, seeds, stage), _table(done, b.run_key, seeds, stage)
            )
            rows.append(
                {
                    "comparison": a.comparison,
                    "arm_a": a.arm,
                    "arm_b": b.arm,
                    "stage": stage,
                    "difference": difference.estimate,
                    "low": difference.low,
                    "high": difference.high,
                    "direction": stats.direction(difference),
                    "verdict": stats.verdict(a.arm, b.arm, difference),
                    **{
                        f"{name}_{side}": latency_by_spec[arms_lib.spec_json(arm.spec)][name]
                        for side, arm in (("a", a), ("b", b))
                        for name in ("latency_ms", "speedup", "speedup_low", "speedup_high")
                    },
                    "seeds": len(seeds),
                    "windows": len(done[a.run_key, seeds[0]].distilled_windows),
                }
            )
    return pd.DataFrame(rows)


def _curves(out: Path, runs: dict[str, Arm], seeds: list[int], scratch) -> pd.DataFrame:
    """Every run's curve rows (one per seed) plus, on evaluation rows, the band over seeds at that step:
    val_loss_mean, val_loss_min, val_loss_max (the min/max band a chart shades)."""
    frames = [read_curve(out / "runs" / key / f"seed-{seed}", key, "distill", seed) for key in runs for seed in seeds]
    if scratch is not None:
        frames.append(read_curve(out / "runs" / "scratch", "scratch", "scratch", scratch["seed"]))
    if not frames:
        return pd.DataFrame()
    curves = pd.concat(frames, ignore_index=True)
    evals = curves[curves["kind"] == "eval"].dropna(subset=["val_loss"])
    bands = (
        evals.groupby(["run", "training", "step"])["val_loss"]
        .agg(val_loss_mean="mean", val_loss_min="min", val_loss_max="max", band_seeds="count")
        .reset_index()
    )
    curves = curves.merge(bands, on=["run", "training", "step"], how="left")
    not_eval = curves["kind"] != "eval"
    curves.loc[not_eval, ["val_loss_mean", "val_loss_min", "val_loss_max", "band_seeds"]] = None
    return curves


def _summary(
    settings, total, target, teacher_windows, pretraining_tokens, ranked, planned, scores, config, scratch, command
) -> dict:
    layer_scores = scores.layers.get(LAYER_METRIC)
    return {
        "command": command,
        "teacher_params": total,
        "target_params": target,
        "teacher_loss": float(np.mean(teacher_windows)),
        "teacher_pretraining_tokens": pretraining_tokens,
        "width_candidates_ranked": len(ranked),
        "num_layers": config.num_hidden_layers,
        "layer_kl": layer_scores.tolist() if layer_scores is not None else None,
        "arms": len(planned),
        "scratch": None if scratch is None else {k: v for k, v in scratch.items() if k != "arm"},
        "torch_threads": torch.get_num_threads(),
        "validation_windows": len(teacher_windows),
        "bootstrap": stats.METHOD,
    }


PUBLISHED = ("results.md", "results.csv", "results_curves.csv", "results_comparisons.csv")


def publish(out_dir: str | Path, docs_dir: str | Path) -> list[Path]:
    """Copy a finished study's report and tables into docs_dir (each written then renamed)."""
    out, docs = Path(out_dir), Path(docs_dir)
    missing = [name for name in PUBLISHED if not (out / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{out} has no finished study ({', '.join(missing)} missing); run `hybridlab study` first"
        )
    docs.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PUBLISHED:
        write_text(docs / name, (out / name).read_text())
        written.append(docs / name)
    return written


# -- plumbing ---------------------------------------------------------------------------------


def _settings_dict(settings: StudySettings) -> dict:
    values = asdict(settings)
    values["ssm_sweep"], values["comparisons"] = list(settings.ssm_sweep), list(settings.comparisons)
    return values


def _claim(out: Path, settings: StudySettings) -> None:
    """A study folder belongs to one set of settings; rerunning with the same ones resumes."""
    out.mkdir(parents=True, exist_ok=True)
    record = out / "study.json"
    if record.exists():
        previous = json.loads(record.read_text()).get("settings")
        if previous != _settings_dict(settings):
            raise ValueError(
                f"{out} holds a study with other settings; choose another --out (or rerun with the same ones to resume)"
            )
    else:
        write_json(record, {"settings": _settings_dict(settings), "status": "running"}, default=_plain)


def _scores(teacher, calib_rows: torch.Tensor, rows: list[int], settings: StudySettings, saved: Path, metric, progress):
    """Importance on the seed's calibration windows (saved, with the rows, for resume and audit); layer scores
    by `metric`, or none."""
    rows_file = saved.parent / f"{saved.name}.rows.json"
    if saved.exists() and rows_file.exists() and json.loads(rows_file.read_text()) == rows:
        return ImportanceScores.load(saved)
    subset = calib_rows[rows]  # [n, seq_len]
    batches = [subset[i : i + 8] for i in range(0, len(subset), 8)]
    layer_samples = settings.layer_samples if metric else None
    scores = estimate_importance(teacher, batches, layer_metric=metric, layer_samples=layer_samples, progress=progress)
    scores.save(saved)
    write_json(rows_file, rows)
    return scores


def _logits_cache(teacher, train_tokens, kd: DistillSettings, top_k: int, out: Path, seed: int):
    from hybridlab.training.logits_cache import LogitsCache, build_logits_cache

    path = out / "teacher_logits" / f"seed-{seed}"
    if not (path / "cache.json").exists():
        build_logits_cache(teacher, train_tokens, kd, path, top_k=top_k)
    return LogitsCache(path)


def _reporter(progress: ProgressFn | None):
    def say(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message, None)
        else:
            import sys

            print(message, file=sys.stderr, flush=True)

    return say


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as handle:
        frame.to_csv(handle, index=False)


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)
