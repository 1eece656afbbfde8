"""`hybridlab store check`: is a workspace sound? Exit 0 when it is, 1 listing each problem found.

It checks the store file (SQLite quick_check) and the queue file, jobs stuck as running
whose process is gone, artifact folders that are missing or that no run records, and the
hidden temporary folders a killed process left. `--fix` then does what crash recovery does
(a worker does it by itself): stuck jobs are re-queued or failed, leftovers deleted and
stranded checkpoints put back; missing and unrecorded artifacts are only reported.
"""

from __future__ import annotations


def register(sub) -> None:
    store = sub.add_parser("store", help="the experiment store: check a workspace for damage and leftovers")
    store_sub = store.add_subparsers(dest="store_command", metavar="ACTION")
    store_sub.required = True
    p = store_sub.add_parser(
        "check",
        help="report problems: store integrity, stuck jobs, missing or unrecorded artifacts, leftover temp "
        "folders (exit 0: none, 1: some)",
    )
    p.add_argument(
        "--workspace",
        default=None,
        metavar="DIR",
        help="workspace to check (default: $HYBRIDLAB_WORKSPACE, else ~/.hybridlab)",
    )
    p.add_argument(
        "--fix",
        action="store_true",
        help="then re-queue or fail stuck jobs, delete leftovers and put back stranded checkpoints, as a worker would",
    )
    p.set_defaults(func=run_check)


def run_check(args) -> int:
    from hybridlab.core.paths import workspace_dir
    from hybridlab.jobs.queue import QUEUE_FILE, JobQueue, check_queue_file
    from hybridlab.jobs.recovery import STALE_S, presumed_dead, recover
    from hybridlab.store import RUNNING, Store, job_rows
    from hybridlab.store.check import artifact_problems, leftover_problems
    from hybridlab.store.db import StoreDamaged

    workspace = workspace_dir(args.workspace)  # a workspace that is a file: one line, exit 2
    problems = []
    try:
        store = Store(workspace)
    except StoreDamaged as err:  # nothing else can be read from a damaged store
        print(f"problem: {err}")
        print(f"{workspace}: the store is damaged; fix that first")
        return 1
    try:
        check_queue_file(workspace / QUEUE_FILE)
    except StoreDamaged as err:
        problems.append(str(err))
    for job in job_rows.job_rows(store, RUNNING):
        owner = job["worker"] or "?"
        if presumed_dead(owner, job["heartbeat"], STALE_S):
            problems.append(
                f"job {job['id']} ({job['kind']}) is stuck as running: its process {owner} is gone "
                "(a worker, `hybridlab jobs list` or --fix re-queues or fails it)"
            )
    problems += artifact_problems(store)
    problems += leftover_problems(store)
    for problem in problems:
        print(f"problem: {problem}")
    if args.fix and problems:
        queue = JobQueue(workspace)
        try:
            recover(store, queue, STALE_S)
        finally:
            queue.close()
        left = len(leftover_problems(store))
        print(
            f"fixed: stuck jobs settled, leftovers cleared ({left} left); missing or unrecorded artifacts are yours to decide"
        )
    if not problems:
        print(f"{workspace}: no problems (store, queue, jobs, artifacts, temporary folders)")
        return 0
    print(f"{workspace}: {len(problems)} problem(s)")
    return 1
