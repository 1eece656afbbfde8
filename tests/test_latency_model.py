"""The latency model: its fit, storage, calibration on a real tiny model, and where it is shown (never timings)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybridlab import PruneSpec, estimate_sizes
from hybridlab.families import describe
from hybridlab.measure.latency_model import (
    REST,
    LatencyModel,
    LinearFit,
    find_latency_model,
    fit_linear,
    layer_features,
    load_latency_model,
    predicted_speedup,
    rest_features,
    save_latency_model,
    speedup_estimate,
)
from hybridlab.model.sizes import planned_widths


def known_model(config, **overrides) -> LatencyModel:
    """A latency model with chosen coefficients for every layer kind of `config`'s family."""
    widths = describe(config).widths
    coef = lambda kind: {f: 1e-9 * (i + 1) for i, f in enumerate(layer_features(kind, widths, 1, 1))}  # noqa: E731
    values = dict(
        family=describe(config).family.name,
        device="cpu",
        device_name="cpu",
        dtype="float32",
        threads=1,
        layers={kind: LinearFit(coef(kind)) for kind in set(widths.layer_kinds)},
        rest=LinearFit({"calls": 1e-4, "layers": 1e-5, "hidden": 1e-9, "lm_head": 1e-10}),
    )
    return LatencyModel(**{**values, **overrides})


def test_fit_recovers_known_coefficients_from_synthetic_timings():
    rng = np.random.default_rng(0)
    names = ["calls", "mamba.matmul", "mamba.state", "mamba.heads"]
    truth = {"calls": 2e-3, "mamba.matmul": 3e-10, "mamba.state": 5e-9, "mamba.heads": 0.0}
    rows = [{"calls": 1.0, **{n: float(v) for n, v in zip(names[1:], rng.uniform(1e5, 1e8, 3))}} for _ in range(12)]
    times = [sum(truth[n] * row[n] for n in names) for row in rows]
    fit = fit_linear(rows, times)
    assert fit.coef == pytest.approx(truth, rel=1e-6, abs=1e-15)
    assert fit.predict(rows[0]) == pytest.approx(times[0])


def test_fit_is_non_negative_and_refuses_mismatched_lengths():
    fit = fit_linear([{"calls": 1.0, "x": 1.0}, {"calls": 1.0, "x": 2.0}, {"calls": 1.0, "x": 3.0}], [3.0, 2.0, 1.0])
    assert min(fit.coef.values()) >= 0  # a falling trend cannot make a negative cost
    with pytest.raises(ValueError, match="as many timings"):
        fit_linear([{"calls": 1.0}], [1.0, 2.0])


def test_prediction_is_the_sum_over_layers_plus_the_rest(tiny_nemotron):
    latency = known_model(tiny_nemotron)
    widths = describe(tiny_nemotron).widths
    expected = sum(latency.layers[k].predict(layer_features(k, widths, 64, 64)) for k in widths.layer_kinds)
    expected += latency.rest.predict(rest_features(widths, 1, 64))
    assert latency.predict_ms(widths, 64)["total_ms"] == pytest.approx(1000 * expected)
    spec = PruneSpec(drop_layers=(0, 4))
    plan = latency.predict_ms(planned_widths(tiny_nemotron, spec), 64)["total_ms"]
    got = predicted_speedup(latency, tiny_nemotron, spec, seq_len=64)
    assert got["speedup"] == pytest.approx(1000 * expected / plan) and got["source"] == latency.label


def test_save_load_round_trip_and_lookup_by_device_dtype_threads(tiny_nemotron, tmp_path):
    latency = known_model(tiny_nemotron)
    path = save_latency_model(latency, tmp_path)
    assert path.name == "cpu-float32-t1.json"
    loaded = load_latency_model(path, latency.family)
    assert loaded.to_dict() == latency.to_dict()
    widths = describe(tiny_nemotron).widths
    assert loaded.predict_ms(widths, 32) == latency.predict_ms(widths, 32)
    assert find_latency_model(tiny_nemotron, "cpu", "float32", 1, tmp_path).to_dict() == latency.to_dict()
    assert find_latency_model(tiny_nemotron, "cpu", "bfloat16", None, tmp_path) is None
    save_latency_model(known_model(tiny_nemotron, dtype="bfloat16"), tmp_path)  # its own file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-bfloat16-t1.json", "cpu-float32-t1.json"]
    assert find_latency_model(tiny_nemotron, dtype="bfloat16", folder=tmp_path).dtype == "bfloat16"


def test_an_unreadable_calibration_is_one_clear_line(tiny_nemotron, tmp_path):
    from hybridlab.core.errors import UserError

    (tmp_path / "cpu-float32-t1.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read.*re-calibrate"):
        load_latency_model(tmp_path / "cpu-float32-t1.json", "nemotron_h")
    assert find_latency_model(tiny_nemotron, folder=tmp_path) is None  # lookups skip it


def test_calibration_times_every_layer_kind_of_a_real_model(tiny_nemotron):
    from hybridlab.measure.latency_calibration import CalibrationSettings, calibrate, width_points

    points = width_points(describe(tiny_nemotron))
    assert len(points) >= 4 and all(p.drop_layers or p.num_layers is None for p in points)
    seen = []
    latency = calibrate(
        tiny_nemotron,
        CalibrationSettings(seq_lens=[16, 8], repeats=1, warmup=0),
        progress=lambda f, m, x: seen.append(f),
    )
    kinds = set(describe(tiny_nemotron).widths.layer_kinds)
    assert set(latency.layers) == kinds and latency.seq_lens == [8, 16]
    assert {p["kind"] for p in latency.points} == kinds | {REST}
    assert (latency.device, latency.dtype, latency.threads) == ("cpu", "float32", 1)
    assert "NemotronH" in latency.mamba_forward and latency.fast_mamba is False
    assert latency.predict_ms(describe(tiny_nemotron).widths, 16)["total_ms"] > 0
    assert seen and seen[-1] == pytest.approx(1.0)
    json.dumps(latency.to_dict())


def test_the_planner_shows_a_predicted_speedup_with_a_calibration(tiny_nemotron, tmp_path):
    from app.planner import plan_summary

    spec = PruneSpec(drop_layers=(0, 4))
    without = plan_summary(tiny_nemotron.config, spec, latency_folder=tmp_path)
    assert without["speedup_basis"] == "FLOPs" and "no latency calibration" in without["speedup_label"]
    flops = lambda s: estimate_sizes(tiny_nemotron.config, s, seq_len=256).flops_per_token  # noqa: E731
    assert without["speedup"] == pytest.approx(flops(None) / flops(spec))  # of a 256-token prefill
    save_latency_model(known_model(tiny_nemotron), tmp_path)
    summary = plan_summary(tiny_nemotron.config, spec, latency_folder=tmp_path)
    expected = predicted_speedup(known_model(tiny_nemotron), tiny_nemotron, spec, seq_len=256)["speedup"]
    assert summary["speedup_basis"] == "latency model" and summary["speedup"] == pytest.approx(expected)
    assert "calibrated on cpu (float32, 1 threads" in summary["speedup_label"]


def test_cli_plan_prints_the_predicted_speedup_and_its_calibration(tiny_nemotron, tmp_path, capsys):
    from hybridlab.cli import main
    from hybridlab.measure.latency_model import calibration_dir

    tiny_nemotron.save_pretrained(tmp_path / "model")
    argv = ["plan", "--model", str(tmp_path / "model"), "--num-layers", "4", "--seq-len", "64"]
    assert main(argv) == 0
    assert "speedup (FLOPs):" in capsys.readouterr().out
    latency = known_model(tiny_nemotron)
    save_latency_model(latency, calibration_dir())  # the test's own workspace
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("predicted speedup"))
    expected = speedup_estimate(tiny_nemotron.config, PruneSpec(num_layers=4), seq_len=64, latency=latency)["speedup"]
    assert f"{expected:.2f}x" in line and latency.label in line
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["speedup"]["basis"] == "latency model"


def test_cli_latency_calibrate_records_a_job_and_saves_the_fit(tiny_nemotron, tmp_path, capsys):
    from hybridlab.cli import main
    from hybridlab.jobs import list_jobs

    tiny_nemotron.save_pretrained(tmp_path / "model")
    argv = ["latency-calibrate", "--model", str(tmp_path / "model"), "--seq-lens", "8", "--repeats", "1"]
    assert main([*argv, "--warmup", "0", "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "nemotron_h latency model calibrated on cpu (float32, 1 threads" in out
    saved = out.strip().splitlines()[-1].removeprefix("saved to ")
    assert find_latency_model(tiny_nemotron, folder=__import__("pathlib").Path(saved).parent) is not None
    assert list(list_jobs()["kind"]) == ["latency-calibrate"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seq-lens", "0"], "--seq-lens: must be greater than 0"),
        (["--seq-lens", "a,b"], "cannot read sequence lengths"),
        (["--threads", "0"], "--threads: must be greater than 0"),
        (["--repeats", "0"], "--repeats: must be greater than 0"),
    ],
)
def test_cli_latency_calibrate_bad_input_is_one_line(tiny_nemotron, tmp_path, capsys, extra, message):
    from hybridlab.cli import main
    from hybridlab.jobs import list_jobs

    tiny_nemotron.save_pretrained(tmp_path / "model")
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["latency-calibrate", "--model", str(tmp_path / "model"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list_jobs().empty


def test_calibration_follows_the_models_mamba_path(tiny_nemotron):
    """Models built for timing run the fast CPU Mamba path exactly when the calibrated model does."""
    fast = pytest.importorskip("hybridlab.model.fast_mamba")
    from hybridlab.measure.latency_calibration import build_like, fast_mamba_on, width_points

    description = describe(tiny_nemotron)
    fast.use_fast_mamba(tiny_nemotron, enabled=False)
    assert not fast_mamba_on(build_like(tiny_nemotron, description, width_points(description)[0]))
    if fast.use_fast_mamba(tiny_nemotron) == 0:
        pytest.skip("this transformers' NemotronH mixer has no kernel functions the fast path replaces")
    built = build_like(tiny_nemotron, description, width_points(description)[1])
    assert fast_mamba_on(tiny_nemotron) and fast_mamba_on(built)


def test_calibration_stops_adding_rounds_after_its_time_budget(tiny_nemotron):
    from hybridlab.measure.latency_calibration import MIN_ROUNDS, CalibrationSettings, calibrate

    settings = CalibrationSettings(seq_lens=[8], repeats=50, warmup=0, max_seconds=1e-6)
    assert calibrate(tiny_nemotron, settings).rounds == MIN_ROUNDS  # the budget was spent before round 4
    assert calibrate(tiny_nemotron, CalibrationSettings(seq_lens=[8], repeats=2, warmup=0)).rounds == 2


def test_a_mixture_of_experts_costs_its_active_path_plus_each_routed_expert():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from families.tiny import tiny_config

    from hybridlab.families import MOE
    from hybridlab.measure.latency_calibration import width_points
    from hybridlab.measure.latency_model import mixer_features
    from hybridlab.model.sizes import active_moe_params

    description = describe(tiny_config("nemotron_h_moe"))
    w = description.widths
    full = mixer_features(MOE, w, 10, 10)
    assert full["moe.matmul"] == 10 * active_moe_params(w) and full["moe.experts"] == w.num_moe_experts
    fewer = mixer_features(MOE, planned_widths(description, PruneSpec(num_moe_experts=4)), 10, 10)
    assert fewer["moe.experts"] == 4 and fewer["moe.matmul"] < full["moe.matmul"]  # the router's rows
    narrower = mixer_features(MOE, planned_widths(description, PruneSpec(moe_ffn_hidden_size=8)), 10, 10)
    assert narrower["moe.experts"] == w.num_moe_experts and narrower["moe.matmul"] < fewer["moe.matmul"]
    # the calibration varies the expert axes, so the fit can tell them apart
    timed = {axis for spec in width_points(description) for axis, value in spec.to_dict().items() if value}
    assert {"num_moe_experts", "moe_ffn_hidden_size"} <= timed
