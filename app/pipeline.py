"""'Prune and evaluate' and 'distil and evaluate' as chains of jobs: when a prune or
distill job succeeds, its model gets an eval job (validation loss) and, optionally, a
bench job (measured latency). Plain functions; app.state keeps the chains in the session.
"""

from __future__ import annotations

from hybridlab.core.paths import DEMO_VAL, demo_dir


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
    """(kind, spec) of the jobs that measure one model for the comparison."""
    jobs = [
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
        jobs.append(("bench", {"model": model, "seq_len": settings["seq_len"], "new_tokens": 8, "repeats": 3}))
    return jobs


def follow_ups(job: dict, settings: dict) -> list[tuple[str, dict]] | None:
    """Jobs to submit now that `job` (a get_job() dict) moved on: [] when it failed or was
    cancelled, None while it is still queued or running."""
    if job["status"] in ("queued", "running"):
        return None
    if job["status"] != "succeeded":
        return []
    model = (job.get("result") or {}).get("model_path")
    return model_jobs(model, settings) if model else []
