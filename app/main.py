"""hybridlab dashboard: `streamlit run app/main.py`.

Pages are thin views: they read the store, call the analytic parts of the library
(sizes, plans) directly, and submit everything heavy as jobs to the background worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

# Load transformers' lazy auto classes once, in this thread, before any page or polling
# fragment imports them: concurrent first imports of its lazy modules can fail with
# "cannot import name 'AutoConfig'" (seen on a fresh install).
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402,F401

from app import state  # noqa: E402
from hybridlab.core.paths import demo_teacher_dir, workspace_dir  # noqa: E402

PAGES = Path(__file__).parent / "pages"

st.set_page_config(page_title="hybridlab", page_icon=":material/content_cut:", layout="wide")

link_problem = state.restore_model(demo_shipped=(demo_teacher_dir() / "config.json").is_file())
state.remember_model()
if link_problem:
    st.warning(link_problem)

navigation = st.navigation(
    [
        st.Page(PAGES / "model.py", title="Model", icon=":material/memory:", default=True),
        st.Page(PAGES / "importance.py", title="Importance", icon=":material/local_fire_department:"),
        st.Page(PAGES / "planner.py", title="Prune planner", icon=":material/content_cut:"),
        st.Page(PAGES / "distill.py", title="Distill", icon=":material/science:"),
        st.Page(PAGES / "pareto.py", title="Pareto", icon=":material/show_chart:"),
        st.Page(PAGES / "depth_vs_width.py", title="Depth vs width", icon=":material/compare:"),
        st.Page(PAGES / "jobs.py", title="Jobs", icon=":material/schedule:"),
    ]
)
with st.sidebar:
    ref = st.session_state.get(state.MODEL_KEY)
    st.caption(f"Model: **{state.model_label(ref) if ref else 'none chosen'}**")
    st.caption(f"Workspace: `{workspace_dir()}`")
navigation.run()
