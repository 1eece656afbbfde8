"""The run record (`run.json`): what a training run is, and every segment it ran in.

A long run may be stopped and resumed many times, on different machines. Each start appends a segment:
how it started (`fresh`, `checkpoint`: the full checkpoint on this machine, bit-exact; `weights`: a
weights-only snapshot with fresh AdamW moments), at which step and token count, the schedule it followed,
the machine, threads, library versions and whether the fast Mamba path was on; checkpoints update its
last saved step and the loop's end fills in where and why it stopped. The model card reads the whole list.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path

import torch

from hybridlab.core.atomic import write_json

RUN_RECORD = "run.json"
RESUME_KINDS = ("fresh", "checkpoint", "weights")


def machine() -> dict:
    """Where this segment runs: enough to tell machines apart and compare speeds honestly."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform()}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_record(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def start_segment(record: dict, kind: str, state: dict, schedule: dict, fast_path: bool, **extra) -> dict:
    """Append a new segment to `record` (in place) and return it."""
    if kind not in RESUME_KINDS:
        raise ValueError(f"resume kind {kind!r} is not one of {RESUME_KINDS}")
    import transformers

    segment = {
        "index": len(record.setdefault("segments", [])),
        "kind": kind,
        "started_at": now(),
        "start_step": int(state["step"]),
        "start_tokens": int(state["tokens"]),
        "start_wall_s": round(float(state.get("wall_s", 0.0)), 1),
        "schedule": schedule,
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "fast_mamba": fast_path,
        **extra,
    }
    record["segments"].append(segment)
    return segment


def update_segment(segment: dict, event: str, state: dict) -> None:
    """A checkpoint was saved, or the loop ended: note the step, tokens and cumulative wall time."""
    segment["last_saved_step" if event == "checkpoint" else "end_step"] = int(state["step"])
    if event == "end":
        segment["end_tokens"] = int(state["tokens"])
        segment["ended_at"] = now()
        segment["ended"] = state.get("ended", "finished")
    segment["wall_s"] = round(float(state["wall_s"]) - segment["start_wall_s"], 1)


def save_record(path: str | Path, record: dict) -> None:
    write_json(path, record, indent=2, default=str)


def schedule_summary(segments: list[dict]) -> list[str]:
    """One line per segment, for the model card."""
    lines = []
    for s in segments:
        end = s.get("end_step", s.get("last_saved_step"))
        how = {
            "fresh": "started from scratch",
            "checkpoint": "resumed from the full checkpoint (weights, AdamW moments, RNG)",
            "weights": f"resumed from a weights-only snapshot ({s.get('snapshot_dtype', '?')}), fresh AdamW "
            f"moments, learning rate re-warmed over {s.get('rewarm_steps', 0)} steps",
        }[s["kind"]]
        sched = s["schedule"]
        stopped = s.get("ended", "killed (no end recorded; last checkpoint shown)")
        if end is None:  # killed before it saved anything: the next segment starts where this one did
            end, stopped = s["start_step"], "killed before its first checkpoint, so none of its steps were kept"
        lines.append(
            f"{s['index'] + 1}. steps {s['start_step']:,} → {end:,}: {how}; "
            f"schedule {sched['total_steps']:,} steps ({sched['token_budget']:,} tokens); "
            f"{s.get('wall_s', 0) / 60:.1f} min on {s['machine']['cpu'] or s['machine']['host']} "
            f"({s['threads']} threads, torch {s['torch']}, fast Mamba path {'on' if s['fast_mamba'] else 'off'}); "
            f"{stopped}"
        )
    return lines
