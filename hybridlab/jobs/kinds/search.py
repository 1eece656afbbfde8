"""`search` jobs: candidate architectures at a parameter budget, ranked and distilled
(hybridlab.search.run). Every ranked candidate is recorded as a candidate row of this job
(for the Pareto view); the chosen model lands in artifacts/search/<name>.

The search's own files (candidates.csv, search.json, best/, runs/) go to the job's
checkpoint folder, or to 'run_dir' when given (`hybridlab search --out`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hybridlab.core.outputs import check_new_folder
from hybridlab.core.paths import DEMO_TRAIN, DEMO_VAL
from hybridlab.core.settings import setting
from hybridlab.jobs.kinds.common import (
    JobOptions,
    ModelInput,
    absolute_path,
    check_model_input,
    check_seq_len,
    check_token_input,
    data_source,
    demo_tokens_or,
    existing_path,
    load,
    run_id_or_folder,
    run_name,
    scores_dir,
)
from hybridlab.jobs.parents import is_reference
from hybridlab.jobs.registry import Artifact, JobKind, settings_from_spec, spec_fields
from hybridlab.search.run import SearchSettings

ARTIFACT = Artifact(folder="search", prefix="search")  # artifacts/search/<name>


@dataclass
class SearchInputs:
    """What a search reads and where it writes; how it searches is SearchSettings."""

    importance: int | str | None = setting(
        None,
        flag="--scores",
        parse=run_id_or_folder,
        help="an importance run id or scores folder (default: computed from the calibration data); in a job "
        'spec also "job:N": the scores importance job N writes',
    )
    calib: str | None = setting(
        None,
        check=data_source,
        help="calibration data when no importance is given: 'demo', a .npy token array or text files "
        "(default: the demo's)",
    )
    train_tokens: str | None = setting(
        None, check=existing_path, flag="--data", help="distillation tokens (default: the demo's training sample)"
    )
    val_tokens: str | None = setting(
        None, check=existing_path, flag="--val", help="validation tokens .npy (default: the demo's)"
    )
    run_dir: str | None = setting(
        None,
        check=absolute_path,
        flag="--out",
        cli_required=True,
        help="folder: candidates.csv, search.json, best/ (the chosen model), runs/ (a job's default: its own)",
    )


def settings_of(spec: dict) -> SearchSettings:
    return settings_from_spec(SearchSettings, spec)


def _check(spec: dict, store) -> None:
    settings = settings_of(spec)
    settings.validate()
    if spec["importance"] is None and spec["calib"] is None and spec["model"] != "demo":
        raise ValueError(
            "give 'importance' (a run id or scores folder) or 'calib' tokens for a model other than the demo"
        )
    for key in ("train_tokens", "val_tokens"):
        if spec[key] is None and spec["model"] != "demo":
            raise ValueError(f"'{key}' is required unless the model is 'demo': a .npy token file")
    if spec["importance"] is not None:
        spec["importance"] = _scores_ref(spec["importance"], store)
    if spec["run_dir"] is not None and (Path(spec["run_dir"]) / "best").exists():
        raise ValueError(f"{spec['run_dir']} already holds a search result; choose another 'run_dir'")
    if spec["run_dir"] is not None:
        check_new_folder(spec["run_dir"], "'run_dir'", may_exist=True)
    _check_budget(spec, settings, store)


def _scores_ref(importance, store):
    """A scores folder made absolute; a run id checked (needs the store) and kept as the id; "job:N"
    kept (hybridlab.jobs.parents checks job N and resolves it to its scores folder when this job starts)."""
    if is_reference(importance):
        return importance
    if isinstance(importance, str):
        return str(scores_dir(importance, store))
    if store is not None:
        scores_dir(importance, store)
    return importance


def _check_budget(spec: dict, settings, store) -> None:
    """An unreachable budget fails from the config alone (and the scores, when given), before any weights load.
    Only cheap checks: whether some candidate lands within tolerance of the budget takes listing the whole
    candidate space (up to a minute for a mixed search of the demo), so the search itself finds that out in
    the worker, and fails with the same one line, before any pruning."""
    from hybridlab.compression.scores_fit import check_scores_fit, load_scores
    from hybridlab.model.sizes import estimate_sizes
    from hybridlab.search.space import check_reachable, parse_target

    description = check_model_input(spec)  # config, family, layer types and weight headers
    check_seq_len(description, settings.seq_len)
    target = parse_target(settings.target_params, estimate_sizes(description).params)
    check_reachable(description, target, settings.tolerance, settings.space)
    if settings.latency_budget is not None:
        _check_calibrated(description, store)
    demo = spec["model"] == "demo"
    window = settings.seq_len + 1
    check_token_input(spec["train_tokens"] or ("demo" if demo else None), description, demo_file=DEMO_TRAIN,
                      label="'train_tokens'", min_tokens=window)  # fmt: skip
    check_token_input(spec["val_tokens"] or ("demo" if demo else None), description, demo_file=DEMO_VAL,
                      label="'val_tokens'", min_tokens=window)  # fmt: skip
    if spec["importance"] is None:
        check_token_input(spec["calib"] or "demo", description, label="'calib'", min_tokens=settings.seq_len,
                          row_len=settings.seq_len)  # fmt: skip
    importance = spec["importance"]
    if importance is not None and not is_reference(importance) and (isinstance(importance, str) or store is not None):
        folder = scores_dir(importance, store)
        scores = load_scores(folder)
        check_scores_fit(scores, description, folder)
        if settings.space.layer_metric not in scores.layers:
            raise ValueError(
                f"the scores in {folder} have no {settings.space.layer_metric!r} layer metric (they have "
                f"{sorted(scores.layers)}); set 'layer_metric' to one of them"
            )


def _check_calibrated(description, store) -> None:
    """A latency budget needs a latency calibration for the family (its device, dtype and threads are
    matched when the job runs)."""
    from hybridlab.measure.latency_model import calibration_dir, find_latency_model, missing_calibration

    folder = calibration_dir(store.workspace if store is not None else None)
    if description is not None and find_latency_model(description, folder=folder) is None:
        raise missing_calibration(description, None, None, None)


def run(spec: dict, ctx) -> dict:
    from hybridlab.compression.scores_fit import check_scores_fit, load_scores
    from hybridlab.data.calibration import batched, load_calibration, load_token_array
    from hybridlab.measure.latency_model import calibration_dir
    from hybridlab.model.loading import save_model
    from hybridlab.search.run import search

    name = run_name(spec, ctx, ARTIFACT.prefix)
    ctx.progress(0.0, "loading model")
    model, tokenizer = load(spec["model"], spec)
    ctx.register_model(spec["model"], model.config)
    scores, calib = None, None
    vocab = int(model.config.vocab_size)
    if spec["importance"] is not None:
        scores = load_scores(scores_dir(spec["importance"], ctx.store))
        check_scores_fit(scores, model, spec["importance"])
    else:
        calib = batched(load_calibration(spec["calib"] or "demo", tokenizer, 64, spec["seq_len"], vocab), 8)
    train = load_token_array(demo_tokens_or(spec["train_tokens"], spec["model"], DEMO_TRAIN), None, vocab).reshape(-1)
    val = load_token_array(demo_tokens_or(spec["val_tokens"], spec["model"], DEMO_VAL), None, vocab).reshape(-1)
    out_dir = Path(spec["run_dir"]) if spec["run_dir"] is not None else ctx.checkpoint_dir
    outcome = search(
        model,
        tokenizer,
        train,
        val,
        settings_of(spec),
        scores=scores,
        calib_batches=calib,
        out_dir=out_dir,
        progress=ctx.progress,
        latency_folder=calibration_dir(ctx.workspace),
    )
    for row in outcome.candidates.to_dict("records"):
        if row["name"] == "teacher":
            continue
        metrics = {k: v for k, v in row.items() if k not in ("name", "spec") and v == v}  # drop NaN
        run_id = ctx.start_run("candidates", f"{name}-{row['name']}", spec["model"], json.loads(row["spec"]))
        ctx.finish_run(
            "candidates", run_id, None, {**metrics, "val_loss": row.get("distilled_loss", row["zero_shot_loss"])}
        )
    final = save_model(outcome.best_model, tokenizer, ctx.artifact_path(ARTIFACT.folder, name), overwrite=True)
    ctx.register_model(str(final), outcome.best_model.config)
    best = {k: v for k, v in outcome.best.items() if k != "model_dir"}
    return {"best": best, "model_path": str(final), "candidates": len(outcome.candidates) - 1}


KIND = JobKind(
    artifact=ARTIFACT,
    name="search",
    doc="enumerate, prune and rank candidate architectures at a parameter budget; distil the top k",
    fields=spec_fields(ModelInput, SearchInputs, SearchSettings, JobOptions),
    handler=run,
    check=_check,
    requires=("hybridlab.search.run",),
)
