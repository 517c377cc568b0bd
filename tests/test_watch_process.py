"""The watch daemon as a real subprocess: kill -9 and restart, SIGTERM, a burst of 1,000."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import LOCAL_PLUGINS


class DaemonProcess:
    """`imgproc watch` in its own process, logging JSON lines to a file."""

    def __init__(self, root: Path, *args: str, log_name: str) -> None:
        self.log = root / log_name
        command = [sys.executable, "-m", "imgproc.cli", "--plugins-dir", str(LOCAL_PLUGINS),
                   "--config", str(root / "config.toml"), "--log-json", "watch", "in",
                   "-o", "out", "--journal", "journal.sqlite", *args]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(command, cwd=root, stdout=log, stderr=log)

    def events(self) -> list[dict]:
        """Return the JSON log events written so far."""
        return [json.loads(line) for line in self.log.read_text().splitlines()
                if line.startswith("{")]

    def wait_for(self, predicate: object, timeout: float = 60) -> None:
        """Wait until predicate() is true, failing if the daemon dies first."""
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out: " + self.log.read_text()[-3000:]
            time.sleep(0.02)

    def stop(self) -> int:
        """SIGTERM the daemon and return its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """Return a work folder with in/, a config and no daemon left running afterwards."""
    (tmp_path / "in").mkdir()
    (tmp_path / "config.toml").write_text(
        "[daemon]\nsettle_seconds = 0.2\nretry_backoff = 0.05\nmax_attempts = 2\n")
    before = _children()
    yield tmp_path
    assert _children() == before, "a daemon process was left running"


def _children() -> set[int]:
    result = subprocess.run(["pgrep", "-P", str(__import__("os").getpid())],
                            capture_output=True, text=True)
    return {int(p) for p in result.stdout.split()}


def _drop(folder: Path, count: int, size: int = 48) -> list[str]:
    names = []
    for i in range(count):
        rng = np.random.default_rng(i)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        tmp = folder / f".{i:04d}.png.part"
        Image.fromarray(pixels).save(tmp, format="PNG")
        tmp.rename(folder / f"{i:04d}.png")
        names.append(f"{i:04d}.png")
    return names


def _journal(root: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(root / "journal.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM inputs ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def _done(root: Path) -> int:
    return sum(row["state"] == "done" for row in _journal(root))


@pytest.mark.parametrize("kill_after", [0, 3, 8], ids=lambda n: f"kill-after-{n}-outputs")
def test_kill_9_mid_batch_then_restart_loses_nothing_and_repeats_nothing(
        root: Path, kill_after: int) -> None:
    args = ("-p", "slow", "-O", "seconds=0.15", "--workers", "2")
    first = DaemonProcess(root, *args, log_name="first.log")
    first.wait_for(lambda: any(e["event"] == "daemon starting" for e in first.events()))
    names = _drop(root / "in", 12)
    out = root / "out"
    first.wait_for(lambda: sum(1 for e in first.events() if e["event"] == "started")
                   > kill_after and (not out.exists() or len(list(out.glob("*.png")))
                                     >= kill_after))
    first.proc.kill()  # SIGKILL: no clean-up of any kind
    first.proc.wait()
    second = DaemonProcess(root, *args, log_name="second.log")
    second.wait_for(lambda: _done(root) == 12)
    assert second.stop() == 0
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files either
    for name in names:
        with Image.open(out / name) as img:
            img.load()  # complete, decodable
    rows = _journal(root)
    assert sorted(Path(r["path"]).name for r in rows) == names  # one entry per input
    assert {r["state"] for r in rows} == {"done"}
    completed = Counter(e["path"] for run in (first, second) for e in run.events()
                        if e["event"] == "image done")
    assert max(completed.values()) == 1  # none processed to completion twice
    assert max(r["runs"] for r in rows) <= 2  # only images in hand at the kill started twice


def test_sigterm_finishes_the_image_in_hand_and_leaves_the_rest(root: Path) -> None:
    args = ("-p", "slow", "-O", "seconds=0.6")
    daemon = DaemonProcess(root, *args, log_name="first.log")
    daemon.wait_for(lambda: any(e["event"] == "daemon starting" for e in daemon.events()))
    names = _drop(root / "in", 5)
    daemon.wait_for(lambda: any(e["event"] == "started" for e in daemon.events()))
    assert daemon.stop() == 0
    assert all(r["state"] != "running" for r in _journal(root))
    finished = {Path(e["path"]).name for e in daemon.events() if e["event"] == "image done"}
    assert finished and finished == {p.name for p in (root / "out").iterdir()}
    again = DaemonProcess(root, *args, log_name="second.log")
    again.wait_for(lambda: _done(root) == 5)
    assert again.stop() == 0
    assert sorted(p.name for p in (root / "out").iterdir()) == names


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_burst_of_1000_files_none_missed_memory_bounded(root: Path) -> None:
    daemon = DaemonProcess(root, "-p", "sepia", "--workers", "2", log_name="burst.log")
    daemon.wait_for(lambda: any(e["event"] == "daemon starting" for e in daemon.events()))
    idle_kib = _memory_kib(daemon.proc.pid, "VmRSS")
    names = _drop(root / "in", 1000, size=8)
    for i in range(10):
        (root / "in" / f"corrupt{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    daemon.wait_for(lambda: len(_journal(root)) == 1010 and all(
        r["state"] in ("done", "quarantined") for r in _journal(root)), timeout=240)
    peak_kib = _memory_kib(daemon.proc.pid, "VmHWM")
    assert daemon.stop() == 0
    assert sorted(p.name for p in (root / "out").iterdir()) == names
    quarantined = sorted((root / "in" / ".imgproc-quarantine").glob("*.reason.txt"))
    assert len(quarantined) == 10
    assert all("truncated or corrupt" in p.read_text() for p in quarantined)
    assert peak_kib - idle_kib < 150 * 1024, f"grew from {idle_kib} KiB to {peak_kib} KiB"


def _status(root: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "imgproc.cli", "status", "--journal",
                             str(root / "journal.sqlite"), "--json"], cwd=root,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_after_kill_9_shows_the_backlog(root: Path) -> None:
    daemon = DaemonProcess(root, "-p", "slow", "-O", "seconds=1.5", log_name="first.log")
    daemon.wait_for(lambda: any(e["event"] == "daemon starting" for e in daemon.events()))
    _drop(root / "in", 6)
    daemon.wait_for(lambda: any(e["event"] == "started" for e in daemon.events()))
    try:
        live = _status(root)
    finally:
        daemon.proc.kill()
        daemon.proc.wait()
    assert live["daemon_running"] is True
    report = _status(root)
    assert report["daemon_running"] is False
    assert report["counts"]["running"] == 1  # left by the killed daemon, re-run at next start
    assert report["backlog"] == {"in": 5}  # no entry and no output yet: invisible before
    text = subprocess.run([sys.executable, "-m", "imgproc.cli", "status", "--journal",
                           str(root / "journal.sqlite")], cwd=root, capture_output=True,
                          text=True, timeout=60).stdout
    assert "backlog in: 5 file(s) with no entry and no output yet" in text
    assert "left running by a stopped daemon" in text
