"""The watch-folder daemon: complete files only, exactly once per content, crash-safe.

Events from a watchdog observer (or a start-up scan, or the journal) name candidate files. The
Settler holds each candidate until it is complete: the close-after-write event where the
platform has it, otherwise size and mtime unchanged for `settle_seconds`, and in both cases no
process holding it open for writing where the platform can tell (imgproc.inflight). Complete
files go through a bounded queue to worker threads, which admit them through the journal (one
entry per rule, path and content hash, so duplicates are dropped) and run the same
`process_one` as `imgproc run`.

Faults (docs/faults.md): an input fault counts as an attempt and quarantines the file after
`max_attempts`, unless the file changed or is still open for writing (then it was incomplete:
wait for it to settle); output and environment faults are retried with backoff, uncounted and
never quarantined. A worker survives any exception and never leaves an entry running.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from imgproc.batch import (
    Job,
    Outcome,
    Step,
    check_output_folder,
    check_pipeline,
    prepare,
    process_one,
)
from imgproc.config import DaemonSettings, OutputSettings, WatchRule
from imgproc.errors import ImageError, UsageError
from imgproc.images import TEMP_SUFFIX, output_suffix
from imgproc.inflight import being_written
from imgproc.journal import Entry, Journal
from imgproc.links import readable_path
from imgproc.registry import Registry
from imgproc.runtime import Runtime
from imgproc.settle import Settler, file_stat

if TYPE_CHECKING:
    from imgproc.engine import Engine

log = structlog.get_logger("imgproc.watch")

IGNORED_SUFFIXES = (".part", ".tmp", "~", ".crdownload", ".partial", ".swp", TEMP_SUFFIX)
TICK = 0.05  # seconds between stability checks


@dataclass(frozen=True)
class Watch:
    """A rule with its pipeline of resolved processors."""

    rule: WatchRule
    steps: tuple[Step, ...]

    def wants(self, path: Path) -> bool:
        """Return True if `path` is an input of this rule (not output, hidden or temporary)."""
        rule = self.rule
        try:
            rel = path.relative_to(rule.input)
        except ValueError:
            return False
        if any(part.startswith(".") for part in rel.parts) or path.name.endswith(
                IGNORED_SUFFIXES):
            return False
        if not rule.recursive and len(rel.parts) != 1:
            return False
        if any(_inside(path, d) for d in (rule.output, rule.done_dir(), rule.quarantine_dir())):
            return False
        name = path.name.lower()
        return any(fnmatch.fnmatch(name, p.lower()) for p in rule.patterns)

    def output_for(self, path: Path) -> Path:
        """Return the output path of an input: same relative path and stem, chosen format."""
        rel = path.relative_to(self.rule.input)
        return self.rule.output / rel.with_suffix(output_suffix(rel, self.rule.format))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def inputs_of(watch: Watch) -> Iterator[Path]:
    """Yield the files in a rule's folder that it would take, in name order, never descending
    hidden folders or folders behind links."""
    for folder, dirs, files in os.walk(watch.rule.input):  # followlinks=False
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if watch.wants(here / name):
                yield here / name
        if not watch.rule.recursive:
            break


def rule_spec(rule: WatchRule) -> dict[str, Any]:
    """Return what `imgproc status` needs of a rule to count its backlog, as JSON-ready data."""
    return {"input": str(rule.input), "output": str(rule.output), "plugins": list(rule.plugins),
            "recursive": rule.recursive, "patterns": list(rule.patterns),
            "format": rule.format, "follow_symlinks": rule.follow_symlinks,
            "done_folder": str(rule.done_dir()), "quarantine": str(rule.quarantine_dir()),
            "cwd": os.getcwd()}


def build_watches(rules: Sequence[WatchRule], registry: Registry,
                  defaults: Mapping[str, Mapping[str, Any]]) -> list[Watch]:
    """Return each rule bound to its processors, options resolved (defaults < config < rule)."""
    watches = []
    for rule in rules:
        steps = []
        for name in rule.plugins:
            processor = registry.get(name).processor
            options = processor.resolve_options(defaults.get(name, {}), rule.options.get(name, {}))
            steps.append(Step(processor, options))
        watches.append(Watch(rule, tuple(steps)))
    return watches


def check_watches(watches: Sequence[Watch]) -> None:
    """Raise UsageError for a rule that cannot run safely."""
    for watch in watches:
        rule = watch.rule
        check_pipeline(watch.steps)
        first = watch.steps[0]
        if first.processor.arity(first.options) != 1:
            raise UsageError(f"watch {rule.input}: {first.processor.name} takes "
                             f"{first.processor.inputs} images; watch rules take one (set its "
                             "image options to fixed files)")
        if rule.output.resolve() == rule.input.resolve():
            raise UsageError(f"watch {rule.input}: the output folder is the input folder; "
                             "outputs would be read back as inputs")
        if not rule.input.is_dir():
            raise UsageError(f"watch {rule.input}: input folder does not exist")
        check_output_folder(rule.output)


class Handler(FileSystemEventHandler):
    """Turns watchdog events into candidates: close-after-write and the final name of a rename
    (complete files), creations and modifications (settled by size and mtime). Everything else
    (reads, deletions, folders) is ignored."""

    def __init__(self, watch: Watch, index: int, settler: Settler) -> None:
        self.watch, self.index, self.settler = watch, index, settler

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            # Renaming a finished temporary file into place is a completion signal too.
            self._offer(event.dest_path, closed=True)
        elif isinstance(event, FileClosedEvent):
            self._offer(event.src_path, closed=True)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self._offer(event.src_path, closed=False)

    def _offer(self, raw: str | bytes, *, closed: bool) -> None:
        path = Path(os.fsdecode(raw))
        if self.watch.wants(path):
            self.settler.note(self.index, path, closed=closed)


class Daemon:
    """Runs watch rules until stopped: observers, the settler, a bounded queue and workers."""

    def __init__(self, watches: Sequence[Watch], *, runtime: Runtime, journal: Journal,
                 output: OutputSettings, settings: DaemonSettings, workers: int = 1,
                 engines: Mapping[int, Engine] | None = None) -> None:
        check_watches(watches)
        self.watches = list(watches)
        self.engines = dict(engines or {})  # rule index -> where its images run, if not here
        self.runtime, self.journal, self.output = runtime, journal, output
        self.settings = settings
        self.settler = Settler(settings.settle_seconds)
        self.queue: queue.Queue[tuple[int, Path]] = queue.Queue(maxsize=settings.queue_size)
        self._stop = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._observers: list[BaseObserver] = []
        self._worker_count = max(1, workers)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Recover the journal, start observers, scan for files that arrived while down."""
        for watch in self.watches:
            prepare(watch.steps, self.runtime)  # models and fixed images, as `imgproc run` does
            _sweep_temporaries(watch.rule.output)
            self.journal.record_rule(watch.rule.name, rule_spec(watch.rule))
        self.journal.hold()
        done, queued = self.journal.recover()
        log.info("daemon starting", rules=len(self.watches), recovered_done=done,
                 recovered_queued=queued)
        for index, watch in enumerate(self.watches):
            self._observe(index, watch)
        self._spawn(self._settle_loop, "imgproc-settler")
        for n in range(self._worker_count):
            self._spawn(self._work_loop, f"imgproc-worker-{n}")
        for index, watch in enumerate(self.watches):
            self._scan(index, watch)

    def stop(self) -> None:
        """Stop cleanly: the images in hand are finished, the rest wait for the next start."""
        self._stop.set()
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join()
        for thread in self._threads:
            thread.join()
        log.info("daemon stopped", **self.journal.counts())

    def request_stop(self) -> None:
        """Ask the daemon to stop (safe from a signal handler); `wait` then returns."""
        self._stop.set()

    def wait(self) -> None:
        """Block until request_stop() is called from another thread or a signal handler."""
        while not self._stop.wait(0.5):
            pass

    def wait_idle(self, timeout: float) -> bool:
        """Return True once nothing is waiting, queued or in hand (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._busy_lock:
                busy = self._busy
            if busy == 0 and self.queue.empty() and self.settler.idle():
                return True
            time.sleep(TICK)
        return False

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _observe(self, index: int, watch: Watch) -> None:
        rule = watch.rule
        observer = PollingObserver(timeout=rule.poll_interval) if rule.poll else Observer()
        observer.schedule(Handler(watch, index, self.settler), str(rule.input),
                          recursive=rule.recursive)
        observer.start()
        self._observers.append(observer)

    def _scan(self, index: int, watch: Watch) -> None:
        for entry in self.journal.pending(watch.rule.name):
            self.settler.note(index, Path(entry.path))
        for path in inputs_of(watch):
            self.settler.note(index, path)

    # -- threads --------------------------------------------------------------------------

    def _settle_loop(self) -> None:
        while not self._stop.is_set():
            for item in self.settler.ready():
                with self._busy_lock:
                    self._busy += 1  # counted from here so wait_idle never sees a gap
                while not self._stop.is_set():
                    try:
                        self.queue.put(item, timeout=TICK)  # back-pressure on a burst
                        break
                    except queue.Full:
                        continue
                else:
                    return
            self._stop.wait(TICK)

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            try:
                index, path = self.queue.get(timeout=TICK)
            except queue.Empty:
                continue
            try:
                self._handle(self.watches[index], index, path)
            except Exception:  # a worker never dies: the next file is still processed
                log.exception("worker error, going on", path=str(path))
            finally:
                with self._busy_lock:
                    self._busy -= 1

    # -- one file -------------------------------------------------------------------------

    def _handle(self, watch: Watch, index: int, path: Path) -> None:
        try:  # a link is judged by its target now, not when it was detected
            source = readable_path(path, watch.rule.input, follow=watch.rule.follow_symlinks)
        except ImageError as exc:
            log.warning("set aside", path=str(path), reason=exc.reason)
            return
        facts = _fingerprint(source)
        if facts is None:
            return
        size, mtime_ns, digest = facts
        if file_stat(source) != (size, mtime_ns):  # changed while hashing: not complete yet
            self.settler.note(index, path)
            return
        entry = self.journal.admit(watch.rule.name, path, size=size, mtime_ns=mtime_ns,
                                   sha256=digest)
        if entry is None:
            log.debug("already processed or in hand", path=str(path))
            return
        output = watch.output_for(path)
        if not self.journal.start(entry.id, output):
            return
        log.info("started", path=str(path), rule=watch.rule.name, attempt=entry.attempts + 1)
        try:
            outcome = self._process(index, watch, Job((source,), output))
            self._record(watch, index, path, entry, outcome, (size, mtime_ns))
        except Exception as exc:  # the journal or a move failed: never leave the entry running
            log.exception("could not record the outcome", path=str(path))
            self._wait(index, path, entry, f"{type(exc).__name__}: {exc}", "environment")

    def _process(self, index: int, watch: Watch, job: Job) -> Outcome:
        """Return the outcome of one job: on the rule's engine (a cluster) when it has one, else
        here, as `imgproc run` does."""
        engine = self.engines.get(index)
        if engine is None:
            return process_one(job, watch.steps, self.runtime, self.output)
        (outcome,) = engine.map([job])  # runs the iterator to its end: one job, one outcome
        return outcome

    def _record(self, watch: Watch, index: int, path: Path, entry: Entry, outcome: Outcome,
                read: tuple[int, int]) -> None:
        if outcome.status == "done":
            self.journal.finish(entry.id, ms=outcome.ms)
            self._after(watch, path)
        elif outcome.fault in ("output", "environment"):
            self._wait(index, path, entry, outcome.reason or "", outcome.fault)
        elif file_stat(outcome.inputs[0]) != read or being_written(outcome.inputs[0]):
            # Read while a writer still held it: incomplete, not bad. Not an attempt, not moved.
            # (inputs[0] is the file read: a followed link's target, which the lease can open.)
            self.journal.supersede(entry.id)
            log.info("changed while processed, waiting for it to settle", path=str(path),
                     reason=outcome.reason)
            self.settler.note(index, path)
        else:
            self._failed(watch, index, path, entry.id, entry.attempts + 1, outcome.reason or "")

    def _wait(self, index: int, path: Path, entry: Entry, reason: str, fault: str) -> None:
        """Retry later an image that failed through no fault of its own, uncounted."""
        waits = entry.runs - entry.attempts + 1  # this entry's uncounted failures so far
        delay = min(self.settings.retry_backoff * 2 ** (waits - 1), self.settings.max_backoff)
        try:
            self.journal.wait(entry.id, reason, retry_at=time.time() + delay)
        finally:
            self.settler.retry_at(time.monotonic() + delay, index, path)
        log.warning("waiting on a fault that is not the input's, will retry", path=str(path),
                    fault=fault, reason=reason, retry_in_s=round(delay, 2))

    def _after(self, watch: Watch, path: Path) -> None:
        rule = watch.rule
        if rule.after == "delete":
            path.unlink(missing_ok=True)
        elif rule.after == "move":
            _move_into(path, rule.done_dir() / path.relative_to(rule.input))

    def _failed(self, watch: Watch, index: int, path: Path, entry_id: int, attempts: int,
                reason: str) -> None:
        if attempts < self.settings.max_attempts:
            delay = self.settings.retry_backoff * 2 ** (attempts - 1)
            self.journal.fail(entry_id, reason, retry_at=time.time() + delay)
            self.settler.retry_at(time.monotonic() + delay, index, path)
            log.warning("failed, will retry", path=str(path), reason=reason, attempt=attempts,
                        retry_in_s=delay)
            return
        target = _move_into(path, watch.rule.quarantine_dir() / path.relative_to(
            watch.rule.input))
        target.with_name(target.name + ".reason.txt").write_text(
            f"{path}\nquarantined after {attempts} attempts\nlast error: {reason}\n")
        self.journal.fail(entry_id, reason, retry_at=None)
        log.error("quarantined", path=str(path), reason=reason, attempts=attempts,
                  moved_to=str(target))


def _fingerprint(path: Path) -> tuple[int, int, str] | None:
    stat = file_stat(path)
    if stat is None:
        return None
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        log.warning("cannot read", path=str(path), reason=exc.strerror or str(exc))
        return None
    return stat[0], stat[1], digest.hexdigest()


def _sweep_temporaries(folder: Path) -> None:
    """Remove temporary outputs a killed run left behind (the daemon owns its output tree)."""
    if folder.is_dir():
        for stale in folder.rglob(f".*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
            log.info("removed a half-written output", path=str(stale))


def _move_into(path: Path, target: Path) -> Path:
    """Move `path` to `target` (numbered if taken) and return where it went."""
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = target, 1
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    shutil.move(path, candidate)
    return candidate
