"""Chained jobs: a job may wait for parent jobs (the job_parents table, schema version 3).

A waiting job is decided from its parents inside the write transaction that ends one
of them (job_rows.finish_job, request_cancel, fail_orphan), so the store never keeps
a waiting job whose parents have all finished: once every parent has succeeded it
becomes queued (its queue message is sent after the commit, by the worker that ran
the parent; recovery re-sends one that a crash lost), and once a parent has failed or
been cancelled it ends the same way, with an error naming that parent, and so do its
own waiting dependents, all the way down the chain.

A spec value "job:N" stands for the model job N writes (its result's model_path);
hybridlab.jobs.parents checks such references at submission and resolves them when
the job runs.
"""

from __future__ import annotations

import re
import sqlite3
import time

from hybridlab.store.db import Store
from hybridlab.store.status import CANCELLED, FAILED, QUEUED, SUCCEEDED, WAITING

_JOB_REF = re.compile(r"job:([1-9][0-9]*)")


def job_ref(job_id: int) -> str:
    """How a spec refers to the model that job `job_id` makes."""
    return f"job:{int(job_id)}"


def parse_job_ref(value) -> int | None:
    """The job id in a "job:N" reference, else None."""
    match = _JOB_REF.fullmatch(value) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


def waiting_message(parents) -> str:
    return "waiting for job " + ", ".join(str(p) for p in sorted(parents))


def add_parents(conn: sqlite3.Connection, job_id: int, parents) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO job_parents (job_id, parent_id) VALUES (?, ?)",
        [(int(job_id), int(p)) for p in parents],
    )


def settle(conn: sqlite3.Connection, job_id: int) -> None:
    """Queue waiting job `job_id` if all its parents succeeded, end it (and, in turn, its
    waiting dependents) if one failed or was cancelled; leave it waiting otherwise."""
    todo = [int(job_id)]
    while todo:
        job = todo.pop()
        parents = conn.execute(
            "SELECT p.id, p.kind, p.status, p.error FROM job_parents d JOIN jobs p ON p.id = d.parent_id "
            "WHERE d.job_id = ? ORDER BY p.id",
            (job,),
        ).fetchall()
        broken = next((p for p in parents if p["status"] in (FAILED, CANCELLED)), None)
        if broken is not None and _end(conn, job, broken):
            todo.extend(_waiting_children(conn, job))
        elif broken is None and all(p["status"] == SUCCEEDED for p in parents):
            conn.execute(
                "UPDATE jobs SET status = ?, message = 'queued' WHERE id = ? AND status = ?", (QUEUED, job, WAITING)
            )


def settle_dependents(conn: sqlite3.Connection, parent_id: int) -> None:
    """After job `parent_id` finished: decide each of its waiting dependents."""
    for child in _waiting_children(conn, parent_id):
        settle(conn, child)


def _end(conn: sqlite3.Connection, job_id: int, parent) -> bool:
    # A failed parent fails the chain below it; a cancelled one cancels it.
    status = FAILED if parent["status"] == FAILED else CANCELLED
    error = f"parent job {parent['id']} ({parent['kind']}) {parent['status']}, so this job did not run"
    if parent["status"] == FAILED and parent["error"]:
        error += f" (job {parent['id']}: {parent['error']})"
    cur = conn.execute(
        "UPDATE jobs SET status = ?, error = ?, message = ?, finished_at = ? WHERE id = ? AND status = ?",
        (status, error, f"parent job {parent['id']} {parent['status']}", time.time(), job_id, WAITING),
    )
    return cur.rowcount == 1


def _waiting_children(conn: sqlite3.Connection, parent_id: int) -> list[int]:
    rows = conn.execute(
        "SELECT j.id FROM job_parents d JOIN jobs j ON j.id = d.job_id WHERE d.parent_id = ? AND j.status = ?",
        (int(parent_id), WAITING),
    ).fetchall()
    return [int(r[0]) for r in rows]


def parents_of(store: Store, job_id: int) -> list[int]:
    rows = store.query("SELECT parent_id FROM job_parents WHERE job_id = ? ORDER BY parent_id", (int(job_id),))
    return [int(r[0]) for r in rows]


def parent_map(store: Store) -> dict[int, list[int]]:
    """job id -> its parents' ids, for every job that has parents."""
    parents: dict[int, list[int]] = {}
    for row in store.query("SELECT job_id, parent_id FROM job_parents ORDER BY job_id, parent_id"):
        parents.setdefault(int(row[0]), []).append(int(row[1]))
    return parents


def queued_children(store: Store, parent_id: int) -> list[int]:
    """Dependents of `parent_id` that are queued now: the ones its finishing released."""
    rows = store.query(
        "SELECT j.id FROM job_parents d JOIN jobs j ON j.id = d.job_id WHERE d.parent_id = ? AND j.status = ? "
        "ORDER BY j.id",
        (int(parent_id), QUEUED),
    )
    return [int(r[0]) for r in rows]


def settle_waiting(store: Store) -> None:
    """Decide every waiting job again. A safety net for recovery: finishing a parent already
    does this in its own transaction, but a store written by other code may need it."""
    for row in store.query("SELECT id FROM jobs WHERE status = ? ORDER BY id", (WAITING,)):
        with store.write() as conn:
            settle(conn, int(row[0]))
