"""What `hybridlab store check` looks at in a workspace's files, besides the jobs.

Each finding is one line: artifact folders that a run records but that are gone, artifact
folders that no run records (a job killed after writing its artifact but before recording
it, or folders left from an earlier store), and hidden temporary or backup folders that a
killed process left behind (hybridlab.store.leftovers). The store file's own integrity is
checked when it is opened (hybridlab.store.db).
"""

from __future__ import annotations

import os
from pathlib import Path

from hybridlab.store.artifacts import ARTIFACTS
from hybridlab.store.db import Store
from hybridlab.store.leftovers import find_leftovers
from hybridlab.store.owners import recorded_artifacts


def artifact_problems(store: Store) -> list[str]:
    """Recorded artifacts that are missing, then artifact folders nothing records."""
    recorded = recorded_artifacts(store)
    problems = [
        f"{rel} is missing, but {who} records it as its artifact"
        for rel, who in sorted(recorded.items())
        if not (store.workspace / rel).exists()
    ]
    root = store.workspace / ARTIFACTS
    for kind in _visible_folders(root):
        for folder in _visible_folders(kind):
            rel = folder.relative_to(store.workspace).as_posix()
            if rel not in recorded:
                problems.append(
                    f"{rel} is recorded by no run (a job killed before recording it, or a folder from an "
                    "earlier store); move it away, or keep it as a plain model folder"
                )
    return problems


def leftover_problems(store: Store) -> list[str]:
    return [
        f"{leftover.describe(store.workspace)} was left by a killed process"
        for leftover in find_leftovers(store.workspace)
    ]


def _visible_folders(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
