"""The SQLite file behind the experiment store: connections, transactions, migrations.

WAL lets the dashboard read while a worker writes; every write is a short
BEGIN IMMEDIATE transaction (it takes the write lock up front, so SQLite's busy
timeout applies instead of failing with "database is locked" on a lock upgrade).

Opening a store checks it first: the workspace must be a folder this process can write to,
and the file must pass SQLite's `PRAGMA quick_check`. A damaged file, or one that is not a
SQLite database, is refused with one line (StoreError) naming the file and the way out:
the backup made before the last schema upgrade, or moving the file away to start afresh.
A read or write that later finds damaged pages is refused the same way.
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

from hybridlab.core.errors import UserError
from hybridlab.core.paths import workspace_dir
from hybridlab.store.schema import BACKUP_GLOB, migrate

STORE_FILE = "store.db"
BUSY_TIMEOUT_S = 60.0
# SQLite result codes that mean the file itself is unusable, not that the statement was wrong.
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


class StoreError(UserError):
    """The store's file cannot be used (damaged, not a SQLite database, not writable); one line."""


class StoreDamaged(StoreError):
    """A store or queue file that is damaged or not a SQLite database."""


class Store:
    """One workspace's experiment store. Cheap to create; safe to share between threads."""

    def __init__(self, workspace: str | os.PathLike | None = None):
        self.workspace = workspace_dir(workspace)
        self.path = self.workspace / STORE_FILE
        self._local = threading.local()
        check_writable_folder(self.workspace, "workspace")
        try:
            check_integrity(self.conn, self.path)
            migrate(self.conn, self.path)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Store({str(self.workspace)!r})"

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared across threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with refusing_damage(self.path):
                conn = _connect(self.path)
            self._local.conn = conn
        return conn

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with refusing_damage(self.path):
            return self.conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: commits on success, rolls back on any error."""
        conn = self.conn
        with refusing_damage(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def check_writable_folder(path: Path, what: str) -> None:
    """StoreError unless `path` is a folder this process may create files in."""
    if not path.is_dir():
        raise StoreError(f"the {what} {path} is not a folder; pass --workspace DIR (or set HYBRIDLAB_WORKSPACE)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(f"the {what} {path} is not writable by this user; fix its permissions or pass --workspace DIR")


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """StoreError naming the way out unless SQLite's quick_check finds the file sound."""
    with refusing_damage(path):
        rows = conn.execute("PRAGMA quick_check").fetchall()
    problems = [str(r[0]) for r in rows]
    if problems != ["ok"]:
        raise damaged(
            path, f"quick_check: {problems[0]}" + (f" and {len(problems) - 1} more" if len(problems) > 1 else "")
        )


def damaged(path: Path, detail: str) -> StoreDamaged:
    """The one line for a store file that cannot be trusted: what is wrong and how to get going again."""
    backups = sorted(path.parent.glob(BACKUP_GLOB.format(name=path.name)), key=lambda b: b.stat().st_mtime)
    files = f"{path.name} and its {path.name}-wal/-shm files"
    fresh = f"move {files} away to start an empty store (artifacts/ stays; `hybridlab store check` lists them)"
    if backups:
        way = f"stop the workers, then copy the backup {backups[-1]} over {path} and delete its -wal/-shm files, or {fresh}"
    else:
        way = f"stop the workers, then {fresh}; `sqlite3 {path} .recover` may rescue rows"
    return StoreDamaged(f"the experiment store {path} is damaged ({detail}), so hybridlab will not use it: {way}")


@contextlib.contextmanager
def refusing_damage(path: Path) -> Iterator[None]:
    """Turn SQLite's "malformed" / "not a database" / "unable to open" errors into one StoreError line."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        code = getattr(err, "sqlite_errorname", "")
        if code in _DAMAGED:
            raise damaged(path, str(err)) from None
        if code == "SQLITE_CANTOPEN":
            raise StoreError(
                f"cannot open the experiment store {path} ({err}): it must be a file this user can write; "
                "pass --workspace DIR for another store"
            ) from None
        if code == "SQLITE_FULL":
            raise StoreError(f"the disk holding {path} is full; free some space and run the command again") from None
        raise


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
