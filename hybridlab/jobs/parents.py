"""Chained jobs, job side: the parents a submission names, and "job:N" model references.

`submit(kind, spec, after=...)` records a job that runs only once its parents have
succeeded (hybridlab.store.job_parents keeps the record and decides waiting jobs). A
model field of a spec (one checked by `model_ref`) may say "job:N" for the model that
job N will write, unknown at submission: it is checked now (job N exists and is of a
kind that makes a model), makes job N a parent even when `after` leaves it out, and is
replaced by job N's result["model_path"] when the job runs.
"""

from __future__ import annotations

from hybridlab.jobs.registry import get_kind
from hybridlab.jobs.specs import JobSpecError, model_ref
from hybridlab.store import Store, job_rows, parse_job_ref

# Kinds whose result holds the model they wrote under MODEL_OUTPUT.
MODEL_KINDS = ("prune", "distill", "search")
MODEL_OUTPUT = "model_path"


def check_parents(store: Store, kind: str, spec, after) -> list[int]:
    """The parent ids of a new `kind` job: `after` plus the jobs its spec refers to.
    JobSpecError, naming every problem, when a parent does not exist or a reference
    points at a job that makes no model; nothing is written."""
    problems, parents = [], set()
    for job_id in _after_ids(after, problems):
        if job_rows.get_job(store, job_id) is None:
            problems.append(f"after: there is no job {job_id} in {store.workspace}")
        parents.add(job_id)
    for key, job_id in _references(kind, spec).items():
        parent = job_rows.get_job(store, job_id)
        if parent is None:
            problems.append(f"{key!r} refers to job {job_id}, which does not exist in {store.workspace}")
        elif parent["kind"] not in MODEL_KINDS:
            problems.append(
                f"{key!r} refers to job {job_id}, a {parent['kind']} job, which makes no model; "
                f"refer to a {', '.join(MODEL_KINDS)} job"
            )
        parents.add(job_id)
    if problems:
        raise JobSpecError(f"invalid {kind} job: " + "; ".join(problems))
    return sorted(parents)


def resolve_references(store: Store, job: dict) -> dict:
    """`job`'s spec with each "job:N" replaced by the model job N wrote; ValueError when job N
    did not succeed or left no model (the job then fails with that message)."""
    spec = dict(job["spec"])
    for key, job_id in _references(job["kind"], spec).items():
        parent = job_rows.get_job(store, job_id)
        if parent is None or parent["status"] != job_rows.SUCCEEDED:
            status = "does not exist" if parent is None else f"is {parent['status']}"
            raise ValueError(f"{key!r} refers to job {job_id}, which {status}; it has no model to use yet")
        path = (parent["result"] or {}).get(MODEL_OUTPUT)
        if not isinstance(path, str):
            raise ValueError(f"{key!r} refers to job {job_id} ({parent['kind']}), whose result holds no {MODEL_OUTPUT}")
        spec[key] = path
    return spec


def _after_ids(after, problems: list[str]) -> list[int]:
    values = [] if after is None else list(after) if isinstance(after, (list, tuple, set)) else [after]
    ids = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"after: job ids are whole numbers, got {type(value).__name__} {value!r}")
        else:
            ids.append(value)
    return ids


def _references(kind: str, spec) -> dict[str, int]:
    """Model fields of `spec` that hold a "job:N" reference -> N."""
    if not isinstance(spec, dict):
        return {}
    fields = get_kind(kind).fields
    return {
        key: parse_job_ref(value)
        for key, value in spec.items()
        if key in fields and fields[key].check is model_ref and parse_job_ref(value) is not None
    }
