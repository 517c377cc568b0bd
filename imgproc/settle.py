"""The watch daemon's settler: holds candidate files until they are complete.

Complete means the writer closed it (or renamed it into place), or its size and mtime stayed
unchanged for `settle_seconds`, and in both cases no process still holds it open for writing
where the platform can tell (imgproc.inflight): a writer that pauses mid-file is waited for.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from imgproc.inflight import being_written

log = structlog.get_logger("imgproc.watch")


@dataclass
class _Candidate:
    watch: int
    size: int
    mtime_ns: int
    since: float
    closed: bool


class Settler:
    """Holds candidate files until they are complete, then hands them to `deliver`."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._candidates: dict[Path, _Candidate] = {}
        self._retries: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()

    def note(self, watch: int, path: Path, *, closed: bool = False) -> None:
        """Record an event on `path` (closed = the writer closed it after writing)."""
        stat = file_stat(path)
        if stat is None:
            return
        now = time.monotonic()
        with self._lock:
            known = self._candidates.get(path)
            if known is None:
                log.info("detected", path=str(path))
                self._candidates[path] = _Candidate(watch, *stat, now, closed)
            elif closed:
                known.size, known.mtime_ns = stat
                known.closed, known.since = True, now

    def retry_at(self, when: float, watch: int, path: Path) -> None:
        """Offer `path` again at monotonic time `when` (a retry after a failure)."""
        with self._lock:
            heapq.heappush(self._retries, (when, watch, str(path)))

    def ready(self) -> list[tuple[int, Path]]:
        """Return (and forget) the candidates that are complete now, and due retries."""
        now = time.monotonic()
        out: list[tuple[int, Path]] = []
        with self._lock:
            while self._retries and self._retries[0][0] <= now:
                _, watch, retried = heapq.heappop(self._retries)
                out.append((watch, Path(retried)))
            for path, cand in list(self._candidates.items()):
                if self._complete(path, cand, now):
                    del self._candidates[path]
                    out.append((cand.watch, path))
        return out

    def _complete(self, path: Path, cand: _Candidate, now: float) -> bool:
        stat = file_stat(path)
        if stat is None:  # gone (renamed away or deleted): a later event brings it back
            del self._candidates[path]
            return False
        if stat != (cand.size, cand.mtime_ns):
            cand.size, cand.mtime_ns, cand.since, cand.closed = *stat, now, False
            return False
        wait = 0.0 if cand.closed else self.settle_seconds
        if now - cand.since < wait:
            return False
        if being_written(path):  # a writer paused with the file open: not complete
            cand.since, cand.closed = now, False
            return False
        return True

    def idle(self) -> bool:
        """Return True when no candidate and no retry is waiting."""
        with self._lock:
            return not self._candidates and not self._retries


def file_stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if path.is_file() else None


