"""Faults: damaged files, killed processes, names and paths that could make a record lie.

Real processes are SIGKILLed at named points (hybridlab.core.faults: the process writes a
marker file and waits there, so the kill lands exactly between two steps): a worker while
it writes a pruned model, a command while it writes one, a store upgrade inside its
transaction, and a training run between the two renames of a checkpoint save. After each,
nothing half-written may be presented as complete, the store opens at a consistent
version, the job is re-queued or failed, and the next recovery clears the leftovers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_jobs import REPO, wait_until, worker_env

from hybridlab.cli import main
from hybridlab.core.faults import PAUSE_AT_ENV, PAUSE_FILE_ENV
from hybridlab.jobs import Field, JobKind, register_kind
from hybridlab.store import SCHEMA_VERSION, Store, job_rows, run_rows
from hybridlab.store.db import StoreDamaged
from hybridlab.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint


def _checkpointing_job(spec: dict, ctx) -> dict:
    """A job that keeps a training checkpoint (when asked to) and succeeds."""
    if spec.get("checkpoint"):
        model = torch.nn.Linear(2, 2)
        save_checkpoint(ctx.checkpoint_dir / "checkpoint", model, torch.optim.SGD(model.parameters(), lr=0.1), {})
    return {"ok": True}


register_kind(
    JobKind(name="ckpt", fields={"checkpoint": Field(bool, default=False)}, handler=_checkpointing_job),
    replace=True,
)


# ---- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def ws(tmp_path) -> Path:
    return tmp_path / "workspace"


@pytest.fixture
def spawn(tmp_path):
    """Start a process that may pause at named fault points; all are killed at teardown."""
    procs = []

    def start(args: list[str], pause_at: str | None = None) -> tuple[subprocess.Popen, Path]:
        marker = tmp_path / f"paused-{len(procs)}"
        env = dict(worker_env())
        if pause_at:
            env.update({PAUSE_AT_ENV: pause_at, PAUSE_FILE_ENV: str(marker)})
        log = open(tmp_path / f"proc-{len(procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        procs.append(proc)
        return proc, marker

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def kill_when_paused(proc: subprocess.Popen, marker: Path, log: Path | None = None) -> None:
    def paused():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before pausing: {_tail(log)}")
        return marker.exists()

    wait_until(paused, f"the process to reach {marker.name}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""


def worker_args(ws: Path, *extra: str) -> list[str]:
    return ["-m", "hybridlab", "worker", "--workspace", str(ws), "--poll", "0.05", "--heartbeat", "0.2",
            "--stale-after", "5", *extra]  # fmt: skip


def store_check(ws: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["store", "check", "--workspace", str(ws), *extra])
    return code, capsys.readouterr().out.splitlines()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def tiny_model(path: Path) -> Path:
    from conftest import tiny_nemotron_config
    from transformers import NemotronHForCausalLM

    torch.manual_seed(0)
    NemotronHForCausalLM(tiny_nemotron_config()).save_pretrained(path)
    return path


def filled_store(ws: Path, jobs: int = 200) -> Store:
    store = Store(ws)
    for i in range(jobs):
        job_rows.insert_job(store, "count", {"steps": i, "note": "x" * 400})
    store.close()
    conn = sqlite3.connect(ws / "store.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in store.db itself, nothing in the WAL
    conn.close()
    return store


# ---- damaged files: one clear line, never a traceback -------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 400)


def _truncated(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _bad_pages(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(4096 * 5)
        f.write(b"\xa5" * 4096 * 3)


@pytest.mark.parametrize("damage", [_garbage, _truncated, _bad_pages], ids=["garbage", "truncated", "bad-pages"])
def test_a_damaged_store_is_refused_with_one_line_naming_the_file_and_the_way_out(ws, capsys, damage):
    filled_store(ws)
    damage(ws / "store.db")
    with pytest.raises(StoreDamaged) as refused:
        Store(ws)
    message = str(refused.value)
    assert "\n" not in message and str(ws / "store.db") in message
    assert "is damaged" in message and "move store.db and its store.db-wal/-shm files away" in message

    capsys.readouterr()
    assert main(["jobs", "list", "--workspace", str(ws)]) == 2  # the CLI: one line, no traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged" in err and "Traceback" not in err
    code, out = store_check(ws, capsys)
    assert code == 1 and any("is damaged" in line for line in out)


def test_the_store_is_backed_up_before_each_upgrade_and_a_damaged_one_names_the_backup(ws, capsys):
    from test_store import make_v2_store

    ws.mkdir()
    make_v2_store(ws / "store.db")
    store = Store(ws)  # upgrades 2 -> 3
    backup = ws / "store.db.v2.bak"
    old = sqlite3.connect(backup)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 2
    assert old.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert old.execute("SELECT id, status FROM jobs ORDER BY id").fetchall() == [(1, "succeeded"), (2, "running")]
    old.close()
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    store.close()
    Store(ws).close()  # a current store is not backed up again, nor is a new one
    Store(ws.parent / "fresh").close()
    assert sorted(p.name for p in ws.parent.rglob("*.bak")) == ["store.db.v2.bak"]

    conn = sqlite3.connect(ws / "store.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    _garbage(ws / "store.db")
    with pytest.raises(StoreDamaged, match=re.escape(f"copy the backup {backup} over")):
        Store(ws)
    # Following the message: the backup replaces the store, which opens (and is upgraded) again.
    for name in ("store.db-wal", "store.db-shm"):
        (ws / name).unlink(missing_ok=True)
    shutil.copy(backup, ws / "store.db")
    assert job_rows.get_job(Store(ws), 1)["result"] == {"run_id": 1}


def test_a_garbage_queue_is_refused_and_rebuilt_from_the_store_once_moved_away(ws):
    from hybridlab.jobs import submit
    from hybridlab.jobs.queue import JobQueue
    from hybridlab.jobs.recovery import recover

    store = Store(ws)
    queued = job_rows.insert_job(store, "count", {"steps": 1})
    _garbage(ws / "queue.db")
    with pytest.raises(StoreDamaged) as refused:
        JobQueue(ws)
    assert "\n" not in str(refused.value) and f"mv {ws / 'queue.db'} {ws / 'queue.db'}.broken" in str(refused.value)
    with pytest.raises(StoreDamaged, match="job queue"):
        submit("count", {"steps": 1}, ws)
    (ws / "queue.db").rename(ws / "queue.db.broken")
    queue = JobQueue(ws)
    recover(store, queue)
    assert queue.pending_job_ids() == {queued}  # nothing was lost with the queue file


def test_a_workspace_that_is_a_file_is_one_line_and_exit_status_2(tmp_path, capsys):
    path = tmp_path / "not-a-folder"
    path.write_text("x")
    for command in (["store", "check"], ["jobs", "list"]):
        capsys.readouterr()
        assert main([*command, "--workspace", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a file, not a folder" in err and "Traceback" not in err


# ---- hybridlab store check ---------------------------------------------------------------------------


def test_store_check_reports_each_problem_and_fix_clears_what_recovery_may(ws, capsys, tmp_path):
    store = Store(ws)
    code, out = store_check(ws, capsys)
    assert code == 0 and out[-1].endswith("no problems (store, queue, jobs, artifacts, temporary folders)")

    # A finished prune job with its candidate, a candidate whose folder went missing, a folder no run
    # records, a command that died mid-job, and the temporary folders such deaths leave.
    job = job_rows.insert_job(store, "prune", {"name": "kept"})
    job_rows.claim_job(store, job, "host:1")
    for name in ("kept", "gone"):
        (ws / "artifacts/candidates" / name).mkdir(parents=True)
        run = run_rows.start_run(store, "candidates", job, name, "demo", {})
        run_rows.finish_run(store, "candidates", run, "succeeded", f"artifacts/candidates/{name}")
    job_rows.finish_job(store, job, "host:1", "succeeded", result={"artifact": "artifacts/candidates/kept"})
    shutil.rmtree(ws / "artifacts/candidates/gone")
    (ws / "artifacts/candidates/stray").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stuck = job_rows.insert_job(store, "prune", {})
    job_rows.claim_job(store, stuck, f"sync:{os.uname().nodename}:{int(dead.stdout)}")
    (ws / "artifacts/candidates/.half.abcd1234").mkdir()
    (ws / f"jobs/{stuck}/checkpoint/.checkpoint.tmp").mkdir(parents=True)

    code, out = store_check(ws, capsys)
    assert code == 1 and out[-1].endswith("5 problem(s)")
    text = "\n".join(out)
    assert f"job {stuck} (prune) is stuck as running" in text
    assert "artifacts/candidates/gone is missing, but candidate 2 'gone' (job 1) records it" in text
    assert "artifacts/candidates/stray is recorded by no run" in text
    assert "artifacts/candidates/.half.abcd1234 (unfinished copy of half) was left by a killed process" in text
    assert f"jobs/{stuck}/checkpoint/.checkpoint.tmp (unfinished copy of checkpoint)" in text

    code, out = store_check(ws, capsys, "--fix")
    assert code == 1 and "leftovers cleared (0 left)" in out[-2]
    assert job_rows.get_job(store, stuck)["status"] == "failed"
    code, out = store_check(ws, capsys)
    assert code == 1 and out[-1].endswith("2 problem(s)")  # the artifacts are the user's to decide on


# ---- a store upgrade killed inside its transaction ---------------------------------------------------


def test_sigkill_mid_migration_leaves_the_store_at_its_old_version_and_the_next_open_upgrades_it(ws, spawn):
    from test_store import make_v2_store

    ws.mkdir()
    make_v2_store(ws / "store.db")
    code = f"from hybridlab.store import Store; Store({str(ws)!r})"
    proc, marker = spawn(["-c", code], pause_at="store.migrate")
    kill_when_paused(proc, marker)

    conn = sqlite3.connect(ws / "store.db")  # as the kill left it: the transaction never committed
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "job_parents" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    backup = sqlite3.connect(ws / "store.db.v2.bak")  # made before the upgrade began: whole
    assert backup.execute("PRAGMA user_version").fetchone()[0] == 2
    assert backup.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2
    backup.close()

    store = Store(ws)
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert [j["status"] for j in job_rows.job_rows(store)] == ["succeeded", "running"]
    assert not [p for p in ws.iterdir() if p.name.startswith(".")]  # no half-written backup file


# ---- a pruned model being written when the process dies -----------------------------------------------


def test_sigkilled_worker_writing_a_pruned_model_leaves_nothing_that_looks_complete(ws, tmp_path, spawn, capsys):
    from hybridlab.jobs import get_job, list_candidates, submit
    from hybridlab.jobs.queue import JobQueue
    from hybridlab.jobs.recovery import recover
    from hybridlab.jobs.runner import execute_job, worker_id

    model = tiny_model(tmp_path / "model")
    spec = {"model": str(model), "spec": {"mamba_num_heads": 4}, "ranking": "random", "device": "cpu", "name": "half"}
    job_id = submit("prune", spec, ws)
    worker, marker = spawn(worker_args(ws), pause_at="atomic.before-rename")
    kill_when_paused(worker, marker, tmp_path / "proc-0.log")

    folder = ws / "artifacts" / "candidates"
    assert not (folder / "half").exists()  # the model was complete only in its hidden temporary folder
    assert [name.startswith(".half.") for name in hidden(folder)] == [True]
    rows = run_rows.run_rows(Store(ws), "candidates")
    assert [(r["name"], r["status"], r["artifact"]) for r in rows] == [("half", "running", None)]
    code, out = store_check(ws, capsys)
    assert code == 1 and f"job {job_id} (prune) is stuck as running" in "\n".join(out)
    assert "(unfinished copy of half) was left by a killed process" in "\n".join(out)

    # The next worker (here in this process, to save starting one): recovery, then the job again.
    store, queue = Store(ws), JobQueue(ws)
    assert recover(store, queue) == [job_id]
    assert hidden(folder) == []  # the dead worker's temporary folder is gone
    assert execute_job(store, job_id, worker_id()) == "succeeded"
    done = get_job(job_id, ws)
    assert (done["status"], done["attempts"]) == ("succeeded", 2), done["error"]
    assert (folder / "half" / "config.json").exists()
    assert list_candidates(ws)[["name", "status", "artifact"]].values.tolist() == [
        ["half", "succeeded", "artifacts/candidates/half"]
    ]
    assert not (ws / "jobs").exists()  # a prune keeps no checkpoints: no empty job folder either
    code, out = store_check(ws, capsys)
    assert code == 0, out


def _prune_paused_before_rename(ws, tmp_path, spawn):
    """A `hybridlab prune` command started as a process that pauses just before its output's rename:
    (process, marker file that appears at the pause, output folder)."""
    model = tiny_model(tmp_path / "model")
    out = tmp_path / "pruned"
    args = ["-m", "hybridlab", "prune", "--model", str(model), "--mamba-num-heads", "4", "--ranking", "random",
            "--device", "cpu", "--out", str(out), "--workspace", str(ws)]  # fmt: skip
    proc, marker = spawn(args, pause_at="atomic.before-rename")
    return proc, marker, out


def test_sigkilled_prune_command_is_failed_without_any_worker_and_its_leftovers_cleared(ws, tmp_path, spawn):
    from hybridlab.jobs import list_candidates, list_jobs

    proc, marker, out = _prune_paused_before_rename(ws, tmp_path, spawn)
    kill_when_paused(proc, marker, tmp_path / "proc-0.log")
    assert hidden(ws / "artifacts" / "candidates") != []

    jobs = list_jobs(ws)  # the first look at the workspace runs recovery: no worker needed
    assert jobs["status"].tolist() == ["failed"]
    assert "stopped without finishing it" in jobs["error"].iloc[0]
    assert list_candidates(ws)[["status", "artifact"]].values.tolist() == [["failed", None]]
    assert hidden(ws / "artifacts" / "candidates") == [] and not out.exists()


def test_sigterm_stops_a_command_like_ctrl_c_leaving_nothing_half_written(ws, tmp_path, spawn):
    """Started in the background by a script, a command ignores Ctrl-C; SIGTERM must still stop it cleanly."""
    from hybridlab.jobs import list_jobs

    proc, marker, out = _prune_paused_before_rename(ws, tmp_path, spawn)
    wait_until(marker.exists, "the prune to reach its rename")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert "hybridlab prune: cancelled" in (tmp_path / "proc-0.log").read_text()
    assert not out.exists() and hidden(tmp_path) == [] and hidden(ws / "artifacts" / "candidates") == []
    assert list_jobs(ws)["status"].tolist() == ["cancelled"]


# ---- a checkpoint save killed between its two renames ---------------------------------------------------

TRAIN_SCRIPT = """
import sys
from test_faults import train_tiny
train_tiny(sys.argv[1])
"""


def train_tiny(out_dir, resume: bool = False, seed: int = 0) -> dict:
    """8 steps of a tiny model, a checkpoint every 2; the losses by step."""
    import numpy as np
    from conftest import tiny_nemotron_config
    from transformers import NemotronHForCausalLM

    from hybridlab.data.tokens import TokenBatches
    from hybridlab.training.pretrain import lm_loss
    from hybridlab.training.trainer import TrainerSettings, train

    torch.manual_seed(seed)
    model = NemotronHForCausalLM(tiny_nemotron_config())
    tokens = np.tile(np.arange(10, 42, dtype=np.uint16), 60)
    settings = TrainerSettings(total_steps=8, lr=3e-3, warmup_steps=2, log_every=1, eval_every=100,
                               checkpoint_every=2, bf16_autocast=False)  # fmt: skip
    batches = TokenBatches(tokens, batch_size=2, seq_len=16, seed=0)
    train(model, batches.batch, lm_loss, settings, out_dir, progress=lambda *a: None, resume=resume)
    lines = Path(out_dir, "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"}


def test_a_run_killed_between_the_two_checkpoint_renames_resumes_from_the_stranded_checkpoint(tmp_path, spawn):
    from hybridlab.training.distill import DistillSettings, check_resume

    uninterrupted = train_tiny(tmp_path / "full")
    run = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    proc, marker = spawn([str(script), str(run)], pause_at="checkpoint.between-renames")
    kill_when_paused(proc, marker, tmp_path / "proc-0.log")
    # Killed in the second save: the step-2 checkpoint sits in its backup, step 4 in the temp folder.
    assert not (run / "checkpoint").exists()
    assert hidden(run) == [".checkpoint.old", ".checkpoint.tmp"]

    check_resume(run, DistillSettings(tokens=1000))  # was "nothing to resume": it puts the checkpoint back first
    assert (run / "checkpoint" / "state.pt").is_file() and hidden(run) == [".checkpoint.tmp"]
    resumed = train_tiny(run, resume=True, seed=99)  # other weights: they must come from the checkpoint
    assert resumed == pytest.approx(uninterrupted, rel=1e-6)  # steps 3.. redone from the checkpoint, on the same curve


def _saved(path: Path, step: int) -> None:
    model = torch.nn.Linear(2, 2)
    save_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), {"step": step})


def test_a_stranded_checkpoint_is_put_back_and_the_complete_one_wins(tmp_path, monkeypatch):
    ckpt, old = tmp_path / "checkpoint", tmp_path / ".checkpoint.old"
    model = torch.nn.Linear(2, 2)

    _saved(ckpt, 1)
    ckpt.rename(old)  # killed between the renames: only the backup is left
    assert load_checkpoint(ckpt, model)["step"] == 1 and hidden(tmp_path) == []

    shutil.copytree(ckpt, old)  # killed after the second rename: both are whole, the new one wins
    _saved(tmp_path / "newer", 2)
    shutil.rmtree(ckpt)
    (tmp_path / "newer").rename(ckpt)
    assert has_checkpoint(ckpt) and load_checkpoint(ckpt, model)["step"] == 2 and hidden(tmp_path) == []

    shutil.copytree(ckpt, old)  # a checkpoint folder missing a file loses to a whole backup
    (ckpt / "state.pt").unlink()
    assert has_checkpoint(ckpt) and load_checkpoint(ckpt, model)["step"] == 2

    _saved(ckpt, 3)  # a save that fails never costs the only whole checkpoint: it is put back first
    ckpt.rename(old)
    (tmp_path / ".checkpoint.tmp").mkdir()
    monkeypatch.setattr("hybridlab.training.checkpoint.save_model", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        _saved(ckpt, 4)
    monkeypatch.undo()
    assert load_checkpoint(ckpt, model)["step"] == 3
    _saved(ckpt, 4)
    assert load_checkpoint(ckpt, model)["step"] == 4 and hidden(tmp_path) == []


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


# ---- recovery of leftovers; job folders --------------------------------------------------------------


def test_recovery_clears_leftovers_of_dead_jobs_and_never_touches_a_live_jobs(ws):
    from hybridlab.jobs.queue import JobQueue
    from hybridlab.jobs.recovery import recover
    from hybridlab.jobs.runner import worker_id

    store = Store(ws)
    live = job_rows.insert_job(store, "prune", {"name": "live"})
    job_rows.claim_job(store, live, worker_id(sync=True))  # this very process: alive
    unnamed = job_rows.insert_job(store, "prune", {})
    job_rows.claim_job(store, unnamed, worker_id(sync=True))
    dead = job_rows.insert_job(store, "count", {"steps": 1})
    job_rows.claim_job(store, dead, "elsewhere:1")
    with store.write() as conn:
        conn.execute("UPDATE jobs SET heartbeat = heartbeat - 600 WHERE id = ?", (dead,))

    candidates = ws / "artifacts" / "candidates"
    keep = [
        candidates / ".live.tmp-0123abcd",
        candidates / f".candidate-{unnamed}.abcd_123",
        ws / f"jobs/{live}/.x.tmp",
    ]
    drop = [
        candidates / ".old-run.tmp-0123abcd",
        candidates / ".other.zzzzzzzz",
        ws / f"jobs/{dead}/run/.model.k2j4h5g6",
    ]
    for path in keep + drop:
        path.mkdir(parents=True)
    (ws / f"jobs/{dead}/run/.model.k2j4h5g6/weights").write_text("half")
    (ws / ".store.db.v2.bak.abcdefgh.tmp").write_text("half a backup")
    _saved(ws / f"jobs/{dead}/run/.checkpoint.old", 7)  # the dead job's checkpoint, stranded mid-rename
    (candidates / "notes").mkdir()
    (candidates / ".not-ours").write_text("a user's hidden file")

    assert recover(store, JobQueue(ws), stale_s=30) == [dead]
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in drop) and not (ws / ".store.db.v2.bak.abcdefgh.tmp").exists()
    assert has_checkpoint(ws / f"jobs/{dead}/run/checkpoint") and hidden(ws / f"jobs/{dead}/run") == []
    assert (candidates / "notes").is_dir() and (candidates / ".not-ours").exists()


def test_jobs_leave_no_empty_folders_and_a_succeeded_job_no_checkpoints(ws):
    from hybridlab.jobs import run_sync

    quiet = lambda *a: None  # noqa: E731
    plain = run_sync("ckpt", {}, ws, progress=quiet)
    assert plain["status"] == "succeeded" and not (ws / "jobs" / str(plain["id"])).exists()
    kept = run_sync("ckpt", {"checkpoint": True}, ws, progress=quiet)
    assert kept["status"] == "succeeded" and not (ws / "jobs" / str(kept["id"])).exists()


def test_a_new_attempt_puts_back_the_checkpoint_its_predecessor_stranded(ws):
    from hybridlab.jobs.context import Flags, JobContext

    store = Store(ws)
    job_id = job_rows.insert_job(store, "ckpt", {})
    job_rows.claim_job(store, job_id, "host:1")
    run = ws / "jobs" / str(job_id) / "checkpoint"
    _saved(run / ".checkpoint.old", 5)
    (run / ".checkpoint.tmp").mkdir()
    JobContext(store, job_rows.get_job(store, job_id), "host:1", Flags())
    assert has_checkpoint(run / "checkpoint") and hidden(run) == []


# ---- runs that cannot lie: names, paths ----------------------------------------------------------------


def test_a_name_another_run_has_is_refused_at_submission_and_at_write_time(ws, tmp_path):
    from hybridlab.jobs import JobSpecError, submit
    from hybridlab.jobs.context import Flags, JobContext

    model = tiny_model(tmp_path / "model")
    store = Store(ws)
    done = job_rows.insert_job(store, "prune", {"name": "narrow"})
    job_rows.claim_job(store, done, "host:1")
    run = run_rows.start_run(store, "candidates", done, "narrow", str(model), {})
    (ws / "artifacts/candidates/narrow").mkdir(parents=True)
    run_rows.finish_run(store, "candidates", run, "succeeded", "artifacts/candidates/narrow")
    job_rows.finish_job(store, done, "host:1", "succeeded")

    spec = {"model": str(model), "spec": {"mamba_num_heads": 4}, "ranking": "random"}
    with pytest.raises(JobSpecError, match=r"'narrow' is taken: artifacts/candidates/narrow is the artifact of "
                       r"candidate 1 'narrow' \(job 1\); choose another name"):  # fmt: skip
        submit("prune", {**spec, "name": "narrow"}, ws)
    queued = submit("prune", {**spec, "name": "wide"}, ws)
    with pytest.raises(JobSpecError, match=f"prune job {queued} \\(queued\\) will write artifacts/candidates/wide"):
        submit("prune", {**spec, "name": "wide"}, ws)
    with pytest.raises(JobSpecError, match="has the form candidate-N that unnamed prune jobs get"):
        submit("prune", {**spec, "name": "candidate-9"}, ws)
    (ws / "artifacts/candidates/stray").mkdir()
    with pytest.raises(JobSpecError, match="artifacts/candidates/stray exists but no run in this store records it"):
        submit("prune", {**spec, "name": "stray"}, ws)

    # A job that gets past submission anyway (its default name taken meanwhile) fails at writing.
    job_rows.claim_job(store, queued, "host:2")
    ctx = JobContext(store, job_rows.get_job(store, queued), "host:2", Flags())
    with pytest.raises(ValueError, match=r"artifacts/candidates/narrow is the artifact of candidate 1 'narrow'"):
        ctx.artifact_path("candidates", "narrow")
    with pytest.raises(ValueError, match="artifacts/candidates/stray exists but no run in this store records it"):
        ctx.artifact_path("candidates", "stray")
    assert ctx.artifact_path("candidates", "wide") == (ws / "artifacts/candidates/wide").resolve()


def test_a_queued_jobs_run_folder_must_lie_inside_the_workspace(ws, tmp_path):
    import numpy as np

    from hybridlab.jobs import JobSpecError, submit, validate_spec

    model = tiny_model(tmp_path / "model")
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(3, 128, 4096).astype(np.uint16))
    spec = {"student": str(model), "teacher": str(model), "tokens": 2048, "seq_len": 16, "batch_size": 2,
            "train_tokens": str(tmp_path / "tokens.npy"), "val_tokens": str(tmp_path / "tokens.npy")}  # fmt: skip
    outside = tmp_path / "anywhere"
    with pytest.raises(JobSpecError) as refused:
        submit("distill", {**spec, "run_dir": str(outside)}, ws)
    assert "\n" not in str(refused.value)
    assert f"'run_dir' {outside} is outside the workspace {ws}" in str(refused.value)
    assert f"or run `hybridlab distill --out {outside}` in a terminal" in str(refused.value)
    with pytest.raises(JobSpecError, match="which hybridlab keeps for itself"):
        submit("distill", {**spec, "run_dir": str(ws / "artifacts" / "mine")}, ws)
    with pytest.raises(JobSpecError, match="is outside the workspace"):
        submit("distill", {**spec, "run_dir": str(ws / "runs" / ".." / ".." / "escape")}, ws)
    assert submit("distill", {**spec, "run_dir": str(ws / "runs" / "kd")}, ws) > 0
    # The command line (run_sync) may write where its user says: only the queue is confined.
    assert validate_spec("distill", {**spec, "run_dir": str(outside)}, Store(ws))["run_dir"] == str(outside)
