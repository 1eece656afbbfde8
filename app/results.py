"""One comparison table per parent model, joined from the store's run listings:
the teacher, every pruned candidate and every distilled student, with validation
loss (evaluations) and prefill latency (benchmarks, else estimated from FLOPs).
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
    "latency_source",
    "spec",
]


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
    frame[["params", "param_ratio", "flops_per_token", "flops_ratio", "val_loss", "prefill_ms"]] = frame[
        ["params", "param_ratio", "flops_per_token", "flops_ratio", "val_loss", "prefill_ms"]
    ].astype(float)
    teacher_ms = frame.loc[0, "prefill_ms"]
    measured = frame["prefill_ms"].notna()
    frame["latency_ms"] = np.where(measured, frame["prefill_ms"], teacher_ms * frame["flops_ratio"])
    frame["latency_source"] = np.where(measured, "measured", np.where(frame["latency_ms"].notna(), "estimated", None))
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
