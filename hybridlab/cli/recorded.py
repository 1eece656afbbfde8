"""The dedicated commands (importance, prune, distill, eval, bench, search) run their work
as a job of the experiment store, in this process, through `hybridlab.jobs.run_sync`.

So a command-line run shows up in `hybridlab jobs list` and in the dashboard exactly like
a job the worker ran. The job writes its artifact inside the workspace; the command then
copies it to the `--out` folder the user asked for (a temporary sibling folder, renamed
when complete), so `--out` holds what it always held and nothing half-written.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from hybridlab.core.atomic import atomic_directory
from hybridlab.core.outputs import check_new_folder


def add_workspace_option(parser) -> None:
    parser.add_argument(
        "--workspace",
        default=None,
        metavar="DIR",
        help="experiment store this run is recorded in (default: $HYBRIDLAB_WORKSPACE, else ~/.hybridlab)",
    )


def refuse_existing(path: str | Path, option: str = "--out") -> None:
    """Checked before any work: a command never writes over an earlier result, and its output
    folder can be made (not inside a file, in a writable folder)."""
    check_new_folder(path, option)


def run_recorded(kind: str, spec: dict, args) -> dict:
    """Run job `kind` with `spec` in this process, recorded in `args.workspace`; its result.

    A bad spec is refused before anything is recorded (JobSpecError, a ValueError naming
    every problem). Errors from the work itself are recorded on the job, then raised.
    """
    from hybridlab.jobs import run_sync
    from hybridlab.store import SUCCEEDED

    job = run_sync(kind, spec, workspace=args.workspace)
    if job["status"] != SUCCEEDED:  # e.g. the job was taken over by a worker that recovered it
        raise RuntimeError(f"{kind} job {job['id']} ended {job['status']}: {job['error'] or job['message']}")
    where = f" --workspace {args.workspace}" if args.workspace else ""
    print(f"recorded as {kind} job {job['id']} (see `hybridlab jobs show {job['id']}{where}`)", file=sys.stderr)
    return job["result"]


def artifact_dir(result: dict, args) -> Path:
    """The folder of a job's artifact (results record it relative to the workspace)."""
    from hybridlab.core.paths import workspace_dir

    return workspace_dir(args.workspace) / result["artifact"]


def copy_out(source: Path, out: str | Path) -> Path:
    """Copy the folder `source` (a finished artifact) to `out`, atomically."""
    with atomic_directory(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return Path(out).expanduser().resolve()
