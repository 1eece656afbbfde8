"""Model: the demo teacher or a local folder; its layer pattern, parameters and config."""

import pandas as pd
import streamlit as st

from app import charts, state
from app.planner import params_per_unit
from hybridlab.families import family_for
from hybridlab.model.sizes import estimate_sizes

st.title("Model")
current = st.session_state.get(state.MODEL_KEY)
choice = st.radio(
    "Model", ["demo teacher", "local folder"], horizontal=True, index=1 if current not in (None, "demo") else 0
)
if choice == "local folder":
    folder = st.text_input(
        "Hugging Face model folder",
        value=current if current not in (None, "demo") else "",
        placeholder="/path/to/saved/model (a folder with config.json)",
    )
    if st.button("Use this folder", type="primary"):
        try:
            ref, _ = state.check_model(folder)
            st.session_state[state.MODEL_KEY] = ref
            st.session_state.pop(state.SCORES_KEY, None)
            st.session_state.pop(state.PLAN_KEY, None)
            st.rerun()
        except ValueError as err:
            st.error(str(err))
elif current != "demo":
    try:
        state.check_model("demo")
        st.session_state[state.MODEL_KEY] = "demo"
        st.session_state.pop(state.SCORES_KEY, None)
        st.rerun()
    except ValueError as err:
        st.error(str(err))

chosen = state.current_model()
if chosen is not None:
    ref, config = chosen
    widths = family_for(config).widths(config)
    sizes = estimate_sizes(config)
    st.subheader(f"{state.model_label(ref)} · {type(config).__name__.removesuffix('Config')}")
    cols = st.columns(4)
    cols[0].metric("parameters", f"{sizes.params / 1e6:,.2f} M")
    cols[1].metric("layers", widths.num_layers)
    cols[2].metric("FLOPs / token", f"{sizes.flops_per_token / 1e6:,.1f} M")
    cols[3].metric(f"inference state @ {sizes.seq_len} tokens", f"{sizes.state_bytes / 2**20:,.2f} MiB")
    st.plotly_chart(charts.layer_strip(list(widths.layer_kinds)), width="stretch", key="strip")
    left, right = st.columns(2)
    left.plotly_chart(charts.params_by_kind(sizes.params_by_kind), width="stretch", key="by_kind")
    with right:
        st.markdown("**Parameters by axis** (what one step of each prunable axis is worth)")
        st.dataframe(pd.DataFrame(params_per_unit(config)).T, width="stretch")
    with st.expander("config.json"):
        st.json(config.to_dict(), expanded=False)
