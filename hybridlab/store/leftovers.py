"""Temporary files and folders that a killed process left in the workspace.

hybridlab writes every artifact, checkpoint and output file into a hidden sibling first and
renames it into place (hybridlab.core.atomic, write_artifact_dir, training checkpoints). A
process killed before the rename leaves that sibling behind, half-written; one killed between
the two renames of a replacement leaves the previous version in a hidden backup
(`.<name>.old...`) with its own place empty. `find_leftovers` lists both kinds where hybridlab
writes: the workspace folder itself (store backups), each artifacts/<kind>/ folder, and
everything under jobs/<id>/. `clean_leftover` deletes a half-written one and renames a
stranded backup back into its place. Which of them a live job still owns is for the caller
(hybridlab.jobs.recovery) to decide.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hybridlab.core.atomic import leftover_of, restore_swapped
from hybridlab.store.artifacts import ARTIFACTS, JOBS
from hybridlab.training.checkpoint import checkpoint_complete


@dataclass(frozen=True)
class Leftover:
    path: Path
    target: Path  # what it is a half-written copy or a backup of
    backup: bool  # a complete earlier version (goes back if `target` is missing), not a partial new one
    job_id: int | None = None  # it lies under jobs/<id>/
    artifact: tuple[str, str] | None = None  # it lies in artifacts/<kind>/: (kind, target name)

    def describe(self, workspace: Path) -> str:
        what = "backup of" if self.backup else "unfinished copy of"
        return f"{self.path.relative_to(workspace)} ({what} {self.target.name})"


def find_leftovers(workspace: Path) -> list[Leftover]:
    workspace = Path(workspace)
    found = _hidden(workspace)
    artifacts = workspace / ARTIFACTS
    for kind in _folders(artifacts):
        found += [
            Leftover(item.path, item.target, item.backup, artifact=(kind.name, item.target.name))
            for item in _hidden(kind)
        ]
    for job in _folders(workspace / JOBS):
        job_id = int(job.name) if job.name.isdigit() else None
        found += [Leftover(item.path, item.target, item.backup, job_id=job_id) for item in _walk(job)]
    return found


def leftovers_under(root: Path) -> list[Leftover]:
    """The leftovers anywhere under folder `root` (a job's folder, a run folder)."""
    return _walk(Path(root))


def clean_leftover(leftover: Leftover) -> str:
    """Delete a half-written leftover, put a stranded backup back (or delete it when its target is
    whole again); returns "removed", "restored" or "kept" (a backup with nothing whole to restore)."""
    if not leftover.backup:
        _remove(leftover.path)
        return "removed"
    done = restore_swapped(leftover.target, _complete_for(leftover.target))
    if done == "restored":
        return "restored"
    if done == "removed backup" or not leftover.path.exists():
        return "removed"
    return "kept"


def _complete_for(target: Path):
    # A training checkpoint is whole only with both its files; any other folder or file once it exists.
    return checkpoint_complete if target.name == "checkpoint" else Path.exists


def _hidden(folder: Path) -> list[Leftover]:
    found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        parsed = leftover_of(entry.name) if entry.name.startswith(".") else None
        if parsed is not None:
            target, backup = parsed
            found.append(Leftover(Path(entry.path), folder / target, backup))
    return found


def _walk(root: Path) -> list[Leftover]:
    """Leftovers anywhere under `root`, not looking inside the leftovers themselves."""
    found = _hidden(root)
    for sub in _folders(root):
        found += _walk(sub)
    return found


def _folders(folder: Path) -> list[Path]:
    try:
        return sorted(
            Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
        )
    except OSError:
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
