"""The store as pandas DataFrames, for the dashboard, notebooks and `hybridlab jobs list`.

Run tables are flattened: the run's own columns, then every key of its result as a
column (nested dicts joined with '.'), then its spec as `spec.<key>` columns.
Timestamps become pandas datetimes (UTC).
"""

from __future__ import annotations

import pandas as pd

from hybridlab.store.db import Store
from hybridlab.store.job_rows import job_rows
from hybridlab.store.run_rows import run_rows

JOB_COLUMNS = [
    "id",
    "kind",
    "status",
    "fraction",
    "message",
    "error",
    "attempts",
    "worker",
    "created_at",
    "started_at",
    "finished_at",
    "heartbeat",
    "parents",
]
RUN_COLUMNS = ["id", "job_id", "name", "model_ref", "status", "artifact", "created_at", "finished_at"]
METRIC_COLUMNS = ["step", "name", "value", "time"]
MODEL_COLUMNS = ["id", "ref", "name", "created_at"]
_TIMES = ["created_at", "started_at", "finished_at", "heartbeat", "time"]


def jobs_frame(store: Store) -> pd.DataFrame:
    jobs = job_rows(store)
    frame = pd.DataFrame([{c: j[c] for c in JOB_COLUMNS} for j in jobs], columns=JOB_COLUMNS)
    return _times(frame)


def metrics_frame(store: Store, job_id: int) -> pd.DataFrame:
    """Tidy metric streams of one job: one row per (step, name), ordered by step."""
    rows = store.query(
        "SELECT step, name, value, time FROM metrics WHERE job_id = ? ORDER BY step, name", (int(job_id),)
    )
    return _times(pd.DataFrame([dict(r) for r in rows], columns=METRIC_COLUMNS))


def models_frame(store: Store) -> pd.DataFrame:
    """Every model a job used or made: id, ref ("demo" or an absolute folder), name, created_at."""
    rows = store.query("SELECT id, ref, name, created_at FROM models ORDER BY id")
    return _times(pd.DataFrame([dict(r) for r in rows], columns=MODEL_COLUMNS))


def runs_frame(store: Store, table: str) -> pd.DataFrame:
    runs = run_rows(store, table)
    base = pd.DataFrame([{c: r[c] for c in RUN_COLUMNS} for r in runs], columns=RUN_COLUMNS)
    results = _flat([r["result"] or {} for r in runs], prefix="", taken=set(RUN_COLUMNS), index=base.index)
    specs = _flat([r["spec"] or {} for r in runs], prefix="spec.", taken=set(), index=base.index)
    return _times(pd.concat([base, results, specs], axis=1))


def _flat(dicts: list[dict], prefix: str, taken: set, index) -> pd.DataFrame:
    if not dicts:
        return pd.DataFrame(index=index)
    frame = pd.json_normalize(dicts, sep=".")
    frame.index = index
    # A result key that clashes with a run column (say "status") keeps a "result." prefix.
    return frame.rename(columns=lambda c: f"result.{c}" if c in taken else f"{prefix}{c}")


def _times(frame: pd.DataFrame) -> pd.DataFrame:
    for column in _TIMES:
        if column in frame.columns:
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    return frame
