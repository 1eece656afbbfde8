"""`bench` jobs: prefill latency, decode throughput, peak memory (hybridlab.measure.bench)."""

from __future__ import annotations

from dataclasses import dataclass

from hybridlab.core.settings import non_negative, positive, setting
from hybridlab.jobs.kinds.common import JobOptions, ModelInput, load, run_name
from hybridlab.jobs.registry import JobKind, spec_fields


@dataclass
class BenchSettings:
    batch_size: int = setting(1, check=positive)
    seq_len: int = setting(256, check=positive, help="prompt length for prefill")
    new_tokens: int = setting(32, check=positive, help="tokens decoded with the cache (at least 2)")
    repeats: int = setting(5, check=positive, help="timed runs; the median is reported")
    warmup: int = setting(1, check=non_negative, help="untimed runs first")
    dtype: str = setting("float32", choices=("float32", "bfloat16", "float16"))


def run(spec: dict, ctx) -> dict:
    import torch

    from hybridlab.measure.bench import measure_latency

    name = run_name(spec, ctx, "bench")
    run_id = ctx.start_run("benchmarks", name, spec["model"], spec)
    ctx.progress(0.0, "loading model")
    model, _ = load(spec["model"], spec, dtype=getattr(torch, spec["dtype"]))
    ctx.register_model(spec["model"], model.config)
    report = measure_latency(
        model,
        batch_size=spec["batch_size"],
        seq_len=spec["seq_len"],
        new_tokens=spec["new_tokens"],
        repeats=spec["repeats"],
        warmup=spec["warmup"],
        progress=ctx.sub_progress(0.05, 1.0),
    )
    ctx.finish_run("benchmarks", run_id, None, report)
    return {"run_id": run_id, **report}


KIND = JobKind(
    name="bench",
    doc="prefill latency, decode throughput with the cache, peak memory",
    fields=spec_fields(ModelInput, BenchSettings, JobOptions),
    handler=run,
    requires=("hybridlab.measure.bench",),
)
