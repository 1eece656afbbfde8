"""The ablation study: arm planning (exact sizes, the paper's definitions), the paired bootstrap and its
verdicts, what a seed changes, an end-to-end run of three seeds on a tiny model with tiny budgets, resume
after cancel, the generated report, and bad input."""

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
from hybridlab.data.tokens import TokenBatches
from hybridlab.families import ATTENTION, MAMBA, family_for
from hybridlab.measure.evaluate import validation_loss
from hybridlab.study import stats
from hybridlab.study.arms import (
    COMPARISONS,
    depth_only_spec,
    mamba_sweep_specs,
    mispaired_heads,
    params_of,
    shortlist,
    width_candidates,
)
from hybridlab.study.run import StudySettings, calibration_subset, publish, run_study, target_params
from hybridlab.study.runs import tokens_to_match, window_losses
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
        curve_eval_tokens=256,
        scratch_curve_points=4,
        latency_repeats=1,
        calib_samples=4,
        layer_samples=4,
        seeds=3,
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


# -- the paired bootstrap and its verdicts -----------------------------------------------------


def paired_losses(difference: float, seed: int, seeds: int = 3, windows: int = 64):
    """Two arms' [S, W] losses sharing window and seed effects (what pairing removes), B = A + difference + noise."""
    rng = np.random.default_rng(seed)
    base = 5.0 + rng.normal(0, 0.5, windows)[None, :] + rng.normal(0, 0.02, seeds)[:, None]  # [S, W]
    a = base + rng.normal(0, 0.01, (seeds, windows))
    b = base + difference + rng.normal(0, 0.01, (seeds, windows))
    return a, b


def test_paired_interval_covers_a_known_difference_and_excludes_zero():
    a, b = paired_losses(0.05, seed=1)
    interval = stats.paired_difference(a, b)  # A - B = -0.05
    assert interval.low < -0.05 < interval.high and interval.high < 0
    assert interval.estimate == pytest.approx((a - b).mean())
    assert stats.direction(interval) == -1
    # pairing is what resolves it: the unpaired arm intervals overlap widely (window-to-window spread 0.5)
    arm_a, arm_b = stats.bootstrap_mean(a), stats.bootstrap_mean(b)
    assert arm_a.high > arm_b.low and arm_a.low <= a.mean() <= arm_a.high


def test_paired_interval_includes_zero_without_a_difference():
    a, b = paired_losses(0.0, seed=2)
    interval = stats.paired_difference(a, b)
    assert interval.low < 0 < interval.high and stats.direction(interval) == 0


def test_interval_coverage_is_near_its_level():
    """Over many synthetic studies the 95% interval holds the true difference about 95% of the time."""
    truth = 0.02
    intervals = [stats.paired_difference(*paired_losses(truth, seed=i), resamples=500) for i in range(100)]
    hits = [interval.low < -truth < interval.high for interval in intervals]
    assert 0.88 <= np.mean(hits) <= 1.0


def test_interval_is_a_fixed_function_of_the_losses_and_sees_seed_spread():
    a, b = paired_losses(0.05, seed=3)
    assert stats.paired_difference(a, b) == stats.paired_difference(a, b)
    # a seed that disagrees widens the interval: the seeds are resampled too
    wild = b.copy()
    wild[2] -= 0.1
    assert np.ptp([stats.paired_difference(a, wild).low, stats.paired_difference(a, wild).high]) > np.ptp(
        [stats.paired_difference(a, b).low, stats.paired_difference(a, b).high]
    )
    with pytest.raises(ValueError, match="same seeds and windows"):
        stats.paired_difference(a, b[:, :10])


def test_verdict_text_follows_the_interval():
    better = stats.Interval(-0.15, -0.2, -0.1)
    assert (
        stats.verdict("width-only", "depth-only", better)
        == "width-only better than depth-only by 0.150 nats [0.100, 0.200]"
    )
    worse = stats.Interval(0.15, 0.1, 0.2)
    assert (
        stats.verdict("width-only", "depth-only", worse)
        == "depth-only better than width-only by 0.150 nats [0.100, 0.200]"
    )
    unsure = stats.Interval(-0.02, -0.05, 0.01)
    text = stats.verdict("width-only", "depth-only", unsure)
    assert text == "no difference detected at this budget: width-only - depth-only = -0.020 [-0.050, +0.010] nats"
    assert "better" not in text


def experts_report(distilled: stats.Interval) -> str:
    """docs/results.md of a synthetic study of a mixture-of-experts teacher with only the experts comparison:
    the two arms' rows and their paired rows written as run_study writes them."""
    from dataclasses import asdict

    from hybridlab.study.report import render

    def arm(name, spec, loss, latency, speedup):
        return {
            "comparison": "experts_vs_expert_width",
            "arm": name,
            "run": name,
            "spec": spec,
            "params": 600_000,
            "flops_per_token": 1.2e6,
            "zero_shot_loss": loss + 1,
            "zero_shot_loss_low": loss + 0.9,
            "zero_shot_loss_high": loss + 1.1,
            "distilled_loss": loss,
            "distilled_loss_low": loss - 0.05,
            "distilled_loss_high": loss + 0.05,
            "scratch_loss": None,
            "seeds": 3,
            "latency_ms": latency,
            "speedup": speedup,
            "speedup_low": speedup - 0.1,
            "speedup_high": speedup + 0.1,
            "tokens": 512,
            "note": "600,000 parameters",
        }

    teacher = arm("teacher", "{}", 4.0, 40.0, 1.0) | {
        "comparison": "reference",
        "speedup_low": 1.0,
        "speedup_high": 1.0,
    }
    fewer = arm("fewer experts", '{"num_moe_experts": 6}', 4.5, 30.0, 1.33)
    narrower = arm("narrower experts", '{"moe_ffn_hidden_size": 24}', 4.55, 25.0, 1.6)
    zero_shot = stats.Interval(0.3, 0.2, 0.4)
    timed = ("latency_ms", "speedup", "speedup_low", "speedup_high")
    pairs = [
        {
            "comparison": "experts_vs_expert_width",
            "arm_a": "fewer experts",
            "arm_b": "narrower experts",
            "stage": stage,
            "difference": d.estimate,
            "low": d.low,
            "high": d.high,
            "direction": stats.direction(d),
            "verdict": stats.verdict("fewer experts", "narrower experts", d),
            **{f"{k}_{side}": row[k] for side, row in (("a", fewer), ("b", narrower)) for k in timed},
            "seeds": 3,
            "windows": 16,
        }
        for stage, d in (("zero_shot", zero_shot), ("distilled", distilled))
    ]
    summary = {
        "command": "hybridlab study",
        "teacher_params": 1_000_000,
        "teacher_loss": 4.0,
        "target_params": 600_000,
        "train_tokens_available": 6000,
        "validation_windows": 16,
        "calibration_pool": 12,
        "torch_threads": 1,
        "wall_s": 60.0,
        "distinct_students": 2,
        "distinct_architectures": 2,
    }
    settings = asdict(tiny_settings(comparisons=("experts_vs_expert_width",)))
    return render(pd.DataFrame([teacher, fewer, narrower]), pd.DataFrame(pairs), summary, settings)


@pytest.mark.parametrize(
    "distilled, outcome",
    [
        (
            stats.Interval(-0.05, -0.08, -0.02),
            "**Measured (no paper claim to test):** fewer experts better than narrower experts by 0.050 nats "
            "[0.020, 0.080].",
        ),
        (
            stats.Interval(0.01, -0.02, 0.04),
            "**Measured (no paper claim to test):** no difference detected at this budget: fewer experts - "
            "narrower experts = +0.010 [-0.020, +0.040] nats.",
        ),
    ],
)
def test_the_experts_finding_reads_its_verdict_from_the_interval(distilled, outcome):
    text = experts_report(distilled)
    finding = text.split("### Fewer routed experts versus narrower experts\n\n")[1].split("\n## ")[0]
    assert finding.startswith("The paper has no mixture-of-experts finding:")  # nothing to reproduce
    assert outcome in finding
    assert ("better than" in finding.split("Zero-shot:")[0]) == distilled.excludes_zero()
    assert "fewer experts reached 4.500 [4.450, 4.550] and narrower experts 4.550 [4.500, 4.600]" in finding
    assert "Zero-shot: narrower experts better than fewer experts by 0.300 nats [0.200, 0.400]." in finding
    assert "fewer experts 1.33x [1.23, 1.43] (30.0 ms), narrower experts 1.60x [1.50, 1.70] (25.0 ms)" in finding
    assert "narrower experts faster" in finding


# -- what a seed changes -----------------------------------------------------------------------


def test_a_seed_draws_its_own_calibration_subset_and_batches():
    subsets = [calibration_subset(256, 32, seed) for seed in (0, 1, 2)]
    assert all(len(set(rows)) == 32 and rows == sorted(rows) for rows in subsets)
    assert len({tuple(rows) for rows in subsets}) == 3
    assert calibration_subset(256, 32, 1) == subsets[1]  # the same seed draws the same windows
    assert calibration_subset(20, 32, 5) == list(range(20))  # a small pool: every seed scores all of it
    settings = StudySettings()
    batches = {seed: TokenBatches(corpus(), 4, 32, seed=settings.distill_settings(seed).seed) for seed in (0, 1)}
    assert not torch.equal(batches[0].batch(0), batches[1].batch(0))
    assert torch.equal(batches[0].batch(3), TokenBatches(corpus(), 4, 32, seed=0).batch(3))


def test_window_losses_average_to_the_validation_loss(tiny_nemotron):
    tokens = corpus(2000, seed=1)
    windows = window_losses(tiny_nemotron, tokens, 32, 512)
    assert windows.shape == (16,)
    assert windows.mean() == pytest.approx(validation_loss(tiny_nemotron, tokens, 32, max_tokens=512)["loss"], rel=1e-5)


# -- a tiny study, end to end ------------------------------------------------------------------


def tiny_teacher():
    from transformers import NemotronHForCausalLM

    from tests.conftest import randomize, tiny_nemotron_config

    torch.manual_seed(0)
    return randomize(NemotronHForCausalLM(tiny_nemotron_config()))


CALIB = torch.randint(3, 128, (12, 24), generator=torch.Generator().manual_seed(7))  # the pool, [N, T]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny study with every comparison and three seeds (module-scoped: it is the slow part)."""
    teacher = tiny_teacher()
    out = tmp_path_factory.mktemp("study")
    result = run_study(
        teacher, None, corpus(), corpus(2000, seed=1), CALIB, tiny_settings(), out, command="hybridlab study --x"
    )
    return teacher, result


def test_study_rows_are_exact_and_shared_students_are_trained_once_per_seed(finished):
    teacher, result = finished
    frame, curves = result.results, result.curves
    assert set(frame["comparison"]) == {"reference", *COMPARISONS}
    arms = frame[~frame["comparison"].isin(["reference", "from_scratch"])]
    assert len(arms) == 2 + 2 + 2 + 2 + 2  # one heads-versus-channels cut by default
    for row in arms.to_dict("records"):
        assert row["params"] == n_params(result.models[row["run"], 0])  # exact, from the planned spec
        assert row["tokens"] == 4 * 4 * 32 and row["seeds"] == 3 and row["latency_ms"] > 0
        for stage in ("zero_shot_loss", "distilled_loss"):
            assert row[f"{stage}_low"] <= row[stage] <= row[f"{stage}_high"]
    # group-aware, importance and the SSM-pruned mix are one student (same spec and ranking): distilled once a seed
    same = frame[frame["arm"].isin(["group-aware", "importance", "prunes Mamba heads"])]
    assert same["run"].nunique() == 1 and same["distilled_loss"].nunique() == 1
    assert len(list((result.out_dir / "runs" / same["run"].iloc[0]).glob("seed-*/arm.json"))) == 3
    pair = frame[frame["comparison"] == "group_vs_global"]
    assert pair["spec"].nunique() == 1 and list(pair["mamba_ranking"]) == ["group", "global"]
    ranked = pd.read_csv(result.out_dir / "width_candidates.csv")
    width = frame[frame["arm"] == "width-only"].iloc[0]
    assert json.loads(width["spec"]) == json.loads(ranked.iloc[0]["spec"])
    assert ranked["zero_shot_loss"].is_monotonic_increasing
    at_target = arms[arms["comparison"] != "heads_vs_channels"]
    best = at_target.loc[at_target["distilled_loss"].idxmin()]
    scratch = frame[frame["comparison"] == "from_scratch"].iloc[0]
    assert (scratch["spec"], scratch["params"], scratch["tokens"]) == (best["spec"], best["params"], 8 * 4 * 32)
    last_points = curves[(curves["run"] == best["run"]) & (curves["kind"] == "eval")].groupby("seed")["val_loss"].last()
    assert len(last_points) == 3
    assert result.summary["scratch"]["target_curve_loss"] == pytest.approx(last_points.mean())


def test_seeds_change_calibration_data_and_random_draw(finished):
    teacher, result = finished
    per_seed = result.per_seed
    rows = per_seed.drop_duplicates("seed").set_index("seed")["calibration_rows"]
    assert rows.nunique() == 3  # each seed scored importance on its own calibration windows
    assert result.summary["calibration_subsets"]["1"] == [int(i) for i in rows[1].split()]
    windows = pd.read_csv(result.out_dir / "results_windows.csv")
    distilled = windows[windows["stage"] == "distilled"].pivot_table(
        index=["run", "window"], columns="seed", values="loss"
    )
    assert (distilled[0] != distilled[1]).any() and (distilled[1] != distilled[2]).any()
    first_batch = {  # the distillation curves start from different batches
        seed: json.loads(
            (
                result.out_dir / "runs" / result.results["run"].iloc[1] / f"seed-{seed}" / "distill_settings.json"
            ).read_text()
        )["seed"]
        for seed in (0, 1, 2)
    }
    assert first_batch == {0: 0, 1: 1, 2: 2}
    random_run = result.results[result.results["arm"] == "random"]["run"].iloc[0]
    weights = [result.models[random_run, seed].get_input_embeddings().weight for seed in (0, 1, 2)]
    assert weights[0].shape == weights[1].shape and not torch.equal(weights[0], weights[1])


def test_the_same_seed_reproduces_the_same_results(finished, tmp_path):
    """A one-seed study at seed 1 gives seed 1's numbers of the three-seed study, to the bit."""
    teacher, whole = finished
    comparisons = ("width_vs_depth", "importance_vs_random")
    again = run_study(
        tiny_teacher(),
        None,
        corpus(),
        corpus(2000, seed=1),
        CALIB,
        tiny_settings(seeds=1, seed=1, comparisons=comparisons, scratch_tokens=0),
        tmp_path,
    )
    for run in again.per_seed["run"].unique():
        mine = again.per_seed[again.per_seed["run"] == run].iloc[0]
        theirs = whole.per_seed[(whole.per_seed["run"] == run) & (whole.per_seed["seed"] == 1)].iloc[0]
        assert mine["calibration_rows"] == theirs["calibration_rows"]
        assert (mine["zero_shot_loss"], mine["distilled_loss"]) == (theirs["zero_shot_loss"], theirs["distilled_loss"])


def test_comparisons_have_paired_intervals_and_verdicts_from_them(finished):
    _, result = finished
    pairs = pd.read_csv(result.out_dir / "results_comparisons.csv")
    assert set(pairs["stage"]) == {"zero_shot", "distilled"}
    assert len(pairs) == 2 * 5  # five pairs (one sweep cut), two stages
    windows = pd.read_csv(result.out_dir / "results_windows.csv")
    runs = result.results.set_index(["comparison", "arm"])["run"]
    for row in pairs.to_dict("records"):
        assert row["low"] <= row["difference"] <= row["high"] and row["seeds"] == 3
        assert row["verdict"] == stats.verdict(
            row["arm_a"], row["arm_b"], stats.Interval(row["difference"], row["low"], row["high"])
        )
        tables = [
            windows[(windows["run"] == runs[row["comparison"], arm]) & (windows["stage"] == row["stage"])]
            .pivot(index="seed", columns="window", values="loss")
            .to_numpy()
            for arm in (row["arm_a"], row["arm_b"])
        ]
        recomputed = stats.paired_difference(*tables)
        assert (recomputed.estimate, recomputed.low, recomputed.high) == pytest.approx(
            (row["difference"], row["low"], row["high"])
        )


def test_curves_carry_every_seed_and_their_band(finished):
    _, result = finished
    curves = pd.read_csv(result.out_dir / "results_curves.csv")
    evals = curves[(curves["kind"] == "eval") & (curves["training"] == "distill")]
    assert (evals.groupby("run")["seed"].nunique() == 3).all()
    assert (evals.groupby(["run", "step"]).size() == 3).all()
    band = evals.groupby(["run", "step"])["val_loss"].agg(["min", "max", "mean"])
    merged = evals.drop_duplicates(["run", "step"]).set_index(["run", "step"])
    assert np.allclose(merged["val_loss_min"], band["min"].loc[merged.index])
    assert np.allclose(merged["val_loss_max"], band["max"].loc[merged.index])
    assert (merged["band_seeds"] == 3).all()


def test_report_numbers_come_from_the_results(finished):
    _, result = finished
    text = (result.out_dir / "results.md").read_text()
    assert "hybridlab study --x" in text
    for heading in (
        "Width-only versus depth-only",
        "Mamba heads versus head channels",
        "Group-aware versus global",
        "Pruning the SSM versus leaving it whole",
        "Importance ranking versus random",
        "training from scratch",
        "## Runtime",
    ):
        assert heading in text
    assert "3 seeds per arm (0, 1, 2)" in text and "2,000 resamples" in text and "0.5%" not in text
    measured = text.split("## Measured table")[1].split("\n## ")[0]
    table = [line for line in measured.splitlines() if line.startswith("| ") and "`{" in line]
    csv = pd.read_csv(result.out_dir / "results.csv")
    assert len(table) == len(csv)
    for line, row in zip(table, csv.to_dict("records")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == row["arm"] and cells[3] == f"{row['params']:,}"
        if not pd.isna(row["distilled_loss"]):
            assert (
                cells[6]
                == f"{row['distilled_loss']:.3f} [{row['distilled_loss_low']:.3f}, {row['distilled_loss_high']:.3f}]"
            )
    pairs = pd.read_csv(result.out_dir / "results_comparisons.csv")
    for verdict in pairs["verdict"]:
        assert verdict in text
    numbers = {float(n) for n in re.findall(r"(?<![\d.])[-+]?\d+\.\d{3}(?!\d)", text)}
    produced = set()
    for frame, columns in (
        (csv, [c for c in csv.columns if "loss" in c]),
        (pairs, ["difference", "low", "high"]),
        (pd.read_csv(result.out_dir / "width_candidates.csv"), ["zero_shot_loss"]),
        (result.per_seed, ["distilled_loss"]),
    ):
        produced |= {round(float(v), 3) for v in frame[columns].stack()}
        produced |= {round(-float(v), 3) for v in frame[columns].stack()}
    produced |= {round(result.summary["scratch"][k], 3) for k in ("target_curve_loss", "best_curve_loss")}
    assert numbers and {round(n, 3) for n in numbers} <= produced


def test_cancelled_study_resumes_to_the_same_numbers(finished, tmp_path):
    teacher, whole = finished
    fired = []

    def cancel_in_third_run(fraction, message, metrics):
        if message.startswith("study: distilling") and "(3/" in message:
            fired.append(message)
        elif fired and message.startswith("step 2/"):  # mid-distillation: the trainer saves a checkpoint
            raise Cancelled()

    args = (teacher, None, corpus(), corpus(2000, seed=1), CALIB)
    with pytest.raises(Cancelled):
        run_study(*args, tiny_settings(), tmp_path, progress=cancel_in_third_run)
    assert len(list((tmp_path / "runs").glob("*/seed-*/arm.json"))) == 2
    assert len(list((tmp_path / "runs").glob("*/seed-*/checkpoint/state.pt"))) == 3
    resumed = run_study(*args, tiny_settings(), tmp_path, command="hybridlab study --x")
    columns = ["arm", "params", "zero_shot_loss", "distilled_loss", "distilled_loss_low", "scratch_loss", "tokens"]
    pd.testing.assert_frame_equal(resumed.results[columns], whole.results[columns], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="other settings"):
        run_study(*args, tiny_settings(tokens=8 * 4 * 32), tmp_path)


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
        "--seeds",
        "2",
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
        (["--seeds", "0"], "seeds: must be greater than 0"),
        (["--comparisons", "width_vs_depth,bogus"], "unknown comparisons"),
        (["--ssm-sweep", "0,50"], "ssm-sweep fractions"),
        (["--model", "/nonexistent/model"], "does not exist"),
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(extra, message, tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
