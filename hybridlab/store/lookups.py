"""Single-row lookups the job kinds need when they check a spec: where a finished run's artifact is.

Each raises ValueError naming the run and what to do, so a spec that points at a missing or
unfinished run is refused at submission with a clear message.
"""

from __future__ import annotations

from pathlib import Path

from hybridlab.store.db import Store


def importance_scores_dir(store: Store, run_id: int) -> Path:
    """The scores folder of importance run `run_id`."""
    rows = store.query("SELECT status, artifact FROM importance_runs WHERE id = ?", (run_id,))
    if not rows:
        raise ValueError(f"importance run {run_id} does not exist; see list_importance_runs()")
    if rows[0]["artifact"] is None:
        raise ValueError(
            f"importance run {run_id} has no scores (status {rows[0]['status']}); "
            "wait for it to finish or run importance again"
        )
    return store.workspace / rows[0]["artifact"]


def candidate_model_dir(store: Store, candidate_id: int) -> Path:
    """The model folder of candidate run `candidate_id`."""
    rows = store.query("SELECT artifact FROM candidates WHERE id = ?", (candidate_id,))
    if not rows or rows[0]["artifact"] is None:
        raise ValueError(f"candidate {candidate_id} does not exist or has no model yet; see list_candidates()")
    return store.workspace / rows[0]["artifact"]
