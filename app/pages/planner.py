"""Prune planner: a control per axis or a target with a preset; sizes update instantly
(hybridlab.model.sizes, no model run); 'prune and evaluate' runs jobs whose results join the Pareto view."""

import streamlit as st

from app import charts, state, views
from app.overlay import dropped_layers
from app.pipeline import eval_settings, latest_chain, prune_and_evaluate
from app.planner import MOE_KEYS, PRESETS, axes, is_free, offered, plan_summary, preset_spec, spec_from_values
from hybridlab.families import describe

JOBS_KEY = "planner_jobs"  # what this session submitted, to show; the chain itself lives in the job engine

st.title("Prune planner")
ref, config = state.require_model()
description = describe(config)
widths = description.widths
scores = state.current_scores(config)
controls = axes(widths)

with st.expander("Target a parameter budget with a preset", expanded=True):
    cols = st.columns([2, 3, 1])
    preset = cols[0].selectbox("preset", PRESETS, index=2)
    target = cols[1].slider("target parameters (% of the model)", 10, 100, 50, step=5)
    if cols[2].button("Apply preset"):
        try:
            values = preset_spec(config, preset, target / 100).to_dict()
            for axis in controls:
                st.session_state[f"axis-{ref}-{axis.key}"] = int(values.get(axis.key, axis.current))
        except ValueError as err:
            st.error(str(err))

st.markdown("**Sizes per axis**")
keys = {axis.key: f"axis-{ref}-{axis.key}" for axis in controls}  # per model: another model's ranges differ
chosen = {axis.key: st.session_state.setdefault(keys[axis.key], axis.current) for axis in controls}
values = {}
dense_controls = [axis for axis in controls if axis.key not in MOE_KEYS]
grid = st.columns(3)
for i, axis in enumerate(dense_controls):
    key = keys[axis.key]
    if is_free(description, axis):  # the same widget type on every rerun: streamlit resets a key that changes type
        values[axis.key] = grid[i % 3].slider(axis.label, axis.minimum, axis.current, step=axis.step, key=key)
    else:  # only values the family can build with the other controls where they are
        # the expert controls take any number (a bad one gets the library's message), so they stay out
        options = offered(description, axis, {k: v for k, v in chosen.items() if k not in (axis.key, *MOE_KEYS)})
        if st.session_state[key] not in options:
            st.session_state[key] = min(options, key=lambda v: abs(v - st.session_state[key]))
        values[axis.key] = grid[i % 3].select_slider(axis.label, options, key=key)
values |= views.expert_controls(widths, [axis for axis in controls if axis.key in MOE_KEYS], keys)
try:
    spec = spec_from_values(values, widths)
    drop = dropped_layers(scores, config, spec)
    summary = plan_summary(config, spec, drop_layers=drop)
except ValueError as err:
    st.error(f"impossible plan: {err}")
    st.stop()
st.session_state[state.PLAN_KEY] = spec.to_dict()

cols = st.columns(5 if summary["has_experts"] else 4)
cols[0].metric(
    "parameters", f"{summary['params'] / 1e6:,.3f} M", f"{summary['param_ratio'] - 1:+.1%}", delta_color="off"
)
if summary["has_experts"]:  # a mixture of experts: what one token runs through
    cols.pop(1).metric(
        "active parameters / token",
        f"{summary['active_params'] / 1e6:,.3f} M",
        f"{summary['active_ratio'] - 1:+.1%}",
        delta_color="off",
        help="the router, the top-k routed experts, the shared expert and every other layer",
    )
cols[1].metric(
    "FLOPs / token",
    f"{summary['flops_per_token'] / 1e6:,.2f} M",
    f"{summary['flops_ratio'] - 1:+.1%}",
    delta_color="off",
)
cols[2].metric(
    "inference state",
    f"{summary['state_bytes'] / 2**20:,.2f} MiB",
    f"{summary['state_ratio'] - 1:+.1%}",
    delta_color="off",
)
predicted = summary["speedup_basis"] == "latency model"
cols[3].metric(
    "predicted speedup" if predicted else "speedup (FLOP ratio)",
    f"{summary['speedup']:.2f}x",
    help=f"prefill of {summary['speedup_seq_len']} tokens; {summary['speedup_label']}",
)
st.caption(f"Plan: `{spec.to_dict() or 'keep everything'}`")
st.caption(f"Speedup: {summary['speedup_label']}.")
st.plotly_chart(charts.layer_strip(list(widths.layer_kinds), set(drop or ())), width="stretch", key="plan-strip")
if spec.num_layers is not None and drop is None:
    st.caption(
        "Which layers go is chosen by importance at prune time; load scores to see them (sizes assume an even spread)."
    )

st.subheader("Prune and evaluate")
with st.form("prune"):
    cols = st.columns(4)
    name = cols[0].text_input("candidate name (optional)")
    max_tokens = cols[1].number_input("validation tokens", 512, 10_000_000, 16384, step=512)
    seq_len = cols[2].number_input("sequence length", 16, 8192, 128)
    bench = cols[3].checkbox("measure latency", value=True)
    val_tokens = None if ref == "demo" else st.text_input("validation tokens file (.npy)") or None
    go = st.form_submit_button("Prune and evaluate", type="primary", disabled=scores is None or spec.is_empty())
if scores is None:
    st.caption("Pruning ranks units by importance: run or load scores on the Importance page first.")
if go:
    try:
        settings = eval_settings(ref, val_tokens, max_tokens, seq_len, bench)
    except ValueError as err:
        st.error(str(err))
        settings = None
    if settings:
        submitted = state.submit_all(
            lambda: prune_and_evaluate(
                ref,
                spec.to_dict(),
                st.session_state[state.SCORES_KEY],
                name.strip() or None,
                settings,
                expert_metric=state.expert_metric() if summary["has_experts"] else None,
            )
        )
        st.session_state.setdefault(JOBS_KEY, []).extend(submitted)
state.show_jobs(st.session_state.get(JOBS_KEY, [])[-6:] or latest_chain("prune"), "planner")

if scores is not None:
    st.subheader("What this plan prunes")
    views.importance_charts(scores, config, spec, key="planner")
