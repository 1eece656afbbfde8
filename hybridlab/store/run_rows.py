"""Results of jobs: run rows (importance runs, candidates, distillations, evaluations,
benchmarks), metric time series, and the models they were made from.

A run row is keyed by (job_id, name), so a job that is resumed after a crash finds
and completes the row it started instead of adding a second one; a metric point is
keyed by (job_id, name, step), so steps replayed after a resume overwrite their
earlier values instead of duplicating them.
"""

from __future__ import annotations

import time
from pathlib import Path

from hybridlab.store.db import Store, from_json, to_json
from hybridlab.store.schema import RUN_TABLES
from hybridlab.store.status import FINISHED, RUNNING


def _table(table: str) -> str:
    if table not in RUN_TABLES:
        raise ValueError(f"unknown run table {table!r}; choose one of {RUN_TABLES}")
    return table


def start_run(store: Store, table: str, job_id: int | None, name: str, model_ref: str, spec: dict) -> int:
    """The id of run `name` of `job_id`, created (status running) if this is its first attempt."""
    table = _table(table)
    with store.write() as conn:
        row = conn.execute(f"SELECT id FROM {table} WHERE job_id IS ? AND name = ?", (job_id, name)).fetchone()
        if row is not None:
            conn.execute(f"UPDATE {table} SET status = ? WHERE id = ?", (RUNNING, row[0]))
            return int(row[0])
        cur = conn.execute(
            f"INSERT INTO {table} (job_id, name, model_ref, spec_json, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, name, str(model_ref), to_json(spec), RUNNING, time.time()),
        )
        return int(cur.lastrowid)


def finish_run(store: Store, table: str, run_id: int, status: str, artifact: str | None = None, result=None) -> None:
    if status not in FINISHED:
        raise ValueError(f"a run finishes as one of {FINISHED}, got {status!r}")
    with store.write() as conn:
        conn.execute(
            f"UPDATE {_table(table)} SET status = ?, artifact = ?, result_json = ?, finished_at = ? WHERE id = ?",
            (status, artifact, to_json(result), time.time(), int(run_id)),
        )


def close_open_runs(store: Store, job_id: int, status: str) -> None:
    """Mark a job's unfinished run rows with the job's final status (failed / cancelled)."""
    with store.write() as conn:
        for table in RUN_TABLES:
            conn.execute(
                f"UPDATE {table} SET status = ?, finished_at = ? WHERE job_id = ? AND status = ?",
                (status, time.time(), int(job_id), RUNNING),
            )


def get_run(store: Store, table: str, run_id: int) -> dict | None:
    rows = store.query(f"SELECT * FROM {_table(table)} WHERE id = ?", (int(run_id),))
    return run_dict(rows[0]) if rows else None


def run_rows(store: Store, table: str) -> list[dict]:
    return [run_dict(r) for r in store.query(f"SELECT * FROM {_table(table)} ORDER BY id")]


def run_dict(row) -> dict:
    run = dict(row)
    run["spec"] = from_json(run.pop("spec_json"))
    run["result"] = from_json(run.pop("result_json"))
    return run


def add_metrics(store: Store, job_id: int, step: int, values: dict[str, float]) -> None:
    """Record one step of a job's metric streams (a replayed step overwrites)."""
    now = time.time()
    rows = [(int(job_id), int(step), str(name), float(value), now) for name, value in values.items()]
    with store.write() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO metrics (job_id, step, name, value, time) VALUES (?, ?, ?, ?, ?)", rows
        )


def last_metric_step(store: Store, job_id: int) -> int | None:
    """The highest step a job has recorded metrics for (a resumed job counts on from it)."""
    rows = store.query("SELECT max(step) FROM metrics WHERE job_id = ?", (int(job_id),))
    return rows[0][0] if rows else None


def register_model(store: Store, ref: str, name: str | None = None, config: dict | None = None) -> int:
    """The id of model `ref` ("demo" or an absolute directory), added on first sight."""
    ref = str(ref)
    with store.write() as conn:
        conn.execute(
            "INSERT OR IGNORE INTO models (ref, name, config_json, created_at) VALUES (?, ?, ?, ?)",
            (ref, name or Path(ref).name, to_json(config), time.time()),
        )
        if config is not None:
            conn.execute("UPDATE models SET config_json = ? WHERE ref = ?", (to_json(config), ref))
        return int(conn.execute("SELECT id FROM models WHERE ref = ?", (ref,)).fetchone()[0])
