"""Paired timing: a model and its reference (the teacher it came from) timed interleaved, round by round.

On a shared machine the load changes from second to second (other processes, frequency scaling,
the allocator's state), so two models timed one after the other in separate runs differ by +-10%
or more for reasons that have nothing to do with them. Timing them interleaved in one process,
model then reference in every round (ABAB...), with the same inputs and threads, lets each round's
ratio see the same conditions: what drifts between rounds cancels in the ratio.

The speedup is reported with a confidence interval computed from the paired rounds
(`ratio_interval`): a Student-t interval on the mean of the per-round log ratios
log(reference_i / model_i), mapped back with exp. Why this and not a bootstrap:

- timings are positive and their noise is multiplicative (a busy machine slows everything by a
  factor), so the log ratio is close to symmetric and normal; the t-interval is exact when the
  ratios are log-normal and holds up well for few rounds;
- a bootstrap needs tens of rounds before its percentile interval stops being too narrow (with 5
  rounds it has at most a handful of distinct means); rounds are expensive, so we have few;
- exp(mean log ratio) is the geometric mean of the ratios: the point estimate lies inside its
  interval by construction, and swapping model and reference gives exactly the reciprocal.

Absolute times are the median of each model's rounds with a distribution-free interval for the
median from order statistics (`median_interval`): no shape assumed, its true coverage is reported.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

from scipy import stats

LEVEL = 0.95  # confidence level of every interval reported here
METHOD = "t-interval on log(reference / model) of paired rounds, exp back (geometric-mean speedup)"

Timer = Callable[[Callable[[], object]], float]  # seconds one call of fn takes


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    level: float  # the interval's coverage (for a median interval: its exact coverage from the order statistics)


def ratio_interval(reference_s: list[float], model_s: list[float], level: float = LEVEL) -> Interval:
    """Speedup reference/model as exp(mean log ratio of paired rounds) with its t-interval.
    One round gives the ratio with no interval (low = high = value, level 0)."""
    if len(reference_s) != len(model_s) or not model_s:
        raise ValueError(
            f"paired rounds must come in equal, non-empty lists, got {len(reference_s)} and {len(model_s)}"
        )
    if min(reference_s) <= 0 or min(model_s) <= 0:
        raise ValueError("paired times must be positive")
    logs = [math.log(r) - math.log(m) for r, m in zip(reference_s, model_s)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return Interval(math.exp(mean), math.exp(mean), math.exp(mean), 0.0)
    half = stats.t.ppf(0.5 + level / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), level)


def median_interval(values: list[float], level: float = LEVEL) -> Interval:
    """The median with the narrowest order-statistic interval [x_(k), x_(n+1-k)] whose coverage
    (from Binomial(n, 1/2)) is at least `level`; with too few values, [min, max] and its coverage."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")
    median = statistics.median(ordered)
    k, coverage = 1, 1 - 2 * stats.binom.cdf(0, n, 0.5)  # [min, max]
    while k + 1 <= n // 2:
        wider = 1 - 2 * stats.binom.cdf(k, n, 0.5)  # coverage of [x_(k+1), x_(n-k)]
        if wider < level:
            break
        k, coverage = k + 1, wider
    return Interval(median, ordered[k - 1], ordered[n - k], float(coverage))


@dataclass(frozen=True)
class PairedTimes:
    """Seconds per round of one workload for the model and its reference, in the order timed."""

    model_s: list[float]
    reference_s: list[float]

    def summary(self, level: float = LEVEL) -> dict:
        """Speedup (reference / model) with its interval, and both medians with theirs, in ms."""
        speedup = ratio_interval(self.reference_s, self.model_s, level)
        model, reference = median_interval(self.model_s, level), median_interval(self.reference_s, level)
        return {
            "speedup": speedup.value,
            "speedup_low": speedup.low,
            "speedup_high": speedup.high,
            "speedup_level": speedup.level,
            "model_ms": 1000.0 * model.value,
            "model_ms_low": 1000.0 * model.low,
            "model_ms_high": 1000.0 * model.high,
            "model_ms_level": model.level,
            "reference_ms": 1000.0 * reference.value,
            "reference_ms_low": 1000.0 * reference.low,
            "reference_ms_high": 1000.0 * reference.high,
            "reference_ms_level": reference.level,
            "model_ms_runs": [1000.0 * t for t in self.model_s],
            "reference_ms_runs": [1000.0 * t for t in self.reference_s],
        }


def interleave(
    workloads: dict[str, tuple[Callable[[], object], Callable[[], object]]],
    rounds: int,
    warmup: int,
    timer: Timer,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, PairedTimes]:
    """Time each workload's (model call, reference call) in `rounds` rounds, model then reference
    (ABAB...), after `warmup` untimed rounds in the same order. `timer(fn)` returns the seconds of
    one call (bench.time_call on the model's device); `tick` is called after every round."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be at least 1 and warmup 0 or more, got {rounds} and {warmup}")
    for _ in range(warmup):
        for model_fn, reference_fn in workloads.values():
            model_fn()
            reference_fn()
        tick()
    timed = {name: ([], []) for name in workloads}
    for _ in range(rounds):
        for name, (model_fn, reference_fn) in workloads.items():
            timed[name][0].append(timer(model_fn))
            timed[name][1].append(timer(reference_fn))
        tick()
    return {name: PairedTimes(model_s, reference_s) for name, (model_s, reference_s) in timed.items()}
