"""Checks a job spec must pass against the workspace, besides its own fields.

Run names are unique: a job's 'name' names its artifact (artifacts/<kind>/<name>), so a
name that another job of the kind will write, or whose folder a run of this store records,
is refused at submission instead of the new job replacing that folder under the old row.
The job's context checks again when it writes (JobContext.artifact_path), for the jobs
this cannot see coming (one whose default name another job took meanwhile).

Output paths are confined: a job from the queue (`jobs.submit`, the dashboard) writes only
inside its workspace, outside hybridlab's own folders. The CLI commands run their job in
their own process (`run_sync`) and may be given any --out folder; they do not pass here.
"""

from __future__ import annotations

import re
from pathlib import Path

from hybridlab.store import FINISHED, artifact_path
from hybridlab.store.artifacts import ARTIFACTS, JOBS
from hybridlab.store.db import STORE_FILE, Store
from hybridlab.store.owners import artifact_records, jobs_named
from hybridlab.store.status import CANCELLED, FAILED

# Spec keys that name a folder a job writes into.
OUTPUT_KEYS = ("run_dir",)
# Folders and files of the workspace that belong to hybridlab itself.
RESERVED = (ARTIFACTS, JOBS, "workers", "logs", STORE_FILE, "queue.db")


def check_run_name(job_kind, spec: dict, store: Store | None) -> None:
    """ValueError naming the run that already has `spec['name']` and what to do, if one has.
    `job_kind` is a registry.JobKind; its `artifact` says where the name leads."""
    name, kind = spec.get("name"), job_kind.name
    if not isinstance(name, str) or store is None or job_kind.artifact is None:
        return
    folder, prefix = job_kind.artifact.folder, job_kind.artifact.prefix
    if re.fullmatch(rf"{re.escape(prefix)}-[0-9]+", name):
        raise ValueError(f"'name' {name!r} has the form {prefix}-N that unnamed {kind} jobs get; choose another name")
    same = [job for job in jobs_named(store, kind, name) if job["status"] not in FINISHED]
    if same:
        raise ValueError(
            f"'name' {name!r} is taken: {kind} job {same[0]['id']} ({same[0]['status']}) will write "
            f"{ARTIFACTS}/{folder}/{name}; choose another name, or cancel that job first"
        )
    path = artifact_path(store.workspace, folder, name)
    records = artifact_records(store, path)
    if records:
        raise ValueError(
            f"'name' {name!r} is taken: {ARTIFACTS}/{folder}/{name} is the artifact of "
            f"{next(iter(records.values()))}; choose another name (a name is never reused, so each row "
            "keeps describing its own folder)"
        )
    ended = any(job["status"] in (FAILED, CANCELLED) for job in jobs_named(store, kind, name))
    if path.exists() and not ended:
        raise ValueError(
            f"'name' {name!r} is taken: {ARTIFACTS}/{folder}/{name} exists but no run in this store records it; "
            "choose another name, or move that folder away"
        )


def check_confined(kind: str, spec: dict, workspace: Path) -> None:
    """ValueError unless every output folder of `spec` lies inside `workspace`, outside hybridlab's
    own folders (a job from the queue must not write anywhere else on the disk)."""
    root = Path(workspace).resolve()
    for key in OUTPUT_KEYS:
        value = spec.get(key)
        if not isinstance(value, str):
            continue
        path = Path(value).expanduser().resolve()
        if path == root or root not in path.parents:
            raise ValueError(
                f"{key!r} {value} is outside the workspace {root}: a queued job writes only inside its workspace; "
                f"give a folder under {root / 'runs'}, leave {key!r} out (the job uses its own folder), "
                f"or run `hybridlab {kind} --out {value}` in a terminal"
            )
        top = path.relative_to(root).parts[0]
        if top in RESERVED:
            raise ValueError(
                f"{key!r} {value} is inside {root / top}, which hybridlab keeps for itself; "
                f"give a folder under {root / 'runs'} instead"
            )
