"""`importance` jobs: score every prunable unit of a model on calibration data.

Records an importance run whose artifact is the saved ImportanceScores
(artifacts/importance/<name>); prune jobs refer to it by its run id.
"""

from __future__ import annotations

from hybridlab.jobs.kinds.common import (
    DEVICE,
    SEQ_LEN,
    TRUST_REMOTE_CODE,
    data_source,
    load,
    model_field,
    name_field,
    run_name,
)
from hybridlab.jobs.registry import Field, JobKind, register_kind
from hybridlab.jobs.specs import one_of, positive

LAYER_METRICS = ("kl", "loss", "cosine", "none")


def _check(spec: dict, store) -> None:
    if spec["calib"] is None and spec["model"] != "demo":
        raise ValueError("'calib' is required for models other than 'demo': a .npy token array or text files")


def run(spec: dict, ctx) -> dict:
    from hybridlab import estimate_importance
    from hybridlab.data.calibration import batched, load_calibration

    name = run_name(spec, ctx, "importance")
    run_id = ctx.start_run("importance_runs", name, spec["model"], spec)
    ctx.progress(0.0, "loading model")
    model, tokenizer = load(spec["model"], spec)
    ctx.register_model(spec["model"], model.config)
    source = spec["calib"] or "demo"
    rows = load_calibration(source, tokenizer, spec["samples"], spec["seq_len"])  # [N, T]
    batches = batched(rows, spec["batch_size"])
    metric = None if spec["layer_metric"] == "none" else spec["layer_metric"]
    ctx.progress(0.02, "scoring")
    scores = estimate_importance(
        model, batches, layer_metric=metric, progress=ctx.sub_progress(0.02, 0.97), layer_samples=spec["layer_samples"]
    )
    out = scores.save(ctx.artifact_path("importance", name))  # atomic: temp folder, then rename
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


register_kind(
    JobKind(
        name="importance",
        doc="activation importance of every prunable unit, plus layer importance",
        fields={
            "model": model_field(),
            "calib": Field(
                str,
                default=None,
                nullable=True,
                check=data_source,
                doc="calibration data: 'demo', a .npy token array, text files, .jsonl or .parquet",
            ),
            "samples": Field(int, default=64, check=positive, doc="calibration sequences"),
            "seq_len": SEQ_LEN,
            "batch_size": Field(int, default=8, check=positive),
            "layer_metric": Field(str, default="kl", check=one_of(*LAYER_METRICS)),
            "layer_samples": Field(int, default=16, check=positive, doc="sequences for the drop-one-layer passes"),
            "device": DEVICE,
            "name": name_field(),
            "trust_remote_code": TRUST_REMOTE_CODE,
        },
        handler=run,
        check=_check,
    )
)
