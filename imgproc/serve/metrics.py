"""Counters and histograms for /metrics, written in the Prometheus text format (0.0.4)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Labels = tuple[tuple[str, str], ...]


class Histogram:
    """Cumulative-bucket histogram of seconds."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def lines(self, name: str, labels: Labels) -> list[str]:
        """Return the _bucket, _sum and _count lines."""
        out, running = [], 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"{name}_bucket{_fmt((*labels, ('le', le)))} {running}")
        out.append(f"{name}_sum{_fmt(labels)} {self.total:.6f}")
        out.append(f"{name}_count{_fmt(labels)} {running}")
        return out


class Metrics:
    """What /metrics reports: requests, jobs, images, latency; gauges are read when scraped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._histograms: dict[str, dict[Labels, Histogram]] = defaultdict(dict)
        self._gauges: dict[str, Callable[[], float]] = {}
        self._help: dict[str, tuple[str, str]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        """Set a metric's # TYPE and # HELP lines."""
        self._help[name] = (kind, text)

    def count(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add `value` to the counter `name` with `labels`."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Add one observation to the histogram `name` with `labels`."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._histograms[name].setdefault(key, Histogram()).observe(seconds)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Register a gauge whose value is read at scrape time."""
        self._gauges[name] = read

    def render(self) -> str:
        """Return every metric in the Prometheus text exposition format."""
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                lines += self._header(name, "counter")
                lines += [f"{name}{_fmt(k)} {v:g}" for k, v in sorted(series.items())]
            for name, hists in sorted(self._histograms.items()):
                lines += self._header(name, "histogram")
                for key, hist in sorted(hists.items()):
                    lines += hist.lines(name, key)
        for name, read in sorted(self._gauges.items()):
            lines += self._header(name, "gauge")
            lines.append(f"{name} {read():g}")
        return "\n".join(lines) + "\n"

    def _header(self, name: str, kind: str) -> list[str]:
        kind, text = self._help.get(name, (kind, name.replace("_", " ")))
        return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
