"""Background jobs: a huey queue of job ids, a worker process, records in the store.

The dashboard and notebooks use the functions re-exported here; CLI commands run the
same job kinds in-process with `run_sync`. See README "Experiment store and jobs".
"""

from hybridlab.jobs.api import (
    cancel,
    get_job,
    job_metrics,
    list_benchmarks,
    list_candidates,
    list_distillations,
    list_evaluations,
    list_importance_runs,
    list_jobs,
    list_models,
    submit,
    wait,
)
from hybridlab.jobs.context import Interrupted, JobContext
from hybridlab.jobs.launcher import ensure_worker
from hybridlab.jobs.registry import Field, JobKind, get_kind, kind_names, register_kind
from hybridlab.jobs.runner import run_sync
from hybridlab.jobs.specs import JobSpecError, validate_spec
from hybridlab.store import job_ref

__all__ = [
    "submit",
    "job_ref",
    "get_job",
    "job_metrics",
    "cancel",
    "wait",
    "list_jobs",
    "list_models",
    "list_importance_runs",
    "list_candidates",
    "list_distillations",
    "list_evaluations",
    "list_benchmarks",
    "ensure_worker",
    "run_sync",
    "JobContext",
    "Interrupted",
    "Field",
    "JobKind",
    "register_kind",
    "get_kind",
    "kind_names",
    "JobSpecError",
    "validate_spec",
]
