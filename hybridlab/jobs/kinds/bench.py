"""`bench` jobs: prefill latency, decode throughput, peak memory (hybridlab.measure.bench).

Every latency is timed in pairs with the model's reference (by default the model it was pruned or
distilled from, as the store records it): interleaved rounds in this one job, reported as a
speedup with a confidence interval plus both models' absolute times (`paired` and `reference` in
the result). A model with no reference (the teacher itself, or reference 'none') is timed alone."""

from __future__ import annotations

from dataclasses import dataclass

from hybridlab.core.errors import shown
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
from hybridlab.jobs.specs import model_ref

SOURCE, NONE = "source", "none"  # reference: the recorded source model, or no reference


def reference_ref(value: str) -> str:
    """'source', 'none', 'demo' or a model folder (a "job:N" reference is not taken here)."""
    from hybridlab.store.job_parents import parse_job_ref

    if value in (SOURCE, NONE):
        return value
    if parse_job_ref(value) is not None:
        raise ValueError(
            f"takes 'source', 'none', 'demo' or a model folder, got {shown(value)}; "
            "'source' finds the model a job:N model was made from"
        )
    return model_ref(value)


@dataclass
class BenchSettings:
    batch_size: int = setting(1, check=batch_count)
    seq_len: int = setting(256, check=sequence_length, help="prompt length for prefill")
    new_tokens: int = setting(
        32,
        check=(at_least(2, "decode speed is timed from the second new token"), at_most(MAX_SEQ_LEN)),
        help="tokens decoded with the cache (at least 2)",
    )
    repeats: int = setting(
        5,
        check=step_count,
        help="timed rounds, model and reference interleaved; medians and intervals come from them "
        "(an interval needs at least 2)",
    )
    warmup: int = setting(1, check=step_count_or_zero, help="untimed rounds first")
    reference: str = setting(
        SOURCE,
        check=reference_ref,
        help="the model timed in pairs with this one: 'source' (the model it was pruned or distilled from, "
        "as the store records it; none recorded: timed alone), 'none', 'demo' or a model folder",
    )


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
    if spec["reference"] not in (SOURCE, NONE):
        check_model_input(spec, key="reference")


def source_model(store, model: str) -> str | None:
    """The model `model` was pruned or distilled from, as the store's runs record it; None if unknown."""
    from hybridlab.store import SUCCEEDED, runs_frame

    for table, column in (("candidates", "model_ref"), ("distillations", "teacher")):
        runs = runs_frame(store, table)
        if runs.empty or "model_path" not in runs.columns or column not in runs.columns:
            continue
        made = runs[(runs["status"] == SUCCEEDED) & (runs["model_path"] == model)].sort_values("id")
        if len(made) and isinstance(made[column].iloc[-1], str):
            return made[column].iloc[-1]
    return None


def reference_of(spec: dict, store) -> str | None:
    """The reference model ref this job times its model against, or None (timed alone)."""
    wanted = spec["reference"]
    found = None if wanted == NONE else source_model(store, spec["model"]) if wanted == SOURCE else wanted
    return None if found == spec["model"] else found


def run(spec: dict, ctx) -> dict:
    from hybridlab.measure.bench import measure_latency, measure_paired

    name = run_name(spec, ctx, "bench")
    run_id = ctx.start_run("benchmarks", name, spec["model"], spec)
    ctx.progress(0.0, "loading model")
    model, _ = load(spec["model"], spec)
    ctx.register_model(spec["model"], model.config)
    reference_ref = reference_of(spec, ctx.store)
    timing = dict(batch_size=spec["batch_size"], seq_len=spec["seq_len"], new_tokens=spec["new_tokens"])
    if reference_ref is None:
        report = measure_latency(
            model, **timing, repeats=spec["repeats"], warmup=spec["warmup"], progress=ctx.sub_progress(0.05, 1.0)
        )
    else:
        ctx.progress(0.03, f"loading the reference {reference_ref}")
        reference, _ = load(reference_ref, spec)
        report = measure_paired(
            model,
            reference,
            **timing,
            rounds=spec["repeats"],
            warmup=spec["warmup"],
            progress=ctx.sub_progress(0.05, 1.0),
        )
    report["reference_model"] = reference_ref
    ctx.finish_run("benchmarks", run_id, None, report)
    return {"run_id": run_id, **report}


KIND = JobKind(
    name="bench",
    doc="prefill latency, decode throughput with the cache, peak memory; timed in pairs with a reference",
    fields=spec_fields(ModelInput, BenchSettings, JobOptions),
    handler=run,
    check=_check,
    requires=("hybridlab.measure.bench",),
)
