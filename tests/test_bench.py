"""Latency benchmark: schema, sane values, memory measurement and input checks (never timings)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from hybridlab.measure.bench import measure_latency, peak_memory

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
