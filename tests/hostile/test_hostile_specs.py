"""Bad job specs, as a script or a notebook would submit them (`hybridlab.jobs.submit`).

Every row asserts: a JobSpecError (a UserError), one line naming the problem, no job row or
queue message, nothing written under the lab.
"""

from __future__ import annotations

import pytest
import torch

from hybridlab.jobs import JobSpecError, submit
from tests.hostile.lab import check_user_error, lab  # noqa: F401

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
DEEP: list = []
for _ in range(40):
    DEEP = [DEEP]


def imp(**changes) -> dict:
    return {"model": "{L}/model", "calib": "{L}/calib.npy", "seq_len": 16, "samples": 4, **changes}


def prune(**changes) -> dict:
    return {"model": "{L}/model", "importance": "{L}/scores", "spec": {"hidden_size": 16}, **changes}


def kd(**changes) -> dict:
    return {
        "student": "{L}/model",
        "teacher": "{L}/model",
        "train_tokens": "{L}/calib.npy",
        "tokens": 4096,
        "seq_len": 16,
        "batch_size": 2,
        **changes,
    }


def ev(**changes) -> dict:
    return {"model": "{L}/model", "val_tokens": "{L}/calib.npy", "seq_len": 16, **changes}


def bench(**changes) -> dict:
    return {"model": "{L}/model", "seq_len": 16, "new_tokens": 8, "repeats": 1, **changes}


def search(**changes) -> dict:
    return {
        "model": "{L}/model",
        "importance": "{L}/scores",
        "train_tokens": "{L}/calib.npy",
        "val_tokens": "{L}/calib.npy",
        "seq_len": 16,
        "target_params": "70%",
        **changes,
    }


ROWS = [
    # importance: the model and its calibration data
    ("imp-ids-above-vocab", "importance", imp(calib="{L}/big_ids.npy"), r"token id 99\d.*vocabulary has 128"),
    ("imp-negative-ids", "importance", imp(calib="{L}/negative.npy"), r"cannot be negative"),
    ("imp-float-tokens", "importance", imp(calib="{L}/floats.npy"), r"float64 values, not token ids"),
    ("imp-empty-text", "importance", imp(calib="{L}/empty.txt"), r"is empty"),
    ("imp-2d-short-rows", "importance", imp(calib="{L}/short_rows.npy"), r"rows of 8 tokens"),
    ("imp-truncated-weights", "importance", imp(model="{L}/truncated"), r"not a complete safetensors file"),
    ("imp-pickle-weights", "importance", imp(model="{L}/pickled"), r"pickle weights .*allow_pickle_weights"),
    ("imp-pickle-flag-text", "importance", imp(allow_pickle_weights="yes"), r"'allow_pickle_weights' must be true"),
    ("imp-config-not-json", "importance", imp(model="{L}/bad_json"), r"not valid JSON"),
    ("prune-moe-below-top-k", "prune", prune(model="{L}/moe", spec={"num_moe_experts": 1}), r"keep at least 2"),
    ("imp-llama", "importance", imp(model="{L}/llama"), r"cannot prune llama"),
    ("imp-samples-fraction", "importance", imp(samples=1.5), r"'samples' must be a whole number, got float 1\.5"),
    ("imp-samples-bool", "importance", imp(samples=True), r"'samples' must be a whole number, got the boolean"),
    ("imp-samples-huge", "importance", imp(samples=10**20), r"'samples': must be at most"),
    ("imp-seq-len-over-model", "importance", imp(seq_len=100), r"max_position_embeddings \(64\)"),
    ("imp-device-text", "importance", imp(device="gpu0"), r"'device': must be auto, cpu, cuda"),
    pytest.param("imp-device-cuda", "importance", imp(device="cuda"), r"no CUDA device", marks=NO_CUDA),
    ("imp-5mb-model", "importance", imp(model="x" * 5_000_000), r"'model' .* string of 5,000,000 characters"),
    ("imp-long-name", "importance", imp(name="n" * 5_000), r"'name' .* string of 5,000 characters"),
    ("imp-long-key", "importance", imp(**{"k" * 300: 1}), r"unknown key 'kkkk.*\(302 characters\)"),
    ("imp-deep", "importance", imp(calib=DEEP), r"nests lists or dicts more than 16 deep"),
    ("imp-not-a-dict", "importance", ["model", "demo"], r"must be a dict of options, got list"),
    ("imp-unknown-kind", "imports", imp(), r"unknown job kind 'imports'"),
    # prune: plans and scores
    ("prune-drop-fraction", "prune", prune(spec={"drop_layers": [1.7]}), r"whole layer numbers, got 1\.7"),
    ("prune-drop-true", "prune", prune(spec={"drop_layers": [True]}), r"whole layer numbers, got True"),
    ("prune-drop-text", "prune", prune(spec={"drop_layers": "1,2"}), r"drop_layers must be a list of layer numbers"),
    ("prune-size-fraction", "prune", prune(spec={"hidden_size": 15.5}), r"hidden_size must be a whole number"),
    ("prune-size-bool", "prune", prune(spec={"hidden_size": True}), r"hidden_size must be a whole number"),
    ("prune-size-text", "prune", prune(spec={"hidden_size": "16"}), r"hidden_size must be a whole number, got '16'"),
    ("prune-unknown-key", "prune", prune(spec={"hiden_size": 16}), r"unknown prune spec keys \['hiden_size'\]"),
    ("prune-scores-wide", "prune", prune(importance="{L}/scores_wide"), r"hidden_size 48, but this model has 32"),
    ("prune-scores-pattern", "prune", prune(importance="{L}/scores_pattern"), r"layer pattern differs"),
    ("prune-scores-run-missing", "prune", prune(importance=999), r"importance run 999 does not exist"),
    ("prune-seed-negative", "prune", prune(seed=-1), r"'seed': must be 0 or more"),
    ("prune-seed-huge", "prune", prune(seed=2**40), r"'seed': must be at most 4,294,967,295"),
    ("prune-truncated", "prune", prune(model="{L}/truncated"), r"not a complete safetensors file"),
    # distill: budgets, vocabularies, resume
    ("kd-tokens-1e99", "distill", kd(tokens=10**99), r"'tokens': must be at most 1,000,000,000,000"),
    ("kd-tokens-bool", "distill", kd(tokens=True), r"'tokens' must be a whole number, got the boolean"),
    ("kd-lr-nan", "distill", kd(lr=float("nan")), r"'lr': must be a finite number, got nan"),
    ("kd-lr-text", "distill", kd(lr="0.1"), r"'lr' must be a number, got str '0\.1'"),
    ("kd-other-vocab", "distill", kd(student="{L}/vocab256"), r"student's vocabulary \(256 tokens\) differs"),
    ("kd-train-above-vocab", "distill", kd(train_tokens="{L}/big_ids.npy"), r"token id 99\d"),
    ("kd-resume-missing", "distill", kd(run_dir="{L}/nope", resume=True), r"run folder .*nope does not exist"),
    (
        "kd-resume-changed",
        "distill",
        kd(run_dir="{L}/kd_run", resume=True, tokens=8192),
        r"'tokens' is 8192, but the run in .*kd_run was started with 4096",
    ),  # fmt: skip
    ("kd-resume-no-dir", "distill", kd(resume=True), r"'resume' continues the run in 'run_dir'"),
    ("kd-run-dir-file", "distill", kd(run_dir="{L}/a_file"), r"'run_dir' .*a_file is a file, not a folder"),
    ("kd-run-dir-in-file", "distill", kd(run_dir="{L}/a_file/run"), r"inside .*a_file, which is a file"),
    # eval, bench, search
    ("eval-above-vocab", "eval", ev(val_tokens="{L}/big_ids.npy"), r"token id 99\d"),
    ("eval-max-tokens", "eval", ev(max_tokens=8), r"'max_tokens' 8 is less than one window"),
    ("eval-seq-len-over-model", "eval", ev(seq_len=1000), r"max_position_embeddings \(64\)"),
    ("eval-no-tasks", "eval", ev(tasks=[]), r"'tasks' must be a non-empty list"),
    ("bench-one-new-token", "bench", bench(new_tokens=1), r"'new_tokens': must be at least 2"),
    ("bench-seq-len-100000", "bench", bench(seq_len=100_000), r"max_position_embeddings \(64\)"),
    ("bench-repeats-zero", "bench", bench(repeats=0), r"'repeats': must be greater than 0"),
    ("bench-pickle", "bench", bench(model="{L}/pickled"), r"pickle weights"),
    ("search-tokens-1e99", "search", search(tokens=10**99), r"must be at most 1,000,000,000,000"),
    ("search-scores-wide", "search", search(importance="{L}/scores_wide"), r"hidden_size 48"),
    ("search-run-dir-in-file", "search", search(run_dir="{L}/a_file/s"), r"inside .*a_file, which is a file"),
]


def _fill(value, lab):
    """{L} in every string of a spec becomes the lab folder."""
    if isinstance(value, str):
        return value.replace("{L}", str(lab.root))
    if isinstance(value, dict):
        return {_fill(k, lab): _fill(v, lab) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, lab) for v in value]
    return value


def named(rows: list) -> list:
    params = []
    for row in rows:
        values, marks = (row.values, row.marks) if hasattr(row, "marks") else (row, ())
        params.append(pytest.param(*values, marks=marks, id=values[0]))
    return params


@pytest.mark.parametrize("name, kind, spec, pattern", named(ROWS))
def test_bad_job_spec_is_refused_and_nothing_is_recorded(lab, name, kind, spec, pattern):  # noqa: F811
    before, rows = lab.snapshot(), lab.rows()
    with pytest.raises(ValueError) as caught:
        submit(kind, _fill(spec, lab), workspace=lab.ws)
    assert kind not in ("importance", "prune", "distill", "eval", "bench", "search") or isinstance(
        caught.value, JobSpecError
    )
    check_user_error(caught.value, pattern)
    assert len(str(caught.value)) < 2_000, "a message must not echo a huge input"
    assert lab.snapshot() == before, "a refused spec wrote or changed files"
    assert lab.rows() == rows, "a refused spec changed the store"
