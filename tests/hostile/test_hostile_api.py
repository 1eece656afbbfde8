"""Bad input through the Python API: what a notebook user would pass to the library.

Every row calls one library function and asserts: a user error (UserError, or the ValueError /
FileNotFoundError the library has always raised for bad input), one line naming the problem,
and nothing written under the lab.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybridlab import PruneSpec, load_model, prune
from hybridlab.compression.kept import kept_units
from hybridlab.compression.scores_fit import check_scores_fit, load_scores
from hybridlab.core.outputs import check_new_file, check_new_folder
from hybridlab.core.paths import workspace_dir
from hybridlab.core.settings import build
from hybridlab.data.calibration import check_tokens, load_calibration, load_token_array
from hybridlab.jobs.kinds.bench import BenchSettings
from hybridlab.measure.bench import measure_latency
from hybridlab.model.checks import check_model, read_config
from hybridlab.model.sizes import estimate_sizes
from hybridlab.training.distill import DistillSettings, check_resume, distill
from tests.hostile.lab import check_user_error, lab  # noqa: F401


@pytest.fixture(scope="module")
def models(lab):  # noqa: F811
    """The tiny model, a student with another vocabulary, and scores (loaded once)."""
    model, _ = load_model(lab / "model")
    other, _ = load_model(lab / "vocab256")
    return {"model": model, "vocab256": other, "scores": load_scores(lab / "scores")}


def _tokens(n: int = 2_000, high: int = 128) -> np.ndarray:
    return np.random.default_rng(0).integers(3, high, n).astype(np.int64)


KD = DistillSettings(tokens=4_096, seq_len=16, batch_size=2)

ROWS = [
    # loading models: config, family, layer types, weight files, pickle
    ("load-truncated", lambda L, m: load_model(L / "truncated"), r"not a complete safetensors file"),
    ("load-garbage", lambda L, m: load_model(L / "garbage"), r"not a complete safetensors file"),
    ("load-no-weights", lambda L, m: load_model(L / "no_weights"), r"no model\.safetensors"),
    ("load-pickle", lambda L, m: load_model(L / "pickled"), r"pickle weights .*allow-pickle-weights"),
    ("load-bad-json", lambda L, m: load_model(L / "bad_json"), r"not valid JSON"),
    ("load-unknown-type", lambda L, m: load_model(L / "unknown_type"), r"transformers cannot read"),
    (
        "plan-moe-below-top-k",
        lambda L, m: estimate_sizes(read_config(L / "moe"), PruneSpec(num_moe_experts=1)),
        r"top 2 experts; keep at least 2",
    ),
    ("load-llama", lambda L, m: load_model(L / "llama"), r"cannot prune llama"),
    ("load-missing", lambda L, m: load_model(L / "missing"), r"does not exist"),
    ("check-model-bad-index", lambda L, m: check_model(L / "bad_index"), r"names shard .* missing"),
    ("read-config-list", lambda L, m: read_config(L / "json_list"), r"holds a JSON list"),
    # prune specs and scores
    ("spec-drop-fraction", lambda L, m: PruneSpec(drop_layers=[1.7]), r"whole layer numbers, got 1\.7"),
    ("spec-drop-true", lambda L, m: PruneSpec(drop_layers=[True]), r"whole layer numbers, got True"),
    ("spec-drop-number", lambda L, m: PruneSpec(drop_layers=3), r"drop_layers must be a list"),
    ("spec-size-fraction", lambda L, m: PruneSpec(hidden_size=1.5), r"hidden_size must be a whole number"),
    ("spec-size-bool", lambda L, m: PruneSpec(num_layers=True), r"num_layers must be a whole number, got True"),
    ("spec-from-list", lambda L, m: PruneSpec.from_dict([1]), r"a prune spec is a dict of sizes"),
    ("spec-unknown-key", lambda L, m: PruneSpec.from_dict({"layers": 2}), r"unknown prune spec keys \['layers'\]"),
    ("sizes-grow", lambda L, m: estimate_sizes(m["model"].config, PruneSpec(hidden_size=999)), r"larger than"),
    (
        "prune-other-widths",
        lambda L, m: prune(m["model"], PruneSpec(hidden_size=16), load_scores(L / "scores_wide")),
        r"hidden_size 48, but this model has 32",
    ),  # fmt: skip
    (
        "prune-other-ffn",
        lambda L, m: prune(m["model"], PruneSpec(hidden_size=16), load_scores(L / "scores_wide_ffn")),
        r"ffn_hidden_size",
    ),  # fmt: skip
    (
        "kept-other-pattern",
        lambda L, m: kept_units(load_scores(L / "scores_pattern"), m["model"], PruneSpec(hidden_size=16)),
        r"layer pattern differs",
    ),  # fmt: skip
    (
        "scores-fit-heads",
        lambda L, m: check_scores_fit(load_scores(L / "scores_mamba"), m["model"]),
        r"mamba_num_heads",
    ),
    ("scores-broken", lambda L, m: load_scores(L / "scores_broken"), r"cannot be read"),
    ("scores-missing", lambda L, m: load_scores(L / "existing_out"), r"holds no importance scores"),
    # token data
    ("calib-above-vocab", lambda L, m: load_calibration(L / "big_ids.npy", None, 4, 16, vocab_size=128), r"token id"),
    ("calib-vocab-smaller", lambda L, m: load_token_array(L / "calib.npy", vocab_size=100), r"vocabulary has 100"),
    ("tokens-negative", lambda L, m: load_token_array(L / "negative.npy"), r"cannot be negative"),
    ("tokens-floats", lambda L, m: load_token_array(L / "floats.npy"), r"float64 values"),
    ("tokens-objects", lambda L, m: load_token_array(L / "objects.npy"), r"object values"),
    ("tokens-3d", lambda L, m: load_token_array(L / "cube.npy"), r"shape \(4, 4, 4\)"),
    ("tokens-empty", lambda L, m: load_token_array(L / "empty.npy"), r"holds no tokens"),
    ("tokens-garbage", lambda L, m: load_token_array(L / "garbage.npy"), r"not a \.npy array file"),
    ("tokens-truncated", lambda L, m: check_tokens(L / "truncated.npy"), r"not a complete \.npy file"),
    ("tokens-empty-text", lambda L, m: load_token_array(L / "empty.txt"), r"is empty"),
    ("tokens-blank-folder", lambda L, m: load_token_array(L / "blank_texts"), r"every text file"),
    # settings and budgets
    ("kd-tokens-1e99", lambda L, m: DistillSettings(tokens=10**99).validate(), r"tokens: must be at most"),
    ("kd-lr-nan", lambda L, m: DistillSettings(tokens=4096, lr=float("nan")).validate(), r"lr: must be a finite"),
    ("kd-seq-len-fraction", lambda L, m: DistillSettings(tokens=4096, seq_len=2.5).validate(), r"whole number"),
    ("kd-tokens-bool", lambda L, m: DistillSettings(tokens=True).validate(), r"tokens: must be a whole number"),
    ("bench-settings-one", lambda L, m: build(BenchSettings, {"new_tokens": 1}), r"new_tokens: must be at least 2"),
    ("bench-one-new-token", lambda L, m: measure_latency(m["model"], seq_len=8, new_tokens=1), r"at least 2"),
    # distillation
    (
        "kd-other-vocab",
        lambda L, m: distill(m["vocab256"], m["model"], _tokens(), None, KD, L / "outs" / "kd1"),
        r"vocabulary \(256 tokens\) differs",
    ),  # fmt: skip
    (
        "kd-ids-above-vocab",
        lambda L, m: distill(m["model"], m["model"], _tokens(high=999), None, KD, L / "outs" / "kd2"),
        r"training tokens hold id 99\d",
    ),  # fmt: skip
    (
        "kd-resume-missing",
        lambda L, m: distill(m["model"], m["model"], _tokens(), None, KD, L / "nope", resume=True),
        r"run folder .*nope does not exist",
    ),  # fmt: skip
    (
        "kd-resume-changed",
        lambda L, m: check_resume(L / "kd_run", DistillSettings(tokens=4096, seq_len=32, batch_size=2)),
        r"seq_len is 32, but the run .* started with 16",
    ),  # fmt: skip
    # paths
    ("workspace-file", lambda L, m: workspace_dir(L / "a_file"), r"workspace .* is a file, not a folder"),
    ("out-in-file", lambda L, m: check_new_folder(L / "a_file" / "x"), r"inside .*a_file, which is a file"),
    ("csv-exists", lambda L, m: check_new_file(L / "a_file", "--csv"), r"already exists"),
]


def named(rows: list) -> list:
    return [pytest.param(*row, id=row[0]) for row in rows]


@pytest.mark.parametrize("name, call, pattern", named(ROWS))
def test_bad_input_to_the_library_is_a_one_line_user_error(lab, models, name, call, pattern):  # noqa: F811
    before = lab.snapshot()
    with pytest.raises(Exception) as caught:
        call(lab.root, models)
    check_user_error(caught.value, pattern)
    assert lab.snapshot() == before, "a refused call wrote or changed files"


def test_pickle_weights_load_when_allowed(lab):  # noqa: F811
    """--allow-pickle-weights (allow_pickle_weights=True) is the way through for trusted .bin files."""
    model, _ = load_model(lab / "pickled", allow_pickle_weights=True)
    assert model.config.vocab_size == 128


def test_pickle_weights_prune_when_allowed(lab, tmp_path):  # noqa: F811
    """The disk check before a prune sizes pickle-only weights from their .bin files, not refusing them."""
    from hybridlab.cli import main

    line = f"prune --model {lab.root}/pickled --ranking random --hidden-size 16 --allow-pickle-weights"
    assert main([*line.split(), "--out", str(tmp_path / "out"), "--workspace", str(tmp_path / "ws")]) == 0
    assert (tmp_path / "out" / "config.json").exists()
