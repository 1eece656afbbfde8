"""Depth versus width: the best width-only, depth-only and mixed candidates at one budget, found,
pruned, distilled and timed by jobs (app.depth_width), side by side; or a study's arms in the same view."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, state, views
from app import depth_width as dw
from app.depth_width_charts import band_curves, kept_fractions, kept_strip, loss_intervals
from app.study_view import open_study
from hybridlab import jobs
from hybridlab.families import describe
from hybridlab.model.spec import PruneSpec

KEY, STUDY_KEY, FOCUS_KEY = "dvw_key", "dvw_study", "pareto_focus"

st.title("Depth versus width")
ref, config = state.require_model()
description = describe(config)
kinds = list(description.widths.layer_kinds)
source = st.radio("compare", ["candidates found by jobs at a budget", "a study's arms"], horizontal=True)


def interval_text(interval, digits: int = 3) -> str:
    if interval is None:
        return "—"
    if interval.low != interval.low:  # NaN: a study from before intervals
        return f"{interval.estimate:.{digits}f}"
    return f"{interval.estimate:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def speedup_text(speedup) -> str:
    if speedup is None:
        return "—"
    estimate, low, high = speedup
    return f"{estimate:.2f}x" + (f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else "")


def loss_frame(columns) -> pd.DataFrame:
    rows = []
    for column in columns:
        for stage, interval in (("zero-shot", column.zero_shot), ("distilled", column.distilled)):
            if interval is not None:
                label = dw.LABELS[column.strategy]
                rows.append({"strategy": column.strategy, "label": label, "stage": stage, **vars(interval)})
    return pd.DataFrame(rows, columns=["strategy", "label", "stage", "estimate", "low", "high"])


def numbers(column, teacher) -> None:
    """The candidate's size, losses with intervals and speedup: one place for jobs and studies."""
    if column.error:
        st.error(column.error)
    if column.spec is None:
        st.caption(column.status)
        return
    st.markdown(f"**{column.name}** · `{column.spec}`")
    ratio = f" ({column.param_ratio:.1%} of the teacher)" if column.param_ratio else ""
    st.caption(f"{column.params:,.0f} parameters{ratio} · {column.status}")
    seeds = f", {column.seeds} seeds" if column.seeds > 1 else ""
    st.metric(f"zero-shot loss (95% CI{seeds})", interval_text(column.zero_shot))
    st.metric(f"distilled loss (95% CI{seeds})", interval_text(column.distilled))
    st.metric("prefill speedup vs teacher (95% CI)", speedup_text(column.speedup), help=column.speedup_note or None)


def strip(column) -> None:
    if column.spec is None:
        return
    try:
        kept = kept_fractions(description, PruneSpec.from_dict(column.spec))
    except ValueError as err:
        st.error(f"cannot draw this plan on {state.model_label(ref)}: {err}")
        return
    st.plotly_chart(
        kept_strip(kinds, kept, f"{dw.LABELS[column.strategy]}: drops {len(kept['dropped'])} layers"),
        width="stretch",
        key=f"dvw-strip-{column.strategy}",
    )
    st.caption(" · ".join(f"{axis} {share:.0%}" for axis, share in kept["axes"].items()))


def heatmaps(columns, scores) -> None:
    if scores is None:
        return
    st.subheader("Importance, with each candidate's pruned units crossed out")
    for cell, column in zip(st.columns(3), columns):
        with cell:
            if column.spec is not None:
                st.markdown(f"**{dw.LABELS[column.strategy]}**")
                views.importance_charts(scores, config, PruneSpec.from_dict(column.spec), key=f"dvw-{column.strategy}")


def verdicts(columns) -> None:
    for stage in ("distilled", "zero_shot"):
        rows = dw.differences(columns, stage)
        if rows:
            st.markdown(f"**Paired differences, {stage.replace('_', '-')} loss** (same validation windows and seeds)")
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def load_scores(folder: str | None):
    """The scores in `folder` if they fit the chosen model, else None (saying why)."""
    if folder is None:
        return None
    from hybridlab.compression.scores_fit import check_scores_fit

    try:
        scores = state.load_scores(folder, (Path(folder) / "scores.json").stat().st_mtime)
        check_scores_fit(scores, description, folder)
    except (OSError, ValueError) as err:
        st.error(str(err))
        return None
    return scores


# ---- candidates found by jobs ------------------------------------------------------------------------


def compare_form() -> None:
    scores = st.session_state.get(state.SCORES_KEY) or dw.find_scores(ref)
    if scores is not None and not _has_layer_scores(scores):
        scores = dw.find_scores(ref)
    if scores is None:
        st.caption("No importance scores with layer scores for this model yet: the comparison scores it first.")
    else:
        st.caption(f"Importance scores: `{scores}`")
    with st.form("dvw"):
        cols = st.columns(5)
        budget = cols[0].slider("parameter budget (% of the model)", 10, 90, 50, step=5)
        tolerance = cols[1].number_input("tolerance (% of the budget)", 0.5, 50.0, 3.0, step=0.5)
        tokens = cols[2].number_input("distillation tokens per candidate", 256, 100_000_000, 50_000, step=1_000)
        ranked = cols[3].number_input("candidates ranked per strategy", 1, 64, 4)
        quick = cols[4].checkbox("quick look (tiny budgets)", help="1 candidate, 1k tokens each: a first look")
        files = {}
        if ref != "demo":
            files = {
                key: st.text_input(label) or None
                for key, label in (
                    ("calib", "calibration tokens (.npy)"),
                    ("train_tokens", "training tokens (.npy)"),
                    ("val_tokens", "validation tokens (.npy)"),
                )
            }
        go = st.form_submit_button("Find and compare", type="primary")
    if go:
        base = dw.QUICK if quick else replace(dw.CompareSettings(), distill_tokens=int(tokens), candidates=int(ranked))
        settings = replace(base, target=f"{budget}%", tolerance=float(tolerance) / 100, **files)
        try:
            request = dw.start(ref, settings, scores)
        except ValueError as err:  # a refused job: one line, no job left behind
            st.error(str(err))
            return
        st.session_state[KEY] = request["key"]
        try:
            jobs.ensure_worker()
        except RuntimeError as err:
            st.error(f"the jobs are queued, but the background worker did not start: {err}")


def _has_layer_scores(folder: str) -> bool:
    loaded = load_scores(folder)
    return loaded is not None and bool(loaded.layers)


def show_request(key: str) -> None:
    request = dw.load(key)
    outer = _signature(dw.columns(request)[0])

    @st.fragment(run_every=state.POLL_S if dw.active(request) else None)
    def live():
        columns, teacher = dw.columns(dw.load(key))  # the job engine runs the chain: this only reads it
        if _signature(columns) != outer:  # a search or a chain finished: redraw the strips, heatmaps, buttons
            st.rerun()
        if teacher is not None:
            st.caption(f"Teacher's loss on the same windows: {interval_text(teacher)}")
        for cell, column in zip(st.columns(3), columns):
            with cell:
                st.subheader(dw.LABELS[column.strategy])
                numbers(column, teacher)
                metrics = dw.curves(column)
                if not metrics.empty:
                    shown = metrics[metrics["name"].isin(["val_loss", "teacher_val_loss"])]
                    st.plotly_chart(
                        charts.metric_curves(shown, "Distillation: validation loss"),
                        width="stretch",
                        key=f"dvw-curve-{column.strategy}",
                    )
        frame = loss_frame(columns)
        if not frame.empty:
            st.plotly_chart(loss_intervals(frame, teacher), width="stretch", key="dvw-losses")
        verdicts(columns)

    live()
    columns, _ = dw.columns(request)
    for cell, column in zip(st.columns(3), columns):
        with cell:
            strip(column)
            name = f"{request['key']}-{column.strategy}-distilled"
            if st.button(
                "Show on the Pareto chart", key=f"dvw-pareto-{column.strategy}", disabled=column.model is None
            ):
                st.session_state[FOCUS_KEY] = name
                st.switch_page("pages/pareto.py")
    heatmaps(columns, load_scores(dw.scores_of(request)))


def _signature(columns) -> tuple:
    return tuple((c.spec is not None, c.model is not None) for c in columns)


# ---- a study's arms ------------------------------------------------------------------------------------


def show_study() -> None:
    folder = st.text_input("study folder (hybridlab study --out)", value=st.session_state.get(STUDY_KEY, ""))
    if not folder:
        st.info("Give the folder a study wrote (results.csv, results_curves.csv, study.json).")
        return
    try:
        view = open_study(folder)
    except (OSError, ValueError) as err:
        st.error(str(err))
        return
    st.session_state[STUDY_KEY] = folder
    target = view.summary.get("target_params")
    st.caption(f"Study `{view.folder}`" + (f" · target {target:,} parameters" if isinstance(target, int) else ""))
    if view.teacher is not None:
        st.caption(f"Teacher's loss: {interval_text(view.teacher)}")
    for cell, column in zip(st.columns(3), view.columns):
        with cell:
            st.subheader(dw.LABELS[column.strategy])
            numbers(column, view.teacher)
            band = view.curves.get(column.strategy)
            if band is not None and not band.empty:
                title = f"Distillation: validation loss over {column.seeds} seeds"
                st.plotly_chart(
                    band_curves(band, title, view.teacher.estimate if view.teacher else None),
                    width="stretch",
                    key=f"dvw-study-curve-{column.strategy}",
                )
            strip(column)
    frame = loss_frame(view.columns)
    if not frame.empty:
        st.plotly_chart(loss_intervals(frame, view.teacher), width="stretch", key="dvw-study-losses")
    verdicts(view.columns)
    heatmaps(view.columns, load_scores(view.scores))


if source.startswith("a study"):
    show_study()
else:
    compare_form()
    keys = dw.comparisons_of(ref)
    if keys:
        current = st.session_state.get(KEY)
        picked = st.selectbox("comparison", keys, index=keys.index(current) if current in keys else 0)
        show_request(picked)
