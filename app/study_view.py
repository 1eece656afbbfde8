"""A finished study (`hybridlab study --out DIR`) as the depth-versus-width page's columns: its
width-only and depth-only arms (and a mixed one when the study has it), with the study's seeds and
intervals. Reads results.csv, results_windows.csv, results_curves.csv, study.json and the first seed's
importance scores; plain pandas, no Streamlit."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from app.depth_width import Column
from hybridlab.search.space import STRATEGIES
from hybridlab.study import stats

COMPARISON = "width_vs_depth"
ARMS = {"width-only": "width", "depth-only": "depth", "mixed": "mixed"}  # the study's arm -> the page's column


@dataclass
class StudyView:
    folder: Path
    columns: list[Column]
    teacher: stats.Interval | None
    curves: dict[str, pd.DataFrame]  # strategy -> step, mean, low, high (distillation validation loss)
    summary: dict
    scores: str | None  # the first seed's importance folder, when the study kept it


def open_study(folder: str | Path) -> StudyView:
    """ValueError naming what is missing when `folder` holds no finished study with width/depth arms."""
    out = Path(folder).expanduser().resolve()
    if not (out / "results.csv").is_file():
        raise ValueError(f"{out} holds no study results (no results.csv); give the --out folder of `hybridlab study`")
    results = pd.read_csv(out / "results.csv")
    arms = results[(results["comparison"] == COMPARISON) & results["arm"].isin(list(ARMS))]
    if arms.empty:
        raise ValueError(f"{out}: the study has no {COMPARISON} arms; run it with --comparisons {COMPARISON}")
    windows = _read(out / "results_windows.csv")
    summary = json.loads((out / "study.json").read_text()) if (out / "study.json").is_file() else {}
    teacher_row = results[results["arm"] == "teacher"]
    teacher = _interval(teacher_row.iloc[0], "zero_shot_loss") if len(teacher_row) else None
    teacher_ms = float(teacher_row["latency_ms"].iloc[0]) if len(teacher_row) else math.nan
    columns, curves = [], {}
    all_curves = _read(out / "results_curves.csv")
    for strategy in STRATEGIES:
        found = arms[arms["arm"].map(ARMS) == strategy]
        if found.empty:
            continue
        row = found.iloc[0]
        column = Column(
            strategy,
            "done",
            name=row["run"],
            spec=json.loads(row["spec"]),
            params=float(row["params"]),
            param_ratio=float(row["params"]) / float(teacher_row["params"].iloc[0]) if len(teacher_row) else None,
            zero_shot=_interval(row, "zero_shot_loss"),
            distilled=_interval(row, "distilled_loss"),
            zero_shot_windows=_table(windows, row["run"], "zero_shot"),
            distilled_windows=_table(windows, row["run"], "distilled"),
            seeds=int(row.get("seeds", 1) or 1),
        )
        column.speedup, column.speedup_note = _speedup(row, teacher_ms, summary.get("settings", {}))
        columns.append(column)
        curves[strategy] = _band(all_curves, row["run"])
    seeds = sorted((out / "importance").glob("seed-*")) if (out / "importance").is_dir() else []
    scores = next((str(s) for s in seeds if (s / "scores.json").is_file()), None)
    return StudyView(out, columns, teacher, curves, summary, scores)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _speedup(row, teacher_ms: float, settings: dict) -> tuple[tuple | None, str]:
    """(estimate, low, high) of the arm's prefill speedup over the teacher and its note, as the live
    path reads a paired bench: the study times each architecture interleaved with the teacher and
    records speedup, speedup_low, speedup_high (hybridlab.measure.paired). Older studies recorded
    only the latencies: their ratio, without an interval."""
    paired = _number(row.get("speedup"))
    if paired is not None:
        note = "prefill timed in pairs with the teacher by the study"
        if "seq_len" in settings and "latency_repeats" in settings:
            note = f"prefill of {settings['seq_len']} tokens, {settings['latency_repeats']} rounds, paired by the study"
        low, high = _number(row.get("speedup_low")), _number(row.get("speedup_high"))
        if low == high:  # one round: no interval (the report prints none either)
            low = high = None
        return (paired, low, high), note
    latency = _number(row.get("latency_ms"))
    if math.isnan(teacher_ms) or latency is None:
        return None, ""
    note = "prefill timed once per architecture by the study (not paired: no interval)"
    return (teacher_ms / latency, None, None), note


def _number(value) -> float | None:
    """A results.csv cell as a float; None for an empty cell or a column the study's version lacks."""
    return None if value is None or value != value else float(value)


def _interval(row, prefix: str) -> stats.Interval | None:
    estimate = row.get(prefix)
    if estimate is None or estimate != estimate:  # NaN: the arm has no such stage
        return None
    low, high = row.get(f"{prefix}_low", math.nan), row.get(f"{prefix}_high", math.nan)  # older studies: none
    return stats.Interval(float(estimate), float(low), float(high))


def _table(windows: pd.DataFrame, run: str, stage: str) -> np.ndarray | None:
    """[S, W] losses of one run and stage, seeds by row: what the paired bootstrap resamples."""
    if windows.empty:
        return None
    part = windows[(windows["run"] == run) & (windows["stage"] == stage)]
    if part.empty:
        return None
    return part.pivot_table(index="seed", columns="window", values="loss").to_numpy(dtype=np.float64)


def _band(curves: pd.DataFrame, run: str) -> pd.DataFrame:
    """step, mean, low, high of the run's validation loss over seeds (the study's own band columns)."""
    empty = pd.DataFrame(columns=["step", "mean", "low", "high"])
    if curves.empty or "run" not in curves:
        return empty
    part = curves[(curves["run"] == run) & (curves.get("kind") == "eval")].dropna(subset=["val_loss"])
    if part.empty:
        return empty
    grouped = part.groupby("step")["val_loss"]
    return pd.DataFrame(
        {"mean": grouped.mean(), "low": grouped.min(), "high": grouped.max()}
    ).reset_index()  # the same as val_loss_mean/min/max, which older studies lack
