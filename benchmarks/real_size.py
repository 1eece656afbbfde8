"""Nemotron-H 8B -> the paper's 4B on one modest machine: peak memory of each command against the checkpoint.

    python -m benchmarks.real_size --dir /tmp/real-size          # ~25 GB of disk; reuses a finished checkpoint

1. writes a random-weight bf16 checkpoint with the published Nemotron-H-8B config, shard by shard;
2. `hybridlab importance` on it (demo calibration tokens, block-importance metric), streamed;
3. `hybridlab prune` to the paper's 4B spec (--hidden-size 3072 --ffn-hidden-size 12288 --mamba-num-heads 112),
   streamed because the whole model would not fit comfortably (chosen automatically);
4. checks the output: exactly 4,489,223,040 bf16 parameters, and it loads with AutoModelForCausalLM.

Each command runs in its own process; its peak resident memory (the kernel's ru_maxrss for that process)
is printed as a ratio to the checkpoint's size, with its wall time. Goal: every ratio <= 0.6.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PAPER_4B_PARAMS = 4_489_223_040
SPEC = ["--hidden-size", "3072", "--ffn-hidden-size", "12288", "--mamba-num-heads", "112"]
GOAL = 0.6


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak resident bytes, stdout) of one command in its own process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {process.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/hybridlab-real-size", help="working folder (about 25 GB)")
    parser.add_argument("--samples", type=int, default=8, help="calibration sequences")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--score-dtype",
        default="float32",
        help="dtype importance computes in (float32: CPUs without bf16 matrix units are ~6x slower in bf16)",
    )
    args = parser.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, scores, pruned, workspace = work / "nemotron-h-8b", work / "scores", work / "nemotron-h-4b", work / "ws"
    for leftover in (scores, pruned, workspace):
        shutil.rmtree(leftover, ignore_errors=True)
    python = sys.executable
    hybridlab = [python, "-m", "hybridlab"]
    rows = []

    if not (checkpoint / "config.json").is_file():
        wall, peak, _ = run_measured(
            [python, "-m", "benchmarks.random_checkpoint", "--reference", "nemotron-h-8b", "--out", str(checkpoint)]
        )
        rows.append(("write the random 8B checkpoint", wall, peak))
    size = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))

    common = ["--model", str(checkpoint), "--workspace", str(workspace)]
    calib = ["--calib", "assets/demo/calib.npy", "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    wall, peak, _ = run_measured(
        hybridlab
        + ["importance", *common, *calib, "--layer-metric", "cosine", "--dtype", args.score_dtype, "--streaming"]
        + ["--out", str(scores)]
    )
    rows.append((f"importance (streamed, {args.score_dtype})", wall, peak))
    wall, peak, out = run_measured(hybridlab + ["prune", *common, "--scores", str(scores), *SPEC, "--out", str(pruned)])
    rows.append(("prune to the paper's 4B (streaming chosen automatically)", wall, peak))

    check = (
        "import json, torch; from transformers import AutoModelForCausalLM;"
        f"m = AutoModelForCausalLM.from_pretrained({str(pruned)!r});"
        "print(json.dumps({'class': type(m).__name__, 'params': sum(p.numel() for p in m.parameters()),"
        "'dtypes': sorted({str(p.dtype) for p in m.parameters()})}))"
    )
    wall, peak, out = run_measured([python, "-c", check])
    loaded = json.loads(out.strip().splitlines()[-1])

    print(f"checkpoint: {checkpoint} ({size / 1e9:.2f} GB, bf16, published Nemotron-H-8B config)")
    print(f"{'command':58} {'wall':>8} {'peak RSS':>10} {'/ checkpoint':>13}")
    for name, wall_s, peak_bytes in rows:
        print(f"{name:58} {wall_s:7.0f}s {peak_bytes / 1e9:8.2f} GB {peak_bytes / size:12.2f}x")
    print(
        f"4B output: {loaded['params']:,} parameters {loaded['dtypes']} as {loaded['class']} (paper: {PAPER_4B_PARAMS:,})"
    )
    measured = [peak_bytes / size for name, _, peak_bytes in rows if not name.startswith("write")]
    ok = max(measured) <= GOAL and loaded["params"] == PAPER_4B_PARAMS and loaded["dtypes"] == ["torch.bfloat16"]
    print(f"goal (each command <= {GOAL}x the checkpoint, exact 4B bf16 output): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
