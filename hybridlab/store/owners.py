"""Who an artifact folder belongs to: the runs and finished jobs of this store that record it.

A run row's `artifact` (relative to the workspace) and a succeeded job's result
(`artifact`, or `model_path` for kinds such as search that keep no run row for their model)
say which folder describes which run. A job may write artifacts/<kind>/<name> only when no
other job's record points there, so a row never describes a folder a later job replaced.
"""

from __future__ import annotations

from pathlib import Path

from hybridlab.store.artifacts import relative_artifact
from hybridlab.store.db import Store
from hybridlab.store.schema import RUN_TABLES
from hybridlab.store.status import SUCCEEDED

RUN_LABELS = {
    "importance_runs": "importance run",
    "candidates": "candidate",
    "distillations": "distillation",
    "evaluations": "evaluation",
    "benchmarks": "benchmark",
}


def artifact_records(store: Store, path: Path) -> dict[int | None, str]:
    """{job id: "candidate 3 'narrow' (job 5)"} for every run or succeeded job that records `path`."""
    path = Path(path).resolve()
    rel = relative_artifact(store.workspace, path)
    found: dict[int | None, str] = {}
    for table in RUN_TABLES:
        rows = store.query(f"SELECT id, job_id, name FROM {table} WHERE artifact = ? ORDER BY id", (rel,))
        for row in rows:
            found.setdefault(row["job_id"], f"{RUN_LABELS[table]} {row['id']} '{row['name']}' (job {row['job_id']})")
    rows = store.query(
        "SELECT id, kind FROM jobs WHERE status = ? AND (json_extract(result_json, '$.artifact') = ? "
        "OR json_extract(result_json, '$.model_path') = ?) ORDER BY id",
        (SUCCEEDED, rel, str(path)),
    )
    for row in rows:
        found.setdefault(row["id"], f"{row['kind']} job {row['id']}")
    return found


def recorded_artifacts(store: Store) -> dict[str, str]:
    """Every artifact folder the store records, relative to the workspace -> who records it."""
    found: dict[str, str] = {}
    for table in RUN_TABLES:
        rows = store.query(f"SELECT id, job_id, name, artifact FROM {table} WHERE artifact IS NOT NULL ORDER BY id")
        for row in rows:
            found.setdefault(row["artifact"], f"{RUN_LABELS[table]} {row['id']} '{row['name']}' (job {row['job_id']})")
    rows = store.query(
        "SELECT id, kind, json_extract(result_json, '$.artifact') AS artifact, "
        "json_extract(result_json, '$.model_path') AS model_path FROM jobs WHERE status = ? ORDER BY id",
        (SUCCEEDED,),
    )
    root = store.workspace.resolve()
    for row in rows:
        for value in (row["artifact"], row["model_path"]):
            if not isinstance(value, str):
                continue
            path = Path(value) if Path(value).is_absolute() else root / value
            try:
                rel = path.resolve().relative_to(root).as_posix()
            except ValueError:
                continue  # a model outside the workspace (a CLI run's own folder)
            found.setdefault(rel, f"{row['kind']} job {row['id']}")
    return found


def jobs_named(store: Store, kind: str, name: str) -> list[dict]:
    """Jobs of `kind` whose spec gives `name` as their run name: id, status, newest last."""
    rows = store.query(
        "SELECT id, status FROM jobs WHERE kind = ? AND json_extract(spec_json, '$.name') = ? ORDER BY id",
        (kind, name),
    )
    return [dict(r) for r in rows]
