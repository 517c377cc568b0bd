"""The daemon under faults: workers never die, nothing still being written is processed or
quarantined, faults that are not the input's are retried uncounted, links follow one rule."""

from __future__ import annotations

import dataclasses
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgproc import batch, images
from imgproc.config import OutputSettings
from imgproc.journal import Journal
from imgproc.registry import Registry
from imgproc.runtime import Runtime
from imgproc.watch import Daemon

from .test_watch import FAST, _png, _settled, _watch, folders, no_leaked_threads, start

__all__ = ["folders", "no_leaked_threads", "start"]  # fixtures shared with test_watch


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_faults_at_read_process_write_and_record_never_stop_a_worker(
        start: Callable[..., Daemon], folders: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, outbox = folders
    real_read, real_run, real_replace = batch.read_image, batch._run, images.os.replace
    write_faults = {"count": 0}

    def read(path: Path, **kw: Any) -> Any:
        if path.name.startswith("bad-read"):
            raise RuntimeError("injected at read")
        return real_read(path, **kw)

    def run(step: Any, pictures: Any, context: Any, path: Path) -> Any:
        if path.name.startswith("bad-process"):
            raise MemoryError("injected at process")
        return real_run(step, pictures, context, path)

    def replace(src: str, dst: str) -> None:
        if Path(dst).name.startswith("disk-full") and write_faults["count"] < 2:
            write_faults["count"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(batch, "read_image", read)
    monkeypatch.setattr(batch, "_run", run)
    monkeypatch.setattr(images.os, "replace", replace)
    daemon = start("identity")
    real_finish = daemon.journal.finish

    def finish(entry_id: int, *, ms: float) -> None:
        row = daemon.journal.entries()[entry_id - 1]
        if Path(row.path).name.startswith("journal-fails") and row.runs == 1:
            raise sqlite3.OperationalError("disk I/O error")
        real_finish(entry_id, ms=ms)

    monkeypatch.setattr(daemon.journal, "finish", finish)
    for name in ("bad-read.png", "bad-process.png", "disk-full.png", "journal-fails.png"):
        _png(inbox / name)
    for i in range(3):
        _png(inbox / f"good{i}.png", seed=i)
    _settled(daemon, done=5, quarantined=2)
    assert _names(outbox) == ["disk-full.png", "good0.png", "good1.png", "good2.png",
                              "journal-fails.png"]
    entries = {Path(e.path).name: e for e in daemon.journal.entries()}
    assert all(e.state != "running" for e in entries.values())
    assert entries["bad-read.png"].state == "quarantined"
    assert "unexpected RuntimeError: injected at read" in (entries["bad-read.png"].error or "")
    assert entries["bad-process.png"].state == "quarantined"
    assert "MemoryError" in (entries["bad-process.png"].error or "")
    # A full disk is not the image's fault: retried twice, never counted, never quarantined.
    disk_full = entries["disk-full.png"]
    assert (disk_full.state, disk_full.attempts, disk_full.runs) == ("done", 1, 3)
    assert entries["journal-fails.png"].state == "done"
    assert _names(inbox / ".imgproc-quarantine") == [
        "bad-process.png", "bad-process.png.reason.txt", "bad-read.png",
        "bad-read.png.reason.txt"]


def test_a_blocked_output_waits_and_is_retried_once_cleared(
        start: Callable[..., Daemon], folders: tuple[Path, Path]) -> None:
    inbox, outbox = folders
    (outbox / "a.png").mkdir(parents=True)
    daemon = start("identity", settings=dataclasses.replace(FAST, max_backoff=0.2))
    _png(inbox / "a.png")
    _png(inbox / "b.png", seed=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not daemon.journal.waiting():
        time.sleep(0.05)
    (waiting,) = daemon.journal.waiting()
    assert waiting.error == "output path is a directory"
    assert waiting.attempts == 0
    (outbox / "a.png").rmdir()
    _settled(daemon, done=2)
    assert _names(outbox) == ["a.png", "b.png"]
    assert not (inbox / ".imgproc-quarantine").exists()


def _slow_writer(path: Path, data: bytes, pause: float) -> threading.Thread:
    def write() -> None:
        with open(path, "wb") as fh:  # one open file, paused half-way, as a slow copy does
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(pause)
            fh.write(data[len(data) // 2:])

    thread = threading.Thread(target=write)
    thread.start()
    return thread


@pytest.mark.parametrize("pause", [
    2.0, pytest.param(10.0, marks=pytest.mark.slow)], ids=["pause-2s", "pause-10s"])
def test_a_writer_pausing_with_the_file_open_is_waited_for(
        start: Callable[..., Daemon], folders: tuple[Path, Path], tmp_path: Path,
        pause: float) -> None:
    inbox, outbox = folders
    data = _png(tmp_path / "source.png", size=(96, 64))
    daemon = start("identity")  # settles in 0.3 s, 2 attempts: a partial read would quarantine
    writer = _slow_writer(inbox / "scan.png", data, pause)
    writer.join()
    _settled(daemon, done=1)
    assert _names(outbox) == ["scan.png"]
    assert not (inbox / ".imgproc-quarantine").exists()
    (entry,) = [e for e in daemon.journal.entries() if e.state == "done"]
    assert entry.size == len(data)


def test_a_file_that_changed_while_it_was_read_is_not_an_attempt(
        start: Callable[..., Daemon], folders: tuple[Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Where the platform cannot tell that a file is open for writing, a truncated read of a
    # file that grew meanwhile must not count: it was incomplete, not bad.
    inbox, outbox = folders
    monkeypatch.setattr("imgproc.watch.being_written", lambda path: None)
    data = _png(tmp_path / "source.png", size=(96, 64))
    real = batch.process_one

    def process_then_grow(job: Any, *args: Any) -> Any:
        outcome = real(job, *args)
        if job.inputs[0].stat().st_size < len(data):
            job.inputs[0].write_bytes(data)  # the writer finishes while we were reading
        return outcome

    monkeypatch.setattr("imgproc.watch.process_one", process_then_grow)
    daemon = start("identity", settings=dataclasses.replace(FAST, max_attempts=1))
    (inbox / "grow.png").write_bytes(data[: len(data) // 2])
    _settled(daemon, done=1)
    assert _names(outbox) == ["grow.png"]
    assert not (inbox / ".imgproc-quarantine").exists()
    states = [e.state for e in daemon.journal.entries()]
    assert states == ["superseded", "done"]


# -- links ------------------------------------------------------------------------------------

@pytest.fixture
def daemon_parts(registry: Registry, folders: tuple[Path, Path],
                 tmp_path: Path) -> Callable[..., Daemon]:
    """Return a function that builds a daemon (not started) to drive `_handle` by hand."""
    made: list[Journal] = []

    def build(**rule: object) -> Daemon:
        journal = Journal(tmp_path / "journal.sqlite")
        made.append(journal)
        return Daemon([_watch(registry, *folders, "identity", **rule)], runtime=Runtime(),
                      journal=journal, output=OutputSettings(), settings=FAST)

    yield build  # type: ignore[misc]
    for journal in made:
        journal.close()


@pytest.mark.parametrize("follow", [False, True], ids=["default", "follow"])
def test_a_link_to_a_file_outside_the_folder_is_never_read(
        daemon_parts: Callable[..., Daemon], folders: tuple[Path, Path], tmp_path: Path,
        follow: bool) -> None:
    inbox, outbox = folders
    _png(tmp_path / "private" / "secret.png")
    (inbox / "x.png").symlink_to(tmp_path / "private" / "secret.png")
    daemon = daemon_parts(follow_symlinks=follow)
    daemon._handle(daemon.watches[0], 0, inbox / "x.png")
    assert _names(outbox) == []
    assert daemon.journal.entries() == []


def test_a_followed_link_inside_the_folder_is_processed_and_moved_not_its_target(
        daemon_parts: Callable[..., Daemon], folders: tuple[Path, Path]) -> None:
    inbox, outbox = folders
    _png(inbox / "sub" / "real.png")
    (inbox / "alias.png").symlink_to(inbox / "sub" / "real.png")
    daemon = daemon_parts(follow_symlinks=True, after="move")
    daemon._handle(daemon.watches[0], 0, inbox / "alias.png")
    assert _names(outbox) == ["alias.png"]
    moved = inbox / ".imgproc-done" / "alias.png"
    assert moved.is_symlink() and not (inbox / "alias.png").exists()
    assert (inbox / "sub" / "real.png").is_file()  # the target stays where it was


def test_a_link_that_changes_target_after_detection_is_judged_when_read(
        daemon_parts: Callable[..., Daemon], folders: tuple[Path, Path], tmp_path: Path) -> None:
    inbox, outbox = folders
    _png(inbox / "sub" / "ok.png")
    _png(tmp_path / "private" / "secret.png", seed=3)
    link = inbox / "swap.png"
    link.symlink_to(inbox / "sub" / "ok.png")
    daemon = daemon_parts(follow_symlinks=True)
    daemon.settler.note(0, link)  # detected while pointing inside
    link.unlink()
    link.symlink_to(tmp_path / "private" / "secret.png")
    time.sleep(FAST.settle_seconds + 0.05)
    for index, path in daemon.settler.ready():
        daemon._handle(daemon.watches[index], index, path)
    assert _names(outbox) == []


def test_a_link_to_a_folder_is_not_descended(
        start: Callable[..., Daemon], folders: tuple[Path, Path], tmp_path: Path) -> None:
    inbox, outbox = folders
    _png(tmp_path / "private" / "secret.png")
    (inbox / "dir").symlink_to(tmp_path / "private", target_is_directory=True)
    _png(inbox / "a.png")
    daemon = start("identity", recursive=True, follow_symlinks=True)
    _settled(daemon, done=1)
    assert [p.relative_to(outbox).as_posix() for p in outbox.rglob("*.png")] == ["a.png"]
