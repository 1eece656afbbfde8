"""Crash recovery: jobs whose process died go back to the queue (or fail, if run by a command).

A job is presumed dead when its owner is a process on this host that no longer
exists, or when its heartbeat is older than `stale_s` (the owner is elsewhere, hung,
or its pid was reused). A worker's job is re-queued and resumes from its checkpoint
folder; a job a CLI command ran synchronously is marked failed, since nobody is
waiting for it to come back (its unfinished run rows end failed with it). Every queued job
also gets a queue message if it lost its own (a submitter killed between writing the job
and queuing it, or a worker killed between finishing a job and sending the messages of the
dependents that released).

Recovery also clears what dead jobs left on disk (hybridlab.store.leftovers): half-written
hidden temporary folders and files in artifacts/<kind>/, under jobs/<id>/ and beside the
store are deleted, and a checkpoint or artifact stranded in its hidden backup by a kill
between two renames is renamed back. Only leftovers no running job may still be writing
are touched: the folders are listed before the running jobs are, so anything a job that
starts meanwhile creates is not in the list.

It runs when a worker starts and every stale_s / 2 in every worker, and once per process
in hybridlab.jobs.api (the dashboard, `hybridlab jobs ...`), so a dead command's job does
not show as running until some worker starts.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from hybridlab.jobs.queue import JobQueue
from hybridlab.jobs.runner import SYNC_PREFIX
from hybridlab.store import FAILED, QUEUED, RUNNING, Store, job_parents, job_rows, run_rows
from hybridlab.store.leftovers import Leftover, clean_leftover, find_leftovers

log = logging.getLogger(__name__)
STALE_S = 30.0  # seconds without a heartbeat after which a job's owner is presumed dead


def recover(store: Store, queue: JobQueue, stale_s: float = STALE_S) -> list[int]:
    """Re-queue (or fail) presumed-dead running jobs and clear what dead jobs left on disk;
    returns the ids re-queued."""
    leftovers = find_leftovers(store.workspace)  # before the running jobs are listed: see the docstring
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
            if job_rows.fail_orphan(store, job["id"], owner, error):
                run_rows.close_open_runs(store, job["id"], FAILED)
        elif job_rows.release_job(store, job["id"], owner, f"worker {owner} stopped; resuming"):
            log.warning("job %s: worker %s stopped; re-queued to resume from its checkpoint", job["id"], owner)
            queue.enqueue(job["id"])
            requeued.append(job["id"])
    clean_leftovers(store, leftovers)
    job_parents.settle_waiting(store)  # a safety net: finishing a parent already decides its dependents
    pending = queue.pending_job_ids()
    for job in job_rows.job_rows(store, QUEUED):  # also the dependents a dead worker released but never sent
        if job["id"] not in pending:
            queue.enqueue(job["id"])
    return requeued


def clean_leftovers(store: Store, leftovers: list[Leftover] | None = None) -> dict[str, int]:
    """Delete or restore the leftovers that no running job may still be writing; counts by outcome.
    Call after dead jobs were re-queued or failed: the jobs still running then are alive."""
    if leftovers is None:
        leftovers = find_leftovers(store.workspace)
    running = job_rows.job_rows(store, RUNNING)
    done: dict[str, int] = {}
    for leftover in leftovers:
        if any(_may_write(job, leftover) for job in running):
            continue
        try:
            outcome = clean_leftover(leftover)
        except OSError as err:  # e.g. a job that started meanwhile took it: try again next time
            log.warning("could not clean up %s: %s", leftover.path, err)
            continue
        if outcome != "kept":
            log.info("%s %s", outcome, leftover.path)
        done[outcome] = done.get(outcome, 0) + 1
    return done


def _may_write(job: dict, leftover: Leftover) -> bool:
    """Whether running `job` may be the one writing `leftover` (when unsure: yes)."""
    if leftover.job_id is not None:
        return leftover.job_id == job["id"]
    if leftover.artifact is not None:
        name = leftover.artifact[1]
        given = (job["spec"] or {}).get("name")
        return name == given if given else name.endswith(f"-{job['id']}")  # default names end in -<job id>
    return False  # beside the store: a backup's temporary file, written only while the store is upgraded


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
