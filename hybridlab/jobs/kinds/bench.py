"""`bench` jobs: prefill latency, decode throughput, peak memory (hybridlab.measure.bench)."""

from __future__ import annotations

from hybridlab.jobs.kinds.common import DEVICE, SEQ_LEN, TRUST_REMOTE_CODE, load, model_field, name_field, run_name
from hybridlab.jobs.registry import Field, JobKind, register_kind
from hybridlab.jobs.specs import non_negative, one_of, positive


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


register_kind(
    JobKind(
        name="bench",
        doc="prefill latency, decode throughput with the cache, peak memory",
        fields={
            "model": model_field(),
            "batch_size": Field(int, default=1, check=positive),
            "seq_len": SEQ_LEN,
            "new_tokens": Field(int, default=32, check=positive, doc="tokens decoded with the cache (at least 2)"),
            "repeats": Field(int, default=5, check=positive),
            "warmup": Field(int, default=1, check=non_negative),
            "dtype": Field(str, default="float32", check=one_of("float32", "bfloat16", "float16")),
            "device": DEVICE,
            "name": name_field(),
            "trust_remote_code": TRUST_REMOTE_CODE,
        },
        handler=run,
        requires=("hybridlab.measure.bench",),
    )
)
