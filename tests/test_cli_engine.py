"""The engine commands as a user runs them: importance, prune, plan."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from hybridlab.cli import main


@pytest.fixture
def model_dir(tiny_nemotron, tmp_path):
    path = tmp_path / "model"
    tiny_nemotron.save_pretrained(path)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).integers(3, 128, 4096).astype(np.uint16))
    return path


def test_importance_then_prune_writes_a_loadable_model(model_dir, tmp_path, capsys):
    calib = str(tmp_path / "calib.npy")
    assert (
        main(
            [
                "importance",
                "--model",
                str(model_dir),
                "--calib",
                calib,
                "--samples",
                "8",
                "--seq-len",
                "32",
                "--out",
                str(tmp_path / "scores"),
                "--csv",
                str(tmp_path / "scores.csv"),
            ]
        )
        == 0
    )
    assert "mamba_head" in capsys.readouterr().out
    assert (
        main(
            [
                "prune",
                "--model",
                str(model_dir),
                "--scores",
                str(tmp_path / "scores"),
                "--mamba-num-heads",
                "4",
                "--ffn-hidden-size",
                "24",
                "--num-layers",
                "5",
                "--out",
                str(tmp_path / "small"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "parameters:" in out and "6 -> 5" in out
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert small.config.mamba_num_heads == 4 and small.config.intermediate_size == 24


def test_importance_and_prune_are_recorded_in_the_store(model_dir, tmp_path, capsys):
    from hybridlab.jobs import list_candidates, list_importance_runs, list_jobs

    workspace = tmp_path / "ws"
    calib = str(tmp_path / "calib.npy")
    assert (
        main(
            [
                "importance",
                "--model",
                str(model_dir),
                "--calib",
                calib,
                "--samples",
                "8",
                "--seq-len",
                "32",
                "--out",
                str(tmp_path / "scores"),
                "--workspace",
                str(workspace),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prune",
                "--model",
                str(model_dir),
                "--scores",
                str(tmp_path / "scores"),
                "--mamba-num-heads",
                "4",
                "--out",
                str(tmp_path / "from-scores"),
                "--workspace",
                str(workspace),
            ]
        )
        == 0
    )
    # without --scores the prune job scores the model itself, on the same calibration data
    assert (
        main(
            [
                "prune",
                "--model",
                str(model_dir),
                "--calib",
                calib,
                "--samples",
                "8",
                "--seq-len",
                "32",
                "--mamba-num-heads",
                "4",
                "--out",
                str(tmp_path / "scored-now"),
                "--workspace",
                str(workspace),
            ]
        )
        == 0
    )
    assert "recorded as prune job 3" in capsys.readouterr().err

    jobs = list_jobs(workspace)
    assert list(jobs["kind"]) == ["importance", "prune", "prune"] and set(jobs["status"]) == {"succeeded"}
    runs = list_importance_runs(workspace)
    assert list(runs["status"]) == ["succeeded"] and runs["spec.samples"][0] == 8
    artifact = workspace / runs["artifact"][0]
    for name in ("scores.json", "scores.safetensors"):  # --out is a copy of the recorded artifact
        assert (tmp_path / "scores" / name).read_bytes() == (artifact / name).read_bytes()
    candidates = list_candidates(workspace)
    assert list(candidates["status"]) == ["succeeded"] * 2
    assert candidates["importance"][0] == str((tmp_path / "scores").resolve()) and candidates["calib"][1] == calib
    from_scores = AutoModelForCausalLM.from_pretrained(tmp_path / "from-scores")
    scored_now = AutoModelForCausalLM.from_pretrained(tmp_path / "scored-now")
    recorded = AutoModelForCausalLM.from_pretrained(workspace / candidates["artifact"][0])
    for name, weight in from_scores.state_dict().items():  # same scores -> the same kept heads, bit for bit
        assert torch.equal(weight, scored_now.state_dict()[name]) and torch.equal(weight, recorded.state_dict()[name])
    assert candidates["params"][0] == sum(p.numel() for p in from_scores.parameters())


def test_a_refused_spec_records_nothing_and_writes_nothing(model_dir, tmp_path, capsys):
    from hybridlab.jobs import list_jobs

    workspace = tmp_path / "ws"
    argv = [
        "prune",
        "--model",
        str(model_dir),
        "--scores",
        str(tmp_path),
        "--mamba-num-heads",
        "4",
        "--out",
        str(tmp_path / "out"),
        "--workspace",
        str(workspace),
    ]  # tmp_path holds no scores
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds no importance scores" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list_jobs(workspace).empty and not (tmp_path / "out").exists()
    assert not (workspace / "artifacts").exists()


def test_a_job_failing_at_work_is_recorded_failed_and_out_stays_absent(model_dir, tmp_path, capsys):
    from hybridlab.jobs import list_candidates, list_jobs

    workspace = tmp_path / "ws"
    # no layer scores (--layer-metric none), yet --num-layers asks to pick layers by them: fails after scoring
    argv = [
        "prune",
        "--model",
        str(model_dir),
        "--calib",
        str(tmp_path / "calib.npy"),
        "--samples",
        "4",
        "--seq-len",
        "16",
        "--layer-metric",
        "none",
        "--num-layers",
        "5",
        "--out",
        str(tmp_path / "out"),
        "--workspace",
        str(workspace),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "num_layers needs layer scores" in err and "Traceback" not in err
    job = list_jobs(workspace).iloc[0]
    assert job["status"] == "failed" and "num_layers needs layer scores" in job["error"]
    assert list(list_candidates(workspace)["status"]) == ["failed"]
    assert not (tmp_path / "out").exists() and not any((workspace / "artifacts").rglob("config.json"))


def test_plan_json_for_a_reference_config(capsys):
    assert (
        main(
            [
                "plan",
                "--model",
                "nemotron-h-8b",
                "--hidden-size",
                "3072",
                "--ffn-hidden-size",
                "12288",
                "--mamba-num-heads",
                "112",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["original"]["params"] == 8_100_852_736 and report["pruned"]["params"] == 4_489_223_040


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "--model", "/no/such/dir"], "does not exist"),
        (["plan", "--model", "nemotron-h-8b", "--mamba-num-heads", "100"], "multiple of n_groups"),
        (["prune", "--model", "MODEL", "--out", "OUT"], "at least one target size"),
        (["prune", "--model", "MODEL", "--num-attention-heads", "3", "--out", "OUT"], "key/value heads"),
        (["importance", "--model", "MODEL", "--out", "OUT"], "--calib is required"),
        (["prune", "--model", "MODEL", "--drop-layers", "1,x", "--out", "OUT"], "comma-separated"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, model_dir, tmp_path, capsys):
    argv = [str(model_dir) if a == "MODEL" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_folder_without_config_is_not_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plan", "--model", str(tmp_path / "empty")]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err
