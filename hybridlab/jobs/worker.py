"""The worker process (`hybridlab worker`): takes job ids off the huey queue and runs them.

One job at a time, in the main thread. Alongside it a beat thread refreshes this
worker's file in <workspace>/workers/ (how `ensure_worker` and `hybridlab jobs`
see that a worker is alive) and periodically runs crash recovery, so a job left
behind by a killed worker is picked up even by a worker that was already running.

SIGTERM or Ctrl-C stops the worker gracefully: the running job is interrupted at
its next progress report and put back in the queue, to resume from its checkpoint.
A second signal exits at once (the job is then recovered like after a crash).

The beat thread also re-checks the store file (`PRAGMA quick_check`) every few minutes;
a worker whose store turns out damaged stops like on SIGTERM, logging the one line that
says how to recover, instead of reading and writing a broken file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from hybridlab.core.atomic import write_text
from hybridlab.jobs.queue import JobQueue
from hybridlab.jobs.recovery import pid_alive, recover
from hybridlab.jobs.registry import load_plugins
from hybridlab.jobs.runner import execute_job, worker_id
from hybridlab.store import QUEUED, SUCCEEDED, Store, job_parents
from hybridlab.store.db import StoreError, check_integrity

log = logging.getLogger(__name__)
WORKERS_DIR = "workers"
INTEGRITY_EVERY_S = 300.0  # how often a running worker re-checks the store file


def run_worker(
    workspace=None,
    *,
    poll_s: float = 0.2,
    heartbeat_s: float = 1.0,
    stale_s: float = 30.0,
    max_jobs: int | None = None,
    exit_when_idle: bool = False,
    plugins: tuple[str, ...] = (),
) -> int:
    """Run jobs until stopped; returns how many jobs this worker ran."""
    load_plugins(plugins)
    store = Store(workspace)
    queue = JobQueue(store.workspace)
    me = worker_id()
    stopping = threading.Event()
    _install_signal_handlers(stopping)
    queue.executor = lambda job_id: _run_one(store, queue, job_id, me, stopping, heartbeat_s)
    beat = _WorkerBeat(store, queue, me, heartbeat_s, stale_s, on_damage=stopping.set)
    log.info("worker %s serving %s", me, store.workspace)
    ran = 0
    try:
        recover(store, queue, stale_s)
        beat.start()
        while not stopping.is_set() and (max_jobs is None or ran < max_jobs):
            task = queue.dequeue()
            if task is None:
                if exit_when_idle:
                    break
                stopping.wait(poll_s)
                continue
            queue.run(task)
            ran += 1
    finally:
        beat.stop()
        queue.close()
        log.info("worker %s stopped after %d job(s)", me, ran)
    return ran


def _run_one(store: Store, queue: JobQueue, job_id: int, me: str, stopping: threading.Event, heartbeat_s: float):
    status = execute_job(store, job_id, me, stopping=stopping, heartbeat_s=heartbeat_s)
    if status == QUEUED:  # interrupted by shutdown: queue it again for whoever runs next
        queue.enqueue(job_id)
    if status == SUCCEEDED:
        # Its success queued its dependents in the store; send their messages. If this process
        # dies first, recovery sends them (it queues every queued job that has none).
        for child in job_parents.queued_children(store, job_id):
            queue.enqueue(child)


def _install_signal_handlers(stopping: threading.Event) -> None:
    def handle(signum, frame):
        if stopping.is_set():
            raise SystemExit(128 + signum)  # second signal: leave now, recovery handles the job
        log.info("received %s; stopping after the current job step", signal.Signals(signum).name)
        stopping.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


class _WorkerBeat:
    """Writes <workspace>/workers/<host>-<pid>.json every beat; runs recovery every stale_s / 2."""

    def __init__(self, store: Store, queue: JobQueue, me: str, heartbeat_s: float, stale_s: float, on_damage=None):
        self.store, self.queue, self.me, self.heartbeat_s, self.stale_s = store, queue, me, heartbeat_s, stale_s
        self.on_damage = on_damage
        self.path = workers_dir(store.workspace) / f"{socket.gethostname()}-{os.getpid()}.json"
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-beat", daemon=True)

    def start(self) -> None:
        self._write()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.path.unlink(missing_ok=True)

    def _loop(self) -> None:
        last_recovery = last_check = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
                if time.monotonic() - last_check >= INTEGRITY_EVERY_S:
                    last_check = time.monotonic()
                    check_integrity(self.store.conn, self.store.path)
                if time.monotonic() - last_recovery >= self.stale_s / 2:
                    last_recovery = time.monotonic()
                    recover(self.store, self.queue, self.stale_s)
            except StoreError as err:  # the store file is damaged or gone: stop, say how to recover
                log.error("%s; this worker stops", err)
                if self.on_damage is not None:
                    self.on_damage()
            except Exception:  # never let bookkeeping kill the worker
                log.exception("worker beat failed")

    def _write(self) -> None:
        record = {
            "worker": self.me,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self.started,
            "heartbeat": time.time(),
        }
        write_text(self.path, json.dumps(record))


def workers_dir(workspace: Path) -> Path:
    path = Path(workspace) / WORKERS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def live_workers(workspace: Path, stale_s: float = 30.0) -> list[dict]:
    """Workers whose file is fresh (and, on this host, whose process exists); prunes dead files."""
    alive = []
    for path in sorted(workers_dir(workspace).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or garbage: ignore
        local = record.get("host") == socket.gethostname()
        if local and not pid_alive(int(record.get("pid", -1))):
            path.unlink(missing_ok=True)
            continue
        if time.time() - float(record.get("heartbeat", 0)) <= stale_s:
            alive.append(record)
    return alive
