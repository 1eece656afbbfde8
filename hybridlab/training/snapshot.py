"""Training snapshots: a run's latest checkpoint as a small folder that can be committed to git.

A snapshot holds what survives a move to another machine when only the repository does:
    config.json, model.safetensors   the weights (bfloat16 by default, or float32), a loadable model folder
    tokenizer files                  the run's tokenizer
    run.json                         the run record with every segment so far (see run_record.py)
    metrics.jsonl                    the loss curve up to the snapshot's step
    snapshot.json                    step, tokens and wall time at the snapshot, the stored dtype
It leaves out AdamW's moments (twice the fp32 weights again); `hybridlab train --resume-weights DIR`
continues from it with fresh moments and a short learning-rate re-warm. The folder is written to a
temporary sibling and swapped in with one rename, so an interrupted export leaves the previous one whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from hybridlab.core.atomic import atomic_directory, write_json
from hybridlab.core.errors import UserError
from hybridlab.training.checkpoint import has_checkpoint
from hybridlab.training.run_record import RUN_RECORD, now, read_record

SNAPSHOT_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def export_snapshot(run_dir: str | Path, out: str | Path, dtype: str = "bfloat16") -> dict:
    """Write the snapshot of `run_dir`'s latest checkpoint to `out` (replacing it atomically); returns its state."""
    from safetensors.torch import load_model

    from hybridlab.training.pretrain import SNAPSHOT_STATE, build_model

    run_dir, out = Path(run_dir), Path(out)
    if dtype not in SNAPSHOT_DTYPES:
        raise UserError(f"--dtype {dtype} is not one of {', '.join(SNAPSHOT_DTYPES)}")
    if not (run_dir / RUN_RECORD).is_file() or not has_checkpoint(run_dir / "checkpoint"):
        raise UserError(
            f"--run {run_dir} holds no run.json and checkpoint/: give the --out folder of `hybridlab train`"
        )
    if not (run_dir / "tokenizer" / "tokenizer.json").is_file():
        raise UserError(
            f"--run {run_dir} has no tokenizer/ folder: it was started by an older hybridlab; resume it once"
        )
    record = read_record(run_dir / RUN_RECORD)
    state = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=True)
    step, tokens, wall_s = int(state["step"]), int(state["tokens"]), float(state["wall_s"])
    config = record["config"]
    model = build_model(
        record["settings"]["preset"],
        config["vocab_size"],
        config["bos_token_id"],
        config["eos_token_id"],
        config["pad_token_id"],
        record.get("config_overrides"),
    )
    load_model(model, str(run_dir / "checkpoint" / "model.safetensors"))
    last = record["segments"][-1] if record.get("segments") else None
    if last is not None and last.get("end_step") != step:  # the run goes on (or was killed) past this point
        last.update(end_step=step, end_tokens=tokens, ended=last.get("ended") or "running when the snapshot was taken")
        last["wall_s"] = round(wall_s - last["start_wall_s"], 1)
    snapshot = {"step": step, "tokens": tokens, "wall_s": round(wall_s, 1), "dtype": dtype, "exported_at": now()}
    record["snapshot"] = snapshot
    metrics = [
        line
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line and json.loads(line)["step"] <= step
    ]
    with atomic_directory(out, overwrite=True) as tmp:
        model.to(SNAPSHOT_DTYPES[dtype]).save_pretrained(str(tmp), safe_serialization=True)
        for item in (run_dir / "tokenizer").iterdir():
            shutil.copyfile(item, tmp / item.name)
        write_json(tmp / RUN_RECORD, record, default=str)
        (tmp / "metrics.jsonl").write_text("".join(line + "\n" for line in metrics))
        write_json(tmp / SNAPSHOT_STATE, snapshot)
    return snapshot
