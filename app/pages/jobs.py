"""Jobs: every job in the workspace with status and progress; details and cancel."""

import streamlit as st

from app import state
from hybridlab import jobs
from hybridlab.store import FINISHED

st.title("Jobs")
listing = jobs.list_jobs()
if listing.empty:
    st.info("No jobs yet. Importance, prune, distill, eval and bench jobs appear here.")
    st.stop()
active = (~listing["status"].isin(FINISHED)).any()


@st.fragment(run_every=state.POLL_S if active else None)
def table():
    frame = jobs.list_jobs().sort_values("id", ascending=False)
    columns = [
        "id",
        "kind",
        "status",
        "parents",
        "fraction",
        "message",
        "error",
        "attempts",
        "created_at",
        "finished_at",
    ]
    st.dataframe(
        frame[columns],
        column_config={
            "fraction": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
            "parents": st.column_config.ListColumn("after", help="a waiting job runs once these jobs succeed"),
        },
        hide_index=True,
        width="stretch",
    )


table()
picked = st.selectbox("job", list(listing["id"])[::-1])
job = jobs.get_job(int(picked))
state.show_jobs([job["id"]], "jobs")
if job["parents"]:
    st.caption(
        "Parents (it runs once they have all succeeded): "
        + ", ".join(f"job {p} ({jobs.get_job(p)['status']})" for p in job["parents"])
    )
left, right = st.columns(2)
left.markdown("**spec**")
left.json(job["spec"])
right.markdown("**result**")
right.json(job["result"] or {})
