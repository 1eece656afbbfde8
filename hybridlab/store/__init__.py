"""The experiment store: one SQLite database per workspace (see hybridlab/store/schema.py)."""

from hybridlab.store.artifacts import artifact_path, check_name, relative_artifact, write_artifact_dir
from hybridlab.store.db import Store
from hybridlab.store.frames import jobs_frame, metrics_frame, models_frame, runs_frame
from hybridlab.store.job_parents import job_ref, parse_job_ref
from hybridlab.store.schema import RUN_TABLES, SCHEMA_VERSION
from hybridlab.store.status import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, STATUSES, SUCCEEDED, WAITING

__all__ = [
    "Store",
    "artifact_path",
    "check_name",
    "relative_artifact",
    "write_artifact_dir",
    "jobs_frame",
    "metrics_frame",
    "models_frame",
    "runs_frame",
    "job_ref",
    "parse_job_ref",
    "RUN_TABLES",
    "SCHEMA_VERSION",
    "WAITING",
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "FINISHED",
    "STATUSES",
]
