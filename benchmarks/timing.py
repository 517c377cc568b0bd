"""The one timing rule every benchmark here uses."""

from __future__ import annotations

import time
from collections.abc import Callable

REPEATS = 3


def best_time(fn: Callable[[], object], *, repeats: int = REPEATS, warm_up: bool = True) -> float:
    """Return the fastest wall time in seconds of `repeats` calls of fn (after one warm-up)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
