"""What `imgproc status` reports of a watch journal, as JSON-ready data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from imgproc.config import parse_watch_rule
from imgproc.journal import Journal
from imgproc.watch import Watch, inputs_of


def journal_status(path: Path) -> dict[str, Any]:
    """Return the journal's state counts, whether a daemon holds it, each watched folder's
    backlog, the entries waiting on an output or environment fault, and the last errors."""
    store = Journal(path)
    try:
        return {
            "journal": str(path), "daemon_running": store.daemon_running(),
            "counts": store.counts(),
            "backlog": backlog(store),
            "waiting": [{"path": e.path, "error": e.error, "next_retry": _when(e.next_try)}
                        for e in store.waiting()],
            "last_errors": [{"path": e.path, "state": e.state, "attempts": e.attempts,
                             "error": e.error} for e in store.last_errors()],
        }
    finally:
        store.close()


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def backlog(journal: Journal) -> dict[str, int]:
    """Return, per rule a daemon ran with this journal, how many files in its folder have no
    journal entry and no output yet (counted now, by scanning the folder)."""
    counts = {}
    for name, spec in journal.rules().items():
        cwd = Path(spec.pop("cwd", "."))
        rule = parse_watch_rule(spec, base=cwd)
        known = {cwd / p for p in journal.known_paths(name)}
        watch = Watch(rule, ())
        counts[name] = sum(1 for path in inputs_of(watch)
                           if path not in known and not watch.output_for(path).exists())
    return counts
