"""The states of a job (re-exported by hybridlab.store.job_rows and hybridlab.store).

waiting -> queued -> running -> succeeded | failed | cancelled. A job submitted
with parents starts as waiting; one without starts as queued. Run rows (candidates,
evaluations, ...) use running and the three finished states too.
"""

WAITING, QUEUED, RUNNING = "waiting", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
STATUSES = (WAITING, QUEUED, RUNNING, *FINISHED)
