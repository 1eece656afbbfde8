"""Chained jobs, job side: the parents a submission names, and "job:N" references to what they make.

`submit(kind, spec, after=...)` records a job that runs only once its parents have
succeeded (hybridlab.store.job_parents keeps the record and decides waiting jobs). Some
spec fields may say "job:N" for something job N will make, unknown at submission:

- every model field (one checked by `model_ref`): the model job N wrote (MODEL);
- the fields named in OUTPUT_FIELDS: an importance job's scores folder (SCORES) for a
  search or prune job's 'importance', a search job's chosen PruneSpec (CHOSEN_SPEC) for a
  prune job's 'spec'.

A reference is checked at submission (job N exists and is of a kind that makes that
output), makes job N a parent even when `after` leaves it out (so a failed or cancelled
job N ends this one with the cause named), and is replaced by the output when the job
starts. The kind's own checks skip a reference at submission; once a scores folder or a
spec is resolved they run again on it, so the job fails with their one line before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hybridlab.jobs.registry import get_kind
from hybridlab.jobs.specs import JobSpecError, model_ref
from hybridlab.store import Store, job_rows, parse_job_ref


@dataclass(frozen=True)
class Output:
    """What "job:N" stands for in a field: `result_key` of job N's result, read by `read(workspace, value)`."""

    what: str  # in messages: "refers to a ... job, which makes no <what>"
    kinds: tuple[str, ...]  # the kinds whose result holds it
    result_key: str
    read: Callable[[Path, Any], Any]


MODEL = Output("model", ("prune", "distill", "search"), "model_path", lambda workspace, path: path)
SCORES = Output(
    "importance scores", ("importance",), "artifact", lambda workspace, artifact: str(Path(workspace) / artifact)
)
CHOSEN_SPEC = Output("chosen spec", ("search",), "best", lambda workspace, best: json.loads(best["spec"]))

# Fields other than models that take "job:N", by (kind, spec key). Model fields need no entry.
OUTPUT_FIELDS = {
    ("search", "importance"): SCORES,
    ("prune", "importance"): SCORES,
    ("prune", "spec"): CHOSEN_SPEC,
}


def is_reference(value) -> bool:
    """Whether a spec value is "job:N": the kinds' checks skip it at submission."""
    return parse_job_ref(value) is not None


def check_parents(store: Store, kind: str, spec, after) -> list[int]:
    """The parent ids of a new `kind` job: `after` plus the jobs its spec refers to.
    JobSpecError, naming every problem, when a parent does not exist or a reference
    points at a job that does not make what the field needs; nothing is written."""
    problems, parents = [], set()
    for job_id in _after_ids(after, problems):
        if job_rows.get_job(store, job_id) is None:
            problems.append(f"after: there is no job {job_id} in {store.workspace}")
        parents.add(job_id)
    for key, (job_id, output) in _references(kind, spec).items():
        parent = job_rows.get_job(store, job_id)
        if parent is None:
            problems.append(f"{key!r} refers to job {job_id}, which does not exist in {store.workspace}")
        elif parent["kind"] not in output.kinds:
            article = "an" if output.kinds[0][0] in "aeiou" else "a"
            problems.append(
                f"{key!r} refers to job {job_id}, a {parent['kind']} job, which makes no {output.what}; "
                f"refer to {article} {', '.join(output.kinds)} job"
            )
        parents.add(job_id)
    if problems:
        raise JobSpecError(f"invalid {kind} job: " + "; ".join(problems))
    return sorted(parents)


def resolve_references(store: Store, job: dict) -> dict:
    """`job`'s spec with each "job:N" replaced by what job N made; ValueError when job N did not
    succeed, left no such output, or the kind's checks refuse the resolved spec (the job then
    fails with that message)."""
    spec = dict(job["spec"])
    references = _references(job["kind"], spec)
    for key, (job_id, output) in references.items():
        parent = job_rows.get_job(store, job_id)
        if parent is None or parent["status"] != job_rows.SUCCEEDED:
            status = "does not exist" if parent is None else f"is {parent['status']}"
            raise ValueError(f"{key!r} refers to job {job_id}, which {status}; it has no {output.what} to use yet")
        value = (parent["result"] or {}).get(output.result_key)
        if value is None or (output is MODEL and not isinstance(value, str)):
            raise ValueError(
                f"{key!r} refers to job {job_id} ({parent['kind']}), whose result holds no {output.result_key}"
            )
        spec[key] = output.read(store.workspace, value)
    kind = get_kind(job["kind"])
    if kind.check is not None and any(output is not MODEL for _, output in references.values()):
        kind.check(spec, store)  # what it skipped at submission: the scores fit, the spec is possible
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


def _references(kind: str, spec) -> dict[str, tuple[int, Output]]:
    """Fields of `spec` that hold a "job:N" reference -> (N, what it stands for)."""
    if not isinstance(spec, dict):
        return {}
    fields = get_kind(kind).fields
    found = {}
    for key, value in spec.items():
        if key not in fields or not is_reference(value):
            continue
        output = MODEL if fields[key].check is model_ref else OUTPUT_FIELDS.get((kind, key))
        if output is not None:
            found[key] = (parse_job_ref(value), output)
    return found
