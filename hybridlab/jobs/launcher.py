"""`ensure_worker`: start a background worker for a workspace unless one is alive.

For the dashboard: the worker runs as its own process in its own session (so a
Streamlit reload or Ctrl-C does not kill it), logging to <workspace>/logs/worker.log.
A file lock makes concurrent calls (two browser tabs) start only one worker.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from hybridlab.core.paths import REPO_ROOT, workspace_dir
from hybridlab.jobs.worker import live_workers, workers_dir

START_TIMEOUT_S = 60.0


def ensure_worker(workspace=None, extra_args: tuple[str, ...] = (), stale_s: float = 30.0) -> int:
    """The pid of a live worker for `workspace`, starting one if needed."""
    workspace = workspace_dir(workspace)
    lock_path = workers_dir(workspace) / ".launch.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        alive = live_workers(workspace, stale_s)
        if alive:
            return int(alive[0]["pid"])
        proc = _spawn(workspace, extra_args)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(w["pid"] == proc.pid for w in live_workers(workspace, stale_s)):
                return proc.pid
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        log_tail = _tail(workspace / "logs" / "worker.log")
        raise RuntimeError(
            f"the background worker did not start (exit code {proc.poll()}); "
            f"last lines of {workspace / 'logs' / 'worker.log'}:\n{log_tail}"
        )


def _spawn(workspace: Path, extra_args: tuple[str, ...]) -> subprocess.Popen:
    logs = workspace / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The worker must import this same hybridlab even when it is not pip-installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    with open(logs / "worker.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "hybridlab", "worker", "--workspace", str(workspace), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
