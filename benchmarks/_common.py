"""What the benchmark scripts share: the model under test and interleaved timing."""

from __future__ import annotations

import statistics
from typing import Callable

import torch

from hybridlab.measure.bench import time_call


def teacher_model(dtype: torch.dtype = torch.float32):
    """(model, description): the bundled demo teacher, or a randomly initialised model of the
    same architecture when the demo assets are missing (timing does not depend on the weights)."""
    from hybridlab.core.paths import demo_dir

    if (demo_dir() / "teacher" / "config.json").exists():
        from hybridlab.model.loading import load_model

        model, _ = load_model("demo", dtype=dtype)
        return model.eval(), "demo teacher"
    from hybridlab.training.pretrain import build_model

    torch.manual_seed(0)
    model = build_model("demo-teacher", vocab_size=8192, bos=0, eos=0, pad=1).to(dtype)
    return model.eval(), "demo-teacher architecture, random weights (assets/demo/teacher not found)"


def interleaved_medians(
    fns: dict[str, Callable[[], object]], device, repeats: int, warmup: int = 1, settle: int = 0
) -> dict[str, float]:
    """Median seconds of each fn, timed in alternation (a, b, a, b, ...) so that drift in the
    machine's load affects every contender alike. With `settle`, each turn first makes that many
    untimed calls, so a contender is timed in its own steady state, as a loop repeating it runs,
    and not straight after another one freed and touched different memory (on the CPU the first
    touch of freshly allocated pages costs as much as some kernels)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(settle):
                fn()
            times[name].append(time_call(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
