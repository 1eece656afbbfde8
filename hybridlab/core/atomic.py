"""Write a file or a folder completely or not at all: fill a temporary sibling, then rename it.

The temporary siblings are hidden: `.<name>.<random>` (a folder), `.<name>.<random>.tmp` (a
file), and a folder being replaced is first renamed to `.<name>.old-<random>` and deleted once
the new one is in place. A process killed midway leaves such siblings behind; `leftover_of`
recognises them, and `restore_swapped` puts back a folder whose replacement was interrupted
between its two renames (hybridlab.jobs.recovery cleans up after dead jobs with these).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

from hybridlab.core.faults import pause_point

# The hidden siblings the writers in hybridlab make: `.<target>.<suffix>`. Backups ("old") hold a
# complete earlier version; everything else is a partial new one.
_LEFTOVER = re.compile(
    r"\.(?P<target>.+?)\.(?:(?P<old>old(?:-[0-9a-f]{8})?)|tmp(?:-[0-9a-f]{8})?|[a-z0-9_]{8}(?:\.tmp)?)"
)


@contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary folder next to `out`; on success it replaces `out` in one rename."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        pause_point("atomic.before-rename")
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(new: Path, final: Path) -> None:
    """Move the complete folder `new` to `final`. An existing `final` is renamed to a hidden
    backup first and deleted only after `new` is in place, so at every moment either `final` or
    its backup is whole (`restore_swapped` undoes a swap a crash cut between the two renames)."""
    new, final = Path(new), Path(final)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        pause_point("atomic.between-renames")
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Yields a handle on a temporary sibling of `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, value, **dump_options) -> None:
    """Pretty JSON with a final newline (indent 2 unless told otherwise)."""
    write_text(path, json.dumps(value, **{"indent": 2, **dump_options}) + "\n")


def leftover_of(name: str) -> tuple[str, bool] | None:
    """(target name, is a backup) if `name` is a hidden sibling one of hybridlab's atomic writers
    makes (see the module docstring), else None."""
    match = _LEFTOVER.fullmatch(name)
    return (match["target"], match["old"] is not None) if match else None


def _exists(path: Path) -> bool:
    return path.exists()


def restore_swapped(path: str | os.PathLike, complete: Callable[[Path], bool] = _exists) -> str | None:
    """Finish a replacement of `path` that a crash interrupted, if there is one.

    A backup sibling (`.<name>.old...`) next to a complete `path` is deleted ("removed backup");
    when `path` is missing or not `complete`, the newest complete backup is renamed back into
    its place ("restored"). Returns what it did, None when there was nothing to do. Call it only
    when no live process is writing `path`.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return None
    backups = [
        entry
        for entry in path.parent.iterdir()
        if entry.name.startswith(".") and leftover_of(entry.name) == (path.name, True)
    ]
    if not backups:
        return None
    if path.exists() and complete(path):
        for backup in backups:
            _remove(backup)
        return "removed backup"
    whole = sorted((b for b in backups if complete(b)), key=lambda b: b.stat().st_mtime, reverse=True)
    if not whole:
        return None  # nothing complete to put back: leave everything for a person to look at
    if path.exists():
        _remove(path)
    try:
        os.replace(whole[0], path)
    except FileNotFoundError:  # another process restored it first
        return None
    for backup in whole[1:]:
        _remove(backup)
    return "restored"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
