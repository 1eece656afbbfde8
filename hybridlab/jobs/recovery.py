"""Crash recovery: jobs whose process died go back to the queue (or fail, if run by a command).

A job is presumed dead when its owner is a process on this host that no longer
exists, or when its heartbeat is older than `stale_s` (the owner is elsewhere, hung,
or its pid was reused). A worker's job is re-queued and resumes from its checkpoint
folder; a job a CLI command ran synchronously is marked failed, since nobody is
waiting for it to come back. Every queued job also gets a queue message if it lost
its own (a submitter killed between writing the job and queuing it, or a worker killed
between finishing a job and sending the messages of the dependents that released).
"""

from __future__ import annotations

import logging
import os
import socket
import time

from hybridlab.jobs.queue import JobQueue
from hybridlab.jobs.runner import SYNC_PREFIX
from hybridlab.store import QUEUED, RUNNING, Store, job_parents, job_rows

log = logging.getLogger(__name__)


def recover(store: Store, queue: JobQueue, stale_s: float) -> list[int]:
    """Re-queue (or fail) presumed-dead running jobs; returns the ids re-queued."""
    requeued = []
    for job in job_rows.job_rows(store, RUNNING):
        owner = job["worker"] or ""
        if not presumed_dead(owner, job["heartbeat"], stale_s):
            continue
        if owner.startswith(SYNC_PREFIX):
            error = (
                f"the command that ran this job ({owner}) stopped without finishing it; "
                "run it again (it resumes from the job's checkpoint folder where the kind supports it)"
            )
            job_rows.fail_orphan(store, job["id"], owner, error)
        elif job_rows.release_job(store, job["id"], owner, f"worker {owner} stopped; resuming"):
            log.warning("job %s: worker %s stopped; re-queued to resume from its checkpoint", job["id"], owner)
            queue.enqueue(job["id"])
            requeued.append(job["id"])
    job_parents.settle_waiting(store)  # a safety net: finishing a parent already decides its dependents
    pending = queue.pending_job_ids()
    for job in job_rows.job_rows(store, QUEUED):  # also the dependents a dead worker released but never sent
        if job["id"] not in pending:
            queue.enqueue(job["id"])
    return requeued


def presumed_dead(owner: str, heartbeat: float | None, stale_s: float) -> bool:
    host, _, pid = owner.removeprefix(SYNC_PREFIX).rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
        return True
    return heartbeat is None or time.time() - heartbeat > stale_s


def pid_alive(pid: int) -> bool:
    """True if process `pid` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child nobody has waited for is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
