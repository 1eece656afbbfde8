"""The SQLite file behind the experiment store: connections, transactions, migrations.

WAL lets the dashboard read while a worker writes; every write is a short
BEGIN IMMEDIATE transaction (it takes the write lock up front, so SQLite's busy
timeout applies instead of failing with "database is locked" on a lock upgrade).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from hybridlab.core.paths import workspace_dir
from hybridlab.store.schema import migrate

STORE_FILE = "store.db"
BUSY_TIMEOUT_S = 60.0


class Store:
    """One workspace's experiment store. Cheap to create; safe to share between threads."""

    def __init__(self, workspace: str | os.PathLike | None = None):
        self.workspace = workspace_dir(workspace)
        self.path = self.workspace / STORE_FILE
        self._local = threading.local()
        migrate(self.conn)

    def __repr__(self) -> str:
        return f"Store({str(self.workspace)!r})"

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared across threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            self._local.conn = conn
        return conn

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: commits on success, rolls back on any error."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    _enable_wal(conn)
    conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: survives process crashes, fsyncs at checkpoints
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _enable_wal(conn: sqlite3.Connection) -> None:
    # Switching a brand-new file to WAL needs a write lock and is not covered by the
    # busy handler, so two processes creating the store at once retry here.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def to_json(value: Any) -> str:
    """JSON for the store: numpy/torch scalars become numbers, paths strings."""
    return json.dumps(value, default=_plain, sort_keys=True) if value is not None else None


def from_json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(
        f"cannot store {type(value).__name__} {value!r} as JSON; convert it to numbers, strings, lists or dicts"
    )
