"""The experiment store: one SQLite database per workspace (see hybridlab/store/schema.py)."""

from hybridlab.store.artifacts import artifact_path, check_name, relative_artifact, write_artifact_dir
from hybridlab.store.db import Store
from hybridlab.store.frames import jobs_frame, metrics_frame, runs_frame
from hybridlab.store.job_rows import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED
from hybridlab.store.schema import RUN_TABLES, SCHEMA_VERSION

__all__ = [
    "Store",
    "artifact_path",
    "check_name",
    "relative_artifact",
    "write_artifact_dir",
    "jobs_frame",
    "metrics_frame",
    "runs_frame",
    "RUN_TABLES",
    "SCHEMA_VERSION",
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "FINISHED",
]
