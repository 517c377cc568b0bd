"""The one timing rule every benchmark here uses."""

from __future__ import annotations

import os
import subprocess
import tempfile
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


def measured_program(command: list[str]) -> tuple[float, float]:
    """Return (wall seconds, peak resident GB) of a command run as a fresh child process."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a full pipe would block it
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage only
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            errors.seek(0)
            raise RuntimeError(f"{command[:4]} failed: {errors.read().decode()[-500:]}")
    return seconds, usage.ru_maxrss / 2**20  # kB -> GB
