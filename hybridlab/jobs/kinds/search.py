"""`search` jobs: candidate architectures at a parameter budget, ranked (hybridlab.search).

Every candidate the search reports is recorded as a candidate row of this job (for
the Pareto view), the chosen model lands in artifacts/search/<name>.

NOTE for hybridlab.search's owner: the call below is written against the contract
in the search issue; adjust the keyword names here if the function differs. The
handler expects a dict with "candidates" (a list of dicts with at least "name" and
"spec") and optionally "best" (a model) in the result.
"""
from __future__ import annotations

from hybridlab.jobs.kinds.common import DEVICE, TRUST_REMOTE_CODE, data_source, load, model_field, name_field, run_name
from hybridlab.jobs.registry import Field, JobKind, register_kind
from hybridlab.jobs.specs import non_negative, positive


def run(spec: dict, ctx) -> dict:
    from hybridlab.loading import save_model
    from hybridlab.search import search

    name = run_name(spec, ctx, "search")
    ctx.progress(0.0, "loading model")
    model, tokenizer = load(spec["model"], spec)
    ctx.register_model(spec["model"], model.config)
    outcome = search(
        model, tokenizer, target_params=spec["target_params"], tolerance=spec["tolerance"],
        importance=spec["importance"], calib=spec["calib"], top_k=spec["top_k"], tokens=spec["tokens"],
        seed=spec["seed"], out_dir=ctx.checkpoint_dir, progress=ctx.progress,
    )
    for candidate in outcome.get("candidates", []):
        run_id = ctx.start_run("candidates", f"{name}-{candidate['name']}", spec["model"], candidate["spec"])
        ctx.finish_run("candidates", run_id, None, {k: v for k, v in candidate.items() if k not in ("name", "spec")})
    result = {k: v for k, v in outcome.items() if k not in ("candidates", "best")}
    if outcome.get("best") is not None:
        out = save_model(outcome["best"], tokenizer, ctx.artifact_path("search", name), overwrite=True)
        result["model_path"] = str(out)
    return result


register_kind(JobKind(
    name="search",
    doc="enumerate, prune and rank candidate architectures at a parameter budget; distil the top k",
    fields={
        "model": model_field(),
        "target_params": Field((str, int), doc="a percentage of the model ('50%') or an absolute count"),
        "tolerance": Field(float, default=0.02, check=non_negative),
        "importance": Field((int, str), default=None, nullable=True, doc="an importance run id or scores folder"),
        "calib": Field(str, default=None, nullable=True, check=data_source),
        "top_k": Field(int, default=3, check=positive, doc="candidates to distil"),
        "tokens": Field(int, default=200_000, check=non_negative, doc="distillation budget per candidate"),
        "seed": Field(int, default=0),
        "device": DEVICE,
        "name": name_field(),
        "trust_remote_code": TRUST_REMOTE_CODE,
    },
    handler=run,
    requires=("hybridlab.search",),
))
