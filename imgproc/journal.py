"""The watch daemon's journal: an SQLite file recording every input by path and content.

Each input is processed exactly once per content: the key is (rule, path, sha256). A restart
reads the journal to finish what was queued or running and to skip what is done.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imgproc.sqlite_wal import open_wal, transaction

State = Literal["queued", "running", "done", "failed", "waiting", "quarantined", "superseded"]
STATES: tuple[State, ...] = ("queued", "running", "done", "failed", "waiting", "quarantined",
                             "superseded")
# failed: an input fault, retried and counted toward quarantine; waiting: an output or
# environment fault (a folder in the way, a full disk), retried with backoff, never counted.
_TO_DO = "('queued', 'failed', 'waiting')"

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
CREATE TABLE IF NOT EXISTS rules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
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
        # After a power cut the last commits may roll back: those inputs are processed again.
        self._db = open_wal(self.path, _SCHEMA)
        self._lock = threading.Lock()
        self._live: int | None = None

    def close(self) -> None:
        """Close the database connection (and drop the daemon's hold, if taken)."""
        with self._lock:
            self._db.close()
        if self._live is not None:
            os.close(self._live)
            self._live = None

    def hold(self) -> None:
        """Mark this journal as used by a live daemon until close() (a shared lock on a file
        beside it, released by the kernel however the process ends)."""
        self._live = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._live, fcntl.LOCK_SH)

    def daemon_running(self) -> bool:
        """Return True if a live daemon holds this journal (see hold())."""
        fd = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

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
                           f" state IN {_TO_DO}", (rule, str(path)))
                cursor = db.execute(
                    "INSERT INTO inputs (rule, path, size, mtime_ns, sha256, state, detected_at)"
                    " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                    (rule, str(path), size, mtime_ns, sha256, now))
                row = db.execute("SELECT * FROM inputs WHERE id=?",
                                 (cursor.lastrowid,)).fetchone()
            elif row["state"] not in ("queued", "failed", "waiting"):
                return None  # the daemon schedules retries itself; after a restart all are due
        return _entry(row)

    def start(self, entry_id: int, output: Path) -> bool:
        """Mark an entry running (one more attempt); False if another worker holds it."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE inputs SET state='running', attempts=attempts+1, runs=runs+1, output=?,"
                f" started_at=? WHERE id=? AND state IN {_TO_DO}",
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

    def wait(self, entry_id: int, error: str, *, retry_at: float) -> None:
        """Mark an entry waiting on an output or environment fault: retried at `retry_at`, the
        attempt not counted against the input."""
        self._set(entry_id, "state='waiting', attempts=MAX(attempts-1, 0), error=?, next_try=?,"
                  " finished_at=?", (error, retry_at, time.time()))

    def supersede(self, entry_id: int) -> None:
        """Mark an entry superseded: its content changed under it (still being written)."""
        self._set(entry_id, "state='superseded', attempts=MAX(attempts-1, 0)", ())

    def record_rule(self, name: str, spec: Mapping[str, Any]) -> None:
        """Remember a watch rule (what `imgproc status` needs to count a folder's backlog)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO rules (name, spec) VALUES (?, ?)",
                       (name, json.dumps(spec)))

    def rules(self) -> dict[str, dict[str, Any]]:
        """Return every watch rule a daemon has run with this journal, by name."""
        with self._lock:
            rows = self._db.execute("SELECT name, spec FROM rules ORDER BY name").fetchall()
        return {row["name"]: json.loads(row["spec"]) for row in rows}

    def known_paths(self, rule: str) -> set[str]:
        """Return every input path of `rule` the journal has an entry for."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT path FROM inputs WHERE rule=?", (rule,))
            return {row[0] for row in rows.fetchall()}

    def waiting(self) -> list[Entry]:
        """Return the entries waiting on an output or environment fault, soonest retry first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM inputs WHERE state='waiting'"
                                    " ORDER BY next_try").fetchall()
        return [_entry(r) for r in rows]

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
        """Return a rule's entries still to do: queued, or failed or waiting for a retry."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM inputs WHERE rule=? AND state IN {_TO_DO} ORDER BY id",
                (rule,)).fetchall()
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
        """Return the most recent failed or quarantined entries (see waiting() for the rest)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM inputs WHERE state IN ('failed', 'quarantined')"
                " ORDER BY finished_at DESC LIMIT ?", (limit,)).fetchall()
        return [_entry(r) for r in rows]


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(**{key: row[key] for key in row.keys()})  # noqa: SIM118 - Row iterates values
