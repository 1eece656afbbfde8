"""Streamlit glue shared by the pages: the chosen model, cached configs and scores,
job submission with clear errors, and a non-blocking job progress view."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from hybridlab import jobs
from hybridlab.store import FAILED, FINISHED, parse_job_ref

MODEL_KEY, SCORES_KEY, PLAN_KEY = "model_ref", "scores_dir", "plan_spec"
# The URL's ?model= names the chosen model: a reload or a reconnect starts a new session, which
# would otherwise fall back to the demo teacher while the user works on their own checkpoint
MODEL_PARAM = "model"
RESTORED_KEY = "model_restored"
EXPERT_METRIC_KEY = "expert_metric"  # which expert score ranks routed experts: the heatmap's and the prune job's
POLL_S = 1.5


# ---- the model everything refers to -----------------------------------------------------


def check_model(text: str):
    """'demo' or a folder -> (normalised ref, config); ValueError naming the problem."""

    from hybridlab.jobs.specs import model_ref
    from hybridlab.model.checks import describe_config, resolve_model_dir

    if parse_job_ref(text.strip()) is not None:  # model_ref lets "job:N" through for job specs only
        raise ValueError(f"{text.strip()!r} names a job's model, not a folder; give 'demo' or a model folder")
    ref = model_ref(text.strip())  # ValueError: missing demo, not a folder, no config.json
    config = load_config(ref, _mtime(resolve_model_dir(ref) / "config.json"))
    describe_config(config)  # UserError: an unsupported family or layer type (e.g. mixture of experts)
    return ref, config


@st.cache_resource(show_spinner=False, max_entries=16)
def load_config(ref: str, mtime: float):
    from hybridlab.model.checks import read_config

    return read_config(ref)  # UserError: not JSON, or a config transformers cannot read


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def restore_model(demo_shipped: bool) -> str | None:
    """A new session's model: the one its URL names, else the demo teacher where it is shipped. Returns a
    one-line warning when the URL names a model that cannot be opened (then the fallback applies)."""
    if MODEL_KEY in st.session_state or st.session_state.get(RESTORED_KEY):
        return None
    st.session_state[RESTORED_KEY] = True  # once a session: without a demo a bad link would warn on every run
    wanted, problem = st.query_params.get(MODEL_PARAM), None
    if wanted:
        try:
            st.session_state[MODEL_KEY] = check_model(wanted)[0]
            return None
        except ValueError as err:
            problem = f"The link's model could not be opened: {err}"
    if demo_shipped:
        st.session_state[MODEL_KEY] = "demo"
    return problem


def remember_model() -> None:
    """Every run: the URL names the chosen model (moving to another page clears query parameters)."""
    ref = st.session_state.get(MODEL_KEY)
    if ref is None:
        st.query_params.pop(MODEL_PARAM, None)
    elif st.query_params.get(MODEL_PARAM) != ref:
        st.query_params[MODEL_PARAM] = ref


def current_model():
    """(ref, config) of the chosen model, or None after telling the user to pick one."""
    ref = st.session_state.get(MODEL_KEY)
    if ref is None:
        st.info("Choose a model on the **Model** page first.")
        return None
    try:
        return check_model(ref)
    except ValueError as err:
        st.error(str(err))
        return None


def require_model():
    """(ref, config) of the chosen model; otherwise the page stops after saying why."""
    chosen = current_model()
    if chosen is None:
        st.stop()
    return chosen


def model_label(ref: str) -> str:
    return "demo teacher" if ref == "demo" else Path(ref).name


# ---- importance scores ---------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=8)
def load_scores(path: str, mtime: float):
    from hybridlab.compression.scores_fit import load_scores as load

    return load(path)  # UserError for a damaged scores folder


def current_scores(config):
    """The selected ImportanceScores if they fit the model, else None (with a message)."""
    path = st.session_state.get(SCORES_KEY)
    if not path:
        return None
    from hybridlab.compression.scores_fit import check_scores_fit

    try:
        scores = load_scores(path, _mtime(Path(path) / "scores.json"))
        check_scores_fit(scores, config, path)  # family, layer pattern and every per-axis size
    except (FileNotFoundError, ValueError) as err:
        st.error(str(err))
        return None
    return scores


def expert_metric() -> str:
    """The expert score chosen on the Experts heatmap (routing mass until one is chosen)."""
    from hybridlab.compression.importance import EXPERT_METRICS

    return st.session_state.get(EXPERT_METRIC_KEY) or EXPERT_METRICS[0]


# ---- jobs ----------------------------------------------------------------------------------


def submit(kind: str, spec: dict) -> int | None:
    """Submit a job and make sure a worker runs it; a bad spec becomes an st.error."""
    submitted = submit_all(lambda: [jobs.submit(kind, spec)])
    return submitted[0] if submitted else None


def submit_all(make) -> list[int]:
    """Call `make()`, which submits jobs (a chain: app.pipeline) and returns their ids, and make
    sure a worker runs them; a refused job becomes an st.error and the result is []."""
    try:
        job_ids = make()
    except ValueError as err:  # JobSpecError is a ValueError
        st.error(str(err))
        return []
    try:
        jobs.ensure_worker()
    except RuntimeError as err:
        st.error(f"jobs {', '.join(map(str, job_ids))} are queued, but the background worker did not start: {err}")
    return job_ids


def show_jobs(job_ids: list[int], key: str) -> None:
    """Progress of `job_ids` with cancel buttons; polls while any is active, then reruns the
    page once so it shows the results. Never blocks the script thread."""
    job_ids = [j for j in job_ids if j is not None]
    if not job_ids:
        return
    active = any(jobs.get_job(j)["status"] not in FINISHED for j in job_ids)

    @st.fragment(run_every=POLL_S if active else None)
    def view():
        still_active = False
        for job_id in job_ids:
            job = jobs.get_job(job_id)
            running = job["status"] not in FINISHED
            still_active |= running
            cols = st.columns([5, 1])
            label = f"job {job_id} · {job['kind']} · {job['status']}" + (
                f" · {job['message']}" if job["message"] and job["message"] != job["status"] else ""
            )
            cols[0].progress(min(max(float(job["fraction"] or 0.0), 0.0), 1.0), text=label)
            if running and cols[1].button("Cancel", key=f"{key}-cancel-{job_id}"):
                jobs.cancel(job_id)
            if job["status"] == FAILED and job["error"]:
                st.error(f"job {job_id} failed: {job['error']}")
        if active and not still_active:
            st.rerun()

    view()
