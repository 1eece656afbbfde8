"""The job engine with real worker processes (`python -m hybridlab worker`) and real SQLite.

A test-only job kind, `count`, adds up 0..steps-1 one step at a time and writes its
state to a checkpoint file after every step, so a crash and resume can be checked
exactly: the total is right only if every step ran exactly once across attempts.
The worker subprocesses import this module as a plugin to get the same kind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridlab.jobs import Field, JobKind, register_kind

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
TIMEOUT_S = 90.0


def count_job(spec: dict, ctx) -> dict:
    checkpoint = ctx.checkpoint_dir / "state.json"
    state = json.loads(checkpoint.read_text()) if checkpoint.exists() else {"done": 0, "total": 0, "starts": []}
    state["starts"].append(state["done"])
    for i in range(state["done"], spec["steps"]):
        if i == spec["fail_at"]:
            raise ValueError(f"count job told to fail at step {i}")
        time.sleep(spec["sleep_s"])
        state["total"] += i
        state["done"] = i + 1
        tmp = checkpoint.with_name("state.json.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, checkpoint)
        ctx.progress((i + 1) / spec["steps"], f"step {i + 1}", {"step": i + 1, "value": float(i)})
    return {"total": state["total"], "starts": state["starts"]}


register_kind(
    JobKind(
        name="count",
        fields={
            "steps": Field(int),
            "sleep_s": Field(float, default=0.0),
            "fail_at": Field(int, default=None, nullable=True),
        },
        handler=count_job,
    ),
    replace=True,
)


# ---- helpers --------------------------------------------------------------------------------


def worker_env() -> dict:
    paths = [str(REPO), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]
    # One torch thread, like this test process (conftest), so floating-point results match exactly.
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
        HYBRIDLAB_JOB_PLUGINS="test_jobs",
        OMP_NUM_THREADS="1",
    )


def wait_until(predicate, what: str, timeout_s: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def ws(tmp_path) -> Path:
    return tmp_path / "workspace"


@pytest.fixture
def start_worker(ws, tmp_path):
    """Start `python -m hybridlab worker` processes on `ws`; all are killed at teardown."""
    procs = []

    def start(*extra: str) -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hybridlab",
                "worker",
                "--workspace",
                str(ws),
                "--poll",
                "0.05",
                "--heartbeat",
                "0.2",
                "--stale-after",
                "5",
                *extra,
            ],
            env=worker_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def job(job_id: int, ws: Path) -> dict:
    from hybridlab.jobs import get_job

    return get_job(job_id, ws)


def integrity(ws: Path) -> str:
    import sqlite3

    return sqlite3.connect(ws / "store.db").execute("PRAGMA integrity_check").fetchone()[0]


# ---- crash, resume, graceful stop -------------------------------------------------------------


def test_sigkilled_worker_job_resumes_from_checkpoint_with_nothing_lost(ws, start_worker):
    from hybridlab.jobs import job_metrics, submit, wait

    steps = 40
    job_id = submit("count", {"steps": steps, "sleep_s": 0.05}, ws)
    first = start_worker()
    wait_until(lambda: job(job_id, ws)["fraction"] >= 0.25, "the job to get a quarter done")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = job(job_id, ws)
    assert killed["status"] == "running"  # nobody told the store: the worker just vanished
    assert 0 < killed["fraction"] < 1

    start_worker()
    done = wait(job_id, TIMEOUT_S, ws)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["result"]["total"] == sum(range(steps))  # every step counted exactly once
    starts = done["result"]["starts"]
    assert starts[0] == 0 and len(starts) == 2 and 0 < starts[1] < steps  # resumed, not restarted
    metrics = job_metrics(job_id, ws)
    assert list(metrics["step"]) == list(range(1, steps + 1))  # replayed steps overwrote, no gaps
    assert list(metrics["value"]) == [float(i) for i in range(steps)]
    assert integrity(ws) == "ok"


def test_sigterm_interrupts_the_job_and_requeues_it_for_the_next_worker(ws, start_worker):
    from hybridlab.jobs import submit, wait

    job_id = submit("count", {"steps": 30, "sleep_s": 0.05}, ws)
    first = start_worker()
    wait_until(lambda: job(job_id, ws)["fraction"] >= 0.2, "the job to make progress")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=TIMEOUT_S) == 0
    paused = job(job_id, ws)
    assert paused["status"] == "queued" and paused["worker"] is None
    assert "resume" in paused["message"]

    start_worker()
    done = wait(job_id, TIMEOUT_S, ws)
    assert done["status"] == "succeeded"
    assert done["result"]["total"] == sum(range(30))
    assert done["result"]["starts"][1] > 0


def test_failing_job_records_the_error_and_the_worker_goes_on(ws, start_worker):
    from hybridlab.jobs import submit, wait

    bad = submit("count", {"steps": 5, "fail_at": 2}, ws)
    good = submit("count", {"steps": 3}, ws)
    start_worker()
    failed = wait(bad, TIMEOUT_S, ws)
    assert failed["status"] == "failed"
    assert failed["error"] == "ValueError: count job told to fail at step 2"
    assert wait(good, TIMEOUT_S, ws)["result"]["total"] == 3


# ---- cancel ---------------------------------------------------------------------------------------


def test_cancel_stops_a_running_job_at_its_next_step(ws, start_worker):
    from hybridlab.jobs import cancel, submit, wait

    job_id = submit("count", {"steps": 2000, "sleep_s": 0.01}, ws)
    start_worker()
    wait_until(lambda: job(job_id, ws)["fraction"] > 0.01, "the job to start")
    assert cancel(job_id, ws) in ("running", "cancelled")
    stopped = wait(job_id, TIMEOUT_S, ws)
    assert stopped["status"] == "cancelled"
    assert stopped["result"] is None and stopped["fraction"] < 1
    # The worker survives a cancel and runs the next job.
    assert wait(submit("count", {"steps": 2}, ws), TIMEOUT_S, ws)["status"] == "succeeded"


def test_cancel_a_queued_job_means_it_never_runs(ws, start_worker):
    from hybridlab.jobs import cancel, submit

    job_id = submit("count", {"steps": 3}, ws)
    assert cancel(job_id, ws) == "cancelled"
    worker = start_worker("--exit-when-idle")
    assert worker.wait(timeout=TIMEOUT_S) == 0
    after = job(job_id, ws)
    assert after["status"] == "cancelled" and after["attempts"] == 0


def test_cancel_an_unknown_job_is_a_clear_error(ws):
    from hybridlab.jobs import cancel

    with pytest.raises(ValueError, match="no job 999"):
        cancel(999, ws)


# ---- submission -------------------------------------------------------------------------------------

SUBMITTER = """
import json, sys, time
from pathlib import Path
from hybridlab.jobs import submit
ws, n, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
barrier = Path(ws).parent / "barrier"
barrier.mkdir(exist_ok=True)
(barrier / me).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.001)
print(json.dumps([submit("count", {"steps": 1}, ws) for _ in range(n)]))
"""


def test_two_submitters_at_once_without_database_locked(ws, start_worker):
    from hybridlab.jobs import list_jobs

    per_process = 40
    start_worker()  # creates the store at the same moment as the submitters
    submitters = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(ws), str(per_process), name],
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for name in ("a", "b")
    ]
    ids = []
    for proc in submitters:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 0, err
        assert "locked" not in err
        ids += json.loads(out)
    assert len(set(ids)) == 2 * per_process
    wait_until(
        lambda: (list_jobs(ws)["status"] == "succeeded").sum() == 2 * per_process,
        "the worker to run every submitted job",
    )
    assert integrity(ws) == "ok"


@pytest.mark.parametrize(
    "kind, spec, message",
    [
        ("nope", {}, "unknown job kind 'nope'; known kinds: .*count"),
        ("count", {}, "missing key 'steps'"),
        ("count", {"steps": 3, "stpes": 3}, "unknown key 'stpes'"),
        ("count", {"steps": "3"}, "'steps' must be a whole number, got str '3'"),
        ("count", {"steps": True}, "'steps' must be a whole number, got the boolean True"),
        ("count", [1, 2], "must be a dict of options"),
        ("importance", {"model": "/no/such/model"}, "neither 'demo' nor an existing directory"),
        ("importance", {"model": "MODEL", "calib": "demo", "layer_metric": "best"}, "'layer_metric': must be one of"),
        ("importance", {"model": "MODEL", "name": "../escape"}, "'name': artifact name '../escape' is not allowed"),
        ("prune", {"model": "MODEL", "spec": {"hidden_size": 32}, "importance": 7}, "importance run 7 does not exist"),
        ("prune", {"model": "MODEL", "spec": {"mamba_num_heads": 999}, "ranking": "random"}, "larger than"),
        (
            "distill",
            {"student": "MODEL", "teacher": "MODEL", "tokens": 10, "train_tokens": __file__},
            "less than one batch",
        ),
        ("distill", {"teacher": "MODEL", "tokens": 10_000, "candidate": 3}, "candidate 3 does not exist"),
    ],
)
def test_malformed_spec_is_rejected_at_submission_and_nothing_is_queued(ws, tmp_path, kind, spec, message):
    from hybridlab.jobs import list_jobs, submit
    from hybridlab.jobs.queue import JobQueue

    model_dir = _tiny_model_dir(tmp_path / "model")
    if isinstance(spec, dict):
        spec = {key: str(model_dir) if value == "MODEL" else value for key, value in spec.items()}
    with pytest.raises(ValueError, match=message):
        submit(kind, spec, ws)
    assert list_jobs(ws).empty
    assert JobQueue(ws).pending_job_ids() == set()


def _tiny_model_dir(path):
    """A tiny random model saved with its weights: submission checks the weight files' headers too."""
    from conftest import tiny_nemotron_config
    from transformers import NemotronHForCausalLM

    NemotronHForCausalLM(tiny_nemotron_config()).save_pretrained(path)
    return path


# ---- chains: after= and "job:N" -------------------------------------------------------------------


def test_chain_completes_after_its_worker_is_sigkilled_while_the_parent_runs(ws, start_worker):
    from hybridlab.jobs import submit, wait

    parent = submit("count", {"steps": 40, "sleep_s": 0.05}, ws)
    child = submit("count", {"steps": 3}, ws, after=parent)
    grandchild = submit("count", {"steps": 4}, ws, after=[child, parent])
    assert [job(j, ws)["status"] for j in (parent, child, grandchild)] == ["queued", "waiting", "waiting"]
    first = start_worker()
    wait_until(lambda: job(parent, ws)["fraction"] >= 0.25, "the parent to get a quarter done")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert job(child, ws)["status"] == "waiting"  # nobody browses, nobody chains: only the store knows

    start_worker()
    done = wait(grandchild, TIMEOUT_S, ws)
    assert done["status"] == "succeeded", done
    assert done["result"]["total"] == 6 and done["parents"] == [parent, child]
    assert job(parent, ws)["attempts"] == 2 and job(parent, ws)["result"]["total"] == sum(range(40))
    assert job(child, ws)["attempts"] == 1 and job(child, ws)["result"]["total"] == 3
    assert job(child, ws)["started_at"] >= job(parent, ws)["finished_at"]
    assert integrity(ws) == "ok"


def test_failed_parent_ends_its_dependents_with_an_error_naming_it(ws, start_worker):
    from hybridlab.jobs import submit, wait

    parent = submit("count", {"steps": 5, "fail_at": 1}, ws)
    child = submit("count", {"steps": 2}, ws, after=parent)
    grandchild = submit("count", {"steps": 2}, ws, after=child)
    unrelated = submit("count", {"steps": 2}, ws)
    start_worker()
    assert wait(unrelated, TIMEOUT_S, ws)["status"] == "succeeded"  # the worker went on after the failure
    ended = wait(child, TIMEOUT_S, ws)
    assert (ended["status"], ended["attempts"], ended["message"]) == ("failed", 0, f"parent job {parent} failed")
    assert ended["error"] == (
        f"parent job {parent} (count) failed, so this job did not run "
        f"(job {parent}: ValueError: count job told to fail at step 1)"
    )
    below = wait(grandchild, TIMEOUT_S, ws)
    assert below["status"] == "failed" and below["error"].startswith(f"parent job {child} (count) failed")


def test_cancelling_a_parent_cancels_what_waits_on_it(ws, start_worker):
    from hybridlab.jobs import cancel, submit, wait

    parent = submit("count", {"steps": 2000, "sleep_s": 0.01}, ws)
    child = submit("count", {"steps": 2}, ws, after=parent)
    start_worker()
    wait_until(lambda: job(parent, ws)["fraction"] > 0.01, "the parent to start")
    cancel(parent, ws)
    ended = wait(child, TIMEOUT_S, ws)
    assert ended["status"] == "cancelled" and ended["error"].startswith(f"parent job {parent} (count) cancelled")


def test_recovery_sends_the_dependents_a_dead_worker_released_but_never_queued(ws):
    from hybridlab.jobs.queue import JobQueue
    from hybridlab.jobs.recovery import recover
    from hybridlab.store import Store, job_rows

    store, queue = Store(ws), JobQueue(ws)
    parent = job_rows.insert_job(store, "count", {"steps": 1})
    child = job_rows.insert_job(store, "count", {"steps": 1}, parents=[parent])
    job_rows.claim_job(store, parent, "elsewhere:1")
    job_rows.finish_job(store, parent, "elsewhere:1", job_rows.SUCCEEDED)  # ... and the worker died here
    assert job_rows.get_job(store, child)["status"] == "queued" and queue.pending_job_ids() == set()
    recover(store, queue, stale_s=30)
    assert queue.pending_job_ids() == {child}
    recover(store, queue, stale_s=30)  # again: no duplicate message
    assert [t.args[0] for t in queue.huey.pending()] == [child]


def test_bad_after_or_job_reference_is_refused_at_submission_and_nothing_is_queued(ws):
    from hybridlab.jobs import JobSpecError, job_ref, list_jobs, submit
    from hybridlab.jobs.queue import JobQueue

    counted = submit("count", {"steps": 1}, ws)
    cases = [
        ("count", {"steps": 1}, 99, f"^invalid count job: after: there is no job 99 in {ws}$"),
        ("count", {"steps": 1}, ["1"], "after: job ids are whole numbers, got str '1'"),
        (
            "eval",
            {"model": job_ref(counted), "val_tokens": __file__},
            None,
            f"^invalid eval job: 'model' refers to job {counted}, a count job, which makes no model; "
            "refer to a prune, distill, search job$",
        ),
        ("bench", {"model": "job:42"}, None, "'model' refers to job 42, which does not exist"),
        ("count", {"steps": "x"}, 99, "'steps' must be a whole number.*; invalid count job: after: there is no job 99"),
    ]
    for kind, spec, after, message in cases:
        with pytest.raises(JobSpecError, match=message):
            submit(kind, spec, ws, after=after)
    assert list_jobs(ws)["id"].tolist() == [counted]
    assert JobQueue(ws).pending_job_ids() == {counted}


def test_a_reference_resolves_to_the_parents_model_or_fails_the_job_clearly(ws):
    from hybridlab.jobs.parents import resolve_references
    from hybridlab.store import Store, job_rows

    store = Store(ws)
    made, empty = (job_rows.insert_job(store, "prune", {}) for _ in range(2))
    for job_id, result in ((made, {"model_path": "/models/half"}), (empty, {"params": 3})):
        job_rows.claim_job(store, job_id, "w:1")
        job_rows.finish_job(store, job_id, "w:1", job_rows.SUCCEEDED, result=result)
    child = job_rows.get_job(store, job_rows.insert_job(store, "bench", {"model": f"job:{made}", "seq_len": 8}))
    assert resolve_references(store, child) == {"model": "/models/half", "seq_len": 8}
    assert child["spec"]["model"] == f"job:{made}"  # the record keeps the reference
    with pytest.raises(ValueError, match=f"refers to job {empty} \\(prune\\), whose result holds no model_path"):
        resolve_references(store, {"kind": "bench", "spec": {"model": f"job:{empty}"}})


def test_prune_and_evaluate_from_the_dashboard_runs_with_no_browser_only_a_worker(
    ws, tmp_path, start_worker, tiny_nemotron
):
    """The issue's acceptance test: the chain is submitted by the function the planner page
    calls, then no Streamlit session exists at all; a worker alone runs it to the end."""
    import numpy as np

    from app.pipeline import eval_settings, prune_and_evaluate
    from hybridlab import load_model
    from hybridlab.jobs import list_benchmarks, list_evaluations, run_sync, wait
    from hybridlab.measure.evaluate import validation_loss

    model_dir = tmp_path / "tiny"
    tiny_nemotron.save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.integers(3, 128, size=8 * 24, dtype=np.uint16))
    np.save(tmp_path / "val.npy", rng.integers(3, 128, size=1024, dtype=np.uint16))
    scores = run_sync(
        "importance",
        {"model": str(model_dir), "calib": str(tmp_path / "calib.npy"), "samples": 8, "seq_len": 24},
        ws,
        progress=lambda *a: None,
    )
    settings = eval_settings(str(model_dir), str(tmp_path / "val.npy"), 512, 24, bench=True)
    scores_dir = str(ws / scores["result"]["artifact"])
    ids = prune_and_evaluate(str(model_dir), {"mamba_num_heads": 4}, scores_dir, "half", settings, ws)
    prune_id = ids[0]
    assert [(job(j, ws)["kind"], job(j, ws)["status"], job(j, ws)["parents"]) for j in ids] == [
        ("prune", "queued", []),
        ("eval", "waiting", [prune_id]),
        ("bench", "waiting", [prune_id]),
        ("eval", "queued", []),  # the teacher's own point
        ("bench", "queued", []),
    ]

    start_worker()
    finished = [wait(j, TIMEOUT_S * 2, ws) for j in ids]
    assert [j["status"] for j in finished] == ["succeeded"] * 5, [j["error"] for j in finished]
    pruned = finished[0]["result"]["model_path"]
    assert finished[1]["spec"]["model"] == f"job:{prune_id}"
    evaluations = list_evaluations(ws).set_index("job_id")
    assert evaluations.loc[ids[1], "model_ref"] == pruned and evaluations.loc[ids[3], "model_ref"] == str(model_dir)
    candidate, _ = load_model(pruned)
    expected = validation_loss(candidate, np.load(tmp_path / "val.npy"), seq_len=24, max_tokens=512)["loss"]
    assert evaluations.loc[ids[1], "val_loss"] == pytest.approx(expected, rel=1e-5)
    benchmarks = list_benchmarks(ws).set_index("job_id")
    assert benchmarks.loc[ids[2], "model_ref"] == pruned
    assert benchmarks.loc[ids[2], "params"] == sum(p.numel() for p in candidate.parameters())
    # A second chain does not measure the teacher again.
    again = prune_and_evaluate(str(model_dir), {"mamba_num_heads": 6}, scores_dir, None, settings, ws)
    assert [job(j, ws)["kind"] for j in again] == ["prune", "eval", "bench"]


# ---- real engine jobs on a tiny model -------------------------------------------------------------


def test_importance_job_in_a_worker_and_prune_run_sync_match_direct_calls(ws, tmp_path, start_worker, tiny_nemotron):
    import numpy as np
    import torch

    from hybridlab import ImportanceScores, PruneSpec, estimate_importance, load_model, prune
    from hybridlab.data.calibration import batched, load_calibration
    from hybridlab.jobs import list_candidates, list_importance_runs, run_sync, submit, wait

    model_dir = tmp_path / "tiny"
    tiny_nemotron.save_pretrained(model_dir)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).integers(3, 128, size=8 * 24, dtype=np.uint16))
    job_id = submit(
        "importance",
        {
            "model": str(model_dir),
            "calib": str(calib),
            "samples": 8,
            "seq_len": 24,
            "batch_size": 4,
            "name": "tiny-scores",
        },
        ws,
    )
    start_worker()
    done = wait(job_id, TIMEOUT_S, ws)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["artifact"] == "artifacts/importance/tiny-scores"

    model, tokenizer = load_model(model_dir)
    direct = estimate_importance(model, batched(load_calibration(calib, tokenizer, 8, 24), 4), layer_metric="kl")
    stored = ImportanceScores.load(ws / done["result"]["artifact"])
    assert torch.equal(stored.hidden, direct.hidden)
    for table in ("ffn", "attention", "mamba", "layers"):
        assert getattr(stored, table).keys() == getattr(direct, table).keys()
        for key, value in getattr(direct, table).items():
            assert torch.equal(getattr(stored, table)[key], value), (table, key)
    runs = list_importance_runs(ws)
    assert list(runs["status"]) == ["succeeded"] and runs["job_id"].tolist() == [job_id]

    spec = {"mamba_num_heads": 4, "ffn_hidden_size": 32}
    finished = run_sync(
        "prune",
        {"model": str(model_dir), "spec": spec, "importance": int(runs["id"][0]), "name": "half-mamba"},
        ws,
        progress=lambda *a: None,
    )
    assert finished["status"] == "succeeded" and finished["worker"].startswith("sync:")
    expected = prune(model, PruneSpec.from_dict(spec), direct)
    candidate, _ = load_model(ws / finished["result"]["artifact"])
    assert candidate.state_dict().keys() == expected.state_dict().keys()
    for name, tensor in expected.state_dict().items():
        assert torch.equal(candidate.state_dict()[name], tensor), name
    row = list_candidates(ws).iloc[0]
    assert row["name"] == "half-mamba" and row["strategy"] == "width" and row["spec.mamba_num_heads"] == 4
    assert row["params"] == sum(p.numel() for p in expected.parameters())
    assert row["artifact"] == "artifacts/candidates/half-mamba"


# ---- recovery decisions and the dashboard's worker launcher ---------------------------------------


def test_recovery_requeues_stale_remote_jobs_fails_orphaned_commands_and_requeues_lost_messages(ws):
    import socket

    from hybridlab.jobs.queue import JobQueue
    from hybridlab.jobs.recovery import recover
    from hybridlab.store import Store, job_rows

    store, queue = Store(ws), JobQueue(ws)
    remote = job_rows.insert_job(store, "count", {"steps": 1})
    job_rows.claim_job(store, remote, "elsewhere:123")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = job_rows.insert_job(store, "count", {"steps": 1})
    job_rows.claim_job(store, orphan, f"sync:{socket.gethostname()}:{int(dead.stdout)}")
    lost_message = job_rows.insert_job(store, "count", {"steps": 1})  # never enqueued

    assert recover(store, queue, stale_s=30) == []  # the remote job's heartbeat is fresh
    assert job_rows.get_job(store, remote)["status"] == "running"
    assert job_rows.get_job(store, orphan)["status"] == "failed"
    assert "run it again" in job_rows.get_job(store, orphan)["error"]
    assert queue.pending_job_ids() == {lost_message}

    with store.write() as conn:
        conn.execute("UPDATE jobs SET heartbeat = heartbeat - 60 WHERE id = ?", (remote,))
    assert recover(store, queue, stale_s=30) == [remote]
    assert job_rows.get_job(store, remote)["status"] == "queued"
    assert queue.pending_job_ids() == {lost_message, remote}


def test_ensure_worker_starts_one_detached_worker_and_reuses_it(ws, monkeypatch):
    from hybridlab.jobs import ensure_worker, submit, wait
    from hybridlab.jobs.recovery import pid_alive
    from hybridlab.jobs.worker import live_workers

    for key, value in worker_env().items():
        monkeypatch.setenv(key, value)
    pid = ensure_worker(ws, extra_args=("--poll", "0.05"))
    try:
        assert ensure_worker(ws) == pid
        assert [w["pid"] for w in live_workers(ws)] == [pid]
        assert os.getsid(pid) == pid  # its own session: a Ctrl-C to the dashboard does not reach it
        assert wait(submit("count", {"steps": 3}, ws), TIMEOUT_S, ws)["result"]["total"] == 3
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pid_alive(pid), "the worker to exit on SIGTERM")
        assert live_workers(ws) == []
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


@pytest.mark.slow
def test_sigkilled_distillation_resumes_from_its_checkpoint_on_the_same_loss_curve(
    ws, tmp_path, start_worker, tiny_nemotron
):
    import numpy as np

    from hybridlab import PruneSpec, prune, save_model
    from hybridlab.jobs import job_metrics, run_sync, submit, wait

    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    tiny_nemotron.save_pretrained(teacher_dir)
    student = prune(tiny_nemotron, PruneSpec(mamba_num_heads=4, ffn_hidden_size=32), ranking="random")
    save_model(student, None, student_dir)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.integers(3, 128, size=4096, dtype=np.uint16))
    np.save(tmp_path / "val.npy", rng.integers(3, 128, size=512, dtype=np.uint16))
    steps = 40
    spec = {
        "student": str(student_dir),
        "teacher": str(teacher_dir),
        "tokens": steps * 2 * 16,
        "seq_len": 16,
        "batch_size": 2,
        "eval_every": 10,
        "checkpoint_every": 5,
        "train_tokens": str(tmp_path / "train.npy"),
        "val_tokens": str(tmp_path / "val.npy"),
        "device": "cpu",
        "name": "kd",
    }

    job_id = submit("distill", spec, ws)
    first = start_worker()
    checkpoint = ws / "jobs" / str(job_id) / "checkpoint" / "checkpoint" / "state.pt"
    wait_until(lambda: checkpoint.exists() and job(job_id, ws)["fraction"] >= 0.3, "a checkpoint mid-run")
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    assert job(job_id, ws)["status"] == "running"

    start_worker()
    done = wait(job_id, TIMEOUT_S, ws)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and done["result"]["step"] == steps
    assert (
        done["result"]["artifact"] == "artifacts/distilled/kd" and (ws / "artifacts/distilled/kd/config.json").exists()
    )
    assert done["result"]["model_path"] == str((ws / "artifacts/distilled/kd").resolve())
    resumed = job_metrics(job_id, ws)
    kd = resumed[resumed["name"] == "kd_loss"]
    assert list(kd["step"]) == list(range(1, steps + 1))
    assert (kd["time"].iloc[0].timestamp()) < killed_at  # early steps were not redone: it resumed

    reference = run_sync("distill", {**spec, "name": "kd-reference"}, tmp_path / "reference", progress=lambda *a: None)
    expected = job_metrics(reference["id"], tmp_path / "reference")
    expected_kd = expected[expected["name"] == "kd_loss"]["value"].tolist()
    np.testing.assert_allclose(kd["value"].tolist(), expected_kd, rtol=1e-5, atol=0)


def test_eval_and_bench_jobs_run_synchronously_and_record_their_runs(ws, tmp_path, tiny_nemotron):
    import numpy as np

    from hybridlab.jobs import list_benchmarks, list_evaluations, run_sync
    from hybridlab.measure.evaluate import validation_loss

    model_dir = tmp_path / "tiny"
    tiny_nemotron.save_pretrained(model_dir)
    val = np.random.default_rng(0).integers(3, 128, size=600, dtype=np.uint16)
    np.save(tmp_path / "val.npy", val)
    quiet = lambda *a: None  # noqa: E731
    evaluated = run_sync(
        "eval",
        {"model": str(model_dir), "val_tokens": str(tmp_path / "val.npy"), "seq_len": 32, "device": "cpu"},
        ws,
        progress=quiet,
    )
    expected = validation_loss(tiny_nemotron, val, seq_len=32)["loss"]
    assert evaluated["result"]["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert list_evaluations(ws)["val_loss"].tolist() == [evaluated["result"]["val_loss"]]

    benched = run_sync(
        "bench",
        {"model": str(model_dir), "seq_len": 8, "new_tokens": 2, "repeats": 1, "warmup": 0, "device": "cpu"},
        ws,
        progress=quiet,
    )
    row = list_benchmarks(ws).iloc[0]
    assert row["status"] == "succeeded" and row["prefill_ms"] == benched["result"]["prefill_ms"] > 0
    assert row["params"] == sum(p.numel() for p in tiny_nemotron.parameters())


def test_jobs_cli_submit_after_and_show_parents(ws, capsys):
    from hybridlab.cli import main

    assert main(["jobs", "submit", "count", '{"steps": 2}', "--workspace", str(ws)]) == 0
    assert main(["jobs", "submit", "count", '{"steps": 2}', "--after", "1", "--workspace", str(ws)]) == 0
    assert "job 2 waiting" in capsys.readouterr().out.splitlines()[-1]
    assert main(["jobs", "list", "--status", "waiting", "--workspace", str(ws)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert "after" in listing[0].split() and listing[1].split()[:3] == ["2", "count", "waiting"]
    assert listing[1].split()[-1] == "1"
    assert main(["jobs", "show", "2", "--workspace", str(ws)]) == 0
    assert "after:  job 1 (queued)" in capsys.readouterr().out
    assert main(["jobs", "submit", "count", '{"steps": 2}', "--after", "7", "--workspace", str(ws)]) == 2
    assert "after: there is no job 7" in capsys.readouterr().err


def test_jobs_cli_submit_list_show_cancel(ws, capsys):
    from hybridlab.cli import main

    assert main(["jobs", "submit", "count", '{"steps": 2}', "--workspace", str(ws)]) == 0
    assert "job 1 queued" in capsys.readouterr().out
    assert main(["jobs", "list", "--workspace", str(ws)]) == 0
    listing = capsys.readouterr().out
    assert "count" in listing and "queued" in listing
    assert main(["jobs", "cancel", "1", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.strip() == "job 1: cancelled"
    assert main(["jobs", "show", "1", "--workspace", str(ws)]) == 0
    assert 'spec:   {"fail_at": null, "sleep_s": 0.0, "steps": 2}' in capsys.readouterr().out
    assert main(["jobs", "submit", "count", '{"steps": "two"}', "--workspace", str(ws)]) == 2
    assert "'steps' must be a whole number" in capsys.readouterr().err
    assert main(["jobs", "submit", "count", "{steps: 2}", "--workspace", str(ws)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["worker", "--workspace", str(ws), "--stale-after", "1"]) == 2
    assert "--stale-after must be more than twice --heartbeat" in capsys.readouterr().err


# ---- chains through other outputs: an importance job's scores, a search job's chosen spec ---------------


def _chain_specs(model_dir: Path, tokens: Path, tolerance: float) -> tuple[dict, dict]:
    """(importance spec, search spec) for the tiny model: a width-only search at 70%, ranked zero-shot."""
    importance = {"model": str(model_dir), "calib": str(tokens), "samples": 8, "seq_len": 24, "batch_size": 4}
    search = {
        "model": str(model_dir),
        "train_tokens": str(tokens),
        "val_tokens": str(tokens),
        "target_params": "70%",
        "tolerance": tolerance,
        "strategy": "width",
        "max_depth_prune": 0.0,
        "max_candidates": 2,
        "top_k": 0,
        "tokens": 0,
        "seq_len": 24,
        "eval_tokens": 240,
        "measure_latency": False,
        "dtype": "float32",
        "device": "cpu",
    }
    return importance, search


def _submit_chain(ws: Path, model_dir: Path, tokens: Path, tolerance: float) -> list[int]:
    """importance -> search -> prune -> eval, submitted at once: each names what it needs by "job:N"."""
    from hybridlab.jobs import job_ref, submit

    importance, search = _chain_specs(model_dir, tokens, tolerance)
    scored = submit("importance", importance, ws)
    searched = submit("search", {**search, "importance": job_ref(scored)}, ws)
    pruned = submit("prune", {"model": str(model_dir), "spec": job_ref(searched), "importance": job_ref(scored)}, ws)
    evaluated = submit(
        "eval", {"model": job_ref(pruned), "val_tokens": str(tokens), "max_tokens": 240, "seq_len": 24}, ws
    )
    return [scored, searched, pruned, evaluated]


def test_importance_search_prune_eval_submitted_at_once_run_to_the_end_with_only_a_worker(
    ws, tmp_path, start_worker, tiny_nemotron
):
    import numpy as np
    import torch

    from hybridlab import ImportanceScores, PruneSpec, load_model, prune
    from hybridlab.jobs import job_ref, wait
    from hybridlab.measure.evaluate import validation_loss

    model_dir = tmp_path / "tiny"
    tiny_nemotron.save_pretrained(model_dir)
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(3, 128, size=2048, dtype=np.uint16))
    ids = _submit_chain(ws, model_dir, tokens, tolerance=0.1)
    scored, searched, pruned, evaluated = ids
    assert [(job(j, ws)["status"], job(j, ws)["parents"]) for j in ids] == [
        ("queued", []),
        ("waiting", [scored]),
        ("waiting", [scored, searched]),  # both references make parents, with no after=
        ("waiting", [pruned]),
    ]

    start_worker()  # from here on nothing but the worker and the store: no page polls, nothing submits
    finished = [wait(j, TIMEOUT_S * 2, ws) for j in ids]
    assert [j["status"] for j in finished] == ["succeeded"] * 4, [j["error"] for j in finished]
    assert finished[2]["spec"]["spec"] == job_ref(searched)  # the record keeps the reference
    assert finished[2]["spec"]["importance"] == job_ref(scored)
    assert [j["started_at"] >= p["finished_at"] for j, p in zip(finished[1:], finished)] == [True] * 3

    # The prune job pruned the search's choice with the importance job's scores: the very model a direct call makes.
    best = finished[1]["result"]["best"]
    chosen = json.loads(best["spec"])
    assert finished[2]["result"]["strategy"] == "width" and finished[2]["result"]["params"] == best["params"]
    scores = ImportanceScores.load(ws / finished[0]["result"]["artifact"])
    model, _ = load_model(model_dir)
    expected = prune(model, PruneSpec.from_dict(chosen), scores)
    candidate, _ = load_model(finished[2]["result"]["model_path"])
    assert candidate.state_dict().keys() == expected.state_dict().keys()
    for name, tensor in expected.state_dict().items():
        assert torch.equal(candidate.state_dict()[name], tensor), name
    loss = validation_loss(candidate, np.load(tokens), seq_len=24, max_tokens=240)["loss"]
    assert finished[3]["result"]["val_loss"] == pytest.approx(loss, rel=1e-5)


def test_a_search_with_no_candidate_fails_in_the_worker_and_ends_its_chain_with_the_reason(ws, tmp_path, start_worker):
    """The expensive check (is any candidate within tolerance?) is the search's own first step in the
    worker, not the submission's; its one line ends everything below it. A cancelled parent cancels too."""
    import numpy as np

    from hybridlab.jobs import cancel, wait

    model_dir = _tiny_model_dir(tmp_path / "tiny")
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(3, 128, size=2048, dtype=np.uint16))
    scored, searched, pruned, evaluated = _submit_chain(ws, model_dir, tokens, tolerance=0.0001)  # submits at once
    dropped = _submit_chain(ws, model_dir, tokens, tolerance=0.1)
    assert cancel(dropped[0], ws) == "cancelled"
    for below in dropped[1:]:
        ended = job(below, ws)  # decided by the store at once: no worker needed
        assert ended["status"] == "cancelled" and "cancelled, so this job did not run" in ended["error"], ended

    start_worker()
    assert wait(scored, TIMEOUT_S, ws)["status"] == "succeeded"
    failed = wait(searched, TIMEOUT_S, ws)
    assert failed["status"] == "failed"
    assert "no candidate within 0% of" in failed["error"] and "\n" not in failed["error"]
    for below, parent in ((pruned, searched), (evaluated, pruned)):
        ended = wait(below, TIMEOUT_S, ws)
        assert (ended["status"], ended["attempts"]) == ("failed", 0)
        assert ended["error"].startswith(f"parent job {parent} (")
        assert "no candidate within 0% of" in ended["error"]  # the reason travels down the chain


def test_references_to_the_wrong_kind_of_output_are_refused_at_submission(ws, tmp_path):
    import numpy as np

    from hybridlab.jobs import JobSpecError, job_ref, list_jobs, submit

    model_dir = _tiny_model_dir(tmp_path / "tiny")
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(3, 128, size=2048, dtype=np.uint16))
    counted = submit("count", {"steps": 1}, ws)
    cases = [
        (
            "prune",
            {"model": str(model_dir), "spec": job_ref(counted), "ranking": "random"},
            f"'spec' refers to job {counted}, a count job, which makes no chosen spec; refer to a search job$",
        ),
        (
            "search",
            {
                "model": str(model_dir),
                "importance": job_ref(counted),
                "target_params": "70%",
                "seq_len": 24,
                "train_tokens": str(tokens),
                "val_tokens": str(tokens),
            },  # fmt: skip
            f"'importance' refers to job {counted}, a count job, which makes no importance scores; refer to an "
            "importance job$",
        ),
        (
            "prune",
            {"model": str(model_dir), "spec": "half", "ranking": "random"},
            "'spec': must be a dict of PruneSpec",
        ),
    ]
    for kind, spec, message in cases:
        with pytest.raises(JobSpecError, match=message):
            submit(kind, spec, ws)
    assert list_jobs(ws)["id"].tolist() == [counted]


def test_a_prune_of_a_model_a_parent_job_writes_is_checked_once_that_model_exists(ws, tmp_path, tiny_nemotron):
    """A prune whose model is "job:N" (a candidate pruned again) is not refused at submission for a
    folder named "job:N": it runs on the model job N wrote."""
    from hybridlab.jobs import job_ref, run_sync, submit

    model_dir = tmp_path / "tiny"
    tiny_nemotron.save_pretrained(model_dir)
    width = tiny_nemotron.config.hidden_size
    first = run_sync("prune", {"model": str(model_dir), "spec": {"hidden_size": width - 8}, "ranking": "random"}, ws)
    again = {"model": job_ref(first["id"]), "spec": {"hidden_size": width - 16}, "ranking": "random"}
    second = run_sync("prune", again, ws)
    assert second["status"] == "succeeded"
    assert second["result"]["parent_params"] == first["result"]["params"] > second["result"]["params"]
    with pytest.raises(ValueError, match="refers to job 99, which does not exist"):
        submit("prune", {**again, "model": job_ref(99)}, ws)
    for bad, problem in (({"hiden_size": 8}, "hiden_size"), ({}, "keeps every size")):  # no model needed to see these
        with pytest.raises(ValueError, match=problem):
            submit("prune", {**again, "spec": bad}, ws)
    with pytest.raises(ValueError, match="larger than the model's"):  # fitted to the model when the job starts
        run_sync("prune", {**again, "spec": {"hidden_size": 4 * width}}, ws)
