"""`bench` jobs: prefill latency, decode throughput, peak memory (hybridlab.measure.bench)."""

from __future__ import annotations

from dataclasses import dataclass

from hybridlab.core.settings import (
    MAX_SEQ_LEN,
    at_least,
    at_most,
    batch_count,
    sequence_length,
    setting,
    step_count,
    step_count_or_zero,
)
from hybridlab.jobs.kinds.common import JobOptions, ModelInput, check_model_input, load, run_name
from hybridlab.jobs.registry import JobKind, spec_fields


@dataclass
class BenchSettings:
    batch_size: int = setting(1, check=batch_count)
    seq_len: int = setting(256, check=sequence_length, help="prompt length for prefill")
    new_tokens: int = setting(
        32,
        check=(at_least(2, "decode speed is timed from the second new token"), at_most(MAX_SEQ_LEN)),
        help="tokens decoded with the cache (at least 2)",
    )
    repeats: int = setting(5, check=step_count, help="timed runs; the median is reported")
    warmup: int = setting(1, check=step_count_or_zero, help="untimed runs first")


def _check(spec: dict, store) -> None:
    """The model from its config and headers; prompt plus new tokens within its max_position_embeddings."""
    from hybridlab.model.checks import max_positions

    description = check_model_input(spec)
    limit = max_positions(description.config) if description is not None else None
    if limit is not None and spec["seq_len"] + spec["new_tokens"] > limit:
        raise ValueError(
            f"'seq_len' {spec['seq_len']:,} plus 'new_tokens' {spec['new_tokens']:,} is longer than this model's "
            f"max_position_embeddings ({limit:,}); lower seq_len to {max(limit - spec['new_tokens'], 1):,} or less"
        )


def run(spec: dict, ctx) -> dict:

    from hybridlab.measure.bench import measure_latency

    name = run_name(spec, ctx, "bench")
    run_id = ctx.start_run("benchmarks", name, spec["model"], spec)
    ctx.progress(0.0, "loading model")
    model, _ = load(spec["model"], spec)
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
    check=_check,
    requires=("hybridlab.measure.bench",),
)
