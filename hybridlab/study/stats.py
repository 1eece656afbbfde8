"""Error bars for the study: paired bootstrap intervals over validation windows and seeds, and the
verdicts read from them.

Method (written into every report). Each arm is scored on the same W validation windows in each
of S seeds, so its losses form a seeds x windows table L[s, w]; the two arms of a comparison are
paired cell by cell (same seed, same window) and compared through D = L_A - L_B. An arm's estimate
is the mean of its table, a difference's the mean of D. Its 95% interval is the percentile interval
of the mean over 2,000 resampled tables: each resample draws S seeds and W windows with
replacement, independently, and keeps every cell at their crossings (the "pigeonhole" bootstrap of
a crossed design, Owen 2007, which is mildly conservative). Resampling windows carries the
variation of the loss over text; resampling seeds carries the variation of everything a seed
changes (calibration subset, distillation data, random draws). With 3 seeds the seed factor has
only 10 distinct resamples, so the interval represents seed-to-seed variation coarsely. The
resampling generator is seeded (BOOTSTRAP_SEED), so the same losses always give the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 20250411  # fixed: an interval is a function of the losses alone

METHOD = (
    f"{CONFIDENCE:.0%} percentile bootstrap, {RESAMPLES:,} resamples (fixed generator seed {BOOTSTRAP_SEED}), "
    "paired by seed and validation window: each resample draws the seeds and the windows with replacement, "
    "independently, and averages the paired differences at their crossings (a two-way, mildly conservative "
    "bootstrap of the crossed seeds x windows design)"
)


@dataclass(frozen=True)
class Interval:
    estimate: float  # mean over every seed and window
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, signed: bool = False) -> str:
        form = "{:+.3f}" if signed else "{:.3f}"
        return f"{form.format(self.estimate)} [{form.format(self.low)}, {form.format(self.high)}]"


def _table(values) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    if table.ndim == 1:
        table = table[None, :]
    if table.ndim != 2 or table.size == 0 or not np.isfinite(table).all():
        raise ValueError(f"expected a finite seeds x windows table of losses, got shape {table.shape}")
    return table


def bootstrap_mean(
    values, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED
) -> Interval:
    """Percentile interval of the mean of a seeds x windows table [S, W] (a 1-D array is one seed)."""
    table = _table(values)  # [S, W]
    seeds, windows = table.shape
    rng = np.random.default_rng(seed)
    # how often each seed and window is drawn in each resample: [R, S] and [R, W]
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples).astype(np.float64)
    window_counts = rng.multinomial(windows, np.full(windows, 1 / windows), size=resamples).astype(np.float64)
    means = np.einsum("rs,sw,rw->r", seed_counts, table, window_counts) / (seeds * windows)  # [R]
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(table.mean()), float(low), float(high))


def paired_difference(a, b, **kwargs) -> Interval:
    """Interval of mean(A - B) over paired cells: a and b are [S, W] losses on the same seeds and windows."""
    a, b = _table(a), _table(b)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds and windows, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, **kwargs)


def verdict(name_a: str, name_b: str, difference: Interval, unit: str = "nats") -> str:
    """What the interval of A - B (lower is better) says, in words."""
    d = difference
    if d.high < 0:
        return f"{name_a} better than {name_b} by {-d.estimate:.3f} {unit} [{-d.high:.3f}, {-d.low:.3f}]"
    if d.low > 0:
        return f"{name_b} better than {name_a} by {d.estimate:.3f} {unit} [{d.low:.3f}, {d.high:.3f}]"
    return f"no difference detected at this budget: {name_a} - {name_b} = {d.text(signed=True)} {unit}"


def direction(difference: Interval) -> int:
    """-1: A is lower (better), +1: B is lower, 0: the interval holds zero."""
    return -1 if difference.high < 0 else 1 if difference.low > 0 else 0
