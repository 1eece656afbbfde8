"""Figures of the depth-versus-width page: plain functions to plotly figures, no Streamlit."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from app.charts import STRATEGY_COLORS, kind_colors
from hybridlab.families import ATTENTION, MAMBA, MLP, describe, mixers_of
from hybridlab.model.sizes import planned_widths
from hybridlab.model.spec import PruneSpec


def kept_fractions(config, spec: PruneSpec) -> dict:
    """What a plan keeps, read from the planned widths: {"layers": [per layer: share of its own width kept,
    0 for a dropped layer], "dropped": [...], "axes": {axis label: kept share}}. `config` may be a description."""
    description = describe(config)
    old = description.widths
    new = planned_widths(description, spec)
    dropped = set(spec.drop_layers or ())
    share = {
        MAMBA: (new.mamba_num_heads * new.mamba_head_dim) / max(old.mamba_num_heads * old.mamba_head_dim, 1),
        MLP: new.ffn_hidden_size / max(old.ffn_hidden_size, 1),
        ATTENTION: new.num_attention_heads / max(old.num_attention_heads, 1),
    }
    layers = []
    for index, kind in enumerate(old.layer_kinds):
        mixers = [share.get(m, 1.0) for m in mixers_of(kind)]
        layers.append(0.0 if index in dropped else sum(mixers) / len(mixers))
    axes = {"hidden": new.hidden_size / old.hidden_size}
    if old.has(MLP):
        axes["FFN"] = share[MLP]
    if old.has(MAMBA):
        axes["Mamba heads"] = new.mamba_num_heads / old.mamba_num_heads
        axes["Mamba head dim"] = new.mamba_head_dim / old.mamba_head_dim
    if old.has(ATTENTION):
        axes["attention heads"] = share[ATTENTION]
    axes["layers"] = (old.num_layers - len(dropped)) / old.num_layers
    return {"layers": layers, "dropped": sorted(dropped), "axes": axes}


def kept_strip(kinds: list[str], kept: dict, title: str) -> go.Figure:
    """One bar per layer, as tall as the share of its width the plan keeps; dropped layers an x."""
    fig = go.Figure()
    for kind, color in kind_colors(kinds).items():
        layers = [i for i, k in enumerate(kinds) if k == kind and i not in kept["dropped"]]
        if layers:
            fig.add_bar(
                x=layers,
                y=[kept["layers"][i] for i in layers],
                name=kind,
                marker_color=color,
                width=0.9,
                hovertemplate="layer %{x}: " + kind + ", keeps %{y:.0%} of its width<extra></extra>",
            )
    if kept["dropped"]:
        fig.add_scatter(
            x=kept["dropped"],
            y=[0.5] * len(kept["dropped"]),
            mode="markers",
            name="dropped",
            marker=dict(symbol="x", size=11, color="black"),
            hovertemplate="layer %{x} dropped<extra></extra>",
        )
    fig.add_hline(y=kept["axes"]["hidden"], line=dict(dash="dot", color="#555"), annotation_text="hidden kept")
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", title="width kept")
    fig.update_xaxes(title="layer", dtick=1 if len(kinds) <= 40 else None, range=[-0.5, len(kinds) - 0.5])
    fig.update_layout(
        title=title, height=230, margin=dict(l=50, r=10, t=40, b=40), bargap=0.05, legend=dict(orientation="h", y=-0.5)
    )
    return fig


def loss_intervals(frame: pd.DataFrame, teacher=None) -> go.Figure:
    """Zero-shot and distilled loss per candidate with their 95% intervals as error bars.
    frame: strategy, label, stage, estimate, low, high (rows without an interval have NaN low/high)."""
    fig = go.Figure()
    for stage, symbol in (("zero-shot", "circle-open"), ("distilled", "circle")):
        part = frame[frame["stage"] == stage]
        if part.empty:
            continue
        fig.add_scatter(
            x=part["label"],
            y=part["estimate"],
            mode="markers",
            name=stage,
            marker=dict(symbol=symbol, size=12, color=[STRATEGY_COLORS.get(s, "#888") for s in part["strategy"]]),
            error_y=dict(
                type="data",
                symmetric=False,
                array=(part["high"] - part["estimate"]).fillna(0),
                arrayminus=(part["estimate"] - part["low"]).fillna(0),
            ),
            hovertemplate="%{x} " + stage + ": %{y:.4f}<extra></extra>",
        )
    if teacher is not None and not math.isnan(teacher.estimate):
        fig.add_hrect(y0=teacher.low, y1=teacher.high, fillcolor="#222", opacity=0.08, line_width=0)
        fig.add_hline(y=teacher.estimate, line=dict(dash="dash", color="#222"), annotation_text="teacher")
    fig.update_yaxes(title="validation loss (nats)")
    fig.update_layout(
        title="Loss with 95% bootstrap intervals", height=320, margin=dict(l=50, r=10, t=40, b=40), scattermode="group"
    )
    return fig


def band_curves(frame: pd.DataFrame, title: str, teacher: float | None = None) -> go.Figure:
    """Validation loss over distillation steps: the mean over seeds and its min..max band.
    frame: step, mean, low, high."""
    fig = go.Figure()
    frame = frame.sort_values("step")
    fig.add_scatter(x=frame["step"], y=frame["high"], mode="lines", line=dict(width=0), showlegend=False)
    fig.add_scatter(
        x=frame["step"], y=frame["low"], mode="lines", line=dict(width=0), fill="tonexty", name="min..max over seeds"
    )
    fig.add_scatter(x=frame["step"], y=frame["mean"], mode="lines+markers", name="mean val loss")
    if teacher is not None:
        fig.add_hline(y=teacher, line=dict(dash="dash", color="#222"), annotation_text="teacher")
    fig.update_xaxes(title="step")
    fig.update_layout(title=title, height=260, margin=dict(l=50, r=10, t=40, b=40), legend=dict(orientation="h"))
    return fig
