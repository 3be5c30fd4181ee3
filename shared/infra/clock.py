"""The one wall clock: epoch milliseconds, as Redis scripts, stream entries and events carry time.

Durations inside a process use `time.monotonic()` (a wall clock can step); anything that crosses
a process or lands in Redis uses this. Code that must be tested at a chosen time takes a
`Clock` argument defaulting to `now_ms`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def now_ms() -> int:
    return time.time_ns() // 1_000_000
