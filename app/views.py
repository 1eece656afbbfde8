"""Page sections used on more than one page."""

from __future__ import annotations

import streamlit as st

from app import charts, state
from app.overlay import units_frame
from hybridlab.compression.importance import MOE_EXPERT
from hybridlab.families import family_for
from hybridlab.model.spec import fewest_experts

DENSE_TABS = ["Mamba heads", "Mamba head channels", "Attention heads", "FFN neurons", "Embedding channels", "Layers"]
# the Experts heatmap's toggle: label -> the expert metric it shows and ranks experts by
EXPERT_SCORES = {"routing share": "routing_mass", "gated output norm": "gated_output_norm"}


def importance_charts(scores, config, spec=None, layer_metric: str = "kl", key: str = "imp") -> None:
    """Every heatmap of `scores`, with the units `spec` would prune crossed out. A mixture of experts
    gets its own tabs first: routed experts (by the chosen expert score) and shared expert neurons."""
    widths = family_for(config).widths(config)
    moe_names = ["Experts", *(["Shared expert neurons"] if scores.shared_experts else [])] if scores.experts else []
    tabs = st.tabs([*moe_names, *DENSE_TABS])
    moe_tabs, tabs = tabs[: len(moe_names)], tabs[len(moe_names) :]
    expert_metric = state.expert_metric()
    if moe_tabs:
        with moe_tabs[0]:
            expert_metric = expert_score_toggle(key)
    try:
        frame = units_frame(scores, config, spec, layer_metric, expert_metric)
    except ValueError as err:
        st.error(f"cannot overlay this plan: {err}")
        frame = units_frame(scores, config, None)
    if moe_tabs:
        expert_charts(frame, widths, expert_metric, moe_tabs, key)
    groups = widths.mamba_n_groups
    with tabs[0]:
        st.caption(
            f"{groups} groups of {widths.mamba_num_heads // groups} heads (white lines): heads are ranked "
            "and pruned within their group, so every kept head still reads its group's B and C."
        )
        st.plotly_chart(
            charts.unit_heatmap(frame, "mamba_head", "Mamba heads", widths.mamba_num_heads // groups, unit="head"),
            width="stretch",
            key=f"{key}-mh",
        )
    with tabs[1]:
        st.plotly_chart(
            charts.unit_heatmap(frame, "mamba_channel", "Mamba head channels", unit="channel"),
            width="stretch",
            key=f"{key}-mc",
        )
    with tabs[2]:
        kv = max(widths.num_key_value_heads, 1)
        st.plotly_chart(
            charts.unit_heatmap(
                frame,
                "attention_head",
                "Attention heads",
                widths.num_attention_heads // kv if kv > 1 else None,
                unit="head",
            ),
            width="stretch",
            key=f"{key}-ah",
        )
    with tabs[3]:
        st.plotly_chart(
            charts.unit_heatmap(frame, "ffn_neuron", "FFN neurons", sort=True, unit="neuron"),
            width="stretch",
            key=f"{key}-ffn",
        )
    with tabs[4]:
        st.plotly_chart(charts.hidden_curve(frame), width="stretch", key=f"{key}-hid")
    with tabs[5]:
        st.plotly_chart(charts.layer_bars(frame), width="stretch", key=f"{key}-layers")


def expert_score_toggle(key: str) -> str:
    """The expert metric to show and rank routed experts by; remembered for the other page and the prune job."""
    labels = list(EXPERT_SCORES)
    current = state.expert_metric()
    index = labels.index(next((k for k, v in EXPERT_SCORES.items() if v == current), labels[0]))
    label = st.radio("expert score", labels, index=index, horizontal=True, key=f"{key}-expert-score")
    st.session_state[state.EXPERT_METRIC_KEY] = EXPERT_SCORES[label]
    return EXPERT_SCORES[label]


def expert_charts(frame, widths, expert_metric: str, tabs, key: str) -> None:
    """Layers x routed experts (white lines between routing groups), and the shared expert's neurons."""
    groups, experts = widths.moe_n_group, widths.num_moe_experts
    label = next(k for k, v in EXPERT_SCORES.items() if v == expert_metric)
    axis = f"{MOE_EXPERT}_{expert_metric}"
    shown = charts.routing_share(frame, axis) if expert_metric == "routing_mass" else frame
    grouped = f" in {groups} routing groups (white lines; each keeps the same number)" if groups > 1 else ""
    with tabs[0]:
        st.caption(
            f"{experts} routed experts{grouped}; a token goes to its top {widths.moe_top_k}. "
            f"Routing share: the part of a layer's routing each expert receives; gated output norm: the size of "
            f"what it adds, weighted by its gate. Crossed out: the experts the plan drops, ranked by {label} "
            "(as 'Prune and evaluate' will)."
        )
        st.plotly_chart(
            charts.unit_heatmap(
                shown,
                axis,
                f"Routed experts: {label}",
                experts // groups if groups > 1 else None,
                unit="expert",
                score_label=label,
            ),
            width="stretch",
            key=f"{key}-experts",
        )
    if len(tabs) > 1:
        with tabs[1]:
            st.plotly_chart(
                charts.unit_heatmap(frame, "shared_expert_neuron", "Shared expert neurons", sort=True, unit="neuron"),
                width="stretch",
                key=f"{key}-shared",
            )


def expert_controls(widths, moe_axes, keys: dict) -> dict:
    """The planner's mixture-of-experts controls: any whole number, so a value the router or the family
    cannot take gets the library's one-line reason (and the fix) instead of vanishing from a list."""
    if not moe_axes:
        return {}
    st.markdown("**Mixture of experts**")
    groups = widths.moe_n_group
    grouped = f", chosen within its best {widths.moe_topk_group} of {groups} expert groups" if groups > 1 else ""
    st.caption(
        f"A token goes to its top {widths.moe_top_k} of {widths.num_moe_experts} routed experts{grouped}: keep at "
        f"least {fewest_experts(widths)}"
        + (f", a multiple of {groups}" if groups > 1 else "")
        + ". Which experts go: the expert score chosen on the Experts heatmap."
    )
    cols = st.columns(3)
    return {
        axis.key: col.number_input(axis.label, 1, axis.current, step=axis.step, key=keys[axis.key])
        for col, axis in zip(cols, moe_axes)
    }
