"""Job records: the lifecycle [waiting ->] queued -> running -> succeeded | failed | cancelled.

A job with parents waits until they all succeed (see hybridlab.store.job_parents);
every transition that ends a job decides its waiting dependents in the same
transaction. Every transition is one conditional UPDATE, so it happens at most once even when
several workers, a submitter and the dashboard race: a job is claimed only if it is
still queued, and a worker may only touch a running job it owns (`worker` matches).
A worker that lost its job (re-queued after it was presumed dead) learns so from
the rowcount and stops.
"""

from __future__ import annotations

import time

from hybridlab.store.db import Store, from_json, to_json
from hybridlab.store.job_parents import add_parents, parent_map, parents_of, settle, settle_dependents, waiting_message
from hybridlab.store.status import (  # noqa: F401 - the status names are part of this module's interface
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    WAITING,
)


def insert_job(store: Store, kind: str, spec: dict, parents=()) -> int:
    """Record a job: queued, or waiting for `parents` (existing job ids) to succeed. A job whose
    parents have all finished already is decided at once (queued, or ended if one did not succeed)."""
    parents = sorted({int(p) for p in parents})
    status, message = (WAITING, waiting_message(parents)) if parents else (QUEUED, "queued")
    with store.write() as conn:
        cur = conn.execute(
            "INSERT INTO jobs (kind, spec_json, status, message, created_at) VALUES (?, ?, ?, ?, ?)",
            (kind, to_json(spec), status, message, time.time()),
        )
        job_id = int(cur.lastrowid)
        if parents:
            add_parents(conn, job_id, parents)
            settle(conn, job_id)
        return job_id


def get_job(store: Store, job_id: int) -> dict | None:
    rows = store.query("SELECT * FROM jobs WHERE id = ?", (int(job_id),))
    return _job_dict(rows[0], parents_of(store, job_id)) if rows else None


def job_rows(store: Store, status: str | None = None) -> list[dict]:
    if status is None:
        rows = store.query("SELECT * FROM jobs ORDER BY id")
    else:
        rows = store.query("SELECT * FROM jobs WHERE status = ? ORDER BY id", (status,))
    parents = parent_map(store)
    return [_job_dict(r, parents.get(r["id"], [])) for r in rows]


def claim_job(store: Store, job_id: int, worker: str) -> bool:
    """queued -> running for `worker`; False if someone else got it or it was cancelled."""
    now = time.time()
    with store.write() as conn:
        cur = conn.execute(
            "UPDATE jobs SET status = ?, worker = ?, heartbeat = ?, attempts = attempts + 1, "
            "started_at = coalesce(started_at, ?), message = 'starting' WHERE id = ? AND status = ?",
            (RUNNING, worker, now, now, int(job_id), QUEUED),
        )
        return cur.rowcount == 1


def heartbeat(store: Store, job_id: int, worker: str) -> tuple[bool, bool]:
    """Refresh the job's heartbeat; returns (still owned by `worker`, cancel requested)."""
    with store.write() as conn:
        cur = conn.execute(
            "UPDATE jobs SET heartbeat = ? WHERE id = ? AND worker = ? AND status = ?",
            (time.time(), int(job_id), worker, RUNNING),
        )
        if cur.rowcount == 0:
            return False, False
        (cancel,) = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        return True, bool(cancel)


def set_progress(store: Store, job_id: int, worker: str, fraction: float, message: str) -> bool:
    with store.write() as conn:
        cur = conn.execute(
            "UPDATE jobs SET fraction = ?, message = ?, heartbeat = ? WHERE id = ? AND worker = ? AND status = ?",
            (min(max(float(fraction), 0.0), 1.0), str(message), time.time(), int(job_id), worker, RUNNING),
        )
        return cur.rowcount == 1


def finish_job(store: Store, job_id: int, worker: str, status: str, result=None, error: str | None = None) -> bool:
    if status not in FINISHED:
        raise ValueError(f"finish_job needs one of {FINISHED}, got {status!r}")
    message = {SUCCEEDED: "done", FAILED: "failed", CANCELLED: "cancelled"}[status]
    with store.write() as conn:
        cur = conn.execute(
            "UPDATE jobs SET status = ?, result_json = ?, error = ?, message = ?, finished_at = ?, "
            "fraction = CASE WHEN ? THEN 1.0 ELSE fraction END WHERE id = ? AND worker = ? AND status = ?",
            (status, to_json(result), error, message, time.time(), status == SUCCEEDED, int(job_id), worker, RUNNING),
        )
        if cur.rowcount == 1:
            settle_dependents(conn, job_id)
        return cur.rowcount == 1


def release_job(store: Store, job_id: int, worker: str, message: str) -> bool:
    """running (owned by `worker`) -> queued, to be resumed by the next worker that claims it."""
    with store.write() as conn:
        cur = conn.execute(
            "UPDATE jobs SET status = ?, worker = NULL, message = ? WHERE id = ? AND worker = ? AND status = ?",
            (QUEUED, message, int(job_id), worker, RUNNING),
        )
        return cur.rowcount == 1


def fail_orphan(store: Store, job_id: int, worker: str, error: str) -> bool:
    """running (owned by a process that died) -> failed."""
    with store.write() as conn:
        cur = conn.execute(
            "UPDATE jobs SET status = ?, error = ?, message = 'failed', finished_at = ? "
            "WHERE id = ? AND worker = ? AND status = ?",
            (FAILED, error, time.time(), int(job_id), worker, RUNNING),
        )
        if cur.rowcount == 1:
            settle_dependents(conn, job_id)
        return cur.rowcount == 1


def request_cancel(store: Store, job_id: int) -> str | None:
    """Cancel a waiting or queued job at once (and its waiting dependents), flag a running one;
    returns the status afterwards (None: no such job)."""
    with store.write() as conn:
        cur = conn.execute(
            "UPDATE jobs SET status = ?, message = 'cancelled', finished_at = ? WHERE id = ? AND status IN (?, ?)",
            (CANCELLED, time.time(), int(job_id), QUEUED, WAITING),
        )
        if cur.rowcount == 1:
            settle_dependents(conn, job_id)
        conn.execute(
            "UPDATE jobs SET cancel_requested = 1, message = 'cancelling' WHERE id = ? AND status = ?",
            (int(job_id), RUNNING),
        )
        row = conn.execute("SELECT status FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        return row[0] if row else None


def _job_dict(row, parents: list[int]) -> dict:
    job = dict(row)
    job["parents"] = parents
    job["spec"] = from_json(job.pop("spec_json"))
    job["result"] = from_json(job.pop("result_json"))
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job
