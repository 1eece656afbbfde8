"""Named points where a fault-injection test may stop a process, to SIGKILL it exactly there.

    HYBRIDLAB_PAUSE_AT=<point>[,<point>...]  HYBRIDLAB_PAUSE_FILE=<path>

When a process with these set reaches one of the listed points, it writes the point's name
to the file and sleeps until it is killed, so a test can kill it mid-migration, between the
two renames of a checkpoint, or with an artifact half-written, and check what is left.
Without the variables (always, outside tests) a point costs one environment lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT_ENV = "HYBRIDLAB_PAUSE_AT"
PAUSE_FILE_ENV = "HYBRIDLAB_PAUSE_FILE"


def pause_point(name: str) -> None:
    points = os.environ.get(PAUSE_AT_ENV)
    if not points or name not in points.split(","):
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(name)
    while True:  # until the test kills this process
        time.sleep(60)
