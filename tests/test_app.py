"""The dashboard: every page under Streamlit's AppTest on a tiny real model and a real
store, plus the plain view helpers (planner arithmetic, overlay, comparison, charts)."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio
import pytest
from app_fixtures import demo_shipped, tiny_model_dir

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
SILENT = lambda *args: None  # noqa: E731


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny model with importance, two candidates (width, depth), their evaluations and
    benchmarks, and the teacher's, all made by real jobs in a real store."""
    from hybridlab.jobs import run_sync

    root = tmp_path_factory.mktemp("lab")
    model = tiny_model_dir(root)
    workspace = root / "workspace"
    mp = pytest.MonkeyPatch()
    mp.setenv("HYBRIDLAB_WORKSPACE", str(workspace))
    imp = run_sync(
        "importance", {"model": model.ref, "calib": model.calib, "samples": 8, "seq_len": 32}, progress=SILENT
    )
    candidates = {}
    for name, spec in (("narrow", {"mamba_num_heads": 4, "hidden_size": 48}), ("shallow", {"num_layers": 4})):
        job = run_sync(
            "prune",
            {"model": model.ref, "spec": spec, "importance": imp["result"]["run_id"], "name": name},
            progress=SILENT,
        )
        candidates[name] = job["result"]["model_path"]
    for path in (model.ref, *candidates.values()):
        run_sync("eval", {"model": path, "val_tokens": model.val, "max_tokens": 1024, "seq_len": 32}, progress=SILENT)
    run_sync("bench", {"model": model.ref, "seq_len": 16, "new_tokens": 2, "repeats": 1, "warmup": 0}, progress=SILENT)
    yield {
        "model": model,
        "workspace": workspace,
        "scores": str(workspace / imp["result"]["artifact"]),
        "candidates": candidates,
    }
    mp.undo()


def app(lab, page: str | None = None, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(MAIN, default_timeout=120)
    at.session_state["model_ref"] = lab["model"].ref
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def figures(at) -> list:
    return [pio.from_json(chart.proto.spec) for chart in at.get("plotly_chart")]


def values(data) -> list:
    """A plotly array from JSON: typed arrays arrive as {"dtype", "bdata"[, "shape"]}."""
    if isinstance(data, dict) and "bdata" in data:
        array = np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
        shape = data.get("shape")
        return array.reshape([int(n) for n in str(shape).split(",")] if shape else -1).tolist()
    return list(data)


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def config_of(ref: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(ref)


# ---- Model -----------------------------------------------------------------------------------


def test_model_page_bad_folder_shows_error_not_traceback(lab, tmp_path):
    at = app(lab, "model")
    at.radio[0].set_value("local folder").run()
    for bad, message in (
        (tmp_path / "missing", "neither 'demo' nor an existing directory"),
        (tmp_path, "no config.json"),
        ("job:3", "names a job's model, not a folder"),
    ):
        at.text_input[0].input(str(bad)).run()
        button(at, "Use this folder").click().run()
        assert not at.exception
        assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_model_page_shows_exact_parameters_pattern_and_config(lab):
    from hybridlab import load_model

    at = app(lab, "model")
    model, _ = load_model(lab["model"].ref)
    actual = sum(p.numel() for p in model.parameters())
    assert metric(at, "parameters") == f"{actual / 1e6:,.2f} M"
    assert metric(at, "layers") == "6"
    strip, by_kind = figures(at)[:2]
    kinds = {trace.name: values(trace.x) for trace in strip.data}
    assert kinds == {"mamba": [0, 3, 5], "mlp": [1, 4], "attention": [2]}  # pattern M-*M-M
    assert sum(values(by_kind.data[0].y)) == actual
    assert at.json and "hidden_size" in at.json[0].value


@pytest.mark.skipif(not demo_shipped(), reason="the demo teacher is not shipped in this checkout")
def test_app_opens_on_the_demo_teacher():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(MAIN, default_timeout=120).run()
    assert not at.exception and not at.error
    assert at.session_state["model_ref"] == "demo"
    assert any(m.label == "parameters" for m in at.metric)


def test_a_new_session_opens_the_model_its_url_names(lab, tmp_path):
    """A reload or reconnect starts a new session: ?model= brings the chosen model back (and names it
    on every run after a page switch), and a link to no model is one warning, then the usual default."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(MAIN, default_timeout=120)
    at.query_params["model"] = lab["model"].ref
    at.run()
    assert not at.exception and not at.warning
    assert at.session_state["model_ref"] == lab["model"].ref
    at.switch_page("pages/planner.py").run()
    assert at.query_params["model"] == lab["model"].ref

    at = AppTest.from_file(MAIN, default_timeout=120)
    at.query_params["model"] = str(tmp_path / "gone")
    at.run()
    assert not at.exception
    (warning,) = at.warning
    assert (
        warning.value.startswith("The link's model could not be opened: ")
        and "neither 'demo' nor an existing directory" in warning.value
    )
    if demo_shipped():
        assert at.session_state["model_ref"] == "demo"
    at.run()
    assert not at.warning  # said once


# ---- Importance ---------------------------------------------------------------------------


def test_importance_page_loads_a_run_and_draws_every_heatmap(lab):
    at = app(lab, "importance")
    button(at, "Load run").click().run()
    assert not at.exception and not at.error
    titles = [f.layout.title.text for f in figures(at)]
    assert titles[:5] == ["Mamba heads", "Mamba head channels", "Attention heads", "FFN neurons", "Embedding channels"]
    assert titles[5].startswith("Layer importance")
    mamba_heads = figures(at)[0]
    assert np.asarray(values(mamba_heads.data[0].z)).shape == (3, 8)  # 3 Mamba layers x 8 heads
    assert [s["x0"] for s in mamba_heads.layout.shapes] == [3.5]  # the boundary between the 2 groups


def test_importance_overlay_crosses_out_what_the_plan_prunes(lab):
    at = app(lab, "importance", scores_dir=lab["scores"], plan_spec={"mamba_num_heads": 4, "ffn_hidden_size": 40})
    heads, _, _, ffn = figures(at)[:4]
    pruned = next(t for t in heads.data if t.name == "pruned by plan")
    assert len(values(pruned.x)) == 3 * 4  # 4 of 8 heads in each of 3 Mamba layers
    for layer in ("L0", "L3", "L5"):  # 2 of 4 in each group: group-aware
        cols = [x for x, y in zip(values(pruned.x), values(pruned.y)) if y == layer]
        assert sum(c < 4 for c in cols) == 2 and sum(c >= 4 for c in cols) == 2
    crossed = next(t for t in ffn.data if t.name == "pruned by plan")
    assert sorted(set(values(crossed.x))) == list(range(40, 96))  # sorted per layer: the tail goes


def test_importance_run_for_a_local_model_without_calibration_is_refused(lab):
    at = app(lab, "importance")
    next(b for b in at.button if b.label == "Run importance").click().run()
    assert not at.exception
    assert any("'calib' is required" in e.value for e in at.error), [e.value for e in at.error]


def test_scores_of_another_model_are_refused(lab, tmp_path):
    from hybridlab import ImportanceScores

    scores = ImportanceScores.load(lab["scores"])
    scores.layer_kinds = tuple(reversed(scores.layer_kinds))
    scores.save(tmp_path / "other")
    at = app(lab, "importance", scores_dir=str(tmp_path / "other"))
    assert any("different model" in e.value for e in at.error)


# ---- Prune planner --------------------------------------------------------------------------


def test_planner_sizes_follow_the_controls_exactly(lab):
    from hybridlab import PruneSpec, estimate_sizes

    ref = lab["model"].ref
    at = app(lab, "planner", scores_dir=lab["scores"])
    assert metric(at, "speedup (FLOP ratio)") == "1.00x"  # no latency calibration in this workspace
    assert not any(m.label.startswith("active") for m in at.metric)  # a dense model: one parameter count
    next(s for s in at.slider if s.label.startswith("Mamba heads")).set_value(4).run()
    next(s for s in at.slider if s.label == "FFN neurons").set_value(48).run()
    expected_spec = PruneSpec(mamba_num_heads=4, ffn_hidden_size=48)
    expected = estimate_sizes(config_of(ref), expected_spec)
    assert metric(at, "parameters") == f"{expected.params / 1e6:,.3f} M"
    # the speedup is of a 256-token prefill (app.planner.plan_summary's speed_seq_len)
    flops_at = lambda spec: estimate_sizes(config_of(ref), spec, seq_len=256).flops_per_token  # noqa: E731
    assert metric(at, "speedup (FLOP ratio)") == f"{flops_at(None) / flops_at(expected_spec):.2f}x"
    assert at.session_state["plan_spec"] == {"mamba_num_heads": 4, "ffn_hidden_size": 48}


def test_planner_depth_plan_drops_the_least_important_layers(lab):
    from hybridlab import ImportanceScores

    at = app(lab, "planner", scores_dir=lab["scores"])
    next(s for s in at.slider if s.label == "layers").set_value(4).run()
    strip = figures(at)[0]
    dropped = next(t for t in strip.data if t.name == "dropped by plan")
    least = ImportanceScores.load(lab["scores"]).layers["kl"].argsort()[:2].tolist()
    assert sorted(values(dropped.x)) == sorted(least)


def test_planner_preset_fills_the_controls(lab):
    at = app(lab, "planner")
    at.selectbox[0].set_value("depth only").run()
    button(at, "Apply preset").click().run()
    values = {s.label: s.value for s in at.slider}
    assert values["layers"] < 6 and values["hidden size"] == 64 and values["FFN neurons"] == 96


def test_prune_and_evaluate_without_validation_tokens_is_refused(lab):
    at = app(lab, "planner", scores_dir=lab["scores"])
    next(s for s in at.slider if s.label.startswith("Mamba heads")).set_value(6).run()
    at.button(key="FormSubmitter:prune-Prune and evaluate").click().run()
    assert not at.exception
    assert any("needs validation tokens" in e.value for e in at.error)


def test_prune_and_evaluate_submits_the_whole_chain_to_the_engine_at_once(lab, monkeypatch):
    from hybridlab import jobs

    started = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda *a, **k: started.append(1))  # no worker: the jobs stay put
    before = set(jobs.list_jobs()["id"])
    at = app(lab, "planner", scores_dir=lab["scores"])
    next(s for s in at.slider if s.label.startswith("Mamba heads")).set_value(6).run()
    next(t for t in at.text_input if t.label == "validation tokens file (.npy)").input(lab["model"].val)
    at.button(key="FormSubmitter:prune-Prune and evaluate").click().run()  # form values go with the submit
    assert not at.exception and not at.error, [e.value for e in at.error]
    new = [jobs.get_job(j) for j in sorted(set(jobs.list_jobs()["id"]) - before)]
    prune_id = new[0]["id"]
    assert [(j["kind"], j["status"], j["parents"]) for j in new] == [
        ("prune", "queued", []),
        ("eval", "waiting", [prune_id]),
        ("bench", "waiting", [prune_id]),
    ]  # the teacher has its loss already (the lab evaluated it): no teacher jobs
    assert new[1]["spec"]["model"] == new[2]["spec"]["model"] == f"job:{prune_id}"
    assert started == [1]
    assert "job_chains" not in at.session_state  # nothing left for the browser session to drive
    assert jobs.cancel(prune_id) == "cancelled"  # and the chain ends with it
    assert {jobs.get_job(j["id"])["status"] for j in new} == {"cancelled"}


# ---- Distill, Pareto, Jobs -----------------------------------------------------------------


def test_pareto_page_plots_teacher_and_candidates_with_their_losses(lab):
    from hybridlab import jobs

    at = app(lab, "pareto")
    pareto, depth_width = figures(at)[:2]
    evaluations = jobs.list_evaluations()
    loss = dict(zip(evaluations["model_ref"], evaluations["val_loss"]))
    by_name = {t.name: t for t in pareto.data}
    assert values(by_name["teacher"].y) == [pytest.approx(loss[lab["model"].ref])]
    assert values(by_name["width"].y) == [pytest.approx(loss[lab["candidates"]["narrow"]])]
    assert values(by_name["depth"].y) == [pytest.approx(loss[lab["candidates"]["shallow"]])]
    assert {t.name for t in depth_width.data} == {"teacher", "width", "depth"}
    at.selectbox[1].set_value("shallow").run()
    assert not at.exception
    arch = at.dataframe[1].value
    assert arch.loc["layers", "shallow"] == "4" and arch.loc["layers", "tiny-model"] == "6"


def test_distill_page_runs_curves_of_a_real_distillation(lab):
    from hybridlab import jobs
    from hybridlab.jobs import run_sync

    model = lab["model"]
    job = run_sync(
        "distill",
        {
            "student": lab["candidates"]["narrow"],
            "teacher": model.ref,
            "tokens": 2048,
            "seq_len": 32,
            "batch_size": 4,
            "train_tokens": model.calib,
            "val_tokens": model.val,
        },
        progress=SILENT,
    )
    assert job["status"] == "succeeded"
    at = app(lab, "distill", distill_job=job["id"])
    assert not at.error
    names = set(jobs.job_metrics(job["id"])["name"])
    plotted = {t.name for f in figures(at) for t in f.data}
    assert plotted == names and any("val" in n for n in names)


def test_jobs_page_lists_and_cancels(lab):
    from hybridlab import jobs

    queued = jobs.submit("eval", {"model": lab["model"].ref, "val_tokens": lab["model"].val})  # no worker: stays queued
    at = app(lab, "jobs")
    assert not at.exception
    listed = at.dataframe[0].value
    assert queued in set(listed["id"]) and "succeeded" in set(listed["status"])
    at.selectbox[0].set_value(queued).run()
    button(at, "Cancel").click().run()
    assert jobs.get_job(queued)["status"] == "cancelled"


# ---- plain helpers ----------------------------------------------------------------------------


def test_overlay_kept_column_is_what_kept_units_keeps(tiny_nemotron, token_batches):
    from app.overlay import units_frame
    from hybridlab import PruneSpec, estimate_importance
    from hybridlab.compression.kept import kept_units

    scores = estimate_importance(tiny_nemotron, token_batches, layer_metric="kl")
    spec = PruneSpec(hidden_size=24, ffn_hidden_size=20, num_attention_heads=2, mamba_num_heads=4, num_layers=4)
    frame = units_frame(scores, tiny_nemotron.config, spec)
    kept = kept_units(scores, tiny_nemotron.config, spec)
    assert len(kept.dropped_layers) == 2  # so the units of dropped layers must all read as pruned
    layer_rows = frame[frame.axis.str.startswith("layer_")]
    assert set(layer_rows.loc[~layer_rows.kept, "layer"]) == set(kept.dropped_layers)
    for (layer, axis), rows in frame[~frame.axis.str.startswith("layer_")].groupby(["layer", "axis"]):
        units = kept.units(axis, layer)
        expected = [] if layer in kept.dropped_layers else units.tolist()
        assert sorted(rows.loc[rows.kept, "index"]) == expected, (layer, axis)
    assert units_frame(scores, tiny_nemotron.config, None)["kept"].all()


def test_preset_specs_land_near_the_target(lab):
    from app.planner import PRESETS, preset_spec
    from hybridlab import estimate_sizes

    config = config_of(lab["model"].ref)
    total = estimate_sizes(config).params
    for preset in PRESETS:
        spec = preset_spec(config, preset, 0.7)
        keys = set(spec.to_dict())
        assert abs(estimate_sizes(config, spec).params / total - 0.7) < 0.08, preset
        assert (keys == {"num_layers"}) == (preset == "depth only")
        assert "num_layers" not in keys or preset != "width only"
    with pytest.raises(ValueError, match="between 0% and 100%"):
        preset_spec(config, "width only", 1.5)


def test_pareto_front_keeps_only_undominated_points():
    from app.charts import pareto_front

    frame = pd.DataFrame({"x": [1, 2, 3, 4, 2.5], "y": [5, 3, 4, 1, 3.5]})
    assert pareto_front(frame, "x", "y")[["x", "y"]].values.tolist() == [[1, 5], [2, 3], [4, 1]]


def test_comparison_estimates_latency_from_flops_when_not_measured():
    from app.results import comparison

    candidates = pd.DataFrame(
        [
            {
                "id": 1,
                "name": "c",
                "model_ref": "demo",
                "status": "succeeded",
                "strategy": "width",
                "model_path": "/m/c",
                "params": 50,
                "param_ratio": 0.5,
                "flops_per_token": 40.0,
                "flops_ratio": 0.4,
                "spec.spec.hidden_size": 8,
            }
        ]
    )
    evaluations = pd.DataFrame(
        [
            {"id": 1, "model_ref": "/m/c", "status": "succeeded", "val_loss": 3.0},
            {"id": 2, "model_ref": "demo", "status": "succeeded", "val_loss": 2.0},
        ]
    )
    benchmarks = pd.DataFrame([{"id": 1, "model_ref": "demo", "status": "succeeded", "prefill_ms": 10.0}])
    table = comparison(
        "demo", {"params": 100, "flops_per_token": 100.0}, candidates, evaluations, benchmarks, pd.DataFrame()
    )
    assert table["val_loss"].tolist() == [2.0, 3.0]
    assert table["latency_ms"].tolist() == [10.0, pytest.approx(4.0)]
    assert table["latency_source"].tolist() == ["measured", "estimated"]
    assert table.loc[1, "spec"] == {"hidden_size": 8}
    twice = comparison(
        "demo",
        {"params": 100, "flops_per_token": 100.0},
        pd.concat([candidates, candidates.assign(id=2)]),
        evaluations,
        benchmarks,
        pd.DataFrame(),
    )
    assert twice["name"].is_unique and len(twice) == 3
