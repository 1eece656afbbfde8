"""The store's schema as an ordered list of migrations.

`PRAGMA user_version` holds how many migrations a database has seen. Opening a store
applies the missing ones in order inside one write transaction, so an older database
is upgraded in place without losing rows, and two processes opening a fresh store at
the same time cannot both migrate it. Before upgrading a store that holds data, a copy of
it as it was is written next to it (`store.db.v2.bak` before going from version 2), with
SQLite's backup API under the upgrade's write lock, so the copy is exactly what was upgraded.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from hybridlab.core.errors import UserError
from hybridlab.core.faults import pause_point

BACKUP_NAME = "{name}.v{version}.bak"  # store.db.v2.bak: the store as it was at version 2
BACKUP_GLOB = "{name}.v*.bak"

# Every run table has the same shape: one row per named result of a job.
RUN_TABLES = ("importance_runs", "candidates", "distillations", "evaluations", "benchmarks")

_RUN_COLUMNS = """
    id INTEGER PRIMARY KEY,
    job_id INTEGER REFERENCES jobs(id),
    name TEXT NOT NULL,
    model_ref TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL,
    artifact TEXT,
    result_json TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
"""

# Version 1: the first released store (models, jobs, metrics, importance runs, candidates).
V1 = f"""
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    config_json TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL,
    fraction REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    error TEXT,
    result_json TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX jobs_status ON jobs(status);
CREATE TABLE metrics (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL
);
CREATE TABLE importance_runs ({_RUN_COLUMNS});
CREATE TABLE candidates ({_RUN_COLUMNS});
"""

# Version 2: crash recovery and cancellation for jobs, timed metrics that a resumed job
# can re-report without duplicating points, and the distill/eval/bench run tables.
V2 = f"""
ALTER TABLE jobs ADD COLUMN worker TEXT;
ALTER TABLE jobs ADD COLUMN heartbeat REAL;
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE metrics ADD COLUMN time REAL;
DELETE FROM metrics WHERE rowid NOT IN (SELECT max(rowid) FROM metrics GROUP BY job_id, name, step);
CREATE UNIQUE INDEX metrics_series ON metrics(job_id, name, step);
CREATE TABLE distillations ({_RUN_COLUMNS});
CREATE TABLE evaluations ({_RUN_COLUMNS});
CREATE TABLE benchmarks ({_RUN_COLUMNS});
""" + "".join(f"CREATE INDEX {t}_job ON {t}(job_id, name);\n" for t in RUN_TABLES)

# Version 3: job chains. A job may wait for parent jobs (submit(..., after=...)): it stays
# 'waiting' until they all succeed, and ends when one of them fails or is cancelled.
V3 = """
CREATE TABLE job_parents (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    parent_id INTEGER NOT NULL REFERENCES jobs(id),
    PRIMARY KEY (job_id, parent_id)
) WITHOUT ROWID;
CREATE INDEX job_parents_parent ON job_parents(parent_id, job_id);
"""

MIGRATIONS = [V1, V2, V3]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path | None = None) -> int:
    """Bring `conn`'s database to SCHEMA_VERSION; returns the version it had before.

    `conn` must be in autocommit mode (isolation_level=None): the whole upgrade runs
    in one BEGIN IMMEDIATE transaction, so a failure (or a kill) leaves the database as it
    was. `path`: the database file, to back up first when it holds data (see backup_before).
    """
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return SCHEMA_VERSION  # fast path: no write lock needed
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
        if found == SCHEMA_VERSION:  # another process upgraded it while we waited for the lock
            conn.execute("COMMIT")
            return found
        if found > SCHEMA_VERSION:
            where = f" ({path})" if path is not None else ""
            raise UserError(
                f"this store{where} has schema version {found}, newer than this hybridlab ({SCHEMA_VERSION}); "
                "upgrade hybridlab or use another --workspace"
            )
        if found > 0 and path is not None:
            backup_before(path, found)
        for version in range(found, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        pause_point("store.migrate")  # fault tests kill the process here, inside the transaction
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def backup_before(path: Path, version: int) -> Path:
    """Copy database `path` (at schema `version`) to `<path>.v<version>.bak`, whole or not at all.

    Called while the caller holds the write lock: the copy is read through a second connection,
    which in WAL mode sees the last committed state, so it is exactly the store being upgraded."""
    path = Path(path)
    final = path.with_name(BACKUP_NAME.format(name=path.name, version=version))
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        source, target = sqlite3.connect(path), sqlite3.connect(tmp)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; run statement by statement instead.
    return [s.strip() for s in script.split(";") if s.strip()]
