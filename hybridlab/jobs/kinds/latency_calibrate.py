"""`latency-calibrate` jobs: time each layer kind of the model's family on this device and fit the latency
model (hybridlab.measure.latency_calibration); the fit goes to <workspace>/latency/<device>-<dtype>-t<threads>.json,
where the planner, `hybridlab plan` and the search's latency budget find it."""

from __future__ import annotations

from dataclasses import dataclass

from hybridlab.core.settings import at_most, positive, setting
from hybridlab.jobs.kinds.common import JobOptions, ModelInput, check_model_input, load
from hybridlab.jobs.registry import JobKind, settings_from_spec, spec_fields
from hybridlab.measure.latency_calibration import CalibrationSettings


def thread_count(value):
    return at_most(4096)(positive(value))


@dataclass
class CalibrationThreads:
    threads: int | None = setting(
        None,
        check=thread_count,
        help="torch threads while timing (default: torch's own); calibrations are kept per count",
    )


def _check(spec: dict, store) -> None:
    from hybridlab.jobs.kinds.common import check_seq_len

    description = check_model_input(spec)
    for seq_len in spec["seq_lens"]:
        check_seq_len(description, seq_len, "'seq_lens'")


def run(spec: dict, ctx) -> dict:
    import torch

    from hybridlab.measure.latency_calibration import calibrate
    from hybridlab.measure.latency_model import calibration_dir, save_latency_model

    ctx.progress(0.0, "loading model")
    model, _ = load(spec["model"], spec)
    ctx.register_model(spec["model"], model.config)
    threads = torch.get_num_threads()
    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    try:
        latency = calibrate(model, settings_from_spec(CalibrationSettings, spec), progress=ctx.sub_progress(0.05, 0.95))
    finally:
        torch.set_num_threads(threads)
    path = save_latency_model(latency, calibration_dir(ctx.workspace))
    ctx.progress(1.0, "saved")
    summary = latency.to_dict()
    summary.pop("points")
    return {**summary, "path": str(path), "key": latency.key, "label": latency.label}


KIND = JobKind(
    name="latency-calibrate",
    doc="time each layer kind at a few widths and sequence lengths here; fit the latency model the planner and search use",
    fields=spec_fields(ModelInput, CalibrationSettings, CalibrationThreads, JobOptions),
    handler=run,
    check=_check,
    requires=("hybridlab.measure.latency_calibration",),
)
