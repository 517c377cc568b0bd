"""The server's job store: an SQLite file under --data-dir recording every job and image.

A job is committed here (and its uploads are on disk) before its 202 goes out; a restart reads
the store to queue again whatever was queued or running when the process died.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from imgproc.sqlite_wal import open_wal, transaction

ImageStatus = Literal["queued", "running", "done", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    plugin TEXT NOT NULL,
    options TEXT NOT NULL,
    format TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS images (
    job TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    input TEXT,
    output TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    ms REAL,
    PRIMARY KEY (job, idx)
);
CREATE INDEX IF NOT EXISTS images_status ON images (status);
"""


@dataclass(frozen=True)
class ImageRow:
    """One uploaded file of a job: its safe name, its files (relative to the job's folder)."""

    job: str
    idx: int
    name: str
    input: str | None  # None when the upload was refused before processing (not an image)
    output: str
    status: ImageStatus
    reason: str | None = None
    ms: float | None = None


@dataclass(frozen=True)
class JobRow:
    """One job and its images, in upload order."""

    id: str
    plugin: str
    options: dict[str, Any]
    format: str
    created: float
    finished: float | None
    images: tuple[ImageRow, ...]

    @property
    def status(self) -> str:
        """Return `queued` (nothing started), `running`, or `done` (every image finished)."""
        if all(i.status in ("done", "failed") for i in self.images):
            return "done"
        # Uploads refused at once (input None) do not count as work started.
        started = any(i.status == "running" or (i.status != "queued" and i.input)
                      for i in self.images)
        return "running" if started else "queued"


class JobStore:
    """Thread-safe access to the job store (WAL mode, one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = open_wal(self.path, _SCHEMA)
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.Lock()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def create(self, job_id: str, *, plugin: str, options: dict[str, Any], fmt: str,
               images: list[ImageRow]) -> None:
        """Record a new job and its images in one transaction."""
        now = time.time()
        finished = now if all(i.status in ("done", "failed") for i in images) else None
        with self._tx() as db:
            db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
                       (job_id, plugin, json.dumps(options), fmt, now, finished))
            db.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(job_id, i.idx, i.name, i.input, i.output, i.status, i.reason, i.ms)
                            for i in images])

    def get(self, job_id: str) -> JobRow | None:
        """Return the job `job_id` with its images, or None when there is none."""
        with self._lock:
            job = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None:
                return None
            rows = self._db.execute("SELECT * FROM images WHERE job = ? ORDER BY idx",
                                    (job_id,)).fetchall()
        return JobRow(job["id"], job["plugin"], json.loads(job["options"]), job["format"],
                      job["created"], job["finished"], tuple(ImageRow(**dict(r)) for r in rows))

    def start(self, job_id: str, idx: int) -> bool:
        """Mark a queued image running; return False when its job was deleted meanwhile."""
        with self._tx() as db:
            cur = db.execute("UPDATE images SET status = 'running' WHERE job = ? AND idx = ? "
                             "AND status = 'queued'", (job_id, idx))
            return cur.rowcount == 1

    def finish(self, job_id: str, idx: int, *, status: ImageStatus, reason: str | None,
               ms: float) -> bool:
        """Record an image's outcome (and the job's end when it was the last); return False
        when the job was deleted while the image ran."""
        with self._tx() as db:
            cur = db.execute("UPDATE images SET status = ?, reason = ?, ms = ? "
                             "WHERE job = ? AND idx = ?", (status, reason, ms, job_id, idx))
            if cur.rowcount == 0:
                return False
            left = db.execute("SELECT COUNT(*) FROM images WHERE job = ? AND status IN "
                              "('queued', 'running')", (job_id,)).fetchone()[0]
            if left == 0:
                db.execute("UPDATE jobs SET finished = ? WHERE id = ?", (time.time(), job_id))
            return True

    def delete(self, job_id: str) -> bool:
        """Delete a job's records; return False when there was no such job."""
        with self._tx() as db:
            return db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 1

    def recover(self) -> list[tuple[str, int]]:
        """Return every unfinished image (job, idx) in creation order, running ones queued
        again: what a process that died had in hand or waiting."""
        with self._tx() as db:
            db.execute("UPDATE images SET status = 'queued' WHERE status = 'running'")
            rows = db.execute("SELECT i.job, i.idx FROM images i JOIN jobs j ON j.id = i.job "
                              "WHERE i.status = 'queued' ORDER BY j.created, i.idx").fetchall()
        return [(r[0], r[1]) for r in rows]

    def expired(self, before: float) -> list[str]:
        """Return the ids of jobs that finished before the time `before`."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE finished IS NOT NULL AND "
                                    "finished < ?", (before,)).fetchall()
        return [r[0] for r in rows]

    def ids(self) -> set[str]:
        """Return the id of every job in the store."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM jobs").fetchall()}

    def counts(self) -> dict[str, int]:
        """Return how many images are in each status."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM images GROUP BY status")
            return {r[0]: r[1] for r in rows.fetchall()}
