"""The ablation study: arm planning (exact sizes, the paper's definitions), an end-to-end run on a
tiny model with tiny budgets, resume after cancel, the generated report, and bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from hybridlab import estimate_importance, prune
from hybridlab.cli import build_parser, main
from hybridlab.core.progress import Cancelled
from hybridlab.families import ATTENTION, MAMBA, family_for
from hybridlab.study.arms import (
    COMPARISONS,
    depth_only_spec,
    mamba_sweep_specs,
    mispaired_heads,
    params_of,
    shortlist,
    width_candidates,
)
from hybridlab.study.run import StudySettings, publish, run_study, target_params
from hybridlab.study.runs import tokens_to_match
from tests.test_distill import corpus


@pytest.fixture
def scores(tiny_nemotron, token_batches):
    return estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")


def tiny_settings(**overrides) -> StudySettings:
    values = dict(
        tokens=4 * 4 * 32,
        scratch_tokens=8 * 4 * 32,
        seq_len=32,
        batch_size=4,
        eval_tokens=512,
        teacher_top_k=16,
        tolerance=0.05,
        max_candidates=4,
        curve_points=2,
        scratch_curve_points=4,
        latency_repeats=1,
        bf16_autocast=False,
    )
    return StudySettings(**(values | overrides))


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_width_arms_are_exact_width_only_and_cover_both_ssm_groups(tiny_nemotron, scores):
    config = tiny_nemotron.config
    target = target_params(n_params(tiny_nemotron), 0.5)
    found = width_candidates(config, scores, target, 0.05, 0.5, "kl")
    picked = shortlist(found, config, target, 4)
    assert len(picked) == 4
    assert {c.spec.mamba_num_heads is not None for c in picked} == {True, False}  # heads pruned and SSM whole
    for candidate in picked:
        assert candidate.spec.drop_layers is None and candidate.spec.mamba_head_dim is None
        assert abs(candidate.params - target) <= 0.05 * target
        assert n_params(prune(tiny_nemotron, candidate.spec, scores)) == candidate.params


def test_depth_only_is_closest_to_target_and_keeps_the_attention_layer(tiny_nemotron, scores):
    config = tiny_nemotron.config
    kinds = family_for(config).widths(config).layer_kinds
    layer_kl = torch.tensor([0.5, 0.4, 0.01, 0.3, 0.2, 0.1])  # the attention layer (2) is the least important
    assert kinds[2] == ATTENTION
    target = target_params(n_params(tiny_nemotron), 0.5)
    spec = depth_only_spec(config, layer_kl, target)
    assert 2 not in spec.drop_layers
    order = [5, 4, 3, 1, 0]  # least important first, attention skipped
    gaps = {k: abs(params_of(config, type(spec)(drop_layers=tuple(order[:k]))) - target) for k in range(1, 6)}
    assert spec.drop_layers == tuple(sorted(order[: min(gaps, key=gaps.get)]))
    pruned = prune(tiny_nemotron, spec, scores)
    pruned(input_ids=torch.tensor([[3, 4, 5]]), use_cache=True)  # still builds its cache
    assert n_params(pruned) == params_of(config, spec)


def test_sweep_cuts_heads_or_channels_to_the_same_ssm_width(tiny_nemotron):
    w = family_for(tiny_nemotron.config).widths(tiny_nemotron.config)  # 8 heads x 4 channels, 2 groups
    for fraction, heads, head_dim in ((0.25, 6, 3), (0.5, 4, 2)):
        by_heads, by_channels = mamba_sweep_specs(tiny_nemotron.config, fraction)
        assert (by_heads.mamba_num_heads, by_channels.mamba_head_dim) == (heads, head_dim)
        assert by_heads.mamba_num_heads * w.mamba_head_dim == w.mamba_num_heads * by_channels.mamba_head_dim
    with pytest.raises(ValueError, match="rounds to no change"):
        mamba_sweep_specs(tiny_nemotron.config, 0.05)


def test_mispaired_heads_counts_what_global_ranking_actually_moves(tiny_nemotron, scores):
    from hybridlab.model.spec import PruneSpec

    spec = PruneSpec(mamba_num_heads=4)
    moved, kept = mispaired_heads(scores, tiny_nemotron.config, spec)
    pruned = prune(tiny_nemotron, spec, scores, mamba_ranking="global")
    old_layers = [l for l in family_for(tiny_nemotron).parts(tiny_nemotron).layers if l.kind == MAMBA]
    new_layers = [l for l in family_for(pruned).parts(pruned).layers if l.kind == MAMBA]
    recount = 0
    for old, new in zip(old_layers, new_layers):  # identify each kept head by its (distinct) dt_bias
        heads = [int((old.mixer.dt_bias == value).nonzero()) for value in new.mixer.dt_bias]
        recount += sum(h // 4 != j // 2 for j, h in enumerate(heads))  # old group (8 heads / 2) vs new group (4 / 2)
    assert (moved, kept) == (recount, 4 * len(old_layers))


def test_tokens_to_match_is_the_first_evaluation_at_or_below_target():
    curve = [(100, 5.0), (200, 4.1), (300, 3.9), (400, 4.0)]
    assert tokens_to_match(curve, 4.0) == 300
    assert tokens_to_match(curve, 5.0) == 100
    assert tokens_to_match(curve, 3.0) is None


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny study with every comparison (module-scoped: it is the slow part)."""
    from transformers import NemotronHForCausalLM

    from tests.conftest import randomize, tiny_nemotron_config

    torch.manual_seed(0)
    teacher = randomize(NemotronHForCausalLM(tiny_nemotron_config()))
    calib = [torch.randint(3, 128, (4, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    out = tmp_path_factory.mktemp("study")
    result = run_study(
        teacher, None, corpus(), corpus(2000, seed=1), calib, tiny_settings(), out, command="hybridlab study --x"
    )
    return teacher, calib, result


def test_study_rows_are_exact_and_shared_students_are_trained_once(finished):
    teacher, _, result = finished
    frame, curves = result.results, result.curves
    assert set(frame["comparison"]) == {"reference", *COMPARISONS}
    arms = frame[~frame["comparison"].isin(["reference", "from_scratch"])]
    assert len(arms) == 2 + 4 + 2 + 2 + 2
    for row in arms.to_dict("records"):
        assert row["params"] == n_params(result.models[row["run"]])  # exact, from the planned spec
        assert row["tokens"] == 4 * 4 * 32 and np.isfinite(row["distilled_loss"]) and row["latency_ms"] > 0
    # group-aware, importance and the SSM-pruned mix are one student (same spec and ranking): distilled once
    same = frame[frame["arm"].isin(["group-aware", "importance", "prunes Mamba heads"])]
    assert same["run"].nunique() == 1 and same["distilled_loss"].nunique() == 1
    pair = frame[frame["comparison"] == "group_vs_global"]
    assert pair["spec"].nunique() == 1 and list(pair["mamba_ranking"]) == ["group", "global"]
    ranked = pd.read_csv(result.out_dir / "width_candidates.csv")
    width = frame[frame["arm"] == "width-only"].iloc[0]
    assert (
        json.loads(width["spec"]) == json.loads(ranked.iloc[0]["spec"])
        and ranked["zero_shot_loss"].is_monotonic_increasing
    )
    at_target = arms[arms["comparison"] != "heads_vs_channels"]
    best = at_target.loc[at_target["distilled_loss"].idxmin()]
    scratch = frame[frame["comparison"] == "from_scratch"].iloc[0]
    assert (scratch["spec"], scratch["params"], scratch["tokens"]) == (best["spec"], best["params"], 8 * 4 * 32)
    assert result.summary["scratch"]["target_curve_loss"] == pytest.approx(
        curves[(curves["run"] == best["run"]) & (curves["kind"] == "eval")]["val_loss"].iloc[-1]
    )
    assert set(curves["run"]) == set(arms["run"]) | {"scratch"}
    assert (curves[curves["kind"] == "eval"].groupby("run").size() >= 2).all()


def test_report_numbers_come_from_the_results(finished):
    _, _, result = finished
    text = (result.out_dir / "results.md").read_text()
    assert "hybridlab study --x" in text
    for heading in (
        "Width-only versus depth-only",
        "Mamba heads versus head channels",
        "Group-aware versus global",
        "Pruning the SSM versus leaving it whole",
        "Importance ranking versus random",
        "training from scratch",
    ):
        assert heading in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "`" in line.split("|")[3]]
    csv = pd.read_csv(result.out_dir / "results.csv")
    assert len(table) == len(csv)
    for line, row in zip(table, csv.to_dict("records")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == row["arm"] and cells[3] == f"{row['params']:,}"
        for cell, key in ((cells[5], "zero_shot_loss"), (cells[6], "distilled_loss"), (cells[7], "scratch_loss")):
            assert cell == ("—" if pd.isna(row[key]) else f"{row[key]:.3f}")
    numbers = set(re.findall(r"(?<![\d.])(\d+\.\d{3})(?!\d)(?! nats)", text))  # gaps ("0.123 nats") are differences
    produced = {f"{v:.3f}" for v in csv[["zero_shot_loss", "distilled_loss", "scratch_loss", "teacher_loss"]].stack()}
    produced |= {f"{v:.3f}" for v in pd.read_csv(result.out_dir / "width_candidates.csv")["zero_shot_loss"]}
    produced |= {f"{result.summary['scratch'][k]:.3f}" for k in ("target_curve_loss", "best_curve_loss")}
    produced.add(f"{tiny_settings().lr:g}")  # the learning rate in the setup paragraph
    assert numbers and numbers <= produced


def test_cancelled_study_resumes_to_the_same_numbers(finished, tmp_path):
    teacher, calib, whole = finished
    fired = []

    def cancel_in_third_run(fraction, message, metrics):
        if "(3/" in message:
            fired.append(message)
        elif fired and message.startswith("step 2/"):  # mid-distillation: the trainer saves a checkpoint
            raise Cancelled()

    with pytest.raises(Cancelled):
        run_study(
            teacher,
            None,
            corpus(),
            corpus(2000, seed=1),
            calib,
            tiny_settings(),
            tmp_path,
            progress=cancel_in_third_run,
        )
    assert len(list((tmp_path / "runs").glob("*/arm.json"))) == 2
    assert len(list((tmp_path / "runs").glob("*/checkpoint/state.pt"))) == 3
    resumed = run_study(
        teacher, None, corpus(), corpus(2000, seed=1), calib, tiny_settings(), tmp_path, command="hybridlab study --x"
    )
    columns = ["arm", "params", "zero_shot_loss", "distilled_loss", "scratch_loss", "tokens"]
    pd.testing.assert_frame_equal(resumed.results[columns], whole.results[columns], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="other settings"):
        run_study(teacher, None, corpus(), corpus(2000, seed=1), calib, tiny_settings(tokens=8 * 4 * 32), tmp_path)


def test_cli_runs_a_model_directory_and_publishes(tiny_nemotron, tmp_path, capsys):
    tiny_nemotron.save_pretrained(tmp_path / "teacher")
    for name, tokens in (("train", corpus()), ("val", corpus(2000, seed=1)), ("calib", corpus(1000, seed=2))):
        np.save(tmp_path / f"{name}.npy", tokens)
    args = [
        "study",
        "--model",
        str(tmp_path / "teacher"),
        "--tokens",
        "512",
        "--scratch-tokens",
        "1024",
        "--out",
        str(tmp_path / "out"),
        "--docs",
        str(tmp_path / "docs"),
        "--comparisons",
        "width_vs_depth,from_scratch",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--eval-tokens",
        "512",
        "--tolerance",
        "0.05",
        "--max-candidates",
        "3",
        "--latency-repeats",
        "1",
        "--calib-samples",
        "8",
        "--no-bf16",
        "--data",
        str(tmp_path / "train.npy"),
        "--val",
        str(tmp_path / "val.npy"),
        "--calib",
        str(tmp_path / "calib.npy"),
    ]
    assert main(args) == 0
    text = (tmp_path / "docs" / "results.md").read_text()
    command = re.search(r"```\n(hybridlab study .*)\n```", text).group(1)
    parse = lambda argv: {k: v for k, v in vars(build_parser().parse_args(argv)).items() if k != "func"}
    assert parse(command.split()[1:]) == parse(args)  # the printed command reruns exactly this study
    assert set(pd.read_csv(tmp_path / "docs" / "results.csv")["comparison"]) == {
        "reference",
        "width_vs_depth",
        "from_scratch",
    }
    assert (tmp_path / "docs" / "results_curves.csv").exists()
    with pytest.raises(FileNotFoundError, match="no finished study"):
        publish(tmp_path / "nothing", tmp_path / "docs2")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--compression", "1.5"], "between 0 and 1"),
        (["--compression", "half"], "cannot read a compression"),
        (["--tokens", "0"], "less than one batch"),
        (["--comparisons", "width_vs_depth,bogus"], "unknown comparisons"),
        (["--ssm-sweep", "0,50"], "ssm-sweep fractions"),
        (["--model", "/nonexistent/model"], "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(extra, message, tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
