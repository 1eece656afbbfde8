"""The depth-versus-width page: the search restricted to one strategy, per-window validation losses,
the job chains the page submits (real jobs in a real SQLite store on a tiny model), the three columns
with intervals from those jobs' results, and a study folder opened in the same view (Streamlit AppTest)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest
import torch
import torch.nn.functional as F
from app_fixtures import tiny_model_dir
from streamlit.testing.v1 import AppTest

from app import depth_width as dw
from hybridlab import estimate_importance, jobs
from hybridlab.jobs.worker import run_worker
from hybridlab.measure.evaluate import token_windows, validation_loss
from hybridlab.search.space import SearchSpace, check_reachable, enumerate_candidates, parse_target
from hybridlab.store import SUCCEEDED, job_ref
from hybridlab.study import stats

# -- the library parts the page stands on -------------------------------------------------------------


@pytest.fixture
def scores(tiny_nemotron, token_batches):
    return estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")


def test_search_space_keeps_only_the_asked_strategy(tiny_nemotron, scores):
    total = sum(p.numel() for p in tiny_nemotron.parameters())
    target = parse_target("70%", total)
    base = dict(hidden_divisor=4, ffn_divisor=8, head_dim_divisor=1, max_depth_prune=0.8)
    every = enumerate_candidates(tiny_nemotron.config, scores, target, 0.08, SearchSpace(**base))
    assert {c.strategy for c in every} == {"width", "depth", "mixed"}
    for strategy in ("width", "depth", "mixed"):
        only = enumerate_candidates(tiny_nemotron.config, scores, target, 0.08, SearchSpace(**base, strategy=strategy))
        assert sorted(c.name for c in only) == sorted(c.name for c in every if c.strategy == strategy)
        for candidate in only:  # what each strategy means, read off the spec itself
            spec = candidate.spec.to_dict()
            drops = "drop_layers" in spec
            widths = set(spec) - {"drop_layers", "num_layers"}
            assert (drops, bool(widths)) == {"width": (False, True), "depth": (True, False), "mixed": (True, True)}[
                strategy
            ]
    with pytest.raises(ValueError, match="must be one of"):
        SearchSpace(strategy="deep").validate()


def test_reachability_counts_only_the_asked_strategy(tiny_nemotron):
    total = sum(p.numel() for p in tiny_nemotron.parameters())
    target = parse_target("35%", total)
    check_reachable(tiny_nemotron.config, target, 0.02, SearchSpace(max_depth_prune=0.9))  # depth gets there
    with pytest.raises(ValueError, match="width pruning only"):
        check_reachable(tiny_nemotron.config, target, 0.02, SearchSpace(max_depth_prune=0.9, strategy="width"))


def test_validation_loss_reports_each_windows_loss(tiny_nemotron):
    tokens = np.random.default_rng(1).integers(3, 128, size=5 * 16 + 1 + 3).astype(np.uint16)
    result = validation_loss(tiny_nemotron, tokens, seq_len=16, batch_size=2)
    windows = token_windows(tokens, 16)  # [5, 17]
    with torch.no_grad():
        logits = tiny_nemotron.eval()(input_ids=windows[:, :-1]).logits.float()  # [5, 16, V]
        expected = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").mean(dim=1)  # [5]
    assert result["window_losses"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert np.mean(result["window_losses"]) == pytest.approx(result["loss"], abs=1e-6)


# -- the page, on a tiny model, with every job run for real -------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
PAGE = "pages/depth_vs_width.py"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvw")
    model = tiny_model_dir(root)
    mp = pytest.MonkeyPatch()
    mp.setenv("HYBRIDLAB_WORKSPACE", str(root / "workspace"))
    mp.setattr(jobs, "ensure_worker", lambda *a, **k: None)  # the test drains the queue itself
    yield {"model": model, "root": root}
    mp.undo()


def page(lab, **state):
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["model_ref"] = lab["model"].ref
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def figures(at) -> list:
    return [pio.from_json(chart.proto.spec) for chart in at.get("plotly_chart")]


def labelled(widgets, prefix: str):
    return next(w for w in widgets if w.label.startswith(prefix))


def drain(key: str) -> dict:
    """Run every job of the comparison in this process, as a worker would; nothing else submits anything."""
    request = dw.load(key)
    while dw.active(request):
        run_worker(exit_when_idle=True, poll_s=0.05)
    assert dw.load(key) == request  # the request file is written once, when it is submitted
    return request


@pytest.fixture(scope="module")
def submitted(lab):
    """The page's form submitted for the tiny model at 60% with quick budgets, then every job run."""
    at = page(lab)
    labelled(at.slider, "parameter budget").set_value(60)
    labelled(at.number_input, "tolerance").set_value(10.0)
    labelled(at.checkbox, "quick look").check()
    model = lab["model"]
    for prefix, path in (("calibration", model.calib), ("training", model.val), ("validation", model.val)):
        labelled(at.text_input, prefix).input(path)
    labelled(at.button, "Find and compare").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    key = at.session_state["dvw_key"]
    first = jobs.list_jobs()
    return {"key": key, "first": first, "request": drain(key)}


def test_submitting_scores_first_then_chains_search_prune_distill_eval_bench(lab, submitted):
    model = lab["model"]
    first = submitted["first"]
    # The tiny model had no scores, yet the whole comparison went in with the click: one chain per strategy.
    chain_kinds = ["prune", "eval", "distill", "eval", "bench"]
    assert list(first["kind"]) == ["importance", "eval", "search", "search", "search", *chain_kinds * 3]
    assert list(first["status"]) == ["queued", "queued"] + ["waiting"] * 18
    request = submitted["request"]
    assert request["scores"] is None
    scores_job = request["jobs"]["importance"]
    listing = jobs.list_jobs().set_index("id")
    assert (listing["status"] == SUCCEEDED).all(), listing[["kind", "status", "error"]]
    searches = {s: jobs.get_job(j) for s, j in request["jobs"]["searches"].items()}
    assert set(searches) == {"width", "depth", "mixed"}
    for strategy, search in searches.items():
        spec = search["spec"]
        assert spec["strategy"] == strategy and spec["importance"] == job_ref(scores_job) and spec["top_k"] == 0
        assert search["parents"] == [scores_job]
        assert (spec["max_width_prune"] == 0) == (strategy == "depth")
        assert (spec["max_depth_prune"] == 0) == (strategy == "width")
        chain = {step: jobs.get_job(j) for step, j in request["jobs"]["chains"][strategy].items()}
        best = search["result"]["best"]
        assert best["strategy"] == strategy
        prune = chain["prune"]
        assert prune["spec"]["spec"] == job_ref(search["id"]) and prune["spec"]["importance"] == job_ref(scores_job)
        assert prune["parents"] == [scores_job, search["id"]]
        assert prune["result"]["strategy"] == strategy
        assert prune["result"]["params"] == best["params"]  # the search's pick, pruned again by the same rule
        assert chain["zero_shot"]["parents"] == [prune["id"]] and chain["zero_shot"]["spec"]["model"] == job_ref(
            prune["id"]
        )
        assert chain["distill"]["parents"] == [prune["id"]] and chain["distill"]["spec"]["student"] == job_ref(
            prune["id"]
        )
        for step in ("distilled", "bench"):
            assert chain[step]["parents"] == [chain["distill"]["id"]]
            assert chain[step]["spec"]["model"] == job_ref(chain["distill"]["id"])
        assert chain["bench"]["spec"]["reference"] == model.ref  # timed in pairs with the teacher
        assert chain["bench"]["result"]["reference_model"] == model.ref
        # every loss is on the same windows: the teacher's eval and both of the candidate's
        windows = {len(chain[s]["result"]["tasks"]["val_loss"]["window_losses"]) for s in ("zero_shot", "distilled")}
        assert windows == {1024 // 64}
    assert len(jobs.list_jobs()) == 1 + 3 + 1 + 3 * 5
    assert dw.scores_of(request) == str(dw.workspace_dir() / jobs.get_job(scores_job)["result"]["artifact"])


def metric_values(at) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for metric in at.metric:
        found.setdefault(metric.label, []).append(metric.value)
    return found


def parse_interval(text: str) -> tuple[float, float, float]:
    estimate, low, high = (float(x) for x in re.findall(r"-?\d+\.\d+", text)[:3])
    return estimate, low, high


def test_finished_candidates_show_side_by_side_with_intervals(lab, submitted):
    at = page(lab, dvw_key=submitted["key"])
    assert not at.error, [e.value for e in at.error]
    assert [h.value for h in at.subheader][:3] == ["width only", "depth only", "mixed"]
    values = metric_values(at)
    request = submitted["request"]
    for stage, label in (("zero_shot", "zero-shot loss (95% CI)"), ("distilled", "distilled loss (95% CI)")):
        assert len(values[label]) == 3
        for strategy, text in zip(("width", "depth", "mixed"), values[label]):
            job = jobs.get_job(request["jobs"]["chains"][strategy][stage])
            expected = stats.bootstrap_mean(job["result"]["tasks"]["val_loss"]["window_losses"])
            estimate, low, high = parse_interval(text)
            assert (estimate, low, high) == pytest.approx((expected.estimate, expected.low, expected.high), abs=6e-4)
            assert estimate == pytest.approx(job["result"]["val_loss"], abs=6e-4)
            assert low < estimate < high
    for strategy, text in zip(("width", "depth", "mixed"), values["prefill speedup vs teacher (95% CI)"]):
        bench = jobs.get_job(request["jobs"]["chains"][strategy]["bench"])["result"]["paired"]["prefill"]
        estimate, low, high = parse_interval(text)
        assert (estimate, low, high) == pytest.approx(
            (bench["speedup"], bench["speedup_low"], bench["speedup_high"]), abs=6e-3
        )
    titles = [fig.layout.title.text for fig in figures(at)]
    assert titles.count("Distillation: validation loss") == 3  # the curves, from the distill jobs' metrics
    assert "Loss with 95% bootstrap intervals" in titles
    depth_spec = json.loads(jobs.get_job(request["jobs"]["searches"]["depth"])["result"]["best"]["spec"])
    assert f"depth only: drops {len(depth_spec['drop_layers'])} layers" in titles
    assert "width only: drops 0 layers" in titles
    # the heatmaps cross out what the candidate's own spec prunes (the one kept-units rule, app.overlay)
    crossed = [fig for fig in figures(at) if any(getattr(t, "mode", None) == "markers" for t in fig.data)]
    assert len(crossed) >= 3
    verdict_tables = [frame.value for frame in at.dataframe]
    assert any("verdict" in table.columns and len(table) == 3 for table in verdict_tables)


def test_a_candidate_goes_to_the_pareto_chart(lab, submitted):
    at = page(lab, dvw_key=submitted["key"])
    labelled([b for b in at.button if b.key == "dvw-pareto-depth"], "Show on the Pareto").click().run()
    assert not at.exception, at.exception
    assert at.session_state["pareto_focus"] == f"{submitted['key']}-depth-distilled"
    pareto = page(lab, pareto_focus=at.session_state["pareto_focus"])
    pareto.switch_page("pages/pareto.py").run()
    assert not pareto.exception, pareto.exception
    assert labelled(pareto.selectbox, "second").value == f"{submitted['key']}-depth-distilled"


def test_a_search_that_finds_no_candidate_fails_in_the_worker_and_its_column_says_why(lab, submitted):
    """Submitting checks only the cheap things (so it is quick in the page); whether any candidate lands
    within tolerance is the search's first step, in the worker, and its one line is shown in the column."""
    scores = dw.scores_of(submitted["request"])
    settings = dw.CompareSettings.from_dict({**vars(dw.QUICK), "target": "60%", "tolerance": 0.0001})
    model = lab["model"]
    settings.calib, settings.train_tokens, settings.val_tokens = model.calib, model.val, model.val
    request = dw.start(model.ref, settings, scores)
    assert "importance" not in request["jobs"] and len(dw.job_ids(request)) == 1 + 3 + 3 * 5
    drain(request["key"])
    columns, _ = dw.columns(request)
    search = jobs.get_job(request["jobs"]["searches"]["width"])
    assert search["status"] == "failed" and "no candidate within 0% of" in search["error"]
    width = columns[0]
    assert width.error == f"job {search['id']} (search) failed: {search['error']}" and width.spec is None
    assert all(column.error for column in columns)  # nothing below a failed search ran
    at = page(lab, dvw_key=request["key"])
    assert not at.exception, at.exception
    assert any("no candidate within 0% of" in error.value for error in at.error)


@pytest.fixture(scope="module")
def study_folder(lab):
    """A real study of the tiny model: width vs depth only, two seeds, tiny budgets."""
    from transformers import AutoModelForCausalLM

    from hybridlab.study.run import StudySettings, run_study

    model = lab["model"]
    teacher = AutoModelForCausalLM.from_pretrained(model.ref, dtype=torch.float32)
    tokens = np.load(model.val)
    settings = StudySettings(
        compression=0.4,
        tokens=4 * 4 * 32,
        scratch_tokens=0,
        seq_len=32,
        batch_size=4,
        eval_tokens=512,
        teacher_top_k=16,
        tolerance=0.1,
        max_candidates=2,
        curve_points=2,
        curve_eval_tokens=256,
        latency_repeats=2,  # one round would give no interval to show
        calib_samples=4,
        layer_samples=4,
        seeds=2,
        comparisons=("width_vs_depth",),
    )
    calib = torch.from_numpy(np.load(model.calib)[: 12 * 32].astype(np.int64)).view(12, 32)
    out = lab["root"] / "study"
    run_study(teacher, None, tokens[:6000], tokens[6000:], calib, settings, out)
    return out


def test_a_study_folder_opens_in_the_same_view(lab, study_folder):
    import pandas as pd

    at = page(lab)
    at.radio[0].set_value("a study's arms").run()
    labelled(at.text_input, "study folder").input(str(lab["root"] / "nothing-here")).run()
    assert any("no study results" in e.value for e in at.error)  # one line, no traceback
    labelled(at.text_input, "study folder").input(str(study_folder)).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert [h.value for h in at.subheader][:2] == ["width only", "depth only"]
    results = pd.read_csv(study_folder / "results.csv").set_index("arm")
    values = metric_values(at)
    for arm, text in zip(("width-only", "depth-only"), values["distilled loss (95% CI, 2 seeds)"]):
        row = results.loc[arm]
        assert parse_interval(text) == pytest.approx(
            (row["distilled_loss"], row["distilled_loss_low"], row["distilled_loss_high"]), abs=6e-4
        )
    for arm, text in zip(("width-only", "depth-only"), values["prefill speedup vs teacher (95% CI)"]):
        row = results.loc[arm]  # the study's paired speedup and its interval, as a bench job's
        assert parse_interval(text) == pytest.approx(
            (row["speedup"], row["speedup_low"], row["speedup_high"]), abs=6e-3
        )
    titles = [fig.layout.title.text for fig in figures(at)]
    assert titles.count("Distillation: validation loss over 2 seeds") == 2  # the study's band over seeds
    assert any("verdict" in frame.value.columns for frame in at.dataframe)  # paired by seed and window


# -- a study folder's paired speedups (results.csv written by hand: what each study version records) ----

STUDY_COLUMNS = "comparison,arm,run,spec,params,zero_shot_loss,distilled_loss,seeds,latency_ms"


def write_results(folder: Path, header: str, rows: list[str], settings: dict | None = None) -> Path:
    folder.mkdir()
    (folder / "results.csv").write_text("\n".join([header, *rows]) + "\n")
    if settings is not None:
        (folder / "study.json").write_text(json.dumps({"settings": settings, "status": "done"}))
    return folder


def test_a_study_arm_carries_its_paired_speedup_interval(tmp_path):
    from app.study_view import open_study

    folder = write_results(
        tmp_path / "study",
        STUDY_COLUMNS + ",speedup,speedup_low,speedup_high",
        [
            "reference,teacher,teacher,{},1000,5.1,,1,40.0,1.0,1.0,1.0",
            'width_vs_depth,width-only,w,"{""hidden_size"": 48}",500,5.6,5.3,2,26.0,1.52,1.41,1.64',
            'width_vs_depth,depth-only,d,"{""num_layers"": 3}",510,6.2,5.5,2,21.0,1.93,1.87,1.99',
            'width_vs_depth,mixed,m,"{""num_layers"": 4}",505,6.0,5.4,2,23.0,1.74,1.74,1.74',
        ],
        settings={"seq_len": 32, "latency_repeats": 5},
    )
    view = open_study(folder)
    assert [c.strategy for c in view.columns] == ["width", "depth", "mixed"]
    width, depth, mixed = view.columns
    # the study's paired interval, not the ratio of the two medians (40 / 26 = 1.538...)
    assert width.speedup == (1.52, 1.41, 1.64) and depth.speedup == (1.93, 1.87, 1.99)
    assert mixed.speedup == (1.74, None, None)  # one round: an interval of zero width is none
    assert width.speedup_note == "prefill of 32 tokens, 5 rounds, paired by the study"


def test_a_study_without_speedup_columns_still_opens_with_the_latency_ratio(tmp_path):
    from app.study_view import open_study

    folder = write_results(
        tmp_path / "older",
        STUDY_COLUMNS,
        [
            "reference,teacher,teacher,{},1000,5.1,,1,40.0",
            'width_vs_depth,width-only,w,"{""hidden_size"": 48}",500,5.6,5.3,2,25.0',
            'width_vs_depth,depth-only,d,"{""num_layers"": 3}",510,6.2,5.5,2,',
        ],
    )
    width, depth = open_study(folder).columns
    assert width.speedup == (1.6, None, None) and "no interval" in width.speedup_note
    assert depth.speedup is None  # an arm that was never timed
    assert width.distilled.estimate == 5.3 and np.isnan(width.distilled.low)  # no loss intervals then either
