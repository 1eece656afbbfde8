"""Page sections used on more than one page."""

from __future__ import annotations

import streamlit as st

from app import charts
from app.overlay import units_frame
from hybridlab.families import family_for


def importance_charts(scores, config, spec=None, layer_metric: str = "kl", key: str = "imp") -> None:
    """Every heatmap of `scores`, with the units `spec` would prune crossed out."""
    widths = family_for(config).widths(config)
    try:
        frame = units_frame(scores, config, spec, layer_metric)
    except ValueError as err:
        st.error(f"cannot overlay this plan: {err}")
        frame = units_frame(scores, config, None)
    tabs = st.tabs(
        ["Mamba heads", "Mamba head channels", "Attention heads", "FFN neurons", "Embedding channels", "Layers"]
    )
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
