"""Pareto: validation loss against latency for the teacher and every candidate; the
frontier, depth vs width, and two candidates side by side."""

import pandas as pd
import streamlit as st

from app import charts, state
from app.pipeline import eval_settings, model_jobs
from app.results import architecture, comparison, side_by_side, unevaluated
from hybridlab import jobs
from hybridlab.model.sizes import estimate_sizes

WATCH_KEY = "pareto_jobs"

st.title("Pareto")
ref, config = state.require_model()
parent = estimate_sizes(config)
table = comparison(
    ref,
    {"params": parent.params, "flops_per_token": parent.flops_per_token},
    jobs.list_candidates(),
    jobs.list_evaluations(),
    jobs.list_benchmarks(),
    jobs.list_distillations(),
    parent_name=state.model_label(ref),
)
todo = unevaluated(table)
if todo:
    st.caption(f"{len(todo)} model(s) without a validation loss yet: {', '.join(map(state.model_label, todo))}")
    val_tokens = None if ref == "demo" else st.text_input("validation tokens (.npy) for evaluating") or None
    if st.button("Evaluate them"):
        try:
            settings = eval_settings(ref, val_tokens, 16384, 128, True)
            for model in todo:
                for kind, spec in model_jobs(model, settings):
                    st.session_state.setdefault(WATCH_KEY, []).append(state.submit(kind, spec))
        except ValueError as err:
            st.error(str(err))
state.show_jobs(st.session_state.get(WATCH_KEY, [])[-6:], "pareto")

if len(table) < 2:
    st.info("Only the teacher so far: prune and evaluate candidates on the Prune planner page.")
axis = st.radio(
    "latency axis",
    ["latency (paired with the teacher, else measured, else estimated from FLOPs)", "FLOPs per token"],
    horizontal=True,
)
x, x_title = (
    ("latency_ms", "prefill latency (ms)") if axis.startswith("latency") else ("flops_per_token", "FLOPs per token")
)
if x == "latency_ms" and table["latency_ms"].isna().all():
    st.caption("No measured latency yet (bench jobs): showing FLOPs per token instead.")
    x, x_title = "flops_per_token", "FLOPs per token"
left, right = st.columns(2)
interval = ("latency_low", "latency_high") if x == "latency_ms" else None
left.plotly_chart(
    charts.pareto_chart(table, x, "val_loss", x_title, "validation loss", x_interval=interval),
    width="stretch",
    key="pareto",
)
if x == "latency_ms" and (table["latency_source"] == "paired").any():
    st.caption(
        "Paired: the teacher's prefill divided by the candidate's speedup, timed interleaved with the teacher in "
        "one job; the bars are the speedup's 95% interval. Other points: measured alone or estimated from FLOPs."
    )
right.plotly_chart(charts.depth_vs_width(table, "val_loss", "validation loss"), width="stretch", key="depth-width")
st.dataframe(table.drop(columns=["spec"]), hide_index=True, width="stretch")

st.subheader("Compare two")
names = list(table["name"])
if len(names) >= 2:
    cols = st.columns(2)
    first = cols[0].selectbox("first", names, index=0)
    focus = st.session_state.get("pareto_focus")  # a model sent here from the Depth vs width page
    second = cols[1].selectbox("second", names, index=names.index(focus) if focus in names else len(names) - 1)
    arch = {}
    for name in (first, second):
        model = table.set_index("name").loc[name, "model"]
        try:
            arch[name] = architecture(state.check_model(model)[1]) if isinstance(model, str) else {}
        except ValueError as err:
            arch[name] = {"error": str(err)}
    st.dataframe(pd.DataFrame(arch).astype(str), width="stretch")
    st.dataframe(side_by_side(table, first, second), width="stretch")
