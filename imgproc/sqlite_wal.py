"""SQLite files shared by threads: WAL mode, one connection behind a lock, short transactions."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_wal(path: Path, schema: str) -> sqlite3.Connection:
    """Return a connection to the SQLite file at `path` (created with `schema` if new) in WAL
    mode, usable from any thread (callers serialise use with their own lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL loses nothing when the process is killed; only a power cut can roll back the
    # last commits.
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return db


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """Yield `db` inside BEGIN IMMEDIATE ... COMMIT under `lock` (rolled back on error)."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
