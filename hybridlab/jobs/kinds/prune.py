"""`prune` jobs: make a pruned candidate from a model, a PruneSpec and importance scores.

Records a candidate whose artifact is a loadable Hugging Face folder
(artifacts/candidates/<name>) and whose result holds what the planner and the
Pareto view need: actual and analytic parameters, FLOPs per token, state memory,
their ratios to the parent, and the strategy (depth, width or mixed).

Without 'importance', a job ranking by importance scores the model first on its
'calib' data (the demo's for the demo model), as `hybridlab prune` without --scores does.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybridlab.compression.kept import EXPERT_RANKINGS
from hybridlab.core.errors import shown
from hybridlab.core.settings import seed_value, setting
from hybridlab.jobs.kinds.common import (
    Calibration,
    JobOptions,
    ModelInput,
    check_calibration,
    check_model_input,
    layer_metric_arg,
    run_id_or_folder,
    run_name,
    scores_dir,
)
from hybridlab.jobs.kinds.source_model import Streaming, calibration_sizes, open_source
from hybridlab.jobs.parents import is_reference
from hybridlab.jobs.registry import Artifact, JobKind, spec_fields

ARTIFACT = Artifact(folder="candidates", prefix="candidate")  # artifacts/candidates/<name>

DEPTH_KEYS = ("num_layers", "drop_layers")


def plan_or_reference(value: dict | str) -> dict | str:
    """A PruneSpec dict (checked against the model by the kind), or "job:N" naming a search job."""
    if isinstance(value, str) and not is_reference(value):
        raise ValueError(f'must be a dict of PruneSpec sizes or "job:N" naming a search job, got {shown(value)}')
    return value


@dataclass
class PruneOptions:
    """How a prune job chooses the units to keep; the sizes themselves are a PruneSpec ('spec')."""

    spec: dict | str = setting(
        cli=False,
        check=plan_or_reference,
        help="PruneSpec as a dict, e.g. {'hidden_size': 48, 'mamba_num_heads': 4}, or \"job:N\": the spec search "
        "job N chose",
    )
    importance: int | str | None = setting(
        None,
        flag="--scores",
        parse=run_id_or_folder,
        help="an importance run id, or a folder of saved ImportanceScores (default: score the model now); in a job "
        'spec also "job:N": the scores importance job N writes',
    )
    ranking: str = setting("importance", choices=("importance", "random"))
    mamba_ranking: str = setting(
        "group", choices=("group", "global"), help="rank Mamba heads within groups (the paper) or globally (ablation)"
    )
    expert_metric: str = setting(
        "routing_mass",
        choices=EXPERT_RANKINGS,
        help="mixtures of experts: keep the routed experts with the most routing mass, the largest gated output "
        "norm, or random ones (the control)",
    )
    seed: int = setting(0, check=seed_value)


def strategy(spec: dict) -> str:
    depth = any(k in spec for k in DEPTH_KEYS)
    width = any(k not in DEPTH_KEYS for k in spec)
    return "mixed" if depth and width else "depth" if depth else "width"


def check_architecture(model: str, spec: dict, trust_remote_code: bool = False, allow_pickle_weights: bool = False):
    """ValueError unless PruneSpec `spec` is a possible target for `model`; reads only its config
    and weight headers (hybridlab.model.checks). Returns the model's description."""
    from hybridlab.model.checks import check_model
    from hybridlab.model.sizes import planned_widths
    from hybridlab.model.spec import PruneSpec, resolve

    prune_spec = PruneSpec.from_dict(spec)  # unknown keys, non-integer sizes -> ValueError
    if prune_spec.is_empty():
        raise ValueError("'spec' keeps every size; give at least one target, e.g. {'mamba_num_heads': 4}")
    description = check_model(model, trust_remote_code, allow_pickle_weights)
    planned_widths(description, prune_spec)  # an impossible spec fails here, before anything is queued
    resolve(prune_spec, description.widths)
    return description


def pruned_bytes(spec: dict, description) -> int:
    """About how many bytes the pruned checkpoint of job spec `spec` takes on disk: its kept parameters
    in the job's dtype, or, keeping the checkpoint's own, the weight files' bytes scaled by the share of
    parameters kept (pickle weights, allowed with allow_pickle_weights: the .bin files' sizes)."""
    from hybridlab.model.checks import resolve_model_dir
    from hybridlab.model.loading import loaded_dtype, torch_dtype
    from hybridlab.model.sizes import count_params, planned_widths
    from hybridlab.model.spec import PruneSpec
    from hybridlab.model.weight_files import read_weight_files

    kept = sum(count_params(planned_widths(description, PruneSpec.from_dict(spec["spec"]))).values())
    dtype = loaded_dtype(spec["model"], torch_dtype(spec.get("dtype", "auto")))
    if dtype is not None:
        return kept * dtype.itemsize
    folder = resolve_model_dir(spec["model"])
    try:
        stored = read_weight_files(folder).nbytes
    except ValueError:  # only pickle weights
        stored = sum(f.stat().st_size for f in folder.glob("pytorch_model*.bin"))
    return int(stored * kept / sum(count_params(description.widths).values()))


def _check(spec: dict, store) -> None:
    from hybridlab.compression.scores_fit import check_scores_fit, load_scores
    from hybridlab.core.outputs import check_free_space
    from hybridlab.model.spec import PruneSpec

    if is_reference(spec["model"]):  # a model a parent job writes: fitted to it when the job starts (run)
        description = None
        if not is_reference(spec["spec"]) and PruneSpec.from_dict(spec["spec"]).is_empty():
            raise ValueError("'spec' keeps every size; give at least one target, e.g. {'mamba_num_heads': 4}")
    elif is_reference(spec["spec"]):  # the search's choice: checked against the model once it is known
        description = check_model_input(spec)
    else:
        description = check_architecture(
            spec["model"], spec["spec"], spec["trust_remote_code"], spec["allow_pickle_weights"]
        )
        if store is not None:
            need = pruned_bytes(spec, description)
            check_free_space(store.workspace, need, "workspace", "the pruned checkpoint")
    importance = spec["importance"]
    if is_reference(importance):  # scores an importance job will write: they are fitted once they exist
        return
    if importance is None and spec["ranking"] == "importance" and spec["calib"] is None and spec["model"] != "demo":
        raise ValueError(
            "ranking by importance needs 'importance' (an importance run id or scores folder) "
            "or 'calib' data to score the model now"
        )
    folder = None
    if isinstance(importance, str):
        folder = scores_dir(importance, store)
        spec["importance"] = str(folder)  # checked and made absolute
    elif importance is not None and store is not None:
        folder = scores_dir(importance, store)
    if folder is not None and description is not None:  # scores of a model with other widths would fail mid-prune
        check_scores_fit(load_scores(folder), description, folder)
    elif folder is None and spec["ranking"] == "importance":
        check_calibration(spec, description)


def run(spec: dict, ctx) -> dict:
    from transformers import AutoConfig

    from hybridlab import PruneSpec, prune, save_model
    from hybridlab.compression.prune import prune_checkpoint
    from hybridlab.compression.scores_fit import check_scores_fit, load_scores
    from hybridlab.model.sizes import estimate_sizes

    if not is_reference(spec["spec"]):  # a model a parent job wrote exists only now: the spec must fit it
        check_architecture(spec["model"], spec["spec"], spec["trust_remote_code"], spec["allow_pickle_weights"])
    name = run_name(spec, ctx, ARTIFACT.prefix)
    # A candidate's spec is its architecture (PruneSpec keys); how it was made goes in its result.
    run_id = ctx.start_run("candidates", name, spec["model"], spec["spec"])
    ctx.progress(0.0, "loading model")
    scoring = spec["importance"] is None and spec["ranking"] == "importance"
    source = open_source(
        spec, "prune", ctx, **(calibration_sizes(spec) if scoring else {"tokens": 0, "batch_tokens": 0})
    )
    model, tokenizer, description = source.model, source.tokenizer, source.description  # described once
    ctx.register_model(spec["model"], model.config)
    if spec["importance"] is not None:
        scores = load_scores(scores_dir(spec["importance"], ctx.store))
        check_scores_fit(scores, description, spec["importance"])
    elif spec["ranking"] == "importance":
        scores = _score_now(model, tokenizer, spec, ctx.sub_progress(0.05, 0.6))
    else:
        scores = None
    prune_spec = PruneSpec.from_dict(spec["spec"])
    ctx.progress(0.6, "pruning")
    ranks = dict(
        ranking=spec["ranking"],
        mamba_ranking=spec["mamba_ranking"],
        layer_metric=spec["layer_metric"],
        expert_metric=spec["expert_metric"],
    )
    out = ctx.artifact_path(ARTIFACT.folder, name)
    if source.streamed:  # layer by layer, written shard by shard
        progress = ctx.sub_progress(0.6, 0.95)
        prune_checkpoint(model, prune_spec, out, scores, **ranks, seed=spec["seed"], progress=progress, overwrite=True)
        new_config = AutoConfig.from_pretrained(out)
    else:
        pruned = prune(model, prune_spec, scores, **ranks, seed=spec["seed"], description=description)
        ctx.progress(0.8, "saving")
        save_model(pruned, tokenizer, out, overwrite=True)
        new_config = pruned.config
    ctx.register_model(str(out), new_config)
    # from the pruned config: the layers num_layers dropped are the ones importance chose, not the plan's guess
    parent, planned = estimate_sizes(description), estimate_sizes(new_config)
    params, parent_params = planned.params, parent.params  # exact (tested against transformers' builds)
    result = {
        "strategy": strategy(spec["spec"]),
        "params": params,
        "param_ratio": params / parent_params,
        "flops_per_token": planned.flops_per_token,
        "flops_ratio": planned.flops_per_token / parent.flops_per_token,
        "state_bytes": planned.state_bytes,
        "num_layers": int(new_config.num_hidden_layers),
        "parent_params": parent_params,
        "parent_num_layers": _layer_count(model.config),
        "model_path": str(out),
        "importance": spec["importance"],
        "calib": (spec["calib"] or "demo") if spec["importance"] is None and scores is not None else None,
        "ranking": spec["ranking"],
        "mamba_ranking": spec["mamba_ranking"],
        "expert_metric": spec["expert_metric"],
        "active_params": planned.active_params,
        "parent_active_params": parent.active_params,
    }
    ctx.finish_run("candidates", run_id, out, result)
    ctx.progress(1.0, "done")
    return {"run_id": run_id, "artifact": ctx.relative(out), **result}


def _score_now(model, tokenizer, spec: dict, progress):
    """Importance scores of `model` on the spec's calibration data, kept in memory."""
    from hybridlab import estimate_importance
    from hybridlab.data.calibration import batched, load_calibration

    source = spec["calib"] or "demo"
    rows = load_calibration(source, tokenizer, spec["samples"], spec["seq_len"], model.config.vocab_size)  # [N, T]
    return estimate_importance(
        model,
        batched(rows, spec["batch_size"]),
        layer_metric=layer_metric_arg(spec["layer_metric"]),
        progress=progress,
        layer_samples=spec["layer_samples"],
    )


def _layer_count(config) -> int:
    return len(config.layers_block_type) if hasattr(config, "layers_block_type") else int(config.num_hidden_layers)


KIND = JobKind(
    artifact=ARTIFACT,
    name="prune",
    doc="prune a model to a PruneSpec with importance scores; saves a Hugging Face folder",
    fields=spec_fields(ModelInput, PruneOptions, Calibration, Streaming, JobOptions),
    handler=run,
    check=_check,
)
