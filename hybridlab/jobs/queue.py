"""The job queue: huey's SQLite storage in <workspace>/queue.db.

huey carries only job ids; everything about a job (spec, status, progress, results)
lives in the experiment store. The queue is therefore allowed to lose a message:
`hybridlab.jobs.recovery` re-sends one for every queued job that has none, and a
message for a job that is no longer queued is ignored (claiming is atomic).

Messages are JSON instead of huey's default pickle, so reading the queue can never
run code from the file. A queue file that is damaged or not a SQLite database is refused
with one line saying to move it away: nothing is lost with it, recovery rebuilds the
queue from the store.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable

from huey import SqliteHuey
from huey.registry import Message
from huey.serializer import Serializer

from hybridlab.store.db import StoreDamaged

QUEUE_FILE = "queue.db"
TASK_NAME = "run_job"  # registered as hybridlab.jobs.queue.run_job
# Message fields that JSON carries as they are; the rest (eta, callbacks, chords) stay unused.
_PLAIN_FIELDS = ("id", "name", "retries", "retry_delay", "retry_backoff", "priority", "args", "kwargs", "timeout")


class JsonSerializer(Serializer):
    """huey messages as JSON. Only the fields hybridlab uses may be set."""

    def _serialize(self, message: Message) -> bytes:
        fields = message._asdict()
        unsupported = {k for k, v in fields.items() if v not in (None, 0) and k not in _PLAIN_FIELDS}
        if unsupported:
            raise ValueError(f"the hybridlab queue cannot carry {sorted(unsupported)} in a message")
        return json.dumps(fields).encode()

    def _deserialize(self, data: bytes) -> Message:
        fields = json.loads(bytes(data).decode())
        fields["args"] = tuple(fields.get("args") or ())
        return Message(**fields)


class JobQueue:
    """One workspace's queue. `enqueue(job_id)` from anywhere; a worker sets `executor`."""

    def __init__(self, workspace: Path):
        self.path = Path(workspace) / QUEUE_FILE
        check_queue_file(self.path)
        try:
            self.huey = SqliteHuey(
                name="hybridlab",
                filename=str(self.path),
                results=False,
                utc=True,
                serializer=JsonSerializer(),
                timeout=60,
            )
        except sqlite3.DatabaseError as err:
            raise _unusable(self.path, err) from None
        self.executor: Callable[[int], None] | None = None
        self._task = self.huey.task(name=TASK_NAME)(self._run)

    def _run(self, job_id: int) -> None:
        if self.executor is None:
            raise RuntimeError("this JobQueue has no executor: only a worker runs jobs")
        self.executor(int(job_id))

    def enqueue(self, job_id: int) -> None:
        self._task(int(job_id))

    def dequeue(self):
        """The next task or None; run it with `run(task)` (which calls `executor(job_id)`)."""
        return self.huey.dequeue()

    def run(self, task) -> None:
        self.huey.execute(task)

    def pending_job_ids(self) -> set[int]:
        return {int(task.args[0]) for task in self.huey.pending()}

    def close(self) -> None:
        self.huey.storage.close()


def check_queue_file(path: Path) -> None:
    """StoreDamaged (one line: move it away) unless `path` is absent or a sound SQLite database."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(path, timeout=60)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise _unusable(path, err) from None
    if [str(r[0]) for r in rows] != ["ok"]:
        raise _unusable(path, f"quick_check: {rows[0][0]}")


def _unusable(path: Path, detail) -> StoreDamaged:
    return StoreDamaged(
        f"the job queue {path} is damaged or not a queue ({detail}): stop the workers and move {path.name} "
        f"(with its -wal/-shm files) away, e.g. `mv {path} {path}.broken`; nothing is lost, the next worker "
        "rebuilds the queue from the store"
    )
