"""Depth versus width at one parameter budget, as jobs: the best width-only, depth-only and mixed
candidates (three `search` jobs, each restricted by SearchSpace.strategy, ranking zero-shot), then
for each one a chain: prune -> eval (zero-shot), distill -> eval (distilled) and bench (timed in
pairs with the teacher). Plain functions, no Streamlit: the page and the tests call the same ones.

A comparison is a request file, <workspace>/depth_vs_width/<key>.json, naming its jobs. The
job engine runs each chain by itself once submitted; what cannot be submitted yet is what needs
a finished job's answer: the searches need importance scores (an importance job when the model
has none), and a candidate's prune job needs the spec its search chose. `advance` submits those
as soon as the answer is in the store; the page calls it on every poll and on every visit, and
job names make a second submission of the same stage fail instead of running twice.
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
REFUSED = "refused"  # a chain's record when its submission was refused: the reason


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


def start(model: str, settings: CompareSettings, scores: str | None = None, workspace=None) -> dict:
    """A new comparison: importance first when `scores` is None, then everything `advance` can submit.
    ValueError (one line) when a job is refused: nothing of the comparison is left queued."""
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
    if scores is None:
        spec = {
            "model": model,
            "calib": settings.calib,
            "samples": settings.importance_samples,
            "seq_len": settings.seq_len,
            "layer_metric": "kl",
            "dtype": settings.dtype,
        }
        request["jobs"]["importance"] = jobs.submit("importance", spec, workspace)
    save(request, workspace)
    return advance(request, workspace)


def advance(request: dict, workspace=None) -> dict:
    """Submit every stage of `request` whose inputs are now in the store; the request, saved."""
    submitted = request["jobs"]
    changed = False
    if request["scores"] is None:
        job = jobs.get_job(submitted["importance"], workspace)
        if job["status"] != SUCCEEDED:
            return request
        request["scores"] = str(workspace_dir(workspace) / job["result"]["artifact"])
        changed = True
    if "searches" not in submitted:
        submitted["searches"] = _submit_searches(request, workspace)
        submitted["teacher_eval"] = jobs.submit("eval", _eval_spec(request["model"], request), workspace)
        save(request, workspace)  # before anything else can fail: these must never be submitted twice
        changed = False
    chains = submitted.setdefault("chains", {})
    for strategy, search_id in submitted["searches"].items():
        if strategy in chains:
            continue
        job = jobs.get_job(search_id, workspace)
        if job["status"] == SUCCEEDED:
            spec = json.loads(job["result"]["best"]["spec"])
            try:
                chains[strategy] = _submit_chain(request, strategy, spec, workspace)
            except ValueError as err:  # recorded, not retried on every poll
                chains[strategy] = {REFUSED: f"the {LABELS[strategy]} chain was refused: {err}"}
            changed = True
    return save(request, workspace) if changed else request


def _settings(request: dict) -> CompareSettings:
    return CompareSettings.from_dict(request["settings"])


def _layer_metric(request: dict) -> str:
    from hybridlab.compression.scores_fit import load_scores

    layers = load_scores(request["scores"]).layers
    return "kl" if "kl" in layers else next(iter(layers))


def _submit_searches(request: dict, workspace) -> dict[str, int]:
    s = _settings(request)
    common = {
        "model": request["model"],
        "importance": request["scores"],
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
        "layer_metric": _layer_metric(request),
        "dtype": s.dtype,
    }
    bounds = {  # a strategy's other axis stays whole, so its enumeration stays small
        "width": {"max_width_prune": s.max_width_prune, "max_depth_prune": 0.0},
        "depth": {"max_width_prune": 0.0, "max_depth_prune": s.max_depth_prune},
        # the paper's mix keeps most layers; up to half of them keeps its space (widths x depths) quick to list
        "mixed": {"max_width_prune": s.max_width_prune, "max_depth_prune": min(s.max_depth_prune, 0.5)},
    }
    specs = {
        strategy: {**common, **bounds[strategy], "strategy": strategy, "name": f"{request['key']}-{strategy}-search"}
        for strategy in STRATEGIES
    }
    # Each is checked when submitted (its whole candidate space is enumerated, seconds for a mixed one):
    # a refusal cancels those before it, so no search of a refused comparison runs.
    return _submit_all([("search", spec, None) for spec in specs.values()], workspace, list(specs))


def _eval_spec(model: str, request: dict) -> dict:
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


def _submit_chain(request: dict, strategy: str, spec: dict, workspace) -> dict[str, int]:
    """prune -> eval; distill -> eval, bench (paired with the teacher), all waiting in the job engine."""
    s = _settings(request)
    key, model = request["key"], request["model"]
    steps = max(1, s.distill_tokens // (s.batch_size * s.seq_len))
    prune = {
        "model": model,
        "spec": spec,
        "importance": request["scores"],
        "layer_metric": _layer_metric(request),
        "name": f"{key}-{strategy}",
        "dtype": s.dtype,
    }
    prune_id = jobs.submit("prune", prune, workspace)
    try:
        distill = {
            "student": job_ref(prune_id),
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
        todo = [("eval", _eval_spec(job_ref(prune_id), request), prune_id), ("distill", distill, prune_id)]
        ids = _submit_all(todo, workspace, ["zero_shot", "distill"])
        bench = {
            "model": job_ref(ids["distill"]),
            "reference": model,
            "seq_len": s.seq_len,
            "new_tokens": 2,
            "repeats": s.bench_repeats,
            "warmup": 1,
            "dtype": s.dtype,
        }
        later = [("eval", _eval_spec(job_ref(ids["distill"]), request), None), ("bench", bench, None)]
        ids.update(_submit_all(later, workspace, ["distilled", "bench"]))
    except ValueError:
        jobs.cancel(prune_id, workspace)  # its waiting dependents are cancelled with it
        raise
    return {"prune": prune_id, **ids}


def _submit_all(todo: list[tuple[str, dict, int | None]], workspace, names: list[str]) -> dict[str, int]:
    submitted = {}
    try:
        for name, (kind, spec, after) in zip(names, todo):
            submitted[name] = jobs.submit(kind, spec, workspace, after=after)
    except ValueError:
        for job_id in submitted.values():
            jobs.cancel(job_id, workspace)
        raise
    return submitted


def job_ids(request: dict) -> list[int]:
    """Every job of the comparison, in submission order."""
    found = [request["jobs"][k] for k in ("importance", "teacher_eval") if k in request["jobs"]]
    found += list(request["jobs"].get("searches", {}).values())
    for chain in request["jobs"].get("chains", {}).values():
        found += [chain[step] for step in CHAIN if step in chain]  # none for a refused chain
    return found


def active(request: dict, workspace=None) -> bool:
    """Whether anything of the comparison may still change: a job not finished, or a stage not submitted."""
    statuses = {j: jobs.get_job(j, workspace)["status"] for j in job_ids(request)}
    if any(status not in FINISHED for status in statuses.values()):
        return True
    stuck = any(status in (FAILED, CANCELLED) for status in statuses.values()) or any(
        REFUSED in chain for chain in request["jobs"].get("chains", {}).values()
    )
    searches = request["jobs"].get("searches", {})
    waiting = not searches or any(s not in request["jobs"].get("chains", {}) for s in searches)
    return waiting and not stuck


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
        if REFUSED in chain:
            column.error = chain[REFUSED]
        elif scoring_failed and request["scores"] is None:
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
        if chain and REFUSED not in chain:
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
