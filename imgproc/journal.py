"""The watch daemon's journal: an SQLite file recording every input by path and content.

Each input is processed exactly once per content: the key is (rule, path, sha256). A restart
reads the journal to finish what was queued or running and to skip what is done.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

State = Literal["queued", "running", "done", "failed", "quarantined", "superseded"]
STATES: tuple[State, ...] = ("queued", "running", "done", "failed", "quarantined", "superseded")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    output TEXT,
    error TEXT,
    ms REAL,
    detected_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    UNIQUE (rule, path, sha256)
);
CREATE INDEX IF NOT EXISTS inputs_state ON inputs (state, next_try);
"""


@dataclass(frozen=True)
class Entry:
    """One journal row."""

    id: int
    rule: str
    path: str
    size: int
    mtime_ns: int
    sha256: str
    state: State
    attempts: int
    runs: int
    next_try: float
    output: str | None
    error: str | None
    ms: float | None
    detected_at: float
    started_at: float | None
    finished_at: float | None


class Journal:
    """Thread-safe access to the journal file (WAL mode, one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL loses nothing when the process is killed; only a power cut can roll back the
        # last commits, and then those inputs are simply processed again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def admit(self, rule: str, path: Path, *, size: int, mtime_ns: int,
              sha256: str) -> Entry | None:
        """Return the entry to work on for this content, or None when it is done, in hand or
        quarantined (a duplicate event, or a file already processed)."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM inputs WHERE rule=? AND path=? AND sha256=?",
                             (rule, str(path), sha256)).fetchone()
            if row is None:
                # Older content of this path still waiting or failing will never be seen again.
                db.execute("UPDATE inputs SET state='superseded' WHERE rule=? AND path=? AND"
                           " state IN ('queued', 'failed')", (rule, str(path)))
                cursor = db.execute(
                    "INSERT INTO inputs (rule, path, size, mtime_ns, sha256, state, detected_at)"
                    " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                    (rule, str(path), size, mtime_ns, sha256, now))
                row = db.execute("SELECT * FROM inputs WHERE id=?",
                                 (cursor.lastrowid,)).fetchone()
            elif not _due(row, now):
                return None
        return _entry(row)

    def start(self, entry_id: int, output: Path) -> bool:
        """Mark an entry running (one more attempt); False if another worker holds it."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE inputs SET state='running', attempts=attempts+1, runs=runs+1, output=?,"
                " started_at=? WHERE id=? AND state IN ('queued', 'failed')",
                (str(output), time.time(), entry_id))
            return cursor.rowcount == 1

    def finish(self, entry_id: int, *, ms: float) -> None:
        """Mark an entry done."""
        self._set(entry_id, "state='done', error=NULL, ms=?, finished_at=?", (ms, time.time()))

    def fail(self, entry_id: int, error: str, *, retry_at: float | None) -> None:
        """Mark an entry failed (retried at `retry_at`) or quarantined (retry_at None)."""
        state = "failed" if retry_at is not None else "quarantined"
        self._set(entry_id, "state=?, error=?, next_try=?, finished_at=?",
                  (state, error, retry_at or 0.0, time.time()))

    def requeue(self, entry_id: int) -> None:
        """Put an entry back in the queue without counting an attempt (stopped mid-way)."""
        self._set(entry_id, "state='queued', attempts=MAX(attempts-1, 0)", ())

    def _set(self, entry_id: int, assignments: str, values: tuple[Any, ...]) -> None:
        with self._tx() as db:
            db.execute(f"UPDATE inputs SET {assignments} WHERE id=?", (*values, entry_id))

    def recover(self) -> tuple[int, int]:
        """After a crash, settle entries left running: done if their output was completed
        (renamed into place after the start), queued again otherwise. Return the two counts."""
        done = queued = 0
        with self._tx() as db:
            for row in db.execute("SELECT * FROM inputs WHERE state='running'").fetchall():
                output = Path(row["output"]) if row["output"] else None
                if output and output.exists() and output.stat().st_mtime >= row["started_at"]:
                    db.execute("UPDATE inputs SET state='done', finished_at=? WHERE id=?",
                               (time.time(), row["id"]))
                    done += 1
                else:
                    db.execute("UPDATE inputs SET state='queued', attempts=MAX(attempts-1, 0)"
                               " WHERE id=?", (row["id"],))
                    queued += 1
        return done, queued

    def pending(self, rule: str) -> list[Entry]:
        """Return a rule's entries still to do: queued, or failed and due for a retry."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM inputs WHERE rule=? AND (state='queued' OR state='failed')"
                " ORDER BY id", (rule,)).fetchall()
        return [_entry(r) for r in rows]

    def entries(self, *, path: Path | None = None) -> list[Entry]:
        """Return every entry (or those of one path), oldest first."""
        query, args = "SELECT * FROM inputs", ()  # type: tuple[str, tuple[str, ...]]
        if path is not None:
            query, args = query + " WHERE path=?", (str(path),)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [_entry(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Return how many entries are in each state."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM inputs GROUP BY state")
            found = dict(rows.fetchall())
        return {state: found.get(state, 0) for state in STATES}

    def last_errors(self, limit: int = 10) -> list[Entry]:
        """Return the most recent failed or quarantined entries."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM inputs WHERE state IN ('failed', 'quarantined')"
                " ORDER BY finished_at DESC LIMIT ?", (limit,)).fetchall()
        return [_entry(r) for r in rows]


def _due(row: sqlite3.Row, now: float) -> bool:
    # The daemon schedules retries itself; next_try is shown by `imgproc status`, and after a
    # restart a failed entry is due at once.
    return row["state"] in ("queued", "failed")


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(**{key: row[key] for key in row.keys()})  # noqa: SIM118 - Row iterates values
