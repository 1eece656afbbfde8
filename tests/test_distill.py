"""Distillation: the loss, recovery, resume, the logits cache, data parallel, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybridlab import PruneSpec, prune
from hybridlab.core.progress import Cancelled
from hybridlab.training.distill import DistillSettings, distill, kd_loss, parse_token_count
from hybridlab.training.logits_cache import LogitsCache, build_logits_cache


def corpus(n=6000, seed=0):
    """A learnable token stream: a noisy repeating pattern over the tiny vocabulary."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(3, 67), n // 64 + 1)[:n]
    noise = rng.integers(3, 128, n)
    return np.where(rng.random(n) < 0.1, noise, base).astype(np.uint16)


def settings(**overrides):
    values = dict(
        tokens=24 * 4 * 32,
        seq_len=32,
        batch_size=4,
        lr=3e-3,
        eval_every=4,
        checkpoint_every=4,
        eval_tokens=1024,
        bf16_autocast=False,
        warmup_fraction=0.1,
        log_every=1,
    )
    return DistillSettings(**(values | overrides))


def losses(run_dir, kind="train", key="loss"):
    return [r[key] for r in map(json.loads, open(run_dir / "metrics.jsonl")) if r["kind"] == kind]


def test_kd_loss_is_forward_kl_and_topk_renormalises():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 10), torch.randn(2, 3, 10)
    expected = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1).mean()
    assert torch.allclose(kd_loss(s, t), expected, atol=1e-6)
    assert kd_loss(t, t).abs() < 1e-6
    top = torch.topk(F.log_softmax(t, -1), 10, dim=-1)
    assert torch.allclose(kd_loss(s, t, top_k=10), expected, atol=1e-5)  # k = V is the full KL
    assert torch.allclose(kd_loss(s, teacher_top=top), expected, atol=1e-5)
    assert kd_loss(s, t, top_k=3) >= 0 and kd_loss(t, t, top_k=3).abs() < 1e-5


def test_top_k_kd_keeps_the_tail_mass_where_the_teacher_has_it():
    """Minimising top-k KD must not push the student to put all its mass on the k tokens."""
    teacher = torch.tensor([[[3.0, 2.0, 1.0, 1.0, 1.0, 1.0]]])
    student = torch.zeros(1, 1, 6, requires_grad=True)
    optimizer = torch.optim.SGD([student], lr=1.0)
    for _ in range(500):
        optimizer.zero_grad()
        kd_loss(student, teacher, top_k=2).backward()
        optimizer.step()
    p_teacher, p_student = F.softmax(teacher, -1), F.softmax(student.detach(), -1)
    assert torch.allclose(p_student[..., :2], p_teacher[..., :2], atol=1e-3)
    assert torch.allclose(p_student[..., 2:].sum(), p_teacher[..., 2:].sum(), atol=1e-3)


@pytest.fixture
def pair(tiny_nemotron):
    student = prune(tiny_nemotron, PruneSpec(ffn_hidden_size=16, mamba_num_heads=4), ranking="random")
    return student, tiny_nemotron


def test_distillation_closes_the_gap_and_logs_teacher(pair, tmp_path):
    student, teacher = pair
    data, val = corpus(), corpus(2000, seed=1)
    before = F.cross_entropy(
        student(torch.from_numpy(val[:257].astype(np.int64))[None, :-1]).logits[0],
        torch.from_numpy(val[1:257].astype(np.int64)),
    )
    result = distill(student, teacher, data, val, settings(), tmp_path / "run")
    kd = losses(tmp_path / "run", key="kd_loss")
    assert kd[-1] < kd[0] * 0.7
    evals = [r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r["kind"] == "eval"]
    assert all("teacher_val_loss" in e for e in evals) and result["val_loss"] < float(before)
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_killed_run_resumes_on_the_same_loss_curve(pair, tmp_path):
    student, teacher = pair
    fresh = prune(teacher, PruneSpec(ffn_hidden_size=16, mamba_num_heads=4), ranking="random")
    data = corpus()
    distill(student, teacher, data, None, settings(), tmp_path / "whole")

    def die_at_step_10(fraction, message, metrics):
        if fraction >= 10 / 24:
            raise Cancelled()

    with pytest.raises(Cancelled):
        distill(fresh, teacher, data, None, settings(), tmp_path / "killed", progress=die_at_step_10)
    restarted = prune(teacher, PruneSpec(ffn_hidden_size=16, mamba_num_heads=4), ranking="random")
    distill(restarted, teacher, data, None, settings(), tmp_path / "killed", resume=True)
    assert np.allclose(losses(tmp_path / "killed"), losses(tmp_path / "whole"), atol=1e-6)


def test_logits_cache_matches_live_top_k(pair, tmp_path):
    student, teacher = pair
    data = corpus()
    cfg = settings(tokens=6 * 4 * 32, top_k=8, eval_every=100)
    cache_dir = build_logits_cache(teacher, data, cfg, tmp_path / "cache", top_k=8, shard_steps=4)
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        "cache.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    copy = prune(teacher, PruneSpec(ffn_hidden_size=16, mamba_num_heads=4), ranking="random")
    distill(student, teacher, data, None, cfg, tmp_path / "live")
    distill(copy, None, data, None, cfg, tmp_path / "cached", logits_cache=LogitsCache(cache_dir))
    assert np.allclose(losses(tmp_path / "live"), losses(tmp_path / "cached"), atol=2e-2)  # cache holds bf16 logits
    with pytest.raises(ValueError, match="seq_len"):
        LogitsCache(cache_dir).check_compatible(settings(seq_len=16))


def test_bad_input_is_refused_before_work(pair, tmp_path):
    student, teacher = pair
    with pytest.raises(ValueError, match="budget"):
        distill(student, teacher, corpus(), None, settings(tokens=0), tmp_path / "a")
    with pytest.raises(ValueError, match="less than one batch"):
        distill(student, teacher, corpus(), None, settings(tokens=10), tmp_path / "a")
    other = type(teacher)(type(teacher.config).from_dict(teacher.config.to_dict() | {"vocab_size": 64}))
    with pytest.raises(ValueError, match="vocabulary"):
        distill(student, other, corpus(), None, settings(), tmp_path / "a")
    with pytest.raises(ValueError, match="nothing to resume"):  # a UserError, like every bad input
        (tmp_path / "b").mkdir()
        distill(student, teacher, corpus(), None, settings(), tmp_path / "b", resume=True)
    (tmp_path / "c" / "checkpoint").mkdir(parents=True)
    (tmp_path / "c" / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="checkpoint|safetensors|No such file|Invalid"):
        distill(student, teacher, corpus(), None, settings(), tmp_path / "c", resume=True)
    assert parse_token_count("2M") == 2_000_000 and parse_token_count("1.5k") == 1500
    with pytest.raises(ValueError, match="token count"):
        parse_token_count("lots")


def test_two_cpu_ranks_match_one_process(pair, tmp_path):
    """torchrun with 2 gloo ranks at global batch 4 follows the single-process loss curve,
    data-parallel (DDP) and sharded (FSDP2), checkpoints included."""
    student, teacher = pair
    student.save_pretrained(tmp_path / "student")
    teacher.save_pretrained(tmp_path / "teacher")
    np.save(tmp_path / "data.npy", corpus())
    common = [
        "--log-every",
        "1",
        "--student",
        str(tmp_path / "student"),
        "--teacher",
        str(tmp_path / "teacher"),
        "--data",
        str(tmp_path / "data.npy"),
        "--tokens",
        str(8 * 4 * 32),
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--no-bf16",
        "--eval-every",
        "100",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "hybridlab", "distill", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "hybridlab",
            "distill",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert np.allclose(losses(tmp_path / "one"), losses(tmp_path / "two"), atol=1e-4)
    sharded = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "hybridlab",
            "distill",
            *common,
            "--checkpoint-every",
            "4",
            "--out",
            str(tmp_path / "fsdp"),
        ],
        env=env | {"HYBRIDLAB_FSDP": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    assert np.allclose(losses(tmp_path / "one"), losses(tmp_path / "fsdp"), atol=1e-4)
    from hybridlab.jobs import list_jobs

    assert list(list_jobs()["kind"]) == ["distill"]  # the single-process run is recorded; torchrun ranks are not
    from safetensors.torch import load_file

    single, gathered = (
        load_file(tmp_path / "one" / "model" / "model.safetensors"),
        load_file(tmp_path / "fsdp" / "model" / "model.safetensors"),
    )
    assert single.keys() == gathered.keys() and all(torch.allclose(single[k], gathered[k], atol=1e-5) for k in single)


def test_cli_distill_is_recorded_in_the_store(pair, tmp_path, capsys, monkeypatch):
    """A single-process `hybridlab distill` runs as a distill job: listed with its numbers, its model kept
    both in --out (with metrics and checkpoints, as before) and as the store's artifact."""
    from safetensors.torch import load_file

    from hybridlab.cli import main
    from hybridlab.jobs import list_distillations, list_jobs

    student, teacher = pair
    student.save_pretrained(tmp_path / "student")
    teacher.save_pretrained(tmp_path / "teacher")
    np.save(tmp_path / "data.npy", corpus())
    np.save(tmp_path / "val.npy", corpus(2000, seed=1))
    argv = [
        "distill",
        "--student",
        str(tmp_path / "student"),
        "--teacher",
        str(tmp_path / "teacher"),
        "--data",
        str(tmp_path / "data.npy"),
        "--val",
        str(tmp_path / "val.npy"),
        "--tokens",
        str(4 * 4 * 32),
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--no-bf16",
        "--eval-every",
        "2",
        "--eval-tokens",
        "512",
        "--log-every",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--workspace",
        str(tmp_path / "ws"),
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_dir"] == str(tmp_path / "run" / "model") and printed["step"] == 4
    assert len(losses(tmp_path / "run")) == 4  # --log-every 1 reached the trainer
    runs = list_distillations(tmp_path / "ws")
    assert list(list_jobs(tmp_path / "ws")["status"]) == ["succeeded"] and list(runs["status"]) == ["succeeded"]
    assert runs["val_loss"][0] == printed["val_loss"] and runs["spec.bf16"][0] == False  # noqa: E712
    ours, recorded = (
        load_file(tmp_path / "run" / "model" / "model.safetensors"),
        load_file(tmp_path / "ws" / runs["artifact"][0] / "model.safetensors"),
    )
    assert ours.keys() == recorded.keys() and all(torch.equal(ours[k], recorded[k]) for k in ours)

    assert main(argv) == 2  # the same --out again, without --resume: refused, nothing recorded
    assert "already holds a run" in capsys.readouterr().err
    assert len(list_jobs(tmp_path / "ws")) == 1

    # the disk check's estimate: above what the run folder holds after the run, not far above it
    from hybridlab.families import describe
    from hybridlab.model.sizes import count_params

    params = sum(count_params(describe(student.config).widths).values())
    held = sum(
        f.stat().st_size for f in (tmp_path / "run").rglob("*") if f.is_file() and f.suffix in (".safetensors", ".pt")
    )
    assert 0.5 <= held / (28 * params) <= 1.0
    # a disk without room for the run is refused before anything is recorded or written
    real_disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=28 * params))
    argv[argv.index(str(tmp_path / "run"))] = str(tmp_path / "run2")
    assert main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not enough disk space for the run's checkpoints and its two model copies" in line
    assert "free some space" in line
    assert len(list_jobs(tmp_path / "ws")) == 1 and not (tmp_path / "run2").exists()


def test_token_ids_are_checked_as_arrays_and_as_tensors():
    # the API takes tokens as numpy arrays (the CLI's .npy files) or torch tensors (load_demo's val)
    from hybridlab.core.errors import UserError
    from hybridlab.training.distill import _check_ids

    for make in (np.asarray, torch.as_tensor):
        _check_ids(make(np.array([0, 5, 99], dtype=np.int64)), 100, "validation")
        with pytest.raises(UserError, match="validation tokens hold id 100, outside"):
            _check_ids(make(np.array([0, 100], dtype=np.int64)), 100, "validation")
