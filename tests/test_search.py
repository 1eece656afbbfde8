"""Search: the candidate space, exact sizes, clear errors, and an end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from hybridlab import estimate_importance, prune
from hybridlab.search.run import SearchSettings, _choose, search
from hybridlab.search.space import (
    SearchSpace,
    check_reachable,
    enumerate_candidates,
    layers_to_drop,
    parse_target,
    pick_diverse,
    width_values,
)
from tests.test_distill import corpus


@pytest.fixture
def scores(tiny_nemotron, token_batches):
    return estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")


def test_width_values_and_layer_choice():
    assert width_values(256, 32, 0.5) == [256, 224, 192, 160, 128]
    assert width_values(48, 10, 0.4) == [48, 40, 30]
    scores = torch.tensor([5.0, 1.0, 0.5, 4.0, 0.2, 3.0])
    assert layers_to_drop(scores, 2, contiguous=False) == (2, 4)
    assert layers_to_drop(scores, 2, contiguous=True) == (1, 2)  # 1.5 is the smallest adjacent sum


def test_candidates_are_exact_and_near_the_target(tiny_nemotron, scores):
    total = sum(p.numel() for p in tiny_nemotron.parameters())
    target = parse_target("60%", total)
    found = enumerate_candidates(
        tiny_nemotron.config, scores, target, 0.05, SearchSpace(hidden_divisor=4, ffn_divisor=8, head_dim_divisor=1)
    )
    assert len(found) > 10 and {c.strategy for c in found} >= {"width", "mixed"}
    for candidate in pick_diverse(found, 6, target):
        assert abs(candidate.params - target) <= 0.05 * target
        assert sum(p.numel() for p in prune(tiny_nemotron, candidate.spec, scores).parameters()) == candidate.params


def test_impossible_budgets_are_clear_errors(tiny_nemotron, scores):
    total = sum(p.numel() for p in tiny_nemotron.parameters())
    with pytest.raises(ValueError, match="below the smallest architecture"):
        check_reachable(tiny_nemotron.config, parse_target("10%", total), 0.02, SearchSpace())
    with pytest.raises(ValueError, match="no candidate within"):
        enumerate_candidates(
            tiny_nemotron.config,
            scores,
            parse_target("90%", total),
            0.001,
            SearchSpace(max_width_prune=0.05, max_depth_prune=0.0),
        )
    with pytest.raises(ValueError, match="between 0% and 100%"):
        parse_target("150%", total)


def test_near_ties_are_broken_by_latency():
    rows = [
        {"name": "a", "distilled_loss": 2.000, "latency_ms": 9.0},
        {"name": "b", "distilled_loss": 2.005, "latency_ms": 5.0},
        {"name": "c", "distilled_loss": 2.5, "latency_ms": 1.0},
    ]
    assert _choose(rows, SearchSettings(tie_tolerance=0.01))["name"] == "b"
    assert _choose(rows, SearchSettings(tie_tolerance=0.001))["name"] == "a"


def test_search_end_to_end_saves_a_loadable_choice(tiny_nemotron, scores, tmp_path):
    settings = SearchSettings(
        target_params="60%",
        tolerance=0.05,
        max_candidates=4,
        top_k=2,
        distill_tokens=4 * 4 * 32,
        seq_len=32,
        batch_size=4,
        eval_tokens=512,
        space=SearchSpace(hidden_divisor=4, ffn_divisor=8, head_dim_divisor=1),
    )
    result = search(tiny_nemotron, None, corpus(), corpus(2000, seed=1), settings, scores=scores, out_dir=tmp_path)
    frame = result.candidates
    assert frame.iloc[0]["name"] == "teacher" and len(frame) == 5
    finalists = frame[frame["distilled_loss"].notna()]
    assert len(finalists) == 2 and (finalists["zero_shot_rank"] <= 2).all()
    assert frame["estimated_latency_ms"].notna().all() and finalists["latency_ms"].notna().all()
    assert frame["chosen"].fillna(False).sum() == 1
    chosen = AutoModelForCausalLM.from_pretrained(tmp_path / "best")
    assert sum(p.numel() for p in chosen.parameters()) == result.best["params"]
    assert json.loads((tmp_path / "search.json").read_text())["best"]["name"] == result.best["name"]


def test_cli_search_is_recorded_and_writes_its_folder(tiny_nemotron, scores, tmp_path, capsys):
    """`hybridlab search` runs as a search job: the ranked candidates are candidate rows of the store,
    the chosen model is its artifact, and --out holds candidates.csv, search.json and best/ as before."""
    from hybridlab.cli import main
    from hybridlab.jobs import list_candidates, list_jobs

    tiny_nemotron.save_pretrained(tmp_path / "model")
    scores.save(tmp_path / "scores")
    np.save(tmp_path / "train.npy", corpus())
    np.save(tmp_path / "val.npy", corpus(2000, seed=1))
    ws, out = tmp_path / "ws", tmp_path / "search"
    argv = [
        "search",
        "--model",
        str(tmp_path / "model"),
        "--target-params",
        "60%",
        "--tolerance",
        "0.05",
        "--scores",
        str(tmp_path / "scores"),
        "--data",
        str(tmp_path / "train.npy"),
        "--val",
        str(tmp_path / "val.npy"),
        "--max-candidates",
        "3",
        "--top-k",
        "1",
        "--distill-tokens",
        str(2 * 8 * 32),
        "--seq-len",
        "32",
        "--eval-tokens",
        "512",
        "--hidden-divisor",
        "4",
        "--ffn-divisor",
        "8",
        "--head-dim-divisor",
        "1",
        "--no-latency",
        "--out",
        str(out),
        "--workspace",
        str(ws),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    best = json.loads((out / "search.json").read_text())["best"]
    assert f"chose {best['name']}" in printed and best["model_dir"] == str(out.resolve() / "best")
    assert list(list_jobs(ws)["status"]) == ["succeeded"]
    candidates = list_candidates(ws)
    assert len(candidates) == 3 and set(candidates["status"]) == {"succeeded"}
    job = list_jobs(ws).iloc[0]
    from hybridlab.jobs import get_job

    recorded = AutoModelForCausalLM.from_pretrained(get_job(int(job["id"]), ws)["result"]["model_path"])
    ours = AutoModelForCausalLM.from_pretrained(out / "best")
    assert sum(p.numel() for p in recorded.parameters()) == sum(p.numel() for p in ours.parameters()) == best["params"]

    capsys.readouterr()
    assert main([*argv[:-4], "--target-params", "5%", "--out", str(tmp_path / "other"), "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "below the smallest architecture" in err and "Traceback" not in err  # refused from the config alone
    assert len(list_jobs(ws)) == 1 and not (tmp_path / "other").exists()


# ---- a latency budget (hybridlab.measure.latency_model) ------------------------------------------


def _space():
    return SearchSpace(hidden_divisor=4, ffn_divisor=8, head_dim_divisor=1)


def test_within_latency_keeps_exactly_the_candidates_predicted_within_budget(tiny_nemotron, scores):
    from hybridlab.core.errors import UserError
    from hybridlab.measure.latency_model import predicted_speedup
    from hybridlab.search.space import within_latency
    from tests.test_latency_model import known_model

    latency = known_model(tiny_nemotron)
    found = enumerate_candidates(
        tiny_nemotron,
        scores,
        parse_target("60%", sum(p.numel() for p in tiny_nemotron.parameters())),
        0.05,
        _space(),
        32,
    )
    ratio = {c.name: predicted_speedup(latency, tiny_nemotron, c.spec, 32)["latency_ratio"] for c in found}
    budget = sorted(ratio.values())[len(ratio) // 2]  # about half of them fit
    kept = within_latency(found, tiny_nemotron, latency, budget, 32)
    assert {c.name for c in kept} == {n for n, r in ratio.items() if r <= budget}
    assert 0 < len(kept) < len(found)
    with pytest.raises(UserError, match="no candidate at this parameter budget is predicted within 1%"):
        within_latency(found, tiny_nemotron, latency, 0.01, 32)


def test_search_with_a_latency_budget_ranks_only_candidates_within_it(tiny_nemotron, scores):
    from tests.test_latency_model import known_model

    latency = known_model(tiny_nemotron)
    settings = SearchSettings(
        target_params="60%",
        tolerance=0.05,
        max_candidates=16,
        distill_tokens=0,
        seq_len=32,
        eval_tokens=256,
        measure_latency=False,
        latency_budget=0.8,
        space=_space(),
    )
    result = search(tiny_nemotron, None, corpus(), corpus(2000, seed=1), settings, scores=scores, latency_model=latency)
    rows = result.candidates[result.candidates["name"] != "teacher"]
    assert len(rows) > 0 and (rows["predicted_latency_ratio"] <= 0.8).all()
    assert set(rows["latency_basis"]) == {"latency model"}


@pytest.mark.parametrize("budget", [0, -0.5, 1.5, float("nan")])
def test_a_latency_budget_outside_0_to_1_is_refused(budget):
    with pytest.raises(ValueError, match="above 0 and at most 1|finite"):
        SearchSettings(latency_budget=budget).validate()


def test_search_without_a_calibration_refuses_a_latency_budget_before_any_work(tiny_nemotron, scores, tmp_path):
    from hybridlab.core.errors import UserError

    settings = SearchSettings(target_params="60%", tolerance=0.05, latency_budget=0.6, space=_space(), seq_len=32)
    with pytest.raises(UserError, match="no latency calibration for nemotron_h models .*latency-calibrate"):
        search(tiny_nemotron, None, corpus(), corpus(2000, seed=1), settings, latency_folder=tmp_path)  # no scores


@pytest.mark.parametrize(
    "budget, message", [("1.5", "--latency-budget: must be above 0 and at most 1"), ("0.6", "no latency calibration")]
)
def test_cli_search_latency_budget_errors_are_one_line(tiny_nemotron, tmp_path, capsys, budget, message):
    from hybridlab.cli import main
    from hybridlab.jobs import list_jobs

    tiny_nemotron.save_pretrained(tmp_path / "model")
    np.save(tmp_path / "t.npy", corpus())
    capsys.readouterr()
    argv = ["search", "--model", str(tmp_path / "model"), "--target-params", "60%", "--calib", str(tmp_path / "t.npy")]
    argv += ["--data", str(tmp_path / "t.npy"), "--val", str(tmp_path / "t.npy"), "--seq-len", "32"]
    assert main([*argv, "--latency-budget", budget, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list_jobs().empty and not (tmp_path / "out").exists()


# ---- mixtures of experts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moe_teacher():
    from tests.families.tiny import tiny_model

    model = tiny_model("nemotron_h_moe")
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, 128, (4, 24), generator=generator) for _ in range(2)]
    return model, estimate_importance(model, batches, layer_metric="kl")


@pytest.mark.parametrize("budget", ["total", "active"])
def test_moe_search_space_puts_experts_expert_width_and_dense_axes_at_one_budget(moe_teacher, budget):
    from hybridlab import estimate_sizes
    from hybridlab.model.spec import fewest_experts
    from hybridlab.search.space import moe_axes_of

    model, scores = moe_teacher
    sizes = estimate_sizes(model.config)
    space = SearchSpace(hidden_divisor=8, ffn_divisor=8, head_dim_divisor=1, param_budget=budget)
    target = parse_target("80%", sizes.budget_params(budget))
    found = enumerate_candidates(model.config, scores, target, 0.05, space)
    kinds = {moe_axes_of(c.spec) for c in found}
    assert {"", "experts", "expert width"} <= kinds, kinds  # expert axes (with or without dense ones) or none
    if budget == "total":  # experts alone reach it; in active parameters a token still runs through top-k
        assert any(set(c.spec.to_dict()) == {"num_moe_experts"} for c in found)
    widths = scores_widths(model)
    assert all(c.spec.num_moe_experts is None or c.spec.num_moe_experts >= fewest_experts(widths) for c in found)
    assert all(c.spec.num_moe_experts is None or c.spec.num_moe_experts % widths.moe_n_group == 0 for c in found)
    picked = pick_diverse(found, 8, target)
    assert len({moe_axes_of(c.spec) for c in picked}) == min(len(kinds), 8)  # every kind gets a turn
    for candidate in picked:
        assert abs(candidate.params - target) <= 0.05 * target
        pruned = prune(model, candidate.spec, scores)
        total = sum(p.numel() for p in pruned.parameters())
        counted = estimate_sizes(pruned.config).budget_params(budget)
        assert (total if budget == "total" else counted) == candidate.params, candidate.name
        assert counted == candidate.params  # the pruned model's own config counts the same


def scores_widths(model):
    from hybridlab.families import describe

    return describe(model.config).widths


def test_moe_search_with_shared_expert_and_reachability(moe_teacher):
    from hybridlab.search.space import moe_axes_of

    model, scores = moe_teacher
    total = sum(p.numel() for p in model.parameters())
    space = SearchSpace(hidden_divisor=8, ffn_divisor=8, head_dim_divisor=1, prune_shared_expert=True)
    found = enumerate_candidates(model.config, scores, parse_target("80%", total), 0.05, space)
    assert any("shared expert" in moe_axes_of(c.spec) for c in found)
    assert not any(
        "shared expert" in moe_axes_of(c.spec)
        for c in enumerate_candidates(
            model.config, scores, parse_target("80%", total), 0.05, SearchSpace(hidden_divisor=8, ffn_divisor=8)
        )
    )
    # the floor counts the expert axes: 45% is reachable only by cutting experts as well
    check_reachable(model.config, parse_target("45%", total), 0.02, SearchSpace())
    with pytest.raises(ValueError, match="below the smallest architecture"):
        check_reachable(model.config, parse_target("10%", total), 0.02, SearchSpace())


def test_moe_search_end_to_end_ranks_candidates_that_cut_experts(moe_teacher):
    model, scores = moe_teacher
    settings = SearchSettings(
        target_params="80%",
        tolerance=0.05,
        max_candidates=6,
        top_k=0,
        distill_tokens=0,
        seq_len=32,
        eval_tokens=256,
        measure_latency=False,
        space=SearchSpace(hidden_divisor=8, ffn_divisor=8, head_dim_divisor=1),
    )
    frame = search(model, None, corpus(), corpus(2000, seed=1), settings, scores=scores).candidates
    specs = [json.loads(s) for s in frame["spec"][1:]]
    assert any("num_moe_experts" in s for s in specs) and any("moe_ffn_hidden_size" in s for s in specs)
    assert any(not {"num_moe_experts", "moe_ffn_hidden_size"} & set(s) for s in specs)
    assert frame["zero_shot_loss"].notna().all()
