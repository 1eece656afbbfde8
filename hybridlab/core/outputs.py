"""Output paths checked before any work: a command's --out, --csv or run folder can be written
(not an existing result, not inside a file, in a writable folder), so a mistake there is one
line at the start instead of an error after the whole run."""

from __future__ import annotations

import os
from pathlib import Path

from hybridlab.core.errors import UserError


def check_new_folder(path: str | os.PathLike, label: str = "--out", may_exist: bool = False) -> Path:
    """An output folder that can be made: not an existing file or (unless `may_exist`) folder,
    not inside a file, and in a folder this process may write to. UserError naming `label`."""
    return _check_output(path, label, folder=True, may_exist=may_exist)


def check_new_file(path: str | os.PathLike, label: str, may_exist: bool = False) -> Path:
    """An output file that can be written, like check_new_folder."""
    return _check_output(path, label, folder=False, may_exist=may_exist)


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
