"""The engine commands as a user runs them: importance, prune, plan."""
from __future__ import annotations

import json

import numpy as np
import pytest
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
    assert main(["importance", "--model", str(model_dir), "--calib", calib, "--samples", "8", "--seq-len", "32",
                 "--out", str(tmp_path / "scores"), "--csv", str(tmp_path / "scores.csv")]) == 0
    assert "mamba_head" in capsys.readouterr().out
    assert main(["prune", "--model", str(model_dir), "--scores", str(tmp_path / "scores"), "--mamba-num-heads", "4",
                 "--ffn-hidden-size", "24", "--num-layers", "5", "--out", str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "6 -> 5" in out
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert small.config.mamba_num_heads == 4 and small.config.intermediate_size == 24


def test_plan_json_for_a_reference_config(capsys):
    assert main(["plan", "--model", "nemotron-h-8b", "--hidden-size", "3072", "--ffn-hidden-size", "12288",
                 "--mamba-num-heads", "112", "--json"]) == 0
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
