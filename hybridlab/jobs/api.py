"""What the dashboard, notebooks and CLI call; nothing here exposes the worker's internals.

job_id = submit("importance", {"model": "demo"})
prune_id = submit("prune", {...})
submit("eval", {"model": job_ref(prune_id)}, after=prune_id)  # waits; runs on the pruned model
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
from hybridlab.jobs.guards import check_confined
from hybridlab.jobs.parents import check_parents
from hybridlab.jobs.queue import JobQueue
from hybridlab.jobs.recovery import recover
from hybridlab.jobs.specs import JobSpecError, validate_spec
from hybridlab.store import FINISHED, QUEUED, Store, job_rows, jobs_frame, metrics_frame, models_frame, runs_frame

_stores: dict = {}
_queues: dict = {}


def _store(workspace) -> Store:
    """One Store per workspace per process (each holds a connection per thread). The first use
    runs crash recovery once, so what a dead process left shows as it is (a dead command's job
    failed, a dead worker's job queued again) even before any worker starts."""
    path = workspace_dir(workspace)
    if path not in _stores:
        store = Store(path)
        recover(store, _queue(store))
        _stores[path] = store
    return _stores[path]


def _queue(store: Store) -> JobQueue:
    if store.workspace not in _queues:
        _queues[store.workspace] = JobQueue(store.workspace)
    return _queues[store.workspace]


def submit(kind: str, spec: dict, workspace=None, after: int | list[int] | None = None) -> int:
    """Validate `spec` for `kind`, record and queue the job; JobSpecError naming every problem.

    `after`: a job id or a list of them. The job then waits until they have all succeeded,
    and ends (failed or cancelled, naming the parent) if one of them does not. A model
    field may be "job:N" (`job_ref(N)`): the model job N writes; job N becomes a parent."""
    store = _store(workspace)
    problems = []
    try:
        clean = validate_spec(kind, spec, store)
    except JobSpecError as err:
        problems.append(str(err))
    else:
        try:
            check_confined(kind, clean, store.workspace)  # a queued job writes only inside the workspace
        except ValueError as err:
            problems.append(f"invalid {kind} job spec: {err}")
    try:
        parents = check_parents(store, kind, spec, after)
    except JobSpecError as err:  # reported together with the spec's problems: one message names all
        problems.append(str(err))
    if problems:
        raise JobSpecError("; ".join(problems))
    job_id = job_rows.insert_job(store, kind, clean, parents)
    if job_rows.get_job(store, job_id)["status"] == QUEUED:  # a waiting job is queued when its parents succeed
        _queue(store).enqueue(job_id)  # if this process dies right here, recovery queues the job
    return job_id


def get_job(job_id: int, workspace=None) -> dict:
    """id, kind, spec, status, fraction, message, error, result, attempts, parents, timestamps."""
    store = _store(workspace)
    job = job_rows.get_job(store, job_id)
    if job is None:
        raise ValueError(f"there is no job {job_id} in {store.workspace}; see `hybridlab jobs list`")
    return job


def cancel(job_id: int, workspace=None) -> str:
    """Cancel a job: a waiting or queued one at once, a running one at its next progress report;
    its waiting dependents end as cancelled with it. Returns its status afterwards
    ('cancelled', 'running' while it winds down, or a finished status)."""
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
    return models_frame(_store(workspace))


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
