"""Plotly figure builders: plain functions from DataFrames to figures, no Streamlit.

Unit frames have the columns of `ImportanceScores.to_frame()` (layer, layer_kind, axis,
index, group, score) plus `kept` (bool) from app.overlay.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from hybridlab.families import mixers_of

KIND_COLORS = {"mamba": "#2E86AB", "mlp": "#F18F01", "attention": "#C73E1D", "moe": "#7B4EA3"}
# A layer of several mixers ("mamba+mlp", "mamba|attention+mlp") takes the colour of its first mixer,
# a lighter shade of it, so it stays apart from a one-mixer layer of that kind.
SHADED = {"mamba": "#7FB8D4", "mlp": "#F8C580", "attention": "#E39E8E"}


def kind_colors(kinds) -> dict[str, str]:
    """{layer kind: colour} for the kinds present, one-mixer kinds first."""
    present = [k for k in KIND_COLORS if k in set(kinds)] + [k for k in dict.fromkeys(kinds) if k not in KIND_COLORS]
    return {k: KIND_COLORS.get(k) or SHADED.get(mixers_of(k)[0], "#888888") for k in present}


STRATEGY_COLORS = {"width": "#2E86AB", "depth": "#C73E1D", "mixed": "#6A994E", "teacher": "#222222", "none": "#888888"}
PRUNED_MARK = dict(symbol="x", color="white", size=7, line=dict(color="black", width=1))


def _layout(fig: go.Figure, title: str, height: int = 320) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=50, r=20, t=50, b=40), legend_title_text="")
    return fig


def layer_strip(kinds: list[str], dropped: set[int] | frozenset = frozenset()) -> go.Figure:
    """The layer pattern as one coloured cell per layer; dropped layers faded and crossed."""
    fig = go.Figure()
    for kind, color in kind_colors(kinds).items():
        layers = [i for i, k in enumerate(kinds) if k == kind]
        if not layers:
            continue
        fig.add_bar(
            x=layers,
            y=[1] * len(layers),
            name=kind,
            marker_color=color,
            width=0.92,
            marker_opacity=[0.25 if i in dropped else 1.0 for i in layers],
            hovertemplate="layer %{x}: " + kind + "<extra></extra>",
        )
    if dropped:
        fig.add_scatter(
            x=sorted(dropped),
            y=[0.5] * len(dropped),
            mode="markers",
            name="dropped by plan",
            marker=dict(symbol="x", size=12, color="black"),
            hovertemplate="layer %{x} dropped<extra></extra>",
        )
    fig.update_yaxes(visible=False, range=[0, 1])
    fig.update_xaxes(title="layer", dtick=1 if len(kinds) <= 60 else None, range=[-0.5, len(kinds) - 0.5])
    fig.update_layout(barmode="overlay", bargap=0)
    return _layout(fig, f"Layer pattern ({len(kinds)} layers)", height=170)


def params_by_kind(params: dict) -> go.Figure:
    frame = pd.DataFrame({"part": list(params), "params": list(params.values())})
    colors = [KIND_COLORS.get(p, "#888888") for p in frame["part"]]
    fig = go.Figure(
        go.Bar(
            x=frame["part"],
            y=frame["params"],
            marker_color=colors,
            hovertemplate="%{x}: %{y:,} parameters<extra></extra>",
        )
    )
    fig.update_yaxes(title="parameters")
    return _layout(fig, "Parameters by layer kind", height=300)


def unit_heatmap(
    frame: pd.DataFrame,
    axis: str,
    title: str,
    group_size: int | None = None,
    sort: bool = False,
    unit: str = "unit",
    score_label: str = "score",
) -> go.Figure:
    """Layer x unit heatmap of scores for one axis; pruned units crossed out.
    `sort`: order each layer's units by score (FFN neurons), so the plan cuts a clean tail.
    `group_size`: draw a boundary every group_size units (Mamba groups, KV groups, expert groups)."""
    rows = frame[frame["axis"] == axis]
    if rows.empty:
        return _layout(go.Figure(), f"{title}: this model has none")
    layers = sorted(rows["layer"].unique())
    width = int(rows["index"].max()) + 1
    z = np.full((len(layers), width), np.nan)
    unit_ids = np.full((len(layers), width), -1)
    kept = np.ones((len(layers), width), dtype=bool)
    for r, (_layer, group) in enumerate(rows.groupby("layer", sort=True)):
        group = group.sort_values("score", ascending=False) if sort else group.sort_values("index")
        z[r, : len(group)] = group["score"].to_numpy()
        unit_ids[r, : len(group)] = group["index"].to_numpy()
        kept[r, : len(group)] = group["kept"].to_numpy()
    y = [f"L{layer}" for layer in layers]
    x_title = f"{unit} (sorted by score)" if sort else unit
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(width)),
            y=y,
            colorscale="Viridis",
            customdata=unit_ids,
            colorbar=dict(title=score_label),
            hovertemplate="layer %{y}, " + unit + " %{customdata}<br>" + score_label + " %{z:.4g}<extra></extra>",
        )
    )
    pruned_r, pruned_c = np.nonzero(~kept)
    if len(pruned_r):
        fig.add_scatter(
            x=pruned_c,
            y=[y[r] for r in pruned_r],
            mode="markers",
            marker=PRUNED_MARK,
            name="pruned by plan",
            customdata=unit_ids[pruned_r, pruned_c],
            hovertemplate="pruned: " + unit + " %{customdata}<extra></extra>",
        )
    if group_size and not sort and width > group_size:
        for boundary in range(group_size, width, group_size):
            fig.add_vline(x=boundary - 0.5, line=dict(color="white", width=3))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(autorange="reversed", title="layer")
    fig.update_layout(showlegend=len(pruned_r) > 0, legend=dict(orientation="h", y=-0.25))
    return _layout(fig, title, height=max(220, 60 + 28 * len(layers)))


def routing_share(frame: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The rows of `axis` (routed experts' routing mass) with each layer's scores as shares of its total:
    the fraction of the layer's routing each expert receives (a layer's shares sum to 1)."""
    rows = frame[frame["axis"] == axis].copy()
    totals = rows.groupby("layer")["score"].transform("sum")
    rows["score"] = rows["score"] / totals.where(totals > 0)
    return rows


def hidden_curve(frame: pd.DataFrame) -> go.Figure:
    """Embedding (hidden) channel scores, sorted: where the plan cuts shows as the pruned tail."""
    rows = frame[frame["axis"] == "hidden"].sort_values("score", ascending=False).reset_index(drop=True)
    fig = go.Figure()
    for kept, name, color in ((True, "kept", "#2E86AB"), (False, "pruned by plan", "#C73E1D")):
        part = rows[rows["kept"] == kept]
        if len(part):
            fig.add_scatter(
                x=part.index,
                y=part["score"],
                mode="markers+lines",
                name=name,
                marker=dict(color=color, size=4),
                customdata=part["index"],
                hovertemplate="channel %{customdata}<br>score %{y:.4g}<extra></extra>",
            )
    fig.update_xaxes(title="rank (channels sorted by score)")
    fig.update_yaxes(title="score")
    return _layout(fig, "Embedding channels")


def layer_bars(frame: pd.DataFrame) -> go.Figure:
    """One bar chart per layer metric (KL, loss increase, cosine), bars coloured by layer kind."""
    rows = frame[frame["axis"].str.startswith("layer_")]
    metrics = sorted(rows["axis"].unique())
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=max(len(metrics), 1), cols=1, shared_xaxes=True, subplot_titles=[m.removeprefix("layer_") for m in metrics]
    )
    shown = set()
    for r, metric in enumerate(metrics, start=1):
        part = rows[rows["axis"] == metric].sort_values("layer")
        for kind, color in kind_colors(part["layer_kind"]).items():
            bars = part[part["layer_kind"] == kind]
            if bars.empty:
                continue
            fig.add_bar(
                x=bars["layer"],
                y=bars["score"],
                name=kind,
                marker_color=color,
                legendgroup=kind,
                showlegend=kind not in shown,
                marker_opacity=np.where(bars["kept"], 1.0, 0.3),
                marker_line=dict(color=np.where(bars["kept"], color, "black"), width=2),
                hovertemplate="layer %{x} ("
                + kind
                + ")<br>"
                + metric.removeprefix("layer_")
                + " %{y:.4g}<extra></extra>",
                row=r,
                col=1,
            )
            shown.add(kind)
    fig.update_xaxes(title="layer", row=len(metrics), col=1)
    return _layout(fig, "Layer importance (faded: dropped by plan)", height=130 + 170 * max(len(metrics), 1))


def pareto_front(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows no other row beats on both x and y (lower is better on both), sorted by x."""
    rows = frame.dropna(subset=[x, y]).sort_values([x, y])
    best, keep = np.inf, []
    for index, value in zip(rows.index, rows[y]):
        if value < best:
            best = value
            keep.append(index)
    return rows.loc[keep]


def _error_bars(part: pd.DataFrame, x: str, interval: tuple[str, str] | None) -> dict | None:
    """Asymmetric horizontal error bars from the interval columns (rows without one get none)."""
    if interval is None or not set(interval) <= set(part.columns):
        return None
    low, high = (part[c].astype(float) for c in interval)
    if low.isna().all():
        return None
    return dict(
        type="data",
        symmetric=False,
        array=(high - part[x]).fillna(0).clip(lower=0).to_numpy(),
        arrayminus=(part[x] - low).fillna(0).clip(lower=0).to_numpy(),
        thickness=1.5,
        width=4,
    )


def pareto_chart(
    frame: pd.DataFrame, x: str, y: str, x_title: str, y_title: str, x_interval: tuple[str, str] | None = None
) -> go.Figure:
    """Every candidate coloured by strategy, the teacher as a star, the frontier as a line.
    `x_interval`: the (low, high) columns of x's confidence interval, drawn as error bars."""
    rows = frame.dropna(subset=[x, y])
    fig = go.Figure()
    for strategy, part in rows.groupby("strategy"):
        teacher = strategy == "teacher"
        fig.add_scatter(
            error_x=_error_bars(part, x, x_interval),
            x=part[x],
            y=part[y],
            mode="markers+text" if teacher else "markers",
            name=strategy,
            text=part["name"] if teacher else None,
            textposition="top center",
            marker=dict(
                color=STRATEGY_COLORS.get(strategy, "#888888"),
                size=16 if teacher else 11,
                symbol="star" if teacher else "circle",
                line=dict(color="white", width=1),
            ),
            customdata=part[["name", "params"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>%{customdata[1]:,} params<br>"
            + x_title
            + " %{x:.4g}<br>"
            + y_title
            + " %{y:.4g}<extra></extra>",
        )
    front = pareto_front(rows, x, y)
    if len(front) > 1:
        fig.add_scatter(
            x=front[x],
            y=front[y],
            mode="lines",
            name="Pareto frontier",
            line=dict(color="#888888", dash="dash", shape="hv"),
            hoverinfo="skip",
        )
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title)
    return _layout(fig, f"{y_title} vs {x_title}", height=420)


def depth_vs_width(frame: pd.DataFrame, y: str, y_title: str) -> go.Figure:
    """Loss against kept parameter fraction, one line per strategy: does width beat depth?"""
    rows = frame.dropna(subset=["param_ratio", y]).sort_values("param_ratio")
    fig = go.Figure()
    for strategy, part in rows.groupby("strategy"):
        fig.add_scatter(
            x=part["param_ratio"],
            y=part[y],
            mode="lines+markers" if strategy != "teacher" else "markers",
            name=strategy,
            marker=dict(color=STRATEGY_COLORS.get(strategy, "#888888"), size=10),
            customdata=part["name"],
            hovertemplate="%{customdata}<br>%{x:.0%} params<br>%{y:.4g}<extra></extra>",
        )
    fig.update_xaxes(title="parameters kept", tickformat=".0%")
    fig.update_yaxes(title=y_title)
    return _layout(fig, "Depth vs width at equal parameters", height=380)


def metric_curves(
    metrics: pd.DataFrame, title: str, teacher_value: float | None = None, teacher_name: str = "teacher val loss"
) -> go.Figure:
    """Tidy (step, name, value) streams as lines; names containing 'teacher' dashed."""
    fig = go.Figure()
    for name, part in metrics.sort_values("step").groupby("name"):
        dashed = "teacher" in name
        fig.add_scatter(
            x=part["step"],
            y=part["value"],
            mode="lines+markers" if len(part) < 30 else "lines",
            name=name,
            line=dict(dash="dash" if dashed else "solid"),
        )
    if teacher_value is not None:
        fig.add_hline(y=teacher_value, line=dict(color="black", dash="dot"), annotation_text=teacher_name)
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="value")
    return _layout(fig, title, height=340)
