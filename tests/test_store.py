"""The experiment store on real SQLite files: schema migrations, job transitions, run rows,
metric streams, DataFrames, and artifact paths that cannot escape the workspace."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from hybridlab.core.errors import UserError
from hybridlab.store import (
    SCHEMA_VERSION,
    Store,
    artifact_path,
    job_parents,
    job_rows,
    jobs_frame,
    run_rows,
    runs_frame,
    write_artifact_dir,
)
from hybridlab.store.db import to_json
from hybridlab.store.frames import metrics_frame
from hybridlab.store.schema import MIGRATIONS, _statements

# The version-1 schema exactly as hybridlab 0.1 shipped it, written out by hand so this
# test does not depend on the code it checks.
V1_SCHEMA = """
CREATE TABLE models (id INTEGER PRIMARY KEY, ref TEXT NOT NULL UNIQUE, name TEXT NOT NULL, config_json TEXT,
                     created_at REAL NOT NULL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, spec_json TEXT NOT NULL, status TEXT NOT NULL,
                   fraction REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', error TEXT, result_json TEXT,
                   created_at REAL NOT NULL, started_at REAL, finished_at REAL);
CREATE INDEX jobs_status ON jobs(status);
CREATE TABLE metrics (job_id INTEGER NOT NULL REFERENCES jobs(id), step INTEGER NOT NULL, name TEXT NOT NULL,
                      value REAL NOT NULL);
CREATE TABLE importance_runs (id INTEGER PRIMARY KEY, job_id INTEGER REFERENCES jobs(id), name TEXT NOT NULL,
    model_ref TEXT NOT NULL, spec_json TEXT NOT NULL, status TEXT NOT NULL, artifact TEXT, result_json TEXT,
    created_at REAL NOT NULL, finished_at REAL);
CREATE TABLE candidates (id INTEGER PRIMARY KEY, job_id INTEGER REFERENCES jobs(id), name TEXT NOT NULL,
    model_ref TEXT NOT NULL, spec_json TEXT NOT NULL, status TEXT NOT NULL, artifact TEXT, result_json TEXT,
    created_at REAL NOT NULL, finished_at REAL);
"""


def make_v1_store(path, drop_candidates: bool = False) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.executescript("""
        INSERT INTO models VALUES (1, 'demo', 'demo', '{"hidden_size": 64}', 100.0);
        INSERT INTO jobs (id, kind, spec_json, status, fraction, message, result_json, created_at, started_at,
                          finished_at)
            VALUES (1, 'importance', '{"model": "demo"}', 'succeeded', 1.0, 'done', '{"run_id": 1}', 100.0, 101.0,
                    150.0),
                   (2, 'distill', '{"student": "x"}', 'queued', 0.0, 'queued', NULL, 160.0, NULL, NULL);
        INSERT INTO metrics VALUES (1, 0, 'loss', 3.0), (1, 1, 'loss', 2.5), (1, 1, 'loss', 2.0);
        INSERT INTO importance_runs VALUES (1, 1, 'scores', 'demo', '{"samples": 8}', 'succeeded',
                                            'artifacts/importance/scores', '{"samples": 8}', 100.0, 150.0);
        INSERT INTO candidates VALUES (1, 1, 'half', 'demo', '{"hidden_size": 32}', 'succeeded',
                                       'artifacts/candidates/half', '{"params": 1000, "strategy": "width"}', 151.0,
                                       152.0);
    """)
    if drop_candidates:
        conn.execute("DROP TABLE candidates")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


# ---- schema and migrations --------------------------------------------------------------------------


def test_fresh_store_is_current_wal_with_busy_timeout(tmp_path):
    store = Store(tmp_path)
    assert store.path == tmp_path / "store.db"
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 3
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.query("PRAGMA busy_timeout")[0][0] >= 10_000


def test_version_1_store_is_migrated_without_losing_rows(tmp_path):
    make_v1_store(tmp_path / "store.db")
    store = Store(tmp_path)
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION

    done = job_rows.get_job(store, 1)
    assert (done["kind"], done["status"], done["spec"], done["result"]) == (
        "importance",
        "succeeded",
        {"model": "demo"},
        {"run_id": 1},
    )
    assert (done["started_at"], done["finished_at"]) == (101.0, 150.0)
    assert (done["attempts"], done["cancel_requested"], done["worker"], done["heartbeat"]) == (0, False, None, None)
    assert [r["ref"] for r in store.query("SELECT ref FROM models")] == ["demo"]
    # The duplicate metric point of v1 collapses to the last one written; old points have no time.
    metrics = metrics_frame(store, 1)
    assert metrics[["step", "name", "value"]].values.tolist() == [[0, "loss", 3.0], [1, "loss", 2.0]]
    assert metrics["time"].isna().all()
    candidates = runs_frame(store, "candidates")
    assert candidates[["name", "params", "strategy", "spec.hidden_size"]].values.tolist() == [
        ["half", 1000, "width", 32]
    ]
    assert runs_frame(store, "importance_runs")["artifact"].tolist() == ["artifacts/importance/scores"]

    # The migrated store works like a new one: the old queued job runs, new tables take rows.
    assert job_rows.claim_job(store, 2, "host:1")
    assert job_rows.get_job(store, 2)["attempts"] == 1
    run_id = run_rows.start_run(store, "distillations", 2, "d", "x", {"tokens": 10})
    run_rows.add_metrics(store, 2, 5, {"kd_loss": 1.5})
    assert run_rows.get_run(store, "distillations", run_id)["status"] == "running"
    assert Store(tmp_path).query("PRAGMA user_version")[0][0] == SCHEMA_VERSION  # reopening is a no-op


def make_v2_store(path) -> None:
    """A store as hybridlab left it at schema version 2: the v1 rows, upgraded by the v2 migration."""
    make_v1_store(path)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in _statements(MIGRATIONS[1]):
        conn.execute(statement)
    conn.execute("UPDATE jobs SET status = 'running', worker = 'host:7', attempts = 1, heartbeat = 155.0 WHERE id = 2")
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_version_2_store_is_migrated_keeping_rows_and_recording_job_parents(tmp_path):
    make_v2_store(tmp_path / "store.db")
    store = Store(tmp_path)
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 3

    done, running = job_rows.get_job(store, 1), job_rows.get_job(store, 2)
    assert (done["status"], done["result"], done["parents"]) == ("succeeded", {"run_id": 1}, [])
    assert (running["status"], running["worker"], running["attempts"], running["parents"]) == (
        "running",
        "host:7",
        1,
        [],
    )
    assert metrics_frame(store, 1)["value"].tolist() == [3.0, 2.0]
    assert runs_frame(store, "candidates")["name"].tolist() == ["half"]
    assert store.query("SELECT count(*) FROM job_parents")[0][0] == 0
    assert jobs_frame(store)["parents"].tolist() == [[], []]

    # Old jobs take part in chains: a new job waits for the one that was running at the upgrade.
    child = job_rows.insert_job(store, "eval", {"model": "job:2"}, parents=[2])
    assert job_rows.get_job(store, child)["status"] == "waiting"
    assert job_parents.parents_of(store, child) == [2]
    assert job_rows.finish_job(store, 2, "host:7", job_rows.SUCCEEDED, result={"model_path": "/m"})
    assert job_rows.get_job(store, child)["status"] == "queued"


def test_a_failing_migration_leaves_the_old_store_untouched(tmp_path):
    make_v1_store(tmp_path / "store.db", drop_candidates=True)  # v2 indexes candidates: it will fail
    with pytest.raises(sqlite3.OperationalError, match="candidates"):
        Store(tmp_path)
    conn = sqlite3.connect(tmp_path / "store.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    assert "attempts" not in columns  # the ALTERs before the failure were rolled back
    assert conn.execute("SELECT count(*) FROM metrics").fetchone()[0] == 3


def test_a_store_from_a_newer_hybridlab_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "store.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(UserError, match="newer than this hybridlab"):  # one line, no traceback in the CLI
        Store(tmp_path)


def test_many_threads_creating_and_writing_one_store_at_once(tmp_path):
    errors, ids = [], []
    barrier = threading.Barrier(8)

    def work():
        try:
            barrier.wait()
            store = Store(tmp_path)
            for _ in range(20):
                ids.append(job_rows.insert_job(store, "count", {"steps": 1}))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(ids) == list(range(1, 161))


# ---- job transitions ------------------------------------------------------------------------------


def test_job_transitions_happen_once_and_only_for_the_owner(tmp_path):
    store = Store(tmp_path)
    job = job_rows.insert_job(store, "count", {"steps": 1})
    assert job_rows.claim_job(store, job, "a:1")
    assert not job_rows.claim_job(store, job, "b:2")  # already running
    assert job_rows.heartbeat(store, job, "a:1") == (True, False)
    assert job_rows.heartbeat(store, job, "b:2") == (False, False)
    assert not job_rows.set_progress(store, job, "b:2", 0.5, "not mine")
    assert job_rows.set_progress(store, job, "a:1", 1.7, "clamped")
    assert job_rows.get_job(store, job)["fraction"] == 1.0

    assert job_rows.request_cancel(store, job) == "running"  # a running job is only flagged
    assert job_rows.heartbeat(store, job, "a:1") == (True, True)
    assert job_rows.release_job(store, job, "a:1", "interrupted")
    assert job_rows.get_job(store, job)["status"] == "queued"
    assert not job_rows.finish_job(store, job, "a:1", job_rows.SUCCEEDED)  # released: no longer a's
    assert job_rows.claim_job(store, job, "b:2")
    assert job_rows.finish_job(store, job, "b:2", job_rows.SUCCEEDED, result={"ok": np.float32(1.5)})
    done = job_rows.get_job(store, job)
    assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 2, {"ok": 1.5})

    queued = job_rows.insert_job(store, "count", {"steps": 1})
    assert job_rows.request_cancel(store, queued) == "cancelled"
    assert not job_rows.claim_job(store, queued, "a:1")
    assert job_rows.request_cancel(store, 12345) is None


def test_a_waiting_job_is_queued_when_all_its_parents_succeed_and_never_claimed_before(tmp_path):
    store = Store(tmp_path)
    first, second = (job_rows.insert_job(store, "count", {}) for _ in range(2))
    child = job_rows.insert_job(store, "count", {}, parents=[second, first, first])
    waiting = job_rows.get_job(store, child)
    assert (waiting["status"], waiting["message"], waiting["parents"]) == ("waiting", "waiting for job 1, 2", [1, 2])
    assert not job_rows.claim_job(store, child, "a:1")  # a stray queue message cannot start it

    for parent in (first, second):
        assert job_rows.claim_job(store, parent, "a:1")
        assert job_parents.queued_children(store, parent) == []
        assert job_rows.finish_job(store, parent, "a:1", job_rows.SUCCEEDED)
    assert job_rows.get_job(store, child)["status"] == "queued"  # in the transaction that finished the last parent
    assert job_parents.queued_children(store, second) == [child]
    assert job_rows.claim_job(store, child, "a:1")

    late = job_rows.insert_job(store, "count", {}, parents=[first])  # parents done already: queued at once
    assert job_rows.get_job(store, late)["status"] == "queued"


def test_a_failed_or_cancelled_parent_ends_the_whole_chain_below_it(tmp_path):
    store = Store(tmp_path)
    parent = job_rows.insert_job(store, "prune", {})
    child = job_rows.insert_job(store, "eval", {}, parents=[parent])
    grandchild = job_rows.insert_job(store, "bench", {}, parents=[child])
    assert job_rows.claim_job(store, parent, "a:1")
    assert job_rows.finish_job(store, parent, "a:1", job_rows.FAILED, error="ValueError: boom")
    ended = job_rows.get_job(store, child)
    assert ended["status"] == "failed" and ended["finished_at"] is not None
    assert ended["error"] == "parent job 1 (prune) failed, so this job did not run (job 1: ValueError: boom)"
    assert job_rows.get_job(store, grandchild)["status"] == "failed"
    assert job_rows.get_job(store, grandchild)["error"].startswith("parent job 2 (eval) failed")
    assert job_rows.get_job(store, job_rows.insert_job(store, "eval", {}, [parent]))["status"] == "failed"

    # Cancelling a queued job cancels what waits on it; cancelling a waiting job ends it at once.
    queued = job_rows.insert_job(store, "prune", {})
    waits = job_rows.insert_job(store, "eval", {}, parents=[queued])
    assert job_rows.request_cancel(store, queued) == "cancelled"
    assert job_rows.get_job(store, waits)["status"] == "cancelled"
    assert job_rows.get_job(store, waits)["error"] == "parent job 5 (prune) cancelled, so this job did not run"
    other = job_rows.insert_job(store, "prune", {})
    lone = job_rows.insert_job(store, "eval", {}, parents=[other])
    assert job_rows.request_cancel(store, lone) == "cancelled"
    assert job_rows.get_job(store, other)["status"] == "queued"  # a child's cancel leaves its parent alone


def test_settle_waiting_decides_jobs_whose_parents_finished_behind_its_back(tmp_path):
    store = Store(tmp_path)
    done, broken = job_rows.insert_job(store, "prune", {}), job_rows.insert_job(store, "prune", {})
    released = job_rows.insert_job(store, "eval", {}, parents=[done])
    ended = job_rows.insert_job(store, "eval", {}, parents=[broken])
    with store.write() as conn:  # as if written by code that does not settle dependents
        conn.execute("UPDATE jobs SET status = 'succeeded' WHERE id = ?", (done,))
        conn.execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?", (broken,))
    job_parents.settle_waiting(store)
    assert job_rows.get_job(store, released)["status"] == "queued"
    assert job_rows.get_job(store, ended)["status"] == "cancelled"


def test_job_references_parse_only_the_exact_form():
    assert job_parents.job_ref(12) == "job:12" and job_parents.parse_job_ref("job:12") == 12
    for text in ("job:0", "job:-1", "job: 3", "job:3 ", "JOB:3", "jobs:3", "job:", 3, None):
        assert job_parents.parse_job_ref(text) is None, text


def test_run_rows_are_resumed_by_job_and_name_and_closed_with_the_job(tmp_path):
    store = Store(tmp_path)
    job = job_rows.insert_job(store, "prune", {})
    first = run_rows.start_run(store, "candidates", job, "c1", "demo", {"hidden_size": 32})
    assert run_rows.start_run(store, "candidates", job, "c1", "demo", {"hidden_size": 32}) == first
    other = run_rows.start_run(store, "candidates", job, "c2", "demo", {"hidden_size": 16})
    run_rows.finish_run(store, "candidates", first, "succeeded", "artifacts/candidates/c1", {"params": 10})
    run_rows.close_open_runs(store, job, "cancelled")
    assert run_rows.get_run(store, "candidates", first)["status"] == "succeeded"
    assert run_rows.get_run(store, "candidates", other)["status"] == "cancelled"
    with pytest.raises(ValueError, match="unknown run table"):
        run_rows.start_run(store, "jobs; DROP TABLE jobs", job, "x", "demo", {})


def test_replayed_metric_steps_overwrite_and_frames_are_tidy(tmp_path):
    store = Store(tmp_path)
    job = job_rows.insert_job(store, "distill", {})
    for step in range(3):
        run_rows.add_metrics(store, job, step, {"loss": 3.0 - step, "lr": 0.1})
    run_rows.add_metrics(store, job, 2, {"loss": 0.5})  # replayed after a resume
    frame = metrics_frame(store, job)
    assert frame[frame["name"] == "loss"][["step", "value"]].values.tolist() == [[0, 3.0], [1, 2.0], [2, 0.5]]
    assert len(frame) == 6
    assert isinstance(frame["time"].dtype, pd.DatetimeTZDtype)


def test_runs_frame_flattens_results_and_specs(tmp_path):
    store = Store(tmp_path)
    job = job_rows.insert_job(store, "eval", {})
    run = run_rows.start_run(store, "evaluations", job, "e", "demo", {"tasks": ["val_loss"], "seq_len": 64})
    run_rows.finish_run(
        store,
        "evaluations",
        run,
        "succeeded",
        None,
        {"val_loss": 2.5, "status": "clash", "tasks": {"val_loss": {"loss": 2.5}}},
    )
    frame = runs_frame(store, "evaluations")
    row = frame.iloc[0]
    assert (row["status"], row["result.status"], row["val_loss"], row["tasks.val_loss.loss"]) == (
        "succeeded",
        "clash",
        2.5,
        2.5,
    )
    assert row["spec.seq_len"] == 64 and row["spec.tasks"] == ["val_loss"]
    assert isinstance(frame["created_at"].dtype, pd.DatetimeTZDtype)
    assert runs_frame(store, "benchmarks").empty


def test_to_json_accepts_numpy_and_torch_scalars_and_rejects_objects():
    assert to_json({"a": np.int64(3), "b": torch.tensor(0.5), "c": (1, 2)}) == '{"a": 3, "b": 0.5, "c": [1, 2]}'
    with pytest.raises(TypeError, match="cannot store object"):
        to_json({"x": object()})


# ---- artifacts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "/etc", "", ".hidden", "a\\b", "x" * 200, "a..b", "-rf"])
def test_artifact_names_that_could_escape_or_hide_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="not allowed"):
        artifact_path(tmp_path, "candidates", name)
    with pytest.raises(ValueError, match="not allowed"):
        artifact_path(tmp_path, name, "ok")


def test_artifact_path_is_inside_the_workspace_even_through_a_symlink(tmp_path):
    assert artifact_path(tmp_path, "candidates", "half-v1.2") == tmp_path.resolve() / "artifacts/candidates/half-v1.2"
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "evil").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        artifact_path(tmp_path, "evil", "x")


def test_write_artifact_dir_appears_whole_or_not_at_all(tmp_path):
    final = artifact_path(tmp_path, "candidates", "c")
    with pytest.raises(RuntimeError):
        with write_artifact_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not final.exists() and list(final.parent.iterdir()) == []

    with write_artifact_dir(final) as tmp:
        (tmp / "v1").write_text("one")
        assert not final.exists()
    assert [p.name for p in final.iterdir()] == ["v1"]

    with write_artifact_dir(final) as tmp:  # a retry replaces the earlier attempt's artifact
        (tmp / "v2").write_text("two")
    assert [p.name for p in final.iterdir()] == ["v2"]
    assert [p.name for p in final.parent.iterdir()] == ["c"]  # no temporary folders left behind


def test_lookups_find_finished_artifacts_and_name_what_is_missing(tmp_path):
    from hybridlab.store.lookups import candidate_model_dir, importance_scores_dir

    store = Store(tmp_path)
    job = job_rows.insert_job(store, "importance", {})
    done = run_rows.start_run(store, "importance_runs", job, "done", "demo", {})
    run_rows.finish_run(store, "importance_runs", done, "succeeded", "artifacts/importance/done", {})
    running = run_rows.start_run(store, "importance_runs", job, "running", "demo", {})
    assert importance_scores_dir(store, done) == store.workspace / "artifacts/importance/done"
    with pytest.raises(ValueError, match=f"importance run {running} has no scores \\(status running\\)"):
        importance_scores_dir(store, running)
    with pytest.raises(ValueError, match="importance run 99 does not exist"):
        importance_scores_dir(store, 99)
    candidate = run_rows.start_run(store, "candidates", job, "c", "demo", {})
    with pytest.raises(ValueError, match=f"candidate {candidate} does not exist or has no model yet"):
        candidate_model_dir(store, candidate)
    run_rows.finish_run(store, "candidates", candidate, "succeeded", "artifacts/candidates/c", {})
    assert candidate_model_dir(store, candidate) == store.workspace / "artifacts/candidates/c"
