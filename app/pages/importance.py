"""Importance: run an importance job or load scores; heatmaps with the current plan overlaid."""

from pathlib import Path

import streamlit as st

from app import state, views
from hybridlab import jobs
from hybridlab.core.paths import workspace_dir
from hybridlab.model.spec import PruneSpec
from hybridlab.store import SUCCEEDED

JOB_KEY = "importance_job"

st.title("Importance")
ref, config = state.require_model()

# A finished importance job selects its scores.
job_id = st.session_state.get(JOB_KEY)
if job_id is not None:
    job = jobs.get_job(job_id)
    if job["status"] == SUCCEEDED and job["spec"]["model"] == ref:
        st.session_state[state.SCORES_KEY] = str(workspace_dir() / job["result"]["artifact"])
        del st.session_state[JOB_KEY]

run_tab, load_tab = st.tabs(["Run importance", "Load scores"])
with run_tab:
    with st.form("importance"):
        cols = st.columns(4)
        samples = cols[0].number_input("calibration samples", 1, 4096, 32)
        seq_len = cols[1].number_input("sequence length", 8, 8192, 128)
        batch_size = cols[2].number_input("batch size", 1, 256, 8)
        metric = cols[3].selectbox(
            "layer metric",
            ["kl", "loss", "cosine", "none"],
            help="kl / loss: one extra pass per layer (drop-one-layer); cosine is free",
        )
        calib = None
        if ref != "demo":
            calib = st.text_input("calibration data", placeholder=".npy token array, text files, .jsonl or .parquet")
        if st.form_submit_button("Run importance", type="primary"):
            spec = {
                "model": ref,
                "samples": int(samples),
                "seq_len": int(seq_len),
                "batch_size": int(batch_size),
                "layer_metric": metric,
                "calib": calib or None,
            }
            st.session_state[JOB_KEY] = state.submit("importance", spec)
    state.show_jobs([st.session_state.get(JOB_KEY)], "importance")

with load_tab:
    runs = jobs.list_importance_runs()
    runs = runs[(runs["model_ref"] == ref) & (runs["status"] == SUCCEEDED)] if not runs.empty else runs
    if len(runs):
        labels = {
            f"#{r.id} {r.name} ({r.finished_at:%Y-%m-%d %H:%M})": str(workspace_dir() / r.artifact)
            for r in runs.itertuples()
        }
        picked = st.selectbox("finished importance runs of this model", list(labels)[::-1])
        if st.button("Load run"):
            st.session_state[state.SCORES_KEY] = labels[picked]
    else:
        st.caption("No finished importance runs for this model yet.")
    folder = st.text_input("or a folder of saved scores (hybridlab importance --out)")
    if st.button("Load folder") and folder:
        if (Path(folder).expanduser() / "scores.json").is_file():
            st.session_state[state.SCORES_KEY] = str(Path(folder).expanduser().resolve())
        else:
            st.error(f"{folder} holds no importance scores (no scores.json); run importance first")

scores = state.current_scores(config)
if scores is None:
    st.info("Run importance or load scores to see the heatmaps.")
    st.stop()
st.caption(
    f"Scores: `{st.session_state[state.SCORES_KEY]}` · {scores.meta.get('samples', '?')} samples, "
    f"{scores.meta.get('tokens', '?')} tokens"
)
plan = PruneSpec.from_dict(st.session_state.get(state.PLAN_KEY) or {})
if not plan.is_empty():
    st.caption(
        f"Crossed out: units the current plan would prune ({plan.to_dict()}); change it on the Prune planner page."
    )
views.importance_charts(scores, config, plan, key="importance")
