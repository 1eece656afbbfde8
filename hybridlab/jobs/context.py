"""What a job handler gets besides its spec: progress, metrics, cancellation, paths.

`ctx.progress` is a `hybridlab.core.progress.ProgressFn`: pass it to any library function.
It records (fraction, message) in the store (throttled), records metrics when given
(a "step" key in the metrics dict names the step; without one, steps count up), and
raises `Cancelled` when the user cancelled the job or `Interrupted` (a Cancelled)
when the worker is shutting down or lost the job, so long work unwinds at its next
step. Work that checkpoints into `ctx.checkpoint_dir` resumes from there: the folder
is the same for every attempt of a job. It is made when a job first asks for it (a job
that keeps no checkpoints leaves no folder behind), an attempt starts by putting back a
checkpoint an earlier attempt's death stranded mid-rename, and once the job has succeeded
its training checkpoints (resume state only) are deleted, and the folder too if that
leaves it empty.

`ctx.artifact_path(kind, name)` refuses a folder that another job's run or result records:
a job never replaces an artifact whose row would then describe something else.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from hybridlab.core.errors import UserError
from hybridlab.core.progress import Cancelled, ProgressFn
from hybridlab.store import artifact_path, job_rows, relative_artifact, run_rows, write_artifact_dir
from hybridlab.store.artifacts import ARTIFACTS, JOBS
from hybridlab.store.db import Store
from hybridlab.store.leftovers import clean_leftover, leftovers_under
from hybridlab.store.owners import artifact_records, jobs_named
from hybridlab.training.checkpoint import CHECKPOINT_FILES

PROGRESS_WRITE_INTERVAL_S = 0.25


class Interrupted(Cancelled):
    """The job must stop now but will be resumed (worker shutting down, or job re-assigned)."""


@dataclass
class Flags:
    """Set by the heartbeat thread and the worker's signal handler; read by ctx.progress."""

    cancel: threading.Event = field(default_factory=threading.Event)
    interrupt: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)


class JobContext:
    def __init__(self, store: Store, job: dict, worker: str, flags: Flags, on_progress: ProgressFn | None = None):
        self.store = store
        self.job_id: int = job["id"]
        self.kind: str = job["kind"]
        self.spec: dict = job["spec"]
        self.attempt: int = job["attempts"]
        self.worker = worker
        self.flags = flags
        self.workspace: Path = store.workspace
        self.job_dir: Path = job_dir(store.workspace, self.job_id)
        self._restore_stranded()
        self._on_progress = on_progress  # an extra callback (run_sync's progress bar)
        self._last_write = 0.0
        self._last_message = None
        last = run_rows.last_metric_step(store, self.job_id)
        self._next_step = 0 if last is None else last + 1  # a resumed job counts on from its last step

    @property
    def checkpoint_dir(self) -> Path:
        """<workspace>/jobs/<id>/checkpoint, made on first use; the same folder on every attempt."""
        path = self.job_dir / "checkpoint"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _restore_stranded(self) -> None:
        """Before an attempt: clear what the last one left half-written in this job's folder, and put
        back any checkpoint it stranded mid-rename (also in a run folder the spec names)."""
        for leftover in leftovers_under(self.job_dir):
            clean_leftover(leftover)
        run_dir = self.spec.get("run_dir") if isinstance(self.spec, dict) else None
        if isinstance(run_dir, str) and Path(run_dir).is_dir():
            for leftover in leftovers_under(Path(run_dir)):
                if leftover.backup:
                    clean_leftover(leftover)

    # ---- progress, metrics, cancellation ---------------------------------------------------

    def check_cancelled(self) -> None:
        if self.flags.cancel.is_set():
            raise Cancelled(f"job {self.job_id} was cancelled")
        if self.flags.lost.is_set():
            raise Interrupted(f"job {self.job_id} was re-assigned to another worker")
        if self.flags.interrupt.is_set():
            raise Interrupted(f"worker stopping; job {self.job_id} will resume from its checkpoint")

    def progress(self, fraction: float, message: str, metrics: dict | None = None) -> None:
        self.check_cancelled()
        if metrics:
            self.log_metrics(metrics)
        now = time.monotonic()
        if message != self._last_message or fraction >= 1.0 or now - self._last_write >= PROGRESS_WRITE_INTERVAL_S:
            if not job_rows.set_progress(self.store, self.job_id, self.worker, fraction, message):
                self.flags.lost.set()
            self._last_write, self._last_message = now, message
        if self._on_progress is not None:
            self._on_progress(fraction, message, metrics)
        self.check_cancelled()

    def sub_progress(self, start: float, end: float) -> ProgressFn:
        """A ProgressFn for one stage of the job, mapped onto [start, end] of its fraction."""

        def report(fraction: float, message: str, metrics: dict | None = None) -> None:
            self.progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message, metrics)

        return report

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        values = dict(metrics)
        if step is None:
            step = values.pop("step", None)
        else:
            values.pop("step", None)
        step = self._next_step if step is None else int(step)
        self._next_step = max(self._next_step, step + 1)
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) or hasattr(v, "item")}
        if numbers:
            run_rows.add_metrics(self.store, self.job_id, step, {k: float(v) for k, v in numbers.items()})

    # ---- artifacts and run rows -------------------------------------------------------------

    def artifact_path(self, kind: str, name: str) -> Path:
        """artifacts/<kind>/<name>, if this job may write it: UserError when another job's run or
        result records that folder, or when it exists and nothing in this store accounts for it."""
        path = artifact_path(self.workspace, kind, name)
        others = {job: what for job, what in artifact_records(self.store, path).items() if job != self.job_id}
        shown = f"{ARTIFACTS}/{kind}/{name}"
        if others:
            raise UserError(
                f"{shown} is the artifact of {', '.join(others.values())}; this job will not replace it "
                "while that record describes it: give this job another 'name'"
            )
        if path.exists() and not self._may_replace(name):
            raise UserError(
                f"{shown} exists but no run in this store records it (left by an earlier store, or put "
                "there by hand); move it away or give this job another 'name'"
            )
        return path

    def _may_replace(self, name: str) -> bool:
        # An unrecorded folder of this name is ours to replace when this job or another attempt of its
        # name may have written it before dying: an earlier attempt, or a failed or cancelled job.
        if self.attempt > 1:
            return True
        return any(
            job["id"] != self.job_id and job["status"] in (job_rows.FAILED, job_rows.CANCELLED)
            for job in jobs_named(self.store, self.kind, name)
        )

    @contextlib.contextmanager
    def write_artifact(self, kind: str, name: str) -> Iterator[Path]:
        """A temporary folder that becomes artifacts/<kind>/<name> when the block succeeds."""
        with write_artifact_dir(self.artifact_path(kind, name)) as tmp:
            yield tmp

    def relative(self, path: Path) -> str:
        return relative_artifact(self.workspace, path)

    def start_run(self, table: str, name: str, model_ref: str, spec: dict) -> int:
        """The run row `name` of this job (created on the first attempt, reused on resume)."""
        return run_rows.start_run(self.store, table, self.job_id, name, model_ref, spec)

    def finish_run(self, table: str, run_id: int, artifact: Path | None = None, result: dict | None = None) -> None:
        rel = self.relative(artifact) if artifact is not None else None
        run_rows.finish_run(self.store, table, run_id, job_rows.SUCCEEDED, rel, result)

    def register_model(self, ref: str, config=None) -> int:
        """Record a model the job used or made (config: a transformers config or dict)."""
        as_dict = config.to_dict() if hasattr(config, "to_dict") else config
        return run_rows.register_model(self.store, ref, config=as_dict)

    def clear_checkpoints(self) -> None:
        shutil.rmtree(self.job_dir / "checkpoint", ignore_errors=True)

    def discard_checkpoints(self) -> None:
        """After success: delete the training checkpoints under this job's folder (they only served
        to resume it), then the folders that leaves empty, up to and including jobs/<id>/."""
        if not self.job_dir.is_dir():
            return
        for state in sorted(self.job_dir.rglob(CHECKPOINT_FILES[-1]), reverse=True):
            folder = state.parent
            if all((folder / name).is_file() for name in CHECKPOINT_FILES):
                shutil.rmtree(folder, ignore_errors=True)
        for folder in sorted((p for p in self.job_dir.rglob("*") if p.is_dir()), reverse=True):
            _remove_if_empty(folder)
        _remove_if_empty(self.job_dir)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (or already gone)
        pass


def job_dir(workspace: Path, job_id: int) -> Path:
    return Path(workspace) / JOBS / str(int(job_id))
