"""One comparison table per parent model, joined from the store's run listings:
the teacher, every pruned candidate and every distilled student, with validation
loss (evaluations) and prefill latency (benchmarks, else estimated from FLOPs). A model timed in
pairs with the teacher (a paired bench, or a search finalist) carries its speedup and interval.
Plain pandas, no Streamlit: the Pareto page and the tests share it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hybridlab.store import SUCCEEDED

COLUMNS = [
    "name",
    "kind",
    "strategy",
    "model",
    "params",
    "param_ratio",
    "flops_per_token",
    "flops_ratio",
    "val_loss",
    "prefill_ms",
    "latency_ms",
    "latency_low",
    "latency_high",
    "latency_source",
    "speedup",
    "speedup_low",
    "speedup_high",
    "spec",
]
PAIRED = {  # a paired bench result's columns (hybridlab.measure.bench.measure_paired) -> comparison columns
    "paired.prefill.speedup": "speedup",
    "paired.prefill.speedup_low": "speedup_low",
    "paired.prefill.speedup_high": "speedup_high",
    "paired.prefill.reference_ms": "reference_ms",
}


def _col(frame: pd.DataFrame, name: str, default=np.nan) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(default, index=frame.index, dtype=object)


def latest_by_model(runs: pd.DataFrame, value: str) -> dict:
    """model_ref -> `value` of its most recent succeeded run that has one."""
    if runs.empty or value not in runs.columns:
        return {}
    done = runs[(runs["status"] == SUCCEEDED) & runs[value].notna()].sort_values("id")
    return dict(zip(done["model_ref"], done[value]))


def _spec_of(row: pd.Series) -> dict:
    return {
        k.removeprefix("spec.spec."): v
        for k, v in row.items()
        if k.startswith("spec.spec.") and not (isinstance(v, float) and np.isnan(v))
    }


def comparison(
    parent: str,
    parent_sizes: dict,
    candidates: pd.DataFrame,
    evaluations: pd.DataFrame,
    benchmarks: pd.DataFrame,
    distillations: pd.DataFrame,
    parent_name: str = "teacher",
) -> pd.DataFrame:
    """parent: the model ref candidates were pruned from ("demo" or an absolute path);
    parent_sizes: {"params", "flops_per_token"} of the parent (hybridlab.model.sizes)."""
    losses = latest_by_model(evaluations, "val_loss")
    prefill = latest_by_model(benchmarks, "prefill_ms")
    paired = _paired_by_model(benchmarks)
    rows = [
        {
            "name": parent_name,
            "kind": "teacher",
            "strategy": "teacher",
            "model": parent,
            "params": parent_sizes["params"],
            "param_ratio": 1.0,
            "flops_per_token": parent_sizes["flops_per_token"],
            "flops_ratio": 1.0,
            "spec": {},
        }
    ]
    mine = (
        candidates[(_col(candidates, "model_ref") == parent) & (_col(candidates, "status") == SUCCEEDED)]
        if not candidates.empty
        else candidates
    )
    by_path = {}
    for _, run in mine.iterrows():
        row = {
            "name": run["name"],
            "kind": "candidate",
            "strategy": run.get("strategy", "width"),
            "model": run.get("model_path"),
            "params": run.get("params"),
            "param_ratio": run.get("param_ratio"),
            "flops_per_token": run.get("flops_per_token"),
            "flops_ratio": run.get("flops_ratio"),
            "spec": _spec_of(run),
            "val_loss": run.get("val_loss"),
            # a search's finalists are timed in pairs with the teacher
            **{k: run.get(k) for k in ("speedup", "speedup_low", "speedup_high")},
        }  # a search may record its own loss
        rows.append(row)
        if isinstance(row["model"], str):
            by_path[row["model"]] = row
    if not distillations.empty:
        done = distillations[(distillations["status"] == SUCCEEDED)]
        for _, run in done.iterrows():
            student = by_path.get(run.get("spec.student"))
            if student is None:
                continue  # a student that is not one of this parent's candidates
            rows.append(
                {
                    **student,
                    "name": run["name"],
                    "kind": "distilled",
                    "model": run.get("model_path"),
                    "val_loss": run.get("val_loss", np.nan),
                }
            )
    frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
    repeated = frame["name"].duplicated(keep=False)  # names pick rows in the compare view: make them unique
    frame.loc[repeated, "name"] = [f"{n} ({i})" for i, n in frame.loc[repeated, "name"].items()]
    for i, row in frame.iterrows():
        if pd.isna(row["val_loss"]) and row["model"] in losses:
            frame.at[i, "val_loss"] = losses[row["model"]]
        if row["model"] in prefill:
            frame.at[i, "prefill_ms"] = prefill[row["model"]]
        for key, value in paired.get(row["model"], {}).items():
            if key != "reference_ms":
                frame.at[i, key] = value
    frame[["params", "param_ratio", "flops_per_token", "flops_ratio", "val_loss", "prefill_ms"]] = frame[
        ["params", "param_ratio", "flops_per_token", "flops_ratio", "val_loss", "prefill_ms"]
    ].astype(float)
    teacher_ms = frame.loc[0, "prefill_ms"]
    if pd.isna(teacher_ms):  # the teacher timed only as the reference of paired benches
        teacher_ms = next(
            (v["reference_ms"] for v in paired.values() if v.get("reference_ms") == v.get("reference_ms")), np.nan
        )
    measured = frame["prefill_ms"].notna()
    frame["latency_ms"] = np.where(measured, frame["prefill_ms"], teacher_ms * frame["flops_ratio"])
    frame["latency_source"] = np.where(measured, "measured", np.where(frame["latency_ms"].notna(), "estimated", None))
    return _with_paired_latency(frame, teacher_ms)


def _paired_by_model(benchmarks: pd.DataFrame) -> dict:
    """model_ref -> {speedup, speedup_low, speedup_high, reference_ms} of its latest paired bench."""
    if benchmarks.empty or "paired.prefill.speedup" not in benchmarks.columns:
        return {}  # results stored before benches were paired: nothing to add
    done = benchmarks[(benchmarks["status"] == SUCCEEDED) & benchmarks["paired.prefill.speedup"].notna()]
    return {
        row["model_ref"]: {new: row.get(old) for old, new in PAIRED.items()}
        for _, row in done.sort_values("id").iterrows()
    }


def _with_paired_latency(frame: pd.DataFrame, teacher_ms: float) -> pd.DataFrame:
    """A row timed in pairs with the teacher gets latency = the teacher's prefill / its speedup, and the
    speedup's interval as latency_low..latency_high: rows timed in different jobs (different machine
    load) then compare through their ratios to the same teacher time."""
    frame[["speedup", "speedup_low", "speedup_high"]] = frame[["speedup", "speedup_low", "speedup_high"]].astype(float)
    paired = frame["speedup"].notna() & pd.notna(teacher_ms)
    frame.loc[paired, "latency_ms"] = teacher_ms / frame.loc[paired, "speedup"]
    frame["latency_low"] = np.where(paired, teacher_ms / frame["speedup_high"], np.nan)
    frame["latency_high"] = np.where(paired, teacher_ms / frame["speedup_low"], np.nan)
    frame.loc[paired, "latency_source"] = "paired"
    return frame


def unevaluated(frame: pd.DataFrame) -> list[str]:
    """Model refs in the comparison that have no validation loss yet."""
    return [m for m, loss in zip(frame["model"], frame["val_loss"]) if isinstance(m, str) and pd.isna(loss)]


def side_by_side(frame: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Two rows of the comparison as columns, spec keys expanded, for the compare view."""
    picked = frame.set_index("name").loc[[first, second]]
    specs = pd.DataFrame([row for row in picked["spec"]], index=picked.index)
    table = pd.concat([picked.drop(columns=["spec"]), specs.add_prefix("spec: ")], axis=1)
    return table.T.astype(str)


def architecture(config) -> dict:
    """The sizes that pruning changes, for the side-by-side architecture view."""
    from hybridlab.families import family_for

    w = family_for(config).widths(config)
    return {
        "pattern": w.pattern,
        "layers": w.num_layers,
        "hidden": w.hidden_size,
        "FFN": w.ffn_hidden_size,
        "attention heads": w.num_attention_heads,
        "Mamba heads": w.mamba_num_heads,
        "Mamba head dim": w.mamba_head_dim,
    }
