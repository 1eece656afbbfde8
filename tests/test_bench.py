"""Latency benchmark: schema, sane values, memory measurement and input checks (never timings)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from hybridlab.measure.bench import measure_latency, measure_paired, peak_memory

KEYS = {
    "device",
    "device_name",
    "dtype",
    "torch_threads",
    "mamba_kernels",
    "batch_size",
    "seq_len",
    "new_tokens",
    "repeats",
    "warmup",
    "params",
    "weights_bytes",
    "prefill_ms",
    "prefill_ms_runs",
    "prefill_tokens_per_s",
    "generate_ms",
    "decode_ms_per_step",
    "decode_tokens_per_s",
    "peak_memory_bytes",
    "peak_memory_delta_bytes",
    "memory_measure",
    "measured_state_bytes",
    "analytic",
}


def check_report(report: dict, model) -> None:
    assert KEYS <= set(report)
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert report["weights_bytes"] == 4 * report["params"]
    assert len(report["prefill_ms_runs"]) == report["repeats"]
    assert report["prefill_ms"] > 0 and report["generate_ms"] > 0 and report["prefill_tokens_per_s"] > 0
    assert report["decode_tokens_per_s"] is None or report["decode_tokens_per_s"] > 0
    assert report["mamba_kernels"]["in_use"] is False  # never on the CPU
    analytic = report["analytic"]
    assert analytic["params"] == report["params"]  # the engine core's count is exact
    assert analytic["flops_per_token"] > 0 and analytic["state_bytes"] > 0
    assert analytic["seq_len"] == report["seq_len"] and analytic["batch_size"] == report["batch_size"]
    # the cache transformers really holds after prefill is what the engine core predicts
    assert report["measured_state_bytes"] == analytic["state_bytes"]


def test_measure_latency_reports_every_field(tiny_nemotron):
    tiny_nemotron.train()
    report = measure_latency(tiny_nemotron, batch_size=2, seq_len=16, new_tokens=4, repeats=2, warmup=1)
    assert tiny_nemotron.training  # mode restored
    check_report(report, tiny_nemotron)
    assert (report["batch_size"], report["seq_len"], report["new_tokens"]) == (2, 16, 4)
    json.dumps(report)  # serialisable as is


def test_measure_latency_works_for_pure_mamba2(tiny_mamba2):
    report = measure_latency(tiny_mamba2, batch_size=1, seq_len=8, new_tokens=3, repeats=1, warmup=0)
    check_report(report, tiny_mamba2)


def test_progress_reaches_one(tiny_nemotron):
    seen = []
    measure_latency(
        tiny_nemotron,
        seq_len=8,
        new_tokens=2,
        repeats=1,
        warmup=0,
        progress=lambda fraction, message, metrics: seen.append(fraction),
    )
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident-set peak is read from /proc")
def test_cpu_peak_memory_sees_a_64_mib_allocation():
    def allocate():
        block = torch.ones(16 * 2**20)  # 64 MiB, every page written
        return float(block[-1])

    memory = peak_memory(allocate, torch.device("cpu"))
    if memory["peak_memory_bytes"] is None:
        pytest.skip("this kernel does not allow resetting the resident-set peak")
    assert memory["peak_memory_delta_bytes"] >= 60 * 2**20
    assert memory["peak_memory_bytes"] >= memory["peak_memory_delta_bytes"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"new_tokens": 1}, "new_tokens"),
        ({"repeats": 0}, "repeats"),
        ({"seq_len": 0}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"warmup": -1}, "warmup"),
    ],
)
def test_bad_settings_are_refused(tiny_nemotron, kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_latency(tiny_nemotron, **kwargs)


def test_cli_bench_json(tmp_path, tiny_nemotron, capsys):
    from hybridlab.cli import main
    from hybridlab.model.loading import save_model

    save_model(tiny_nemotron, None, tmp_path / "model")
    code = main(
        [
            "bench",
            "--model",
            str(tmp_path / "model"),
            "--seq-len",
            "8",
            "--new-tokens",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == str(tmp_path / "model")
    check_report(report, tiny_nemotron)
    from hybridlab.jobs import list_benchmarks

    recorded = list_benchmarks()  # the command ran as a job of the (per-test) workspace's store
    assert list(recorded["status"]) == ["succeeded"] and recorded["prefill_ms"][0] == report["prefill_ms"]


def test_cli_bench_names_a_missing_model_folder(tmp_path, capsys):
    from hybridlab.cli import main

    assert main(["bench", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- paired timing (hybridlab.measure.paired, measure_paired) ------------------------------------


def test_interleave_times_model_then_reference_every_round_after_warmup():
    from hybridlab.measure.paired import interleave

    calls = []

    def timer(fn):
        fn()
        return {"A": 0.1, "B": 0.3}[calls[-1]]

    timed = interleave(
        {"prefill": (lambda: calls.append("A"), lambda: calls.append("B"))}, rounds=3, warmup=2, timer=timer
    )
    assert "".join(calls) == "AB" * 5  # two untimed warm-up rounds, then three timed ones, ABAB...
    summary = timed["prefill"].summary()
    assert summary["speedup"] == pytest.approx(3.0) and summary["model_ms_runs"] == pytest.approx([100.0] * 3)
    assert summary["speedup_low"] == pytest.approx(3.0) == pytest.approx(summary["speedup_high"])  # no spread


def test_measure_paired_interleaves_real_forwards_on_the_same_inputs(tiny_nemotron):
    from hybridlab import PruneSpec, prune

    reference = tiny_nemotron.eval()
    model = prune(reference, PruneSpec(num_layers=3), ranking="random").eval()
    seen = []
    for name, m in (("A", model), ("B", reference)):
        m.register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: seen.append((name, kwargs["input_ids"])), with_kwargs=True
        )
    fake_seconds = iter([0.010, 0.020, 0.011, 0.019, 0.009, 0.021, 0.010, 0.022])

    def timer(fn):
        fn()
        return next(fake_seconds)

    report = measure_paired(model, reference, seq_len=8, rounds=4, warmup=1, timer=timer, decode=False)
    order = "".join(name for name, _ in seen)
    assert order == "AA" + "AB" * 5  # memory and cache probe of the model, then warm-up and 4 rounds, ABAB...
    assert all(torch.equal(ids, seen[0][1]) for _, ids in seen)  # the same tokens for both
    prefill = report["paired"]["prefill"]
    assert prefill["speedup_low"] <= prefill["speedup"] <= prefill["speedup_high"]
    assert prefill["model_ms_runs"] == pytest.approx([10.0, 11.0, 9.0, 10.0])
    assert prefill["reference_ms_runs"] == pytest.approx([20.0, 19.0, 21.0, 22.0])
    assert report["prefill_ms"] == pytest.approx(10.0) and report["reference"]["prefill_ms"] == pytest.approx(20.5)
    assert report["generate_ms"] is None and report["paired"]["decode"] is None  # prefill only
    assert {"device", "dtype", "torch_threads", "seq_len", "batch_size"} <= set(report)
    json.dumps(report)


def test_measure_paired_with_the_clock_reports_every_workload(tiny_nemotron):
    reference = tiny_nemotron
    model = copy_of(tiny_nemotron)
    report = measure_paired(model, reference, seq_len=8, new_tokens=3, rounds=3, warmup=0)
    check_report(report, model)
    for workload in ("prefill", "generate"):
        paired = report["paired"][workload]
        assert paired["speedup_low"] <= paired["speedup"] <= paired["speedup_high"]
        assert paired["model_ms_low"] <= paired["model_ms"] <= paired["model_ms_high"]
        assert len(paired["model_ms_runs"]) == len(paired["reference_ms_runs"]) == 3
    assert report["paired"]["order"].startswith("model, reference")


def copy_of(model):
    import copy

    return copy.deepcopy(model).eval()


def test_paired_models_must_share_device_and_dtype(tiny_nemotron):
    other = copy_of(tiny_nemotron).to(torch.bfloat16)
    with pytest.raises(ValueError, match="one device in one dtype"):
        measure_paired(tiny_nemotron, other, seq_len=8)


def test_ratio_interval_is_the_t_interval_on_log_ratios():
    import math

    from scipy import stats

    from hybridlab.measure.paired import ratio_interval

    reference, model = [2.0, 2.2, 1.9, 2.5, 2.1], [1.0, 1.0, 1.1, 1.2, 0.9]
    logs = [math.log(r / m) for r, m in zip(reference, model)]
    mean, sd = sum(logs) / 5, stats.tstd(logs)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    got = ratio_interval(reference, model)
    assert got.value == pytest.approx(math.exp(mean))
    assert (got.low, got.high) == pytest.approx((math.exp(mean - half), math.exp(mean + half)))
    swapped = ratio_interval(model, reference)  # the reciprocal, exactly
    assert (swapped.value, swapped.low, swapped.high) == pytest.approx((1 / got.value, 1 / got.high, 1 / got.low))


def test_ratio_interval_covers_a_known_log_normal_ratio_95_percent_of_the_time():
    import numpy as np

    from hybridlab.measure.paired import ratio_interval

    rng = np.random.default_rng(0)
    true_speedup, hits, trials = 1.7, 0, 2000
    for _ in range(trials):
        model = np.exp(rng.normal(-3.0, 0.3, 6))  # the machine's load moves both times in a round alike
        reference = model * true_speedup * np.exp(rng.normal(0.0, 0.1, 6))
        found = ratio_interval(list(reference), list(model))
        hits += found.low <= true_speedup <= found.high
    assert 0.93 <= hits / trials <= 0.97


def test_median_interval_uses_order_statistics_with_their_coverage():
    from hybridlab.measure.paired import median_interval

    five = median_interval([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (five.value, five.low, five.high) == (3.0, 1.0, 5.0) and five.level == pytest.approx(1 - 2 / 32)
    twenty = median_interval([float(i) for i in range(1, 21)])
    # Binomial(20, 1/2): [x_(6), x_(15)] covers 95.9%, the next narrower [x_(7), x_(14)] only 88.5%
    assert (twenty.low, twenty.high) == (6.0, 15.0) and twenty.level == pytest.approx(0.9586, abs=1e-4)


def test_bench_job_times_a_pruned_model_against_its_recorded_source(tiny_nemotron, tmp_path):
    from app.results import comparison
    from hybridlab.jobs import list_benchmarks, list_candidates, run_sync
    from hybridlab.model.loading import save_model

    save_model(tiny_nemotron, None, tmp_path / "teacher")
    teacher = str((tmp_path / "teacher").resolve())
    pruned = run_sync("prune", {"model": teacher, "spec": {"num_layers": 3}, "ranking": "random"})
    bench = run_sync(
        "bench", {"model": f"job:{pruned['id']}", "seq_len": 8, "new_tokens": 2, "repeats": 3, "warmup": 0}
    )
    result = bench["result"]
    assert bench["status"] == "succeeded" and result["reference_model"] == teacher
    prefill = result["paired"]["prefill"]
    assert prefill["speedup_low"] <= prefill["speedup"] <= prefill["speedup_high"]
    alone = run_sync("bench", {"model": teacher, "seq_len": 8, "new_tokens": 2, "repeats": 2, "warmup": 0})
    assert alone["result"]["reference_model"] is None and "paired" not in alone["result"]  # nothing recorded above it
    table = comparison(
        teacher, {"params": 1, "flops_per_token": 1.0}, list_candidates(), __import__("pandas").DataFrame(),
        list_benchmarks(), __import__("pandas").DataFrame(),
    )  # fmt: skip
    row = table[table["kind"] == "candidate"].iloc[0]
    assert row["latency_source"] == "paired" and row["speedup"] == pytest.approx(prefill["speedup"])
    teacher_ms = table.iloc[0]["prefill_ms"]
    assert row["latency_ms"] == pytest.approx(teacher_ms / prefill["speedup"])
    assert row["latency_low"] == pytest.approx(teacher_ms / prefill["speedup_high"])


@pytest.mark.parametrize("value", ["none", "source"])
def test_bench_reference_none_or_unrecorded_source_times_alone(tiny_nemotron, tmp_path, value):
    from hybridlab.jobs import run_sync
    from hybridlab.model.loading import save_model

    save_model(tiny_nemotron, None, tmp_path / "m")
    job = run_sync(
        "bench",
        {"model": str(tmp_path / "m"), "seq_len": 8, "new_tokens": 2, "repeats": 1, "warmup": 0, "reference": value},
    )
    assert job["status"] == "succeeded" and job["result"]["reference_model"] is None


def test_bench_reference_refuses_a_job_reference_and_a_missing_folder(tmp_path):
    from hybridlab.jobs import validate_spec

    with pytest.raises(ValueError, match="'source' finds"):
        validate_spec("bench", {"model": "demo", "reference": "job:3"})
    with pytest.raises(ValueError, match="neither 'demo' nor an existing directory"):
        validate_spec("bench", {"model": "demo", "reference": str(tmp_path / "missing")})


def test_pareto_chart_draws_the_paired_interval_as_error_bars():
    import pandas as pd

    from app.charts import pareto_chart

    table = pd.DataFrame(
        {
            "name": ["teacher", "a", "b"],
            "strategy": ["teacher", "width", "width"],
            "params": [10, 5, 6],
            "latency_ms": [100.0, 50.0, 60.0],
            "latency_low": [float("nan"), 40.0, float("nan")],  # b was timed alone: no bar
            "latency_high": [float("nan"), 70.0, float("nan")],
            "val_loss": [2.0, 2.5, 2.4],
        }
    )
    figure = pareto_chart(table, "latency_ms", "val_loss", "ms", "loss", x_interval=("latency_low", "latency_high"))
    width = next(trace for trace in figure.data if trace.name == "width")
    assert list(width.error_x.array) == [20.0, 0.0] and list(width.error_x.arrayminus) == [10.0, 0.0]
    teacher = next(trace for trace in figure.data if trace.name == "teacher")
    assert teacher.error_x.array is None  # no interval at all: no bars
    plain = pareto_chart(table, "latency_ms", "val_loss", "ms", "loss")
    assert all(trace.error_x.array is None for trace in plain.data)
