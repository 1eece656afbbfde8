"""Depth versus width at one parameter budget, as jobs: the best width-only, depth-only and mixed
candidates (three `search` jobs, each restricted by SearchSpace.strategy, ranking zero-shot), then
for each one a chain: prune -> eval (zero-shot), distill -> eval (distilled) and bench (timed in
pairs with the teacher). Plain functions, no Streamlit: the page and the tests call the same ones.

A comparison is a request file, <workspace>/depth_vs_width/<key>.json, naming its jobs. Every job
is submitted at once, in one quick call: a stage that needs an earlier job's answer names it with
"job:N" (an importance job's scores for the searches and prunes, a search's chosen spec for its
prune, a prune or distill job's model for what follows; hybridlab.jobs.parents), and the job engine
runs the chain by itself, with the tab closed too. Submitting checks only what is cheap (the model,
the token files, that the budget is reachable); whether a candidate lands within tolerance of the
budget is the search's own first step, in the worker, and its one-line reason shows in the column.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from hybridlab import jobs
from hybridlab.core.atomic import write_json
from hybridlab.core.paths import DEMO_VAL, demo_dir, workspace_dir
from hybridlab.search.space import STRATEGIES
from hybridlab.store import CANCELLED, FAILED, FINISHED, SUCCEEDED, job_ref
from hybridlab.study import stats

LABELS = {"width": "width only", "depth": "depth only", "mixed": "mixed"}
FOLDER = "depth_vs_width"
CHAIN = ("prune", "zero_shot", "distill", "distilled", "bench")  # a candidate's jobs, in order


@dataclass
class CompareSettings:
    """What a comparison runs with; the defaults take minutes on the demo on a laptop CPU."""

    target: str = "50%"  # of the model's parameters, or a count (search.space.parse_target)
    tolerance: float = 0.03
    candidates: int = 4  # ranked zero-shot per strategy
    max_width_prune: float = 0.5
    # at 50% of the demo, depth alone must drop 12 of 17 layers: its embeddings and head stay whole
    max_depth_prune: float = 0.85
    seq_len: int = 128
    eval_tokens: int = 8192  # validation windows of seq_len: the intervals resample them
    distill_tokens: int = 50_000
    batch_size: int = 8
    bench_repeats: int = 5  # paired rounds (candidate, teacher, candidate, ...)
    dtype: str = "float32"  # the demo is stored in bf16, which this kind of CPU runs several times slower
    importance_samples: int = 32
    calib: str | None = None  # token files, required for a model other than the demo
    train_tokens: str | None = None
    val_tokens: str | None = None

    @classmethod
    def from_dict(cls, values: dict) -> CompareSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# a budget a test or a first look finishes in well under a minute on the demo
QUICK = CompareSettings(
    candidates=1, eval_tokens=1024, seq_len=64, distill_tokens=1024, batch_size=4, bench_repeats=3, importance_samples=4
)


# ---- the request file ------------------------------------------------------------------------------


def requests_dir(workspace=None) -> Path:
    return workspace_dir(workspace) / FOLDER


def save(request: dict, workspace=None) -> dict:
    folder = requests_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{request['key']}.json", request)
    return request


def load(key: str, workspace=None) -> dict:
    return json.loads((requests_dir(workspace) / f"{key}.json").read_text())


def comparisons_of(model: str, workspace=None) -> list[str]:
    """Keys of this model's comparisons, newest first."""
    found = []
    for path in requests_dir(workspace).glob("dvw-*.json"):
        try:
            request = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a file being replaced: listed next time
        if request.get("model") == model:
            found.append(request["key"])
    return sorted(found, reverse=True)


# ---- submitting -------------------------------------------------------------------------------------


def find_scores(model: str, workspace=None) -> str | None:
    """The newest finished importance run of `model` that has layer scores (depth needs them): its folder."""
    from hybridlab.compression.scores_fit import load_scores

    runs = jobs.list_importance_runs(workspace)
    if runs.empty:
        return None
    done = runs[(runs["model_ref"] == model) & (runs["status"] == SUCCEEDED)].sort_values("id", ascending=False)
    for artifact in done["artifact"]:
        folder = workspace_dir(workspace) / artifact
        try:
            if load_scores(folder).layers:
                return str(folder)
        except (OSError, ValueError):
            continue
    return None


@dataclass(frozen=True)
class After:
    """A spec value standing for what the job of plan step `step` makes ("job:N" once it has an id)."""

    step: str


def start(model: str, settings: CompareSettings, scores: str | None = None, workspace=None) -> dict:
    """A new comparison, every job of it submitted in one call (importance first when `scores` is None).
    ValueError (one line) when a job is refused: every spec is checked before any is submitted, so a
    refusal leaves no job behind."""
    for key, value in (("calib", settings.calib), ("train_tokens", settings.train_tokens),
                       ("val_tokens", settings.val_tokens)):  # fmt: skip
        if model != "demo" and value is None and (key != "calib" or scores is None):
            raise ValueError(f"comparing candidates of a local model needs '{key}': a 1-D uint16 .npy token file")
    request = {
        "key": f"dvw-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
        "model": model,
        "settings": asdict(settings),
        "scores": scores,
        "jobs": {},
    }
    steps = plan(request)
    for _, kind, spec in steps:  # cheap checks only: references stand in for what the parents will make
        jobs.validate_spec(kind, _filled(spec, lambda step: 1))
    ids: dict[str, int] = {}
    try:
        for step, kind, spec in steps:
            ids[step] = jobs.submit(kind, _filled(spec, ids.__getitem__), workspace)
    except ValueError:
        for job_id in ids.values():
            jobs.cancel(job_id, workspace)  # its waiting dependents are cancelled with it
        raise
    request["jobs"] = _nested(ids)
    return save(request, workspace)


def plan(request: dict) -> list[tuple[str, str, dict]]:
    """(step, kind, spec) of every job of a comparison, parents first. Steps: "importance" (when the
    request has no scores), "teacher_eval", "search/<strategy>", "<strategy>/<chain step>"."""
    s = _settings(request)
    model = request["model"]
    steps = []
    if request["scores"] is None:
        importance = {"model": model, "calib": s.calib, "samples": s.importance_samples, "seq_len": s.seq_len,
                      "layer_metric": "kl", "dtype": s.dtype}  # fmt: skip
        steps.append(("importance", "importance", importance))
        scores, layer_metric = After("importance"), "kl"
    else:
        scores, layer_metric = request["scores"], _layer_metric(request["scores"])
    steps.append(("teacher_eval", "eval", _eval_spec(model, request)))
    for strategy, spec in _search_specs(request, scores, layer_metric).items():
        steps.append((f"search/{strategy}", "search", spec))
    for strategy in STRATEGIES:
        steps += _chain(request, strategy, scores, layer_metric)
    return steps


def _filled(spec: dict, job_id) -> dict:
    """`spec` with each After replaced by "job:N", N = job_id(its step)."""
    return {k: job_ref(job_id(v.step)) if isinstance(v, After) else v for k, v in spec.items()}


def _nested(ids: dict[str, int]) -> dict:
    """The request's record of its jobs: importance, teacher_eval, searches[strategy], chains[strategy][step]."""
    nested: dict = {"searches": {}, "chains": {strategy: {} for strategy in STRATEGIES}}
    for step, job_id in ids.items():
        group, _, name = step.partition("/")
        if not name:
            nested[step] = job_id
        elif group == "search":
            nested["searches"][name] = job_id
        else:
            nested["chains"][group][name] = job_id
    return nested


def _settings(request: dict) -> CompareSettings:
    return CompareSettings.from_dict(request["settings"])


def _layer_metric(folder: str) -> str:
    from hybridlab.compression.scores_fit import load_scores

    layers = load_scores(folder).layers
    return "kl" if "kl" in layers else next(iter(layers))


def scores_of(request: dict, workspace=None) -> str | None:
    """The comparison's scores folder: the one it was given, or its importance job's once that finished."""
    if request["scores"] is not None:
        return request["scores"]
    job = jobs.get_job(request["jobs"]["importance"], workspace)
    return str(workspace_dir(workspace) / job["result"]["artifact"]) if job["status"] == SUCCEEDED else None


def _search_specs(request: dict, scores, layer_metric: str) -> dict[str, dict]:
    s = _settings(request)
    common = {
        "model": request["model"],
        "importance": scores,
        "train_tokens": s.train_tokens,
        "val_tokens": s.val_tokens,
        "target_params": s.target,
        "tolerance": s.tolerance,
        "max_candidates": s.candidates,
        "top_k": 0,  # rank zero-shot only: each chain distils its one best
        "tokens": 0,
        "seq_len": s.seq_len,
        "eval_tokens": s.eval_tokens,
        "measure_latency": False,  # the chain's bench times the distilled model in pairs
        "layer_metric": layer_metric,
        "dtype": s.dtype,
    }
    bounds = {  # a strategy's other axis stays whole, so its enumeration stays small
        "width": {"max_width_prune": s.max_width_prune, "max_depth_prune": 0.0},
        "depth": {"max_width_prune": 0.0, "max_depth_prune": s.max_depth_prune},
        # the paper's mix keeps most layers; up to half of them keeps its space (widths x depths) quick to list
        "mixed": {"max_width_prune": s.max_width_prune, "max_depth_prune": min(s.max_depth_prune, 0.5)},
    }
    return {
        strategy: {**common, **bounds[strategy], "strategy": strategy, "name": f"{request['key']}-{strategy}-search"}
        for strategy in STRATEGIES
    }


def _eval_spec(model, request: dict) -> dict:
    s = _settings(request)
    demo = request["model"] == "demo"  # a "job:N" model made from the demo needs the demo's file named
    return {
        "model": model,
        "tasks": ["val_loss"],
        "val_tokens": s.val_tokens or (str(demo_dir() / DEMO_VAL) if demo else None),
        "max_tokens": s.eval_tokens,
        "seq_len": s.seq_len,
        "dtype": s.dtype,
    }


def _chain(request: dict, strategy: str, scores, layer_metric: str) -> list[tuple[str, str, dict]]:
    """The search's choice pruned -> eval; distill -> eval, bench (paired with the teacher)."""
    s = _settings(request)
    key, model = request["key"], request["model"]
    steps = max(1, s.distill_tokens // (s.batch_size * s.seq_len))
    pruned, distilled = After(f"{strategy}/prune"), After(f"{strategy}/distill")
    prune = {
        "model": model,
        "spec": After(f"search/{strategy}"),  # the spec that search chose
        "importance": scores,
        "layer_metric": layer_metric,
        "name": f"{key}-{strategy}",
        "dtype": s.dtype,
    }
    distill = {
        "student": pruned,
        "teacher": model,
        "train_tokens": s.train_tokens,
        "val_tokens": s.val_tokens,
        "tokens": s.distill_tokens,
        "seq_len": s.seq_len,
        "batch_size": s.batch_size,
        "bf16": False,
        "log_every": max(1, steps // 20),
        "eval_every": max(1, steps // 5),  # about five points on the curve
        "checkpoint_every": steps,
        "eval_tokens": min(s.eval_tokens, 4096),
        "name": f"{key}-{strategy}-distilled",
        "dtype": s.dtype,
    }
    bench = {
        "model": distilled,
        "reference": model,
        "seq_len": s.seq_len,
        "new_tokens": 2,
        "repeats": s.bench_repeats,
        "warmup": 1,
        "dtype": s.dtype,
    }
    todo = {
        "prune": ("prune", prune),
        "zero_shot": ("eval", _eval_spec(pruned, request)),
        "distill": ("distill", distill),
        "distilled": ("eval", _eval_spec(distilled, request)),
        "bench": ("bench", bench),
    }
    return [(f"{strategy}/{step}", *todo[step]) for step in CHAIN]


def job_ids(request: dict) -> list[int]:
    """Every job of the comparison, in submission order."""
    found = [request["jobs"][k] for k in ("importance", "teacher_eval") if k in request["jobs"]]
    found += list(request["jobs"].get("searches", {}).values())
    for chain in request["jobs"].get("chains", {}).values():
        found += [chain[step] for step in CHAIN if step in chain]
    return found


def active(request: dict, workspace=None) -> bool:
    """Whether anything of the comparison may still change: a job not finished yet."""
    return any(jobs.get_job(j, workspace)["status"] not in FINISHED for j in job_ids(request))


# ---- reading the results ------------------------------------------------------------------------------


@dataclass
class Column:
    """One candidate as the page shows it (from jobs, or from a study's arm)."""

    strategy: str
    status: str  # what is happening, in words
    name: str | None = None
    spec: dict | None = None
    params: float | None = None
    param_ratio: float | None = None
    zero_shot: stats.Interval | None = None
    distilled: stats.Interval | None = None
    zero_shot_windows: np.ndarray | None = None  # [S, W]: paired differences between columns
    distilled_windows: np.ndarray | None = None
    speedup: tuple[float, float | None, float | None] | None = None  # estimate, low, high
    speedup_note: str = ""
    seeds: int = 1
    distill_job: int | None = None
    model: str | None = None  # the distilled model's folder (the Pareto chart's row)
    error: str | None = None


def columns(request: dict, workspace=None) -> tuple[list[Column], stats.Interval | None]:
    """(one Column per strategy, the teacher's loss interval) from the store."""
    get = lambda job_id: jobs.get_job(job_id, workspace) if job_id is not None else None  # noqa: E731
    submitted = request["jobs"]
    teacher = _windows(get(submitted.get("teacher_eval")))
    importance = get(submitted.get("importance"))
    scoring_failed = importance is not None and importance["status"] in (FAILED, CANCELLED)
    out = []
    for strategy in STRATEGIES:
        column = Column(strategy, "waiting for importance scores" if request["scores"] is None else "queued")
        search = get(submitted.get("searches", {}).get(strategy))
        chain = submitted.get("chains", {}).get(strategy, {})
        steps = [get(chain.get(step)) for step in CHAIN]
        failed = [job for job in (search, *steps) if job and job["status"] in (FAILED, CANCELLED)]
        if scoring_failed and request["scores"] is None:
            column.error = f"importance job {importance['id']} {importance['status']}: {importance['error']}"
        elif failed:
            column.error = f"job {failed[0]['id']} ({failed[0]['kind']}) {failed[0]['status']}: {failed[0]['error']}"
        if search is not None:
            column.status = f"search: {search['status']}" + (f" · {search['message']}" if search["message"] else "")
            if search["status"] == SUCCEEDED:
                best = search["result"]["best"]
                column.name, column.spec, column.params = best["name"], json.loads(best["spec"]), best["params"]
        prune = get(chain.get("prune"))
        if prune is not None and prune["status"] == SUCCEEDED:
            column.params = prune["result"].get("params", column.params)
            column.param_ratio = prune["result"].get("param_ratio")
        column.zero_shot_windows = _windows(get(chain.get("zero_shot")))
        column.distilled_windows = _windows(get(chain.get("distilled")))
        column.zero_shot = _interval(column.zero_shot_windows)
        column.distilled = _interval(column.distilled_windows)
        column.distill_job = chain.get("distill")
        distill = get(column.distill_job)
        if distill is not None and distill["status"] == SUCCEEDED:
            column.model = distill["result"].get("model_path")
        bench = get(chain.get("bench"))
        if bench is not None and bench["status"] == SUCCEEDED:
            prefill = (bench["result"].get("paired") or {}).get("prefill")
            if prefill:
                column.speedup = (prefill["speedup"], prefill.get("speedup_low"), prefill.get("speedup_high"))
                column.speedup_note = f"prefill of {bench['spec']['seq_len']} tokens, {bench['spec']['repeats']} rounds"
        if search is not None and search["status"] == SUCCEEDED and chain:
            column.status = _chain_status(chain, get)
        out.append(column)
    return out, _interval(teacher)


def _chain_status(chain: dict, get) -> str:
    for step in CHAIN:
        job = get(chain.get(step))
        if job is not None and job["status"] != SUCCEEDED:
            message = f" · {job['message']}" if job["message"] and job["message"] != job["status"] else ""
            return f"{step.replace('_', '-')}: {job['status']}{message}"
    return "done"


def _windows(job: dict | None) -> np.ndarray | None:
    if job is None or job["status"] != SUCCEEDED:
        return None
    losses = job["result"].get("tasks", {}).get("val_loss", {}).get("window_losses")
    return None if not losses else np.asarray(losses, dtype=np.float64)[None, :]  # [1, W]


def _interval(windows: np.ndarray | None) -> stats.Interval | None:
    return None if windows is None else stats.bootstrap_mean(windows)


def differences(cols: list[Column], stage: str = "distilled") -> list[dict]:
    """Every pair of columns with losses on the same seeds and windows: A - B, its paired interval, the verdict."""
    rows = []
    have = [c for c in cols if getattr(c, f"{stage}_windows") is not None]
    for i, a in enumerate(have):
        for b in have[i + 1 :]:
            table_a, table_b = getattr(a, f"{stage}_windows"), getattr(b, f"{stage}_windows")
            if table_a.shape != table_b.shape:
                continue
            difference = stats.paired_difference(table_a, table_b)
            rows.append(
                {
                    "A": LABELS[a.strategy],
                    "B": LABELS[b.strategy],
                    "A - B (nats)": difference.text(signed=True),
                    "verdict": stats.verdict(LABELS[a.strategy], LABELS[b.strategy], difference),
                }
            )
    return rows


def curves(column: Column, workspace=None):
    """The distillation job's metrics (step, name, value), or an empty frame."""
    import pandas as pd

    if column.distill_job is None:
        return pd.DataFrame(columns=["step", "name", "value"])
    return jobs.job_metrics(column.distill_job, workspace)
