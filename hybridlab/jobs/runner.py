"""Running one job: claim it, call its handler with a context, record the outcome.

The worker and `run_sync` (the CLI commands' synchronous path) share this code, so a
job run in either place leaves the same records in the store.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from contextlib import contextmanager

from hybridlab.core.errors import UserError, is_user_error, one_line
from hybridlab.core.progress import Cancelled, ProgressFn
from hybridlab.jobs.context import Flags, Interrupted, JobContext
from hybridlab.jobs.heartbeat import Heartbeat
from hybridlab.jobs.parents import resolve_references
from hybridlab.jobs.queue import JobQueue
from hybridlab.jobs.registry import get_kind
from hybridlab.jobs.specs import validate_spec
from hybridlab.store import CANCELLED, FAILED, QUEUED, SUCCEEDED, Store, job_parents, job_rows, run_rows

log = logging.getLogger(__name__)
SYNC_PREFIX = "sync:"


def worker_id(sync: bool = False) -> str:
    """Who runs a job: host and pid, so a dead owner on this host is recognised at once."""
    return f"{SYNC_PREFIX if sync else ''}{socket.gethostname()}:{os.getpid()}"


def execute_job(
    store: Store,
    job_id: int,
    worker: str,
    stopping: threading.Event | None = None,
    heartbeat_s: float = 1.0,
    on_progress: ProgressFn | None = None,
    reraise: bool = False,
) -> str | None:
    """Run queued job `job_id` if this worker can claim it; returns the status it ended in
    (None: not claimed, or taken away). QUEUED means interrupted and waiting to resume."""
    if not job_rows.claim_job(store, job_id, worker):
        log.info("job %s is not queued any more; skipping", job_id)
        return None
    job = job_rows.get_job(store, job_id)
    flags = Flags(interrupt=stopping) if stopping is not None else Flags()
    try:
        job["spec"] = resolve_references(store, job)  # "job:N" -> the model its parent wrote
    except ValueError as err:
        job_rows.finish_job(store, job_id, worker, FAILED, error=str(err))
        if reraise:
            raise
        return FAILED
    try:
        ctx = JobContext(store, job, worker, flags, on_progress)
    except Exception as err:  # e.g. the checkpoint folder cannot be made: fail, do not leave it running
        job_rows.finish_job(store, job_id, worker, FAILED, error=f"{type(err).__name__}: {err}")
        raise
    log.info("job %s (%s) started, attempt %s", job_id, job["kind"], job["attempts"])
    with Heartbeat(store, job_id, worker, flags, heartbeat_s):
        status = _run_handler(ctx, reraise)
    log.info("job %s ended: %s", job_id, status)
    return status


def _run_handler(ctx: JobContext, reraise: bool) -> str | None:
    store, job_id, worker = ctx.store, ctx.job_id, ctx.worker
    try:
        result = get_kind(ctx.kind).handler(ctx.spec, ctx)
    except Interrupted as err:
        log.info("job %s interrupted: %s", job_id, err)
        released = job_rows.release_job(store, job_id, worker, "interrupted; will resume from its checkpoint")
        if reraise:
            raise
        return QUEUED if released else None
    except (Cancelled, KeyboardInterrupt):
        _finish(ctx, CANCELLED, error="cancelled")
        if reraise or not isinstance(sys.exc_info()[1], Cancelled):
            raise
        return CANCELLED
    except Exception as err:
        if is_user_error(err):  # bad input: its one line is the record; no traceback in the log
            log.info("job %s refused: %s", job_id, one_line(err))
        elif not reraise:  # a bug: its traceback goes to the worker's log (a caller that reraises shows it)
            log.exception("job %s failed", job_id)
        _finish(ctx, FAILED, error=error_text(err))
        if reraise:
            raise
        return FAILED
    try:
        ok = job_rows.finish_job(store, job_id, worker, SUCCEEDED, result=result)
    except (TypeError, ValueError) as err:  # a result the store cannot hold as JSON
        _finish(ctx, FAILED, error=f"the {ctx.kind} handler returned a result that is not JSON: {err}")
        if reraise:
            raise
        return FAILED
    if ok:
        ctx.discard_checkpoints()  # resume state only: a succeeded job leaves no checkpoints behind
    return SUCCEEDED if ok else None


def error_text(err: BaseException) -> str:
    """What a failed job records: a user error's own line, else the exception's type and message."""
    if isinstance(err, UserError):
        return one_line(err)
    return one_line(f"{type(err).__name__}: {err}")


def _finish(ctx: JobContext, status: str, error: str) -> None:
    if job_rows.finish_job(ctx.store, ctx.job_id, ctx.worker, status, error=error):
        run_rows.close_open_runs(ctx.store, ctx.job_id, status)


def run_sync(kind: str, spec: dict, workspace=None, progress: ProgressFn | None = None) -> dict:
    """Validate and run a job in this process, recording it in the store like a worker would.

    For the CLI commands: a progress bar when `progress` is None; errors from the work
    (bad input, Cancelled, Ctrl-C) are recorded on the job and then raised to the caller.
    Returns the finished job (`get_job` dict; its "result" is the handler's return value).
    """
    store = Store(workspace)
    clean = validate_spec(kind, spec, store)
    job_id = job_rows.insert_job(store, kind, clean)
    with _bar_unless(progress) as on_progress:
        execute_job(store, job_id, worker_id(sync=True), on_progress=on_progress, reraise=True)
    released = job_parents.queued_children(store, job_id)
    if released:  # jobs submitted with after= this one while it ran: the workers take them from here
        queue = JobQueue(store.workspace)
        for child in released:
            queue.enqueue(child)
        queue.close()
    return job_rows.get_job(store, job_id)


@contextmanager
def _bar_unless(progress: ProgressFn | None):
    if progress is not None:
        yield progress
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, file=sys.stderr, dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")

    def on_progress(fraction: float, message: str, metrics: dict | None) -> None:
        bar.set_description_str(message, refresh=False)
        bar.update(max(0, int(fraction * 1000) - bar.n))

    try:
        yield on_progress
    finally:
        bar.close()
