"""One progress convention for every long operation in the library.

Long functions take `progress: ProgressFn | None`. The CLI leaves it None and gets a
tqdm bar; the job engine passes a callback that records progress in the store and
raises `Cancelled` when the user asked to stop, which unwinds the work cleanly.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

# progress(fraction in [0, 1], message, metrics or None)
ProgressFn = Callable[[float, str, "dict | None"], None]


class Cancelled(Exception):
    """Raised from a progress callback to stop long work at the next step."""


def track(
    items: Iterable[T],
    total: int | None,
    desc: str,
    progress: ProgressFn | None = None,
    start_fraction: float = 0.0,
    end_fraction: float = 1.0,
) -> Iterator[T]:
    """Iterate with a tqdm bar (CLI) or by reporting to `progress` (jobs, UI).

    `start_fraction`/`end_fraction` map this loop onto a slice of a larger task.
    """
    if progress is None:
        yield from tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        return
    span = end_fraction - start_fraction
    progress(start_fraction, desc, None)
    for i, item in enumerate(items):
        yield item
        done = (i + 1) / total if total else 0.0
        progress(start_fraction + span * min(done, 1.0), desc, None)


def subrange(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    """A callback that maps a step's own 0..1 onto [start, end] of the caller's progress (None stays None)."""
    if progress is None:
        return None
    return lambda fraction, message, metrics: progress(start + (end - start) * fraction, message, metrics)
