"""The watch daemon in-process: handler logic, settling, journal, a real observer."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from watchdog.events import (
    DirCreatedEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from imgproc.config import DaemonSettings, OutputSettings, WatchRule
from imgproc.errors import UsageError
from imgproc.journal import Journal
from imgproc.registry import Registry
from imgproc.runtime import Runtime
from imgproc.watch import Daemon, Handler, Settler, Watch, build_watches

from .conftest import read_rgb

FAST = DaemonSettings(max_attempts=2, retry_backoff=0.05, queue_size=8, settle_seconds=0.3)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and set(threading.enumerate()) - before:
        time.sleep(0.05)
    leaked = set(threading.enumerate()) - before
    assert not leaked, f"leaked threads: {[t.name for t in leaked]}"


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Return an empty input folder and the output folder next to it."""
    (tmp_path / "in").mkdir()
    return tmp_path / "in", tmp_path / "out"


def _watch(registry: Registry, inbox: Path, outbox: Path, *plugins: str,
           **rule: object) -> Watch:
    options = rule.pop("options", {})
    spec = WatchRule(input=inbox, output=outbox, plugins=plugins or ("sepia",),
                     options=options, **rule)  # type: ignore[arg-type]
    return build_watches([spec], registry, {})[0]


@pytest.fixture
def start(registry: Registry, folders: tuple[Path, Path],
          tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Return a function that starts a daemon on the input folder; stops it afterwards."""
    running: list[tuple[Daemon, Journal]] = []

    def run(*plugins: str, settings: DaemonSettings = FAST, journal: Path | None = None,
            **rule: object) -> Daemon:
        journal_file = Journal(journal or tmp_path / "journal.sqlite")
        daemon = Daemon([_watch(registry, *folders, *plugins, **rule)], runtime=Runtime(),
                        journal=journal_file, output=OutputSettings(), settings=settings)
        daemon.start()
        running.append((daemon, journal_file))
        return daemon

    yield run
    for daemon, journal_file in running:
        daemon.stop()
        journal_file.close()


def _png(path: Path, size: tuple[int, int] = (32, 24), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path.read_bytes()


def _settled(daemon: Daemon, *, done: int = 0, quarantined: int = 0) -> None:
    """Wait until the journal shows `done` and `quarantined` entries and nothing is pending."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = daemon.journal.counts()
        if counts["done"] >= done and counts["quarantined"] >= quarantined:
            break
        time.sleep(0.05)
    time.sleep(FAST.settle_seconds + 0.1)  # let late events (touches, renames) arrive
    assert daemon.wait_idle(20), "daemon did not finish in time"


# -- handler and settler, with hand-made events -------------------------------------------------

@pytest.mark.parametrize(("event", "expected"), [
    (FileCreatedEvent("{in}/a.png"), ["a.png"]),
    (FileModifiedEvent("{in}/a.png"), ["a.png"]),
    (FileClosedEvent("{in}/a.png"), ["a.png (closed)"]),
    (FileMovedEvent("{in}/a.png.part", "{in}/a.png"), ["a.png (closed)"]),
    (FileCreatedEvent("{in}/a.png.part"), []),
    (FileCreatedEvent("{in}/a.png.tmp"), []),
    (FileCreatedEvent("{in}/a.png~"), []),
    (FileCreatedEvent("{in}/.a.png"), []),
    (FileCreatedEvent("{in}/notes.txt"), []),
    (FileCreatedEvent("{in}/out/a.png"), []),
    (FileCreatedEvent("{in}/sub/a.png"), []),
    (FileClosedNoWriteEvent("{in}/a.png"), []),
    (DirCreatedEvent("{in}/d.png"), []),
    (FileMovedEvent("{in}/a.png", "{in}/.hidden.png"), []),
], ids=lambda e: type(e).__name__ + ":" + os.path.basename(
    getattr(e, "dest_path", "") or e.src_path) if not isinstance(e, list) else None)
def test_handler_turns_events_into_candidates(registry: Registry, folders: tuple[Path, Path],
                                              event: object, expected: list[str]) -> None:
    inbox, _ = folders
    for name in ("a.png", "a.png.part", "a.png.tmp", "a.png~", ".a.png", "notes.txt",
                 "out/a.png", "sub/a.png", ".hidden.png"):
        _png(inbox / name)
    watch = _watch(registry, inbox, inbox / "out")
    settler = Settler(settle_seconds=0.0)
    for attr in ("src_path", "dest_path"):
        if getattr(event, attr, ""):
            object.__setattr__(event, attr, getattr(event, attr).format(**{"in": inbox}))
    Handler(watch, 0, settler).dispatch(event)  # type: ignore[arg-type]
    noted = [f"{p.name}{' (closed)' if c.closed else ''}"
             for p, c in settler._candidates.items()]
    assert noted == expected


def test_settler_waits_for_a_stable_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"part one")
    settler = Settler(settle_seconds=0.3)
    settler.note(0, path)
    assert settler.ready() == []
    time.sleep(0.15)
    with open(path, "ab") as fh:
        fh.write(b" and part two")  # still growing: the clock starts again
    assert settler.ready() == []
    time.sleep(0.2)
    assert settler.ready() == []
    time.sleep(0.2)
    assert settler.ready() == [(0, path)]
    assert settler.idle()


def test_a_close_after_write_event_needs_no_long_wait(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"complete")
    settler = Settler(settle_seconds=30)
    settler.note(0, path, closed=True)
    time.sleep(0.1)
    assert settler.ready() == [(0, path)]


def test_a_vanished_candidate_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"x")
    settler = Settler(settle_seconds=0)
    settler.note(0, path)
    path.unlink()
    assert settler.ready() == [] and settler.idle()


# -- journal ----------------------------------------------------------------------------------

def test_journal_admits_each_content_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    facts = {"size": 1, "mtime_ns": 1, "sha256": "a" * 64}
    entry = journal.admit("r", tmp_path / "x.png", **facts)
    assert entry is not None and journal.start(entry.id, tmp_path / "o.png")
    assert journal.admit("r", tmp_path / "x.png", **facts) is None  # in hand
    journal.finish(entry.id, ms=1.0)
    assert journal.admit("r", tmp_path / "x.png", **facts) is None  # done
    assert journal.admit("r", tmp_path / "x.png", **{**facts, "sha256": "b" * 64}) is not None
    assert journal.counts()["done"] == 1 and journal.counts()["queued"] == 1
    journal.close()


def test_new_content_supersedes_old_content_still_failing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    old = journal.admit("r", tmp_path / "x.png", size=1, mtime_ns=1, sha256="a" * 64)
    assert old is not None and journal.start(old.id, tmp_path / "o.png")
    journal.fail(old.id, "truncated", retry_at=time.time() + 60)
    assert journal.admit("r", tmp_path / "x.png", size=2, mtime_ns=2, sha256="b" * 64)
    assert [e.state for e in journal.entries()] == ["superseded", "queued"]
    journal.close()


@pytest.mark.parametrize("output_written", [True, False], ids=["output-done", "output-missing"])
def test_recover_settles_entries_left_running(tmp_path: Path, output_written: bool) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    entry = journal.admit("r", tmp_path / "x.png", size=1, mtime_ns=1, sha256="a" * 64)
    assert entry is not None
    journal.start(entry.id, tmp_path / "o.png")
    if output_written:
        (tmp_path / "o.png").write_bytes(b"renamed into place before the crash")
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite")  # as after kill -9 and a restart
    assert reopened.recover() == ((1, 0) if output_written else (0, 1))
    [row] = reopened.entries()
    assert row.state == ("done" if output_written else "queued")
    assert row.attempts == (1 if output_written else 0)
    reopened.close()


# -- the daemon with a real observer ------------------------------------------------------------

def test_a_file_written_slowly_in_chunks_is_processed_once_complete(
        start: Callable[..., Daemon], folders: tuple[Path, Path], tmp_path: Path) -> None:
    inbox, outbox = folders
    data = _png(tmp_path / "source.png", size=(64, 48))
    daemon = start()
    with open(inbox / "slow.png", "wb") as fh:
        for i in range(3):
            fh.write(data[i * len(data) // 3:(i + 1) * len(data) // 3])
            fh.flush()
            time.sleep(0.2)
    _settled(daemon, done=1)
    [entry] = daemon.journal.entries()
    assert (entry.state, entry.runs, entry.size) == ("done", 1, len(data))
    assert read_rgb(outbox / "slow.png").shape == (48, 64, 3)


def test_a_renamed_part_file_is_processed_once_under_its_final_name(
        start: Callable[..., Daemon], folders: tuple[Path, Path], tmp_path: Path) -> None:
    inbox, outbox = folders
    daemon = start()
    _png(inbox / "x.png.part")
    time.sleep(0.4)
    (inbox / "x.png.part").rename(inbox / "x.png")
    _settled(daemon, done=1)
    assert [(Path(e.path).name, e.runs) for e in daemon.journal.entries()] == [("x.png", 1)]
    assert sorted(p.name for p in outbox.iterdir()) == ["x.png"]


def test_duplicate_events_never_duplicate_work(start: Callable[..., Daemon],
                                               folders: tuple[Path, Path]) -> None:
    inbox, _ = folders
    daemon = start()
    _png(inbox / "a.png")
    _settled(daemon, done=1)
    for _ in range(3):  # touch: events, same content
        os.utime(inbox / "a.png")
        time.sleep(0.05)
    _settled(daemon)
    [entry] = daemon.journal.entries()
    assert entry.runs == 1


def test_new_content_under_the_same_name_is_processed_again(
        start: Callable[..., Daemon], folders: tuple[Path, Path]) -> None:
    inbox, outbox = folders
    daemon = start()
    _png(inbox / "a.png", seed=1)
    _settled(daemon, done=1)
    first = read_rgb(outbox / "a.png")
    _png(inbox / "a.png", seed=2)
    _settled(daemon, done=2)
    assert [e.state for e in daemon.journal.entries()] == ["done", "done"]
    assert np.abs(read_rgb(outbox / "a.png") - first).max() > 0.1


def test_files_that_arrived_while_down_are_processed_at_start(
        start: Callable[..., Daemon], folders: tuple[Path, Path], tmp_path: Path,
        registry: Registry) -> None:
    inbox, outbox = folders
    for i in range(3):
        _png(inbox / f"{i}.png", seed=i)
    daemon = start()
    _settled(daemon, done=3)
    assert sorted(p.name for p in outbox.iterdir()) == ["0.png", "1.png", "2.png"]
    daemon.stop()
    _png(inbox / "3.png", seed=3)  # arrives while the daemon is down
    again = start()
    _settled(again, done=4)
    runs = {Path(e.path).name: e.runs for e in again.journal.entries()}
    assert runs == {"0.png": 1, "1.png": 1, "2.png": 1, "3.png": 1}


def test_a_failing_input_is_retried_then_quarantined(start: Callable[..., Daemon],
                                                     folders: tuple[Path, Path]) -> None:
    inbox, outbox = folders
    daemon = start()
    (inbox / "bad.png").write_text("not an image")
    _png(inbox / "good.png")
    _settled(daemon, done=1, quarantined=1)
    states = {Path(e.path).name: (e.state, e.attempts) for e in daemon.journal.entries()}
    assert states == {"bad.png": ("quarantined", 2), "good.png": ("done", 1)}
    quarantine = inbox / ".imgproc-quarantine"
    assert (quarantine / "bad.png").read_text() == "not an image"
    assert "not an image" in (quarantine / "bad.png.reason.txt").read_text()
    assert not (inbox / "bad.png").exists() and not (outbox / "bad.png").exists()


@pytest.mark.parametrize("after", ["keep", "move", "delete"])
def test_what_happens_to_an_input_afterwards(start: Callable[..., Daemon],
                                             folders: tuple[Path, Path], after: str) -> None:
    inbox, outbox = folders
    daemon = start(after=after)
    data = _png(inbox / "a.png")
    _settled(daemon, done=1)
    assert (outbox / "a.png").exists()
    assert (inbox / "a.png").exists() == (after == "keep")
    assert ((inbox / ".imgproc-done" / "a.png").read_bytes() == data) if after == "move" \
        else not (inbox / ".imgproc-done").exists()


def test_an_output_folder_inside_the_input_is_never_reprocessed(
        registry: Registry, folders: tuple[Path, Path], tmp_path: Path) -> None:
    inbox, _ = folders
    journal = Journal(tmp_path / "j.sqlite")
    daemon = Daemon([_watch(registry, inbox, inbox / "out", recursive=True)], runtime=Runtime(),
                    journal=journal, output=OutputSettings(), settings=FAST)
    daemon.start()
    try:
        _png(inbox / "a.png")
        _settled(daemon, done=1)
        assert [Path(e.path).name for e in journal.entries()] == ["a.png"]
        assert (inbox / "out" / "a.png").exists()
    finally:
        daemon.stop()
        journal.close()


def test_the_output_folder_may_not_be_the_input(registry: Registry,
                                                folders: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    inbox, _ = folders
    journal = Journal(tmp_path / "j.sqlite")
    with pytest.raises(UsageError, match="output folder is the input folder"):
        Daemon([_watch(registry, inbox, inbox)], runtime=Runtime(), journal=journal,
               output=OutputSettings(), settings=FAST)
    journal.close()


def test_a_polling_observer_for_network_drives(start: Callable[..., Daemon],
                                               folders: tuple[Path, Path]) -> None:
    inbox, outbox = folders
    daemon = start(poll=True, poll_interval=0.1)
    _png(inbox / "a.png")
    _settled(daemon, done=1)
    assert (outbox / "a.png").exists()


def test_a_pipeline_runs_its_steps_in_order(start: Callable[..., Daemon],
                                            folders: tuple[Path, Path]) -> None:
    inbox, outbox = folders
    daemon = start("grey", "identity", options={"identity": {"scale": 2}})
    _png(inbox / "a.png", size=(10, 6))
    _settled(daemon, done=1)
    with Image.open(outbox / "a.png") as out:
        assert (out.mode, out.size) == ("L", (20, 12))


def test_a_burst_is_processed_with_none_missed(start: Callable[..., Daemon],
                                               folders: tuple[Path, Path]) -> None:
    inbox, outbox = folders
    daemon = start(settings=dataclasses.replace(FAST, queue_size=4))
    for i in range(150):
        _png(inbox / f"{i:03d}.png", size=(8, 8), seed=i)
    (inbox / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _settled(daemon, done=150, quarantined=1)
    assert len(list(outbox.iterdir())) == 150
    assert daemon.journal.counts() == {"queued": 0, "running": 0, "done": 150, "failed": 0,
                                       "waiting": 0, "quarantined": 1, "superseded": 0}
