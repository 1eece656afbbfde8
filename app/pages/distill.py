"""Distill: a short logit distillation of a pruned candidate from its teacher, with live
KD-loss and validation-loss curves against the teacher's, and cancel."""

import streamlit as st

from app import charts, state
from app.pipeline import distil_and_evaluate, eval_settings, latest_chain
from hybridlab import jobs
from hybridlab.jobs.registry import get_kind
from hybridlab.store import FINISHED, SUCCEEDED

# The curves' job and what this session submitted, to show; chains live in the job engine.
JOB_KEY, WATCH_KEY = "distill_job", "distill_jobs"

st.title("Distill")
ref, config = state.require_model()
missing = get_kind("distill").missing_modules()
if missing:
    st.warning(f"Distillation is not available in this installation ({', '.join(missing)} is missing).")
    st.stop()

candidates = jobs.list_candidates()
if not candidates.empty:
    candidates = candidates[(candidates["model_ref"] == ref) & (candidates["status"] == SUCCEEDED)]
if candidates.empty or "model_path" not in candidates.columns:
    st.info("No pruned candidates of this model yet: make one on the Prune planner page.")
else:
    paths = dict(zip(candidates["name"], candidates["model_path"]))
    with st.form("distill"):
        student = st.selectbox("student (a pruned candidate)", list(paths)[::-1])
        cols = st.columns(4)
        tokens = cols[0].number_input("token budget", 1_000, 10_000_000_000, 200_000, step=10_000)
        lr = cols[1].number_input("learning rate", 1e-6, 1.0, 1e-3, format="%.1e")
        seq_len = cols[2].number_input("sequence length", 16, 8192, 128)
        batch_size = cols[3].number_input("batch size", 1, 512, 8)
        token_files = {}
        if ref != "demo":
            token_files = {
                "train_tokens": st.text_input("training tokens (.npy)") or None,
                "val_tokens": st.text_input("validation tokens (.npy)") or None,
            }
        evaluate = st.checkbox("evaluate the distilled model afterwards (Pareto)", value=True)
        if st.form_submit_button("Start distillation", type="primary"):
            spec = {
                "student": paths[student],
                "teacher": ref,
                "tokens": int(tokens),
                "lr": float(lr),
                "seq_len": int(seq_len),
                "batch_size": int(batch_size),
                **token_files,
            }
            settings = None
            if evaluate:
                try:
                    settings = eval_settings(ref, token_files.get("val_tokens"), 16384, int(seq_len), True)
                except ValueError as err:
                    st.error(str(err))
            if settings or not evaluate:
                submitted = state.submit_all(lambda: distil_and_evaluate(spec, settings))
                if submitted:
                    st.session_state[JOB_KEY] = submitted[0]
                    st.session_state.setdefault(WATCH_KEY, []).extend(submitted)

state.show_jobs(st.session_state.get(WATCH_KEY, [])[-4:] or latest_chain("distill"), "distill")

runs = jobs.list_jobs()
distills = runs[runs["kind"] == "distill"] if not runs.empty else runs
if len(distills):
    ids = list(distills["id"])[::-1]
    current = st.session_state.get(JOB_KEY)
    shown = st.selectbox("curves of distillation job", ids, index=ids.index(current) if current in ids else 0)
    teacher = jobs.list_evaluations()
    teacher = (
        teacher[(teacher["model_ref"] == ref) & (teacher["status"] == SUCCEEDED)] if not teacher.empty else teacher
    )
    teacher_loss = float(teacher["val_loss"].iloc[-1]) if len(teacher) and "val_loss" in teacher else None

    @st.fragment(run_every=state.POLL_S if jobs.get_job(shown)["status"] not in FINISHED else None)
    def curves():
        metrics = jobs.job_metrics(shown)
        if metrics.empty:
            st.caption("No metrics yet.")
            return
        validation = metrics[metrics["name"].str.contains("val")]
        training = metrics[~metrics["name"].str.contains("val")]
        left, right = st.columns(2)
        left.plotly_chart(charts.metric_curves(training, "Training (KD loss)"), width="stretch", key="train-curves")
        right.plotly_chart(
            charts.metric_curves(validation, "Validation loss", teacher_loss), width="stretch", key="val-curves"
        )

    curves()
