"""`search` jobs: candidate architectures at a parameter budget, ranked and distilled
(hybridlab.search.run). Every ranked candidate is recorded as a candidate row of this job
(for the Pareto view); the chosen model lands in artifacts/search/<name>.

The search's own files (candidates.csv, search.json, best/, runs/) go to the job's
checkpoint folder, or to 'run_dir' when given (`hybridlab search --out`)."""

from __future__ import annotations

import json
from pathlib import Path

from hybridlab.core.paths import DEMO_TRAIN, DEMO_VAL
from hybridlab.jobs.kinds.common import (
    DEVICE,
    SEQ_LEN,
    TRUST_REMOTE_CODE,
    absolute_path,
    data_source,
    demo_tokens_or,
    existing_path,
    load,
    model_field,
    name_field,
    run_name,
)
from hybridlab.jobs.kinds.prune import scores_dir
from hybridlab.jobs.registry import Field, JobKind, register_kind
from hybridlab.jobs.specs import non_negative, one_of, positive

SPACE_KEYS = (
    "max_width_prune",
    "max_depth_prune",
    "hidden_divisor",
    "ffn_divisor",
    "head_dim_divisor",
    "layer_divisor",
    "prune_attention",
    "contiguous_depth",
    "layer_metric",
)


def settings_of(spec: dict):
    from hybridlab.search.run import SearchSettings
    from hybridlab.search.space import SearchSpace

    return SearchSettings(
        target_params=spec["target_params"],
        tolerance=spec["tolerance"],
        max_candidates=spec["max_candidates"],
        rank_by=spec["rank_by"],
        top_k=spec["top_k"],
        distill_tokens=spec["tokens"],
        seed=spec["seed"],
        seq_len=spec["seq_len"],
        eval_tokens=spec["eval_tokens"],
        measure_latency=spec["measure_latency"],
        accuracy_task=spec["accuracy_task"],
        space=SearchSpace(**{k: spec[k] for k in SPACE_KEYS}),
    )


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
    _check_budget(spec, settings, store)


def _scores_ref(importance, store):
    """A scores folder made absolute; a run id checked (needs the store) and kept as the id."""
    if isinstance(importance, str):
        return str(scores_dir(importance, store))
    if store is not None:
        scores_dir(importance, store)
    return importance


def _check_budget(spec: dict, settings, store) -> None:
    """An unreachable budget fails from the config alone (and the scores, when given), before any weights load."""
    from transformers import AutoConfig

    from hybridlab.compression.importance import ImportanceScores
    from hybridlab.model.loading import resolve_model_dir
    from hybridlab.model.sizes import estimate_sizes
    from hybridlab.search.space import check_reachable, enumerate_candidates, parse_target

    config = AutoConfig.from_pretrained(resolve_model_dir(spec["model"]), trust_remote_code=spec["trust_remote_code"])
    target = parse_target(settings.target_params, estimate_sizes(config).params)
    check_reachable(config, target, settings.tolerance, settings.space)
    if spec["importance"] is not None and (isinstance(spec["importance"], str) or store is not None):
        scores = ImportanceScores.load(scores_dir(spec["importance"], store))
        enumerate_candidates(config, scores, target, settings.tolerance, settings.space, settings.seq_len)


def run(spec: dict, ctx) -> dict:
    from hybridlab.compression.importance import ImportanceScores
    from hybridlab.data.calibration import batched, load_calibration, load_token_array
    from hybridlab.model.loading import save_model
    from hybridlab.search.run import search

    name = run_name(spec, ctx, "search")
    ctx.progress(0.0, "loading model")
    model, tokenizer = load(spec["model"], spec)
    ctx.register_model(spec["model"], model.config)
    scores, calib = None, None
    if spec["importance"] is not None:
        scores = ImportanceScores.load(scores_dir(spec["importance"], ctx.store))
    else:
        calib = batched(load_calibration(spec["calib"] or "demo", tokenizer, 64, spec["seq_len"]), 8)
    train = load_token_array(demo_tokens_or(spec["train_tokens"], spec["model"], DEMO_TRAIN)).reshape(-1)
    val = load_token_array(demo_tokens_or(spec["val_tokens"], spec["model"], DEMO_VAL)).reshape(-1)
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
    )
    for row in outcome.candidates.to_dict("records"):
        if row["name"] == "teacher":
            continue
        metrics = {k: v for k, v in row.items() if k not in ("name", "spec") and v == v}  # drop NaN
        run_id = ctx.start_run("candidates", f"{name}-{row['name']}", spec["model"], json.loads(row["spec"]))
        ctx.finish_run(
            "candidates", run_id, None, {**metrics, "val_loss": row.get("distilled_loss", row["zero_shot_loss"])}
        )
    final = save_model(outcome.best_model, tokenizer, ctx.artifact_path("search", name), overwrite=True)
    ctx.register_model(str(final), outcome.best_model.config)
    best = {k: v for k, v in outcome.best.items() if k != "model_dir"}
    return {"best": best, "model_path": str(final), "candidates": len(outcome.candidates) - 1}


register_kind(
    JobKind(
        name="search",
        doc="enumerate, prune and rank candidate architectures at a parameter budget; distil the top k",
        fields={
            "model": model_field(),
            "target_params": Field((str, int), doc="a percentage of the model ('50%') or an absolute count"),
            "tolerance": Field(float, default=0.03, check=positive),
            "importance": Field((int, str), default=None, nullable=True, doc="an importance run id or scores folder"),
            "calib": Field(
                str,
                default=None,
                nullable=True,
                check=data_source,
                doc="calibration data when no importance is given: 'demo', a .npy token array or text files",
            ),
            "train_tokens": Field(
                str, default=None, nullable=True, check=existing_path, doc="distillation tokens (.npy or text)"
            ),
            "val_tokens": Field(str, default=None, nullable=True, check=existing_path, doc="validation tokens (.npy)"),
            "max_candidates": Field(int, default=16, check=positive),
            "rank_by": Field(
                str, default="loss", check=one_of("loss", "kl"), doc="zero-shot loss or KL to the teacher"
            ),
            "top_k": Field(int, default=2, check=non_negative, doc="candidates to distil"),
            "tokens": Field(
                int, default=200_000, check=non_negative, doc="distillation budget per candidate (0: zero-shot only)"
            ),
            "seq_len": SEQ_LEN,
            "eval_tokens": Field(int, default=16_384, check=positive, doc="validation tokens scored per candidate"),
            "max_width_prune": Field(float, default=0.5, check=non_negative),
            "max_depth_prune": Field(float, default=0.5, check=non_negative),
            "hidden_divisor": Field(int, default=None, nullable=True, check=positive, doc="default hidden/16"),
            "ffn_divisor": Field(int, default=None, nullable=True, check=positive, doc="default ffn/32"),
            "head_dim_divisor": Field(int, default=8, check=positive),
            "layer_divisor": Field(int, default=1, check=positive),
            "prune_attention": Field(bool, default=False, doc="also search attention head counts"),
            "contiguous_depth": Field(bool, default=False, doc="drop a contiguous block of layers"),
            "layer_metric": Field(str, default="kl", check=one_of("kl", "loss", "cosine")),
            "accuracy_task": Field(
                str, default=None, nullable=True, doc="an eval task for the finalists, e.g. continuation_mc"
            ),
            "measure_latency": Field(bool, default=True),
            "run_dir": Field(
                str,
                default=None,
                nullable=True,
                check=absolute_path,
                doc="folder for candidates.csv, search.json, best/ and runs/ (default: the job's own)",
            ),
            "seed": Field(int, default=0),
            "device": DEVICE,
            "name": name_field(),
            "trust_remote_code": TRUST_REMOTE_CODE,
        },
        handler=run,
        check=_check,
        requires=("hybridlab.search.run",),
    )
)
