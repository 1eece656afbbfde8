"""`importance` jobs: score every prunable unit of a model on calibration data.

Records an importance run whose artifact is the saved ImportanceScores
(artifacts/importance/<name>); prune jobs refer to it by its run id.
"""

from __future__ import annotations

from hybridlab.jobs.kinds.common import (
    Calibration,
    JobOptions,
    ModelInput,
    check_calibration,
    check_model_input,
    layer_metric_arg,
    run_name,
)
from hybridlab.jobs.kinds.source_model import Streaming, calibration_sizes, open_source
from hybridlab.jobs.registry import Artifact, JobKind, spec_fields

ARTIFACT = Artifact(folder="importance", prefix="importance")  # artifacts/importance/<name>


def _check(spec: dict, store) -> None:
    if spec["calib"] is None and spec["model"] != "demo":
        raise ValueError("'calib' is required for models other than 'demo': a .npy token array or text files")
    check_calibration(spec, check_model_input(spec))


def run(spec: dict, ctx) -> dict:
    from hybridlab import estimate_importance
    from hybridlab.data.calibration import batched, load_calibration

    name = run_name(spec, ctx, ARTIFACT.prefix)
    run_id = ctx.start_run("importance_runs", name, spec["model"], spec)
    ctx.progress(0.0, "loading model")
    source = open_source(spec, "importance", ctx, **calibration_sizes(spec))
    model, tokenizer = source.model, source.tokenizer
    ctx.register_model(spec["model"], model.config)
    rows = load_calibration(
        spec["calib"] or "demo", tokenizer, spec["samples"], spec["seq_len"], model.config.vocab_size
    )
    batches = batched(rows, spec["batch_size"])
    ctx.progress(0.02, "scoring")
    scores = estimate_importance(
        model,
        batches,
        layer_metric=layer_metric_arg(spec["layer_metric"]),
        progress=ctx.sub_progress(0.02, 0.97),
        layer_samples=spec["layer_samples"],
        description=source.description,
    )
    out = scores.save(ctx.artifact_path(ARTIFACT.folder, name))  # atomic: temp folder, then rename
    least = {m: scores.layers[m].argsort().tolist()[:5] for m in scores.layers}
    result = {
        "samples": int(rows.shape[0]),
        "seq_len": int(rows.shape[1]),
        "layer_metric": spec["layer_metric"],
        "least_important_layers": least,
        "layer_kinds": list(scores.layer_kinds),
    }
    ctx.finish_run("importance_runs", run_id, out, result)
    ctx.progress(1.0, "done")
    return {"run_id": run_id, "artifact": ctx.relative(out), **result}


KIND = JobKind(
    artifact=ARTIFACT,
    name="importance",
    doc="activation importance of every prunable unit, plus layer importance",
    fields=spec_fields(ModelInput, Calibration, Streaming, JobOptions),
    handler=run,
    check=_check,
)
