"""'Prune and evaluate' and 'distil and evaluate' as chains of jobs, submitted in one go:
the eval job (validation loss) and, optionally, the bench job (measured latency) of the
model a prune or distill job will write wait for that job in the job engine (`after=`,
model "job:N"), so they run even if the tab that submitted them is closed right away.
Plain functions, no Streamlit: the pages and the tests call the same ones.
"""

from __future__ import annotations

from hybridlab import jobs
from hybridlab.core.paths import DEMO_VAL, demo_dir
from hybridlab.store import QUEUED, RUNNING, SUCCEEDED, WAITING, job_ref


def eval_settings(parent: str, val_tokens: str | None, max_tokens: int, seq_len: int, bench: bool) -> dict:
    """What every follow-up of one parent model uses. Raises ValueError when a non-demo
    parent comes without validation tokens (the eval job could not run)."""
    if val_tokens is None:
        if parent != "demo":
            raise ValueError(
                "evaluating candidates of a local model needs validation tokens: "
                "give a 1-D uint16 .npy token file in 'validation tokens'"
            )
        val_tokens = str(demo_dir() / DEMO_VAL)
    return {"val_tokens": val_tokens, "max_tokens": int(max_tokens), "seq_len": int(seq_len), "bench": bool(bench)}


def model_jobs(model: str, settings: dict) -> list[tuple[str, dict]]:
    """(kind, spec) of the jobs that measure one model (a ref or "job:N") for the comparison."""
    todo = [
        (
            "eval",
            {
                "model": model,
                "tasks": ["val_loss"],
                "val_tokens": settings["val_tokens"],
                "max_tokens": settings["max_tokens"],
                "seq_len": settings["seq_len"],
            },
        )
    ]
    if settings["bench"]:
        todo.append(("bench", {"model": model, "seq_len": settings["seq_len"], "new_tokens": 8, "repeats": 3}))
    return todo


def prune_and_evaluate(
    model: str,
    plan: dict,
    importance,
    name: str | None,
    settings: dict,
    workspace=None,
    expert_metric: str | None = None,
) -> list[int]:
    """Submit a prune job, the eval (and bench) jobs of the candidate it will write, waiting
    for it, and the teacher's own unless it is measured or being measured already.
    Returns the job ids, the prune job first. A refused job (JobSpecError, a ValueError)
    cancels those submitted before it, so no half chain is left behind.
    expert_metric: how the prune job ranks routed experts (mixtures of experts; None: its default)."""
    spec = {"model": model, "spec": plan, "importance": importance, "name": name}
    if expert_metric is not None:
        spec["expert_metric"] = expert_metric
    teacher = [] if teacher_measured(model, workspace) else model_jobs(model, settings)
    return _submit_chain("prune", spec, settings, teacher, workspace)


def distil_and_evaluate(spec: dict, settings: dict | None, workspace=None) -> list[int]:
    """Submit a distill job and, with `settings`, the eval (and bench) jobs of the model it
    will write, waiting for it. Returns the job ids, the distill job first."""
    return _submit_chain("distill", spec, settings, [], workspace)


def teacher_measured(model: str, workspace=None) -> bool:
    """Whether `model` has a validation loss, or an eval job for it that has not ended yet."""
    evaluations = jobs.list_evaluations(workspace)
    if (
        not evaluations.empty
        and ((evaluations["model_ref"] == model) & evaluations["status"].isin([SUCCEEDED, RUNNING])).any()
    ):
        return True
    listing = jobs.list_jobs(workspace)
    pending = listing[(listing["kind"] == "eval") & listing["status"].isin([WAITING, QUEUED])]
    return any(jobs.get_job(int(j), workspace)["spec"].get("model") == model for j in pending["id"])


def _submit_chain(kind: str, spec: dict, settings: dict | None, also: list, workspace) -> list[int]:
    # Every follow-up is checked before anything is submitted, with the model its parent starts from
    # standing in for the one it will write (same vocabulary and limits): a refused follow-up then
    # leaves no job behind, not even a cancelled one.
    source = spec.get("model") or spec.get("student")
    stand_ins = model_jobs(source, settings) if settings and source else []
    for follow_kind, follow_spec in [*stand_ins, *also]:
        jobs.validate_spec(follow_kind, follow_spec)
    submitted = []
    try:
        parent = jobs.submit(kind, spec, workspace)
        submitted.append(parent)
        follow_ups = model_jobs(job_ref(parent), settings) if settings else []
        for follow_kind, follow_spec in follow_ups:
            submitted.append(jobs.submit(follow_kind, follow_spec, workspace, after=parent))
        for other_kind, other_spec in also:
            submitted.append(jobs.submit(other_kind, other_spec, workspace))
    except ValueError:
        for job_id in submitted:
            jobs.cancel(job_id, workspace)
        raise
    return submitted


def latest_chain(kind: str, workspace=None) -> list[int]:
    """The newest `kind` job and every job waiting on it, directly or not: what a page shows
    when this session submitted nothing (a reload, another tab), read from the store."""
    listing = jobs.list_jobs(workspace)
    roots = listing[listing["kind"] == kind]["id"]
    if roots.empty:
        return []
    chain = {int(roots.max())}
    for job_id, parents in zip(listing["id"], listing["parents"]):  # by id: parents come before children
        if chain & set(parents):
            chain.add(int(job_id))
    return sorted(chain)
