"""Output paths checked before any work: a command's --out, --csv or run folder can be written
(not an existing result, not inside a file, in a writable folder, on a disk with room for what
goes there), so a mistake there is one line at the start instead of an error after the whole run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hybridlab.core.errors import UserError


def check_new_folder(path: str | os.PathLike, label: str = "--out", may_exist: bool = False) -> Path:
    """An output folder that can be made: not an existing file or (unless `may_exist`) folder,
    not inside a file, and in a folder this process may write to. UserError naming `label`."""
    return _check_output(path, label, folder=True, may_exist=may_exist)


def check_new_file(path: str | os.PathLike, label: str, may_exist: bool = False) -> Path:
    """An output file that can be written, like check_new_folder."""
    return _check_output(path, label, folder=False, may_exist=may_exist)


def check_free_space(path: str | os.PathLike, need: int, label: str = "--out", what: str = "the output") -> None:
    """UserError when the disk that will hold `path` has fewer than `need` bytes free: a checkpoint
    that runs out of room fails after all the work, and (written to a temporary name) leaves nothing."""
    free = shutil.disk_usage(_nearest_existing(Path(path).expanduser().absolute())).free
    if need > free:
        raise UserError(
            f"{label} {path}: not enough disk space for {what} (about {gib(need)} needed, {gib(free)} free); "
            f"free some space or choose a {label} on another disk"
        )


def same_disk(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths (existing or not yet) lie on one filesystem, so what goes to both adds up."""
    first, second = (_nearest_existing(Path(p).expanduser().absolute()) for p in (a, b))
    return os.stat(first).st_dev == os.stat(second).st_dev


def gib(size: int) -> str:
    """A byte count for people: 1.50 GiB, 300.0 MiB, 12.0 KiB."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}" if unit == "GiB" else f"{size / scale:.1f} {unit}"
    return f"{size / 1024:.1f} KiB"


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _check_output(path, label: str, folder: bool, may_exist: bool) -> Path:
    path = Path(path).expanduser()
    what = "folder" if folder else "file"
    if path.exists() or path.is_symlink():
        if folder != path.is_dir():
            raise UserError(
                f"{label} {path} is a {'folder' if path.is_dir() else 'file'}, not a {what}; choose another {label}"
            )
        if not may_exist:
            raise UserError(f"{label} {path} already exists; choose another {label} (results are never overwritten)")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{label} {path} is inside {parent}, which is a file; choose another {label}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{label} {path} cannot be created: {parent} is not writable; choose another {label}")
    return path
