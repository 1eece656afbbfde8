"""Bad input through the command line, as a hostile new user would give it.

Every row runs `hybridlab.cli.main(argv)` in this process and asserts: exit status 2, stderr
one line `hybridlab <command>: error: ...` naming the problem, no traceback, and nothing
written or changed (every file and folder under the lab, the store's rows). A few rows run
the real executable in a subprocess, where Python's own logging would show a stray traceback.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import torch

from hybridlab.cli import main
from tests.hostile.lab import TRACEBACK, check_message, lab  # noqa: F401

W = "--workspace {W}"
IMP = "importance --model {L}/model --calib {L}/calib.npy --seq-len 16 --samples 4 --batch-size 2 --out {O}/out " + W
PRUNE = "prune --model {L}/model --scores {L}/scores --hidden-size 16 --out {O}/out " + W
KD = (
    "distill --student {L}/model --teacher {L}/model --data {L}/calib.npy --val {L}/calib.npy "
    "--tokens 4096 --seq-len 16 --batch-size 2 --out {O}/kd " + W
)
RESUME = KD.replace("--out {O}/kd", "--out {L}/kd_run") + " --resume"
EVAL = "eval --model {L}/model --val-tokens {L}/calib.npy --tasks val_loss --seq-len 16 " + W
BENCH = "bench --model {L}/model --seq-len 16 --new-tokens 8 --repeats 1 " + W
SEARCH = (
    "search --model {L}/model --scores {L}/scores --data {L}/calib.npy --val {L}/calib.npy --seq-len 16 "
    "--target-params 70% --out {O}/search " + W
)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

ROWS = [
    # ---- the model folder: config, family, layer types, weight files ------------------------------
    ("model-missing", IMP + " --model {L}/missing", r"does not exist"),
    ("model-is-a-file", IMP + " --model {L}/a_file", r"a_file is not a Hugging Face model directory"),
    ("model-empty-name", IMP + " --model ''", r"is not a Hugging Face model directory \(no config\.json\)"),
    (
        "weights-truncated",
        IMP + " --model {L}/truncated",
        r"truncated\.?.*model\.safetensors|not a complete safetensors",
    ),
    ("weights-garbage", IMP + " --model {L}/garbage", r"not a complete safetensors file"),
    ("weights-huge-header", IMP + " --model {L}/huge_header", r"header claims"),
    ("weights-none", IMP + " --model {L}/no_weights", r"has no model\.safetensors"),
    ("weights-bad-index", IMP + " --model {L}/bad_index", r"names shard .* missing"),
    ("weights-pickle", IMP + " --model {L}/pickled", r"pickle weights .*--allow-pickle-weights"),
    ("config-not-json", IMP + " --model {L}/bad_json", r"config\.json is not valid JSON"),
    ("config-a-list", IMP + " --model {L}/json_list", r"holds a JSON list"),
    ("config-no-model-type", IMP + " --model {L}/no_model_type", r"names no 'model_type'"),
    ("config-unknown-type", IMP + " --model {L}/unknown_type", r"transformers cannot read .*no-such-architecture"),
    ("family-llama", IMP + " --model {L}/llama", r"cannot prune llama: supported model families"),
    (
        "family-moe-expert-width",
        "plan --model {L}/moe --moe-ffn-hidden-size 0",
        r"moe_ffn_hidden_size must be at least 1",
    ),
    # ---- calibration tokens -------------------------------------------------------------------------
    ("calib-ids-above-vocab", IMP + " --calib {L}/big_ids.npy", r"token id 99\d.*vocabulary has 128 tokens"),
    ("calib-negative-ids", IMP + " --calib {L}/negative.npy", r"token id -\d.*cannot be negative"),
    ("calib-floats", IMP + " --calib {L}/floats.npy", r"holds float64 values, not token ids"),
    ("calib-bools", IMP + " --calib {L}/bools.npy", r"holds bool values, not token ids"),
    ("calib-objects", IMP + " --calib {L}/objects.npy", r"holds object values, not token ids"),
    ("calib-3d", IMP + " --calib {L}/cube.npy", r"shape \(4, 4, 4\); token arrays are 1-D"),
    ("calib-empty-array", IMP + " --calib {L}/empty.npy", r"holds no tokens"),
    ("calib-not-npy", IMP + " --calib {L}/garbage.npy", r"is not a \.npy array file"),
    ("calib-truncated-npy", IMP + " --calib {L}/truncated.npy", r"not a complete \.npy file"),
    ("calib-empty-text", IMP + " --calib {L}/empty.txt", r"empty\.txt is empty"),
    ("calib-blank-text", IMP + " --calib {L}/blank.txt", r"blank\.txt is empty"),
    ("calib-empty-jsonl", IMP + " --calib {L}/empty_jsonl.jsonl", r"is empty"),
    ("calib-folder-no-text", IMP + " --calib {L}/no_text", r"no text files"),
    ("calib-folder-blank", IMP + " --calib {L}/blank_texts", r"every text file under .* is empty"),
    ("calib-missing", IMP + " --calib {L}/missing.npy", r"does not exist"),
    ("calib-short-rows", IMP + " --calib {L}/short_rows.npy", r"rows of 8 tokens, fewer than seq_len 16"),
    ("calib-too-few", IMP + " --calib {L}/short.npy", r"holds 10 tokens, fewer than the 16"),
    ("calib-none-for-local", IMP.replace("--calib {L}/calib.npy", ""), r"--calib is required"),
    # ---- numbers -----------------------------------------------------------------------------------
    ("seq-len-over-model", IMP + " --seq-len 100", r"seq_len' 100 is longer than this model's max_position_embeddings"),
    ("seq-len-zero", IMP + " --seq-len 0", r"--seq-len: must be greater than 0"),
    ("seq-len-huge", IMP + " --seq-len 100000000", r"--seq-len: must be at most 1,048,576"),
    ("samples-zero", IMP + " --samples 0", r"--samples: must be greater than 0"),
    ("samples-huge", IMP + " --samples 999999999", r"--samples: must be at most"),
    ("batch-size-huge", IMP + " --batch-size 1000000", r"--batch-size: must be at most 65,536"),
    ("device-unknown", IMP + " --device tpu", r"--device: must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    pytest.param("device-cuda-absent", IMP + " --device cuda", r"no CUDA device", marks=NO_CUDA),
    # ---- outputs -----------------------------------------------------------------------------------
    ("out-exists", IMP + " --out {L}/existing_out", r"--out .*existing_out already exists"),
    ("out-is-a-file", IMP + " --out {L}/a_file", r"--out .*a_file is a file, not a folder"),
    ("out-inside-a-file", IMP + " --out {L}/a_file/scores", r"is inside .*a_file, which is a file"),
    ("csv-inside-a-file", IMP + " --csv {L}/a_file/s.csv", r"--csv .* is inside .*a_file, which is a file"),
    ("csv-is-a-folder", IMP + " --csv {L}/existing_out", r"--csv .*existing_out is a folder, not a file"),
    ("csv-is-out", IMP + " --csv {O}/out", r"--csv .* is the --out folder"),
    ("workspace-is-a-file", IMP.replace("{W}", "{L}/a_file"), r"workspace .*a_file is a file, not a folder"),
    ("workspace-in-a-file", IMP.replace("{W}", "{L}/a_file/ws"), r"workspace .* is inside a file"),
    # ---- prune: plans and scores -------------------------------------------------------------------
    ("scores-other-hidden", PRUNE + " --scores {L}/scores_wide", r"hidden_size 48, but this model has 32"),
    ("scores-other-ffn", PRUNE + " --scores {L}/scores_wide_ffn", r"ffn_hidden_size in layer 1 of 64, but .* 48"),
    ("scores-other-heads", PRUNE + " --scores {L}/scores_mamba", r"mamba_num_heads x mamba_head_dim in layer 0"),
    ("scores-other-pattern", PRUNE + " --scores {L}/scores_pattern", r"different model \(layer pattern differs\)"),
    ("scores-damaged", PRUNE + " --scores {L}/scores_broken", r"importance scores in .* cannot be read"),
    ("scores-not-scores", PRUNE + " --scores {L}/existing_out", r"holds no importance scores"),
    ("scores-unknown-run", PRUNE + " --scores 999", r"importance run 999 does not exist"),
    ("drop-layers-fraction", PRUNE + " --drop-layers 1.7", r"--drop-layers takes comma-separated layer numbers"),
    ("drop-layers-out-of-range", PRUNE + " --drop-layers 9", r"drop_layers \[9\] are out of range"),
    ("drop-layers-twice", PRUNE + " --drop-layers 1,1", r"lists a layer twice"),
    ("prune-keeps-everything", PRUNE.replace("--hidden-size 16", ""), r"give at least one target"),
    ("prune-grows", PRUNE + " --hidden-size 999", r"hidden_size=999 is larger than the model's 32"),
    ("prune-zero", PRUNE + " --hidden-size 0", r"hidden_size must be at least 1"),
    ("prune-groups", PRUNE + " --mamba-num-heads 3", r"not a multiple of n_groups=2"),
    ("prune-seed-negative", PRUNE + " --seed -1", r"--seed: must be 0 or more"),
    ("prune-weights-truncated", PRUNE + " --model {L}/truncated", r"not a complete safetensors file"),
    ("prune-moe-scores-of-dense", PRUNE + " --model {L}/moe", r"layer pattern differs"),
    # ---- distill: budgets, vocabularies, resume ----------------------------------------------------
    ("tokens-1e99", KD + " --tokens 1e99", r"--tokens: must be at most 1,000,000,000,000 \(a trillion tokens\)"),
    ("tokens-nan", KD + " --tokens nan", r"--tokens: token count 'nan' is not finite"),
    ("tokens-words", KD + " --tokens lots", r"--tokens: cannot read a token count from 'lots'"),
    ("tokens-below-one-batch", KD + " --tokens 10", r"less than one batch of 2 x 16"),
    ("lr-nan", KD + " --lr nan", r"--lr: must be a finite number, got nan"),
    ("lr-inf", KD + " --lr inf", r"--lr: must be a finite number, got inf"),
    ("lr-negative", KD + " --lr -1", r"--lr: must be greater than 0"),
    ("temperature-zero", KD + " --temperature 0", r"--temperature: must be greater than 0"),
    ("lm-weight-above-one", KD + " --lm-loss-weight 2", r"--lm-loss-weight: must be between 0 and 1"),
    ("student-other-vocab", KD + " --student {L}/vocab256", r"student's vocabulary \(256 tokens\) differs"),
    ("train-ids-above-vocab", KD + " --data {L}/big_ids.npy", r"token id 99\d.*vocabulary has 128"),
    ("val-floats", KD + " --val {L}/floats.npy", r"floats\.npy holds float64 values"),
    ("train-too-short", KD + " --data {L}/short.npy", r"holds 10 tokens, fewer than the 17"),
    ("kd-seq-len-over-model", KD + " --seq-len 100", r"seq_len' 100 is longer than .*max_position_embeddings"),
    ("kd-out-is-a-file", KD + " --out {L}/a_file", r"'run_dir' .*a_file is a file|--out .*a_file is a file"),
    ("kd-out-holds-a-run", KD + " --out {L}/kd_run", r"already holds a run; pass --resume"),
    ("resume-missing-folder", KD + " --out {L}/nope --resume", r"nothing to resume: run folder .*nope does not exist"),
    ("resume-no-checkpoint", KD + " --out {L}/kd_no_checkpoint --resume", r"has no checkpoint/state\.pt"),
    ("resume-changed-tokens", RESUME + " --tokens 8192", r"--tokens is 8192, but the run .* started with 4096"),
    ("resume-changed-seq-len", RESUME + " --seq-len 8", r"--seq-len is 8, but the run .* started with 16"),
    (
        "resume-changed-bf16",
        RESUME + " --no-bf16",
        r"--bf16 \(bf16_autocast\) is False, but .* unset \(decided by the device\)",
    ),
    ("kd-teacher-missing", KD.replace("--teacher {L}/model", ""), r"give --teacher, or --logits-cache"),
    ("kd-teacher-pickle", KD + " --teacher {L}/pickled", r"pickle weights"),
    # ---- eval and bench ---------------------------------------------------------------------------
    ("eval-ids-above-vocab", EVAL + " --val-tokens {L}/big_ids.npy", r"token id 99\d"),
    ("eval-max-tokens-below-window", EVAL + " --max-tokens 10", r"'max_tokens' 10 is less than one window"),
    ("eval-seq-len-over-model", EVAL + " --seq-len 1000", r"max_position_embeddings \(64\)"),
    ("eval-no-tasks", EVAL + " --tasks ,", r"--tasks is empty"),
    ("eval-val-missing", EVAL + " --val-tokens {L}/missing.npy", r"does not exist"),
    ("eval-weights-garbage", EVAL + " --model {L}/garbage", r"not a complete safetensors file"),
    ("bench-one-new-token", BENCH + " --new-tokens 1", r"--new-tokens: must be at least 2"),
    ("bench-seq-len-100000", BENCH + " --seq-len 100000", r"longer than this model's max_position_embeddings \(64\)"),
    ("bench-prompt-plus-new", BENCH + " --seq-len 60", r"'seq_len' 60 plus 'new_tokens' 8 is longer"),
    ("bench-repeats-zero", BENCH + " --repeats 0", r"--repeats: must be greater than 0"),
    ("bench-warmup-negative", BENCH + " --warmup -1", r"--warmup: must be 0 or more"),
    ("bench-batch-zero", BENCH + " --batch-size 0", r"--batch-size: must be greater than 0"),
    ("bench-pickle", BENCH + " --model {L}/pickled", r"pickle weights"),
    pytest.param("bench-cuda-absent", BENCH + " --device cuda:0", r"no CUDA device", marks=NO_CUDA),
    # ---- search and plan --------------------------------------------------------------------------
    ("search-tokens-1e99", SEARCH + " --distill-tokens 1e99", r"--distill-tokens: must be at most"),
    ("search-scores-other-widths", SEARCH + " --scores {L}/scores_wide", r"hidden_size 48, but this model has 32"),
    ("search-out-inside-file", SEARCH + " --out {L}/a_file/s", r"inside .*a_file, which is a file"),
    ("search-val-above-vocab", SEARCH + " --val {L}/big_ids.npy", r"token id 99\d"),
    ("search-budget-zero", SEARCH + " --target-params 0", r"target"),
    ("plan-not-json", "plan --model {L}/bad_json --hidden-size 16", r"config\.json is not valid JSON"),
    ("plan-moe-below-top-k", "plan --model {L}/moe --num-moe-experts 1", r"top 2 experts; keep at least 2"),
    ("plan-seq-len-zero", "plan --model {L}/model --seq-len 0", r"--seq-len: must be greater than 0"),
    ("plan-grows", "plan --model {L}/model --hidden-size 999", r"larger than the model's 32"),
    # ---- jobs, worker, cache-logits, study ---------------------------------------------------------
    ("submit-not-json", "jobs submit importance '{{bad' " + W, r"the spec is not valid JSON"),
    (
        "submit-long-string",
        "jobs submit importance @{L}/spec_long.json " + W,
        r"'name' of this importance job spec is a string of 900,000 characters",
    ),
    ("submit-5mb-file", "jobs submit importance @{L}/spec_big.json " + W, r"spec_big\.json is 5,000,\d+ bytes"),
    ("submit-deep", "jobs submit importance '" + "[" * 5000 + "]" * 5000 + "' " + W, r"not valid JSON|nests"),
    ("submit-unknown-kind", "jobs submit nope '{{}}' " + W, r"unknown job kind 'nope'"),
    (
        "submit-drop-layers-true",
        'jobs submit prune \'{{"model": "{L}/model", "spec": {{"drop_layers": [true]}}}}\' ' + W,
        r"drop_layers takes whole layer numbers, got True",
    ),  # fmt: skip
    ("jobs-show-missing", "jobs show 999 " + W, r"there is no job 999"),
    ("jobs-cancel-missing", "jobs cancel 999 " + W, r"there is no job 999"),
    ("worker-poll-nan", "worker --poll nan " + W, r"--poll must be a positive number of seconds"),
    (
        "cache-logits-truncated",
        "cache-logits --teacher {L}/truncated --data {L}/calib.npy --tokens 4096 --seq-len 16 "
        "--batch-size 2 --out {L}/cache",
        r"not a complete safetensors file",
    ),  # fmt: skip
    (
        "cache-logits-out-exists",
        "cache-logits --teacher {L}/model --data {L}/calib.npy --tokens 4096 --seq-len 16 "
        "--batch-size 2 --out {L}/existing_out",
        r"already exists",
    ),  # fmt: skip
    (
        "study-not-json",
        "study --model {L}/bad_json --data {L}/calib.npy --val {L}/calib.npy --calib {L}/calib.npy --out {L}/study",
        r"not valid JSON",
    ),  # fmt: skip
    (
        "study-threads-zero",
        "study --model {L}/model --data {L}/calib.npy --val {L}/calib.npy --calib {L}/calib.npy "
        "--threads 0 --out {L}/study",
        r"--threads must be between 1 and 1024",
    ),  # fmt: skip
]


def argv(line: str, lab, name: str = "row") -> list[str]:
    """The row's command line: {L} the lab, {W} its workspace, {O} a folder for the row's outputs
    (under the lab, so a refused command that wrote there anyway is caught, and no other row trips on it)."""
    return shlex.split(line.format(L=lab.root, W=lab.ws, O=lab.root / "outs" / name))


def named(rows: list) -> list:
    """Each row as a pytest.param whose id is the row's name (rows given as pytest.param keep their marks)."""
    params = []
    for row in rows:
        values, marks = (row.values, row.marks) if hasattr(row, "marks") else (row, ())
        params.append(pytest.param(*values, marks=marks, id=values[0]))
    return params


@pytest.mark.parametrize("name, line, pattern", named(ROWS))
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(lab, capsys, name, line, pattern):  # noqa: F811
    before, rows = lab.snapshot(), lab.rows()
    args = argv(line, lab, name)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert TRACEBACK not in err
    lines = [text for text in err.splitlines() if text.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hybridlab {args[0]}: error: "), lines[0]
    check_message(lines[0], pattern)
    assert lab.snapshot() == before, "a refused command wrote or changed files"
    assert lab.rows() == rows, "a refused command changed the store"


SUBPROCESS_ROWS = [
    ("weights-truncated", IMP + " --model {L}/truncated", r"not a complete safetensors file"),
    ("bench-one-new-token", BENCH + " --new-tokens 1", r"at least 2"),
]


def test_the_real_command_prints_one_line_without_traceback(lab):  # noqa: F811
    """SUBPROCESS_ROWS through `python -m hybridlab`, started side by side (each pays the imports)."""
    before = lab.snapshot()
    runs = [
        (name, pattern, subprocess.Popen([sys.executable, "-m", "hybridlab", *argv(line, lab, name)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for name, line, pattern in SUBPROCESS_ROWS
    ]  # fmt: skip
    for name, pattern, process in runs:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 2, (name, err)
        assert TRACEBACK not in err, name
        lines = [text for text in err.splitlines() if text.strip()]
        assert len(lines) == 1 and lines[0].startswith("hybridlab "), (name, err)
        check_message(lines[0], pattern)
    assert lab.snapshot() == before


@pytest.mark.parametrize("how", ["flag", "flag-after-command", "environment"])
def test_debug_shows_the_traceback_of_a_user_error(lab, capsys, monkeypatch, how):  # noqa: F811
    args = argv(IMP + " --model {L}/truncated", lab)
    if how == "flag":
        args = ["--debug", *args]
    elif how == "flag-after-command":
        args = [*args, "--debug"]
    else:
        monkeypatch.setenv("HYBRIDLAB_DEBUG", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert TRACEBACK in err and err.strip().splitlines()[-1].startswith("hybridlab importance: error: ")


def test_a_bug_keeps_its_traceback(lab, monkeypatch):  # noqa: F811
    """Not a user error: main lets it through (Python prints the traceback, exit status 1)."""
    import hybridlab.cli.evaluate as evaluate

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(evaluate, "_bench", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv(BENCH, lab))
