"""`hybridlab jobs list|show|cancel|submit` and `hybridlab worker`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hybridlab.cli import UserError

MAX_SPEC_FILE_BYTES = 1 << 20


def register(sub) -> None:
    jobs = sub.add_parser("jobs", help="background jobs: list, show, cancel, submit")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    jobs_sub.required = True

    p = jobs_sub.add_parser("list", help="all jobs, newest last")
    _workspace_option(p)
    p.add_argument(
        "--status", choices=["waiting", "queued", "running", "succeeded", "failed", "cancelled"], default=None
    )
    p.add_argument("--json", action="store_true", help="one JSON object per job")
    p.set_defaults(func=run_list)

    p = jobs_sub.add_parser("show", help="one job: spec, progress, error, result, latest metrics")
    _workspace_option(p)
    p.add_argument("job_id", type=int)
    p.set_defaults(func=run_show)

    p = jobs_sub.add_parser("cancel", help="cancel a queued job, or stop a running one at its next step")
    _workspace_option(p)
    p.add_argument("job_id", type=int)
    p.set_defaults(func=run_cancel)

    p = jobs_sub.add_parser("submit", help="queue a job for the worker: KIND and a JSON spec (or @file.json)")
    _workspace_option(p)
    p.add_argument("kind", help="importance, prune, distill, eval, bench or search")
    p.add_argument("spec", help='JSON object, e.g. \'{"model": "demo"}\', or @path/to/spec.json')
    p.add_argument(
        "--after",
        type=int,
        action="append",
        default=None,
        metavar="JOB",
        help='run only once job JOB has succeeded (repeatable); a model given as "job:N" waits for job N anyway',
    )
    p.set_defaults(func=run_submit)

    p = sub.add_parser("worker", help="run queued jobs in this process until stopped (Ctrl-C / SIGTERM)")
    _workspace_option(p)
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it may register extra job kinds); repeatable",
    )
    p.add_argument("--poll", type=float, default=0.2, help="seconds between queue polls when idle")
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument(
        "--stale-after",
        type=float,
        default=30.0,
        help="seconds without a heartbeat after which another worker's job is taken over",
    )
    p.add_argument("--max-jobs", type=int, default=None, help="exit after running this many jobs")
    p.add_argument("--exit-when-idle", action="store_true", help="exit when the queue is empty")
    p.set_defaults(func=run_worker_command)


def _workspace_option(p) -> None:
    p.add_argument(
        "--workspace", default=None, help="experiment store folder (default: $HYBRIDLAB_WORKSPACE, else ~/.hybridlab)"
    )


def run_list(args) -> int:
    from hybridlab.jobs import list_jobs

    frame = list_jobs(args.workspace)
    if args.status:
        frame = frame[frame["status"] == args.status]
    if args.json:
        for row in frame.to_dict(orient="records"):
            print(json.dumps(row, default=str))
        return 0
    if frame.empty:
        print("no jobs")
        return 0
    shown = frame[["id", "kind", "status", "fraction", "message", "attempts", "created_at", "parents"]].copy()
    shown["parents"] = [",".join(map(str, p)) or "-" for p in shown["parents"]]
    shown = shown.rename(columns={"parents": "after"})
    shown["fraction"] = (shown["fraction"] * 100).round().astype(int).astype(str) + "%"
    shown["created_at"] = shown["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S")
    print(shown.to_string(index=False))
    return 0


def run_show(args) -> int:
    from hybridlab.jobs import get_job, job_metrics

    job = get_job(args.job_id, args.workspace)
    print(
        f"job {job['id']}: {job['kind']}, {job['status']} ({job['fraction']:.0%}, {job['message']}), "
        f"attempts {job['attempts']}, worker {job['worker'] or '-'}"
    )
    print("spec:   " + json.dumps(job["spec"], sort_keys=True))
    if job["parents"]:
        print("after:  " + ", ".join(f"job {p} ({get_job(p, args.workspace)['status']})" for p in job["parents"]))
    if job["error"]:
        print("error:  " + job["error"])
    if job["result"] is not None:
        print("result: " + json.dumps(job["result"], sort_keys=True, default=str))
    metrics = job_metrics(args.job_id, args.workspace)
    if not metrics.empty:
        latest = metrics.sort_values("step").groupby("name").tail(1)
        print("latest metrics: " + ", ".join(f"{r.name} {r.value:.4g} @ step {r.step}" for r in latest.itertuples()))
    return 0


def run_cancel(args) -> int:
    from hybridlab.jobs import cancel

    status = cancel(args.job_id, args.workspace)
    if status == "running":
        print(f"job {args.job_id}: cancel requested; it stops at its next step")
    else:
        print(f"job {args.job_id}: {status}")
    return 0


def run_submit(args) -> int:
    from hybridlab.jobs import get_job, submit

    text = args.spec
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise FileNotFoundError(f"spec file {path} not found")
        if path.stat().st_size > MAX_SPEC_FILE_BYTES:
            raise UserError(f"spec file {path} is {path.stat().st_size:,} bytes; a job spec is a small JSON object")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"spec file {path} is not UTF-8 text; write the spec as JSON") from None
    try:
        spec = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        problem = err if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        raise UserError(f'the spec is not valid JSON ({problem}); write it like \'{{"model": "demo"}}\'') from None
    job_id = submit(args.kind, spec, args.workspace, after=args.after)
    status = get_job(job_id, args.workspace)["status"]  # "waiting" when it has parents still to finish
    print(f"job {job_id} {status}; run `hybridlab worker` to process it, `hybridlab jobs show {job_id}` to follow it")
    return 0


def run_worker_command(args) -> int:
    from hybridlab.jobs.worker import run_worker

    for name, value in (("--poll", args.poll), ("--heartbeat", args.heartbeat), ("--stale-after", args.stale_after)):
        if not 0 < value < 86_400:  # also refuses nan and inf
            raise UserError(f"{name} must be a positive number of seconds below a day, got {value}")
    if args.stale_after <= 2 * args.heartbeat:
        raise UserError("--stale-after must be more than twice --heartbeat, or live jobs would look dead")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(
        args.workspace,
        poll_s=args.poll,
        heartbeat_s=args.heartbeat,
        stale_s=args.stale_after,
        max_jobs=args.max_jobs,
        exit_when_idle=args.exit_when_idle,
        plugins=tuple(args.plugin),
    )
    return 0
