"""A background thread that keeps a running job's heartbeat fresh and notices cancels.

The job's own thread may sit in one long step (a big forward pass) for a while; the
heartbeat still proves the process is alive, so only a dead or hung process goes
stale and gets its job taken over. Each beat also reads the cancel flag and whether
the job still belongs to this worker, and sets the matching `Flags` event that the
job's progress callback raises on.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from hybridlab.jobs.context import Flags
from hybridlab.store import job_rows
from hybridlab.store.db import Store

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, store: Store, job_id: int, worker: str, flags: Flags, interval_s: float = 1.0):
        self.store, self.job_id, self.worker, self.flags, self.interval_s = store, job_id, worker, flags, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                owned, cancel = job_rows.heartbeat(self.store, self.job_id, self.worker)
            except sqlite3.Error as err:  # keep beating; a transient error must not kill the job
                log.warning("heartbeat of job %s failed: %s", self.job_id, err)
                continue
            if not owned:
                self.flags.lost.set()
            if cancel:
                self.flags.cancel.set()
        self.store.close()  # this thread's connection
