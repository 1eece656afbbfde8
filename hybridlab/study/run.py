"""The paper's ablation study on one teacher (`hybridlab study`).

    result = run_study(teacher, tokenizer, train_tokens, val_tokens, calib_batches, StudySettings(), "runs/study")

1. importance scores on calibration data (activations + drop-one-layer KL);
2. plan the arms (hybridlab.study.arms): width-only candidates at the target are ranked
   zero-shot to pick the width, SSM-pruned and SSM-whole arms; depth-only drops the least
   important layers; the Mamba sweep cuts heads or head channels;
3. every distinct student is pruned, scored zero-shot and distilled with the same token
   budget on the same batches (teacher top-k logits cached once and shared);
4. a student of the best distilled architecture is trained from scratch on the same data
   with a larger budget, to count the tokens it needs to match distillation;
5. prefill latency of every model, measured round-robin so that load drifts hit all alike.

Output in out_dir: results.csv (one row per arm), results_curves.csv (validation and training
loss curves), width_candidates.csv (the zero-shot ranking), results.md (hybridlab.study.report),
study.json, runs/<student>/. `publish` copies the report and its tables into docs/.
An interrupted study resumes: finished students are reused, a cut-off run continues from
its checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import hybridlab.study.arms as arms_lib
from hybridlab.compression.importance import ImportanceScores, estimate_importance
from hybridlab.core.atomic import atomic_file, write_json, write_text
from hybridlab.core.progress import ProgressFn, subrange
from hybridlab.core.settings import below_one, check_settings, comma_list, parse_token_count, positive, setting
from hybridlab.families import describe
from hybridlab.measure.evaluate import validation_loss
from hybridlab.model.sizes import estimate_sizes
from hybridlab.study.arms import COMPARISONS, FROM_SCRATCH, HEADS_VS_CHANNELS, Arm
from hybridlab.study.report import render
from hybridlab.study.runs import RunResult, distil_arm, prefill_latencies, read_curve, train_from_scratch
from hybridlab.training.distill import DistillSettings

LAYER_METRIC = "kl"  # the paper's drop-one-layer KL


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


@dataclass
class StudySettings:
    compression: float = setting(
        0.5,
        parse=parse_compression,
        cli_default="0.5",
        help="fraction of the parameters to remove: 0.5 or 50% (half the size)",
    )
    tokens: int = setting(
        200_000, parse=parse_token_count, cli_default="200k", help="distillation tokens per arm, e.g. 200k"
    )
    scratch_tokens: int | None = setting(
        None, parse=parse_token_count, help="from-scratch baseline budget (default 5x --tokens; 0 skips it)"
    )
    # fractions of the SSM width cut (0 is the teacher itself)
    ssm_sweep: tuple[float, ...] = setting(
        (0.25, 0.5),
        parse=parse_percentages,
        cli_default="25,50",
        help="percent of the SSM width cut by heads or by channels",
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
    # None: the live teacher's full logits (the paper). k: cached top-k logits shared by all arms, faster, but the
    # renormalised top-k KL pushes the student's mass off the teacher's tail, which raises validation loss.
    teacher_top_k: int | None = setting(
        None,
        check=positive,
        parse=parse_teacher_top_k,
        cli_default="0",
        help="distil from cached top-k teacher logits, shared by all arms (faster; starves the student's tail); "
        "0 = the live teacher's full logits (default)",
    )
    # the same validation tokens score every model (paired comparisons)
    eval_tokens: int = setting(8_192, check=positive, help="validation tokens for every loss")
    curve_points: int = 4  # validation evaluations per distillation run (each costs eval_tokens of forward)
    scratch_curve_points: int = 16  # the resolution of the tokens-to-match count
    # windows of seq_len; each layer costs one more forward over them (drop-one-layer KL)
    calib_samples: int = setting(32, check=positive, help="calibration windows for importance")
    latency_repeats: int = setting(5, check=positive)
    bf16_autocast: bool = setting(True, flag="--no-bf16", help="train in fp32 with --no-bf16 (bf16 autocast otherwise)")
    seed: int = setting(0)

    @property
    def scratch_budget(self) -> int:
        return 5 * self.tokens if self.scratch_tokens is None else self.scratch_tokens

    def validate(self) -> None:
        if not 0 < self.compression < 1:
            raise ValueError(
                f"compression must be between 0 and 1 (the fraction of parameters removed), got {self.compression}"
            )
        batch = self.batch_size * self.seq_len
        if self.tokens < batch:
            raise ValueError(
                f"--tokens {self.tokens} is less than one batch ({self.batch_size} x {self.seq_len} = {batch}); raise it, e.g. --tokens 200k"
            )
        if self.scratch_budget and self.scratch_budget < batch:
            raise ValueError(
                f"--scratch-tokens {self.scratch_budget} is less than one batch of {batch}; raise it or pass 0 to skip"
            )
        unknown = sorted(set(self.comparisons) - set(COMPARISONS))
        if unknown or not self.comparisons:
            raise ValueError(f"unknown comparisons {unknown}; choose from {', '.join(COMPARISONS)}")
        if any(not 0 < f < 1 for f in self.ssm_sweep) or (HEADS_VS_CHANNELS in self.comparisons and not self.ssm_sweep):
            raise ValueError(f"--ssm-sweep fractions must be between 0 and 1 (exclusive), got {list(self.ssm_sweep)}")
        if self.eval_tokens < self.seq_len:
            raise ValueError(f"eval_tokens ({self.eval_tokens}) must be at least seq_len ({self.seq_len})")
        check_settings(self)

    def distill_settings(self) -> DistillSettings:
        steps = self.tokens // (self.batch_size * self.seq_len)
        return DistillSettings(
            tokens=self.tokens,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            lr=self.lr,
            bf16_autocast=self.bf16_autocast,
            eval_every=max(1, steps // self.curve_points),
            checkpoint_every=max(1, steps // 4),
            eval_tokens=self.eval_tokens,
            seed=self.seed,
        )


@dataclass
class StudyResult:
    results: pd.DataFrame
    curves: pd.DataFrame
    summary: dict
    out_dir: Path
    models: dict = field(default_factory=dict)  # run key -> trained student


def target_params(total: int, compression: float) -> int:
    return round(total * (1 - compression))


def run_study(
    teacher,
    tokenizer,
    train_tokens: np.ndarray,
    val_tokens: np.ndarray,
    calib_batches: list | None,
    settings: StudySettings,
    out_dir: str | Path,
    scores: ImportanceScores | None = None,
    teacher_pretraining_tokens: int | None = None,
    command: str | None = None,
    model_name: str | None = None,
    progress: ProgressFn | None = None,
) -> StudyResult:
    settings.validate()
    started = time.perf_counter()
    out = Path(out_dir)
    _claim(out, settings)
    say = _reporter(progress)
    teacher.eval()
    config = teacher.config
    description = describe(teacher)  # the family and widths, resolved once for planning and sizes
    total = sum(p.numel() for p in teacher.parameters())
    target = target_params(total, settings.compression)
    loss_of = lambda model: validation_loss(model, val_tokens, settings.seq_len, max_tokens=settings.eval_tokens)[
        "loss"
    ]

    say(0.0, "study: importance scores")
    scores = scores or _scores(teacher, calib_batches, out, subrange(progress, 0.0, 0.05))
    teacher_loss = loss_of(teacher)

    say(0.05, "study: planning the arms (zero-shot ranking of width-only candidates)")
    planned, ranked, zero_shot, facts = arms_lib.plan_arms(
        teacher, scores, target, settings, loss_of, LAYER_METRIC, description
    )
    ranked.to_csv(out / "width_candidates.csv", index=False)

    kd = settings.distill_settings()
    cache = None
    if settings.teacher_top_k:
        say(0.1, f"study: caching the teacher's top-{settings.teacher_top_k} logits for {kd.total_steps} batches")
        cache = _logits_cache(teacher, train_tokens, kd, settings.teacher_top_k, out, subrange(progress, 0.1, 0.15))

    runs: dict[str, Arm] = {}
    for arm in planned:
        runs.setdefault(arm.run_key, arm)
    done: dict[str, RunResult] = {}
    scratch_share = 0.25 if settings.scratch_budget and FROM_SCRATCH in settings.comparisons else 0.0
    distil_end = 0.95 - scratch_share
    for i, (key, arm) in enumerate(runs.items()):
        lo = 0.15 + (distil_end - 0.15) * i / len(runs)
        say(lo, f"study: distilling {key} ({i + 1}/{len(runs)})")
        done[key] = distil_arm(
            teacher,
            tokenizer,
            arm,
            scores,
            train_tokens,
            val_tokens,
            kd,
            out / "runs" / key,
            cache,
            loss_of,
            zero_shot.get(key),
            LAYER_METRIC,
            settings.seed,
            subrange(progress, lo, 0.15 + (distil_end - 0.15) * (i + 1) / len(runs)),
        )

    scratch = None
    at_target = [a for a in planned if a.comparison != HEADS_VS_CHANNELS]
    if scratch_share and at_target:
        best = min(at_target, key=lambda a: done[a.run_key].distilled_loss)
        say(distil_end, f"study: training {best.run_key} from scratch for {settings.scratch_budget:,} tokens")
        scratch = train_from_scratch(
            done[best.run_key].model,
            tokenizer,
            best,
            done[best.run_key],
            train_tokens,
            val_tokens,
            settings,
            out / "runs" / "scratch",
            loss_of,
            subrange(progress, distil_end, 0.95),
        )

    say(0.95, "study: prefill latency, round-robin")
    models = {"teacher": teacher, **{key: result.model for key, result in done.items()}}
    latency = prefill_latencies(models, settings.seq_len, settings.latency_repeats)

    results = _results(description, teacher_loss, planned, done, scratch, latency, settings)
    curves = _curves(out, runs, scratch)
    summary = _summary(
        settings,
        total,
        target,
        teacher_loss,
        teacher_pretraining_tokens,
        ranked,
        planned,
        scores,
        config,
        scratch,
        command,
        time.perf_counter() - started,
    )
    summary.update(
        facts,
        training_wall_s=float(curves.groupby("run")["wall_s"].max().sum()) if len(curves) else 0.0,
        model=model_name,
        bf16_autocast=settings.bf16_autocast,
        train_tokens_available=len(train_tokens),
    )
    _write_csv(results, out / "results.csv")
    _write_csv(curves, out / "results_curves.csv")
    write_json(out / "study.json", {"settings": _settings_dict(settings), "status": "done", **summary}, default=_plain)
    write_text(out / "results.md", render(results, summary, _settings_dict(settings), ranked))
    if progress:
        progress(1.0, "study: done", None)
    return StudyResult(results, curves, summary, out, {key: r.model for key, r in done.items()})


# -- results ----------------------------------------------------------------------------------


def _results(description, teacher_loss, planned, done, scratch, latency, settings: StudySettings) -> pd.DataFrame:
    teacher_sizes = estimate_sizes(description, seq_len=settings.seq_len)
    rows = [
        {
            "comparison": "reference",
            "arm": "teacher",
            "run": "teacher",
            "spec": "{}",
            "params": teacher_sizes.params,
            "flops_per_token": teacher_sizes.flops_per_token,
            "zero_shot_loss": teacher_loss,
            "distilled_loss": None,
            "scratch_loss": None,
            "teacher_loss": teacher_loss,
            "latency_ms": latency["teacher"],
            "tokens": 0,
            "ranking": "",
            "mamba_ranking": "",
            "note": "",
        }
    ]
    for arm in planned:
        result = done[arm.run_key]
        sizes = estimate_sizes(description, arm.spec, seq_len=settings.seq_len)
        rows.append(
            {
                "comparison": arm.comparison,
                "arm": arm.arm,
                "run": arm.run_key,
                "spec": arms_lib.spec_json(arm.spec),
                "params": sizes.params,
                "flops_per_token": sizes.flops_per_token,
                "zero_shot_loss": result.zero_shot_loss,
                "distilled_loss": result.distilled_loss,
                "scratch_loss": None,
                "teacher_loss": teacher_loss,
                "latency_ms": latency[arm.run_key],
                "tokens": result.tokens,
                "ranking": arm.ranking,
                "mamba_ranking": arm.mamba_ranking,
                "note": arm.note,
            }
        )
    if scratch is not None:
        sizes = estimate_sizes(description, scratch["arm"].spec, seq_len=settings.seq_len)
        rows.append(
            {
                "comparison": FROM_SCRATCH,
                "arm": "from scratch (random init)",
                "run": "scratch",
                "spec": arms_lib.spec_json(scratch["arm"].spec),
                "params": sizes.params,
                "flops_per_token": sizes.flops_per_token,
                "zero_shot_loss": scratch["initial_loss"],
                "distilled_loss": None,
                "scratch_loss": scratch["final_loss"],
                "teacher_loss": teacher_loss,
                "latency_ms": latency[scratch["arm"].run_key],
                "tokens": scratch["tokens"],
                "ranking": "",
                "mamba_ranking": "",
                "note": f"same architecture as {scratch['arm'].run_key}",
            }
        )
    return pd.DataFrame(rows)


def _curves(out: Path, runs: dict[str, Arm], scratch) -> pd.DataFrame:
    frames = [read_curve(out / "runs" / key, key, "distill") for key in runs]
    if scratch is not None:
        frames.append(read_curve(out / "runs" / "scratch", "scratch", "scratch"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _summary(
    settings, total, target, teacher_loss, pretraining_tokens, ranked, planned, scores, config, scratch, command, wall_s
) -> dict:
    layer_scores = scores.layers.get(LAYER_METRIC)
    return {
        "command": command,
        "teacher_params": total,
        "target_params": target,
        "teacher_loss": teacher_loss,
        "teacher_pretraining_tokens": pretraining_tokens,
        "width_candidates_ranked": len(ranked),
        "num_layers": config.num_hidden_layers,
        "layer_kl": layer_scores.tolist() if layer_scores is not None else None,
        "arms": len(planned),
        "scratch": None if scratch is None else {k: v for k, v in scratch.items() if k != "arm"},
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(wall_s, 1),
    }


PUBLISHED = ("results.md", "results.csv", "results_curves.csv")


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


def _scores(teacher, calib_batches, out: Path, progress) -> ImportanceScores:
    saved = out / "importance"
    if saved.exists():
        return ImportanceScores.load(saved)
    if not calib_batches:
        raise ValueError("the study needs importance scores or calibration batches to compute them")
    scores = estimate_importance(teacher, calib_batches, layer_metric=LAYER_METRIC, progress=progress)
    scores.save(saved)
    return scores


def _logits_cache(teacher, train_tokens, kd: DistillSettings, top_k: int, out: Path, progress):
    from hybridlab.training.logits_cache import LogitsCache, build_logits_cache

    path = out / "teacher_logits"
    if not (path / "cache.json").exists():
        build_logits_cache(teacher, train_tokens, kd, path, top_k=top_k, progress=progress)
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
