"""What the dashboard, notebooks and CLI call; nothing here exposes the worker's internals.

job_id = submit("importance", {"model": "demo"})
ensure_worker()                      # a background worker, if none is alive
get_job(job_id)["fraction"]          # poll: status, fraction, message, error, result
job_metrics(job_id)                  # tidy DataFrame: step, name, value, time
cancel(job_id)
list_candidates()                    # runs with their results as DataFrames
"""

from __future__ import annotations

import time

import pandas as pd

from hybridlab.core.paths import workspace_dir
from hybridlab.jobs.queue import JobQueue
from hybridlab.jobs.specs import validate_spec
from hybridlab.store import FINISHED, Store, job_rows, jobs_frame, metrics_frame, runs_frame

_stores: dict = {}
_queues: dict = {}


def _store(workspace) -> Store:
    """One Store per workspace per process (each holds a connection per thread)."""
    path = workspace_dir(workspace)
    if path not in _stores:
        _stores[path] = Store(path)
    return _stores[path]


def _queue(store: Store) -> JobQueue:
    if store.workspace not in _queues:
        _queues[store.workspace] = JobQueue(store.workspace)
    return _queues[store.workspace]


def submit(kind: str, spec: dict, workspace=None) -> int:
    """Validate `spec` for `kind` (JobSpecError on any problem), record and queue the job."""
    store = _store(workspace)
    clean = validate_spec(kind, spec, store)
    job_id = job_rows.insert_job(store, kind, clean)
    _queue(store).enqueue(job_id)  # if this process dies right here, recovery queues the job
    return job_id


def get_job(job_id: int, workspace=None) -> dict:
    """id, kind, spec, status, fraction, message, error, result, attempts, timestamps."""
    store = _store(workspace)
    job = job_rows.get_job(store, job_id)
    if job is None:
        raise ValueError(f"there is no job {job_id} in {store.workspace}; see `hybridlab jobs list`")
    return job


def cancel(job_id: int, workspace=None) -> str:
    """Cancel a job: a queued one at once, a running one at its next progress report.
    Returns its status afterwards ('cancelled', 'running' while it winds down, or a finished status)."""
    store = _store(workspace)
    status = job_rows.request_cancel(store, job_id)
    if status is None:
        raise ValueError(f"there is no job {job_id} in {store.workspace}; see `hybridlab jobs list`")
    return status


def wait(job_id: int, timeout_s: float | None = None, workspace=None, poll_s: float = 0.1) -> dict:
    """Block until the job finishes (TimeoutError after `timeout_s`); returns get_job()."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        job = get_job(job_id, workspace)
        if job["status"] in FINISHED:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s ({job['message']})")
        time.sleep(poll_s)


def job_metrics(job_id: int, workspace=None) -> pd.DataFrame:
    return metrics_frame(_store(workspace), job_id)


def list_jobs(workspace=None) -> pd.DataFrame:
    return jobs_frame(_store(workspace))


def list_models(workspace=None) -> pd.DataFrame:
    store = _store(workspace)
    rows = [dict(r) for r in store.query("SELECT id, ref, name, created_at FROM models ORDER BY id")]
    frame = pd.DataFrame(rows, columns=["id", "ref", "name", "created_at"])
    frame["created_at"] = pd.to_datetime(frame["created_at"], unit="s", utc=True)
    return frame


def list_importance_runs(workspace=None) -> pd.DataFrame:
    return runs_frame(_store(workspace), "importance_runs")


def list_candidates(workspace=None) -> pd.DataFrame:
    return runs_frame(_store(workspace), "candidates")


def list_distillations(workspace=None) -> pd.DataFrame:
    return runs_frame(_store(workspace), "distillations")


def list_evaluations(workspace=None) -> pd.DataFrame:
    return runs_frame(_store(workspace), "evaluations")


def list_benchmarks(workspace=None) -> pd.DataFrame:
    return runs_frame(_store(workspace), "benchmarks")
