"""`hybridlab latency-calibrate`: fit this device's latency model for a model's family (a recorded job).

The fit lands in <workspace>/latency/; `hybridlab plan`, the planner page and `hybridlab search
--latency-budget` read it from there."""

from __future__ import annotations

import argparse
import json

from hybridlab.cli.options import add_options, job_spec_from_args
from hybridlab.cli.recorded import add_workspace_option, run_recorded
from hybridlab.jobs.kinds.common import JobOptions, ModelInput
from hybridlab.jobs.kinds.latency_calibrate import CalibrationThreads
from hybridlab.measure.latency_calibration import CalibrationSettings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "latency-calibrate",
        help="time each layer kind on this device and fit the latency model (predicted speedups for plans)",
    )
    add_options(p, ModelInput)
    add_options(p, CalibrationSettings)
    add_options(p, CalibrationThreads)
    add_options(p, JobOptions)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    add_workspace_option(p)
    p.set_defaults(func=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from hybridlab.cli.evaluate import _check_model_and_device

    _check_model_and_device(args)
    spec = job_spec_from_args(args, ModelInput, CalibrationSettings, CalibrationThreads, JobOptions)
    result = run_recorded("latency-calibrate", spec, args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['family']} latency model {result['label']}, in {result['seconds']:.0f} s")
    print(f"seq lens {', '.join(map(str, result['seq_lens']))}; Mamba forward: {result['mamba_forward'] or 'none'}")
    for kind, coef in {**result["layers"], "rest": result["rest"]}.items():
        terms = ", ".join(f"{name} {value:.3g}" for name, value in coef.items() if value)
        print(f"  {kind:<22} s = {terms or '0'}")
    print(f"saved to {result['path']}")
    return 0
