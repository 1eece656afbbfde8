"""Artifact folders under <workspace>/artifacts/<kind>/<name>, written atomically.

Names come from users (the dashboard, job specs), so they are checked to be one
plain path component: no separators, no "..", nothing absolute. An artifact is
built in a hidden temporary folder next to its final place and renamed when
complete, so a reader (or a resumed job) never sees half of one.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from hybridlab.core.atomic import replace_directory
from hybridlab.core.faults import pause_point

ARTIFACTS = "artifacts"
JOBS = "jobs"  # <workspace>/jobs/<id>/: a job's own folder (its checkpoints)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str = "artifact name") -> str:
    """Return `name` if it is a safe single path component, else raise ValueError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{what} {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..' or path separators"
        )
    return name


def artifact_path(workspace: Path, kind: str, name: str) -> Path:
    """Absolute path of artifact `name` of `kind` inside `workspace`; rejects escaping names."""
    check_name(kind, "artifact kind")
    check_name(name)
    root = (Path(workspace) / ARTIFACTS).resolve()
    path = (root / kind / name).resolve()
    if root not in path.parents:  # also catches a symlinked kind folder pointing elsewhere
        raise ValueError(f"artifact {kind}/{name} resolves outside {root}")
    return path


def relative_artifact(workspace: Path, path: Path) -> str:
    """How the store records an artifact: relative to the workspace, with '/' separators."""
    return Path(path).resolve().relative_to(Path(workspace).resolve()).as_posix()


@contextlib.contextmanager
def write_artifact_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final` in one rename.

    If `final` exists (an earlier attempt finished the artifact but died before
    recording it) it is swapped out and removed only after the new one is in place.
    On error the temporary folder is deleted and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        pause_point("artifact.before-rename")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, final)
