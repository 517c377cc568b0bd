"""Worker threads behind a bounded queue: admission is counted in images, so memory is bounded."""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

import structlog

from imgproc.serve.errors import Busy

T = TypeVar("T")
Task = Callable[[], None]
log = structlog.get_logger("imgproc.serve")


class WorkerPool:
    """`workers` threads running tasks in arrival order; at most `capacity` images may be
    accepted and unfinished at once (queued or running), the rest are refused with Busy."""

    def __init__(self, *, workers: int, capacity: int) -> None:
        self.workers = workers
        self.capacity = capacity
        self._queue: queue.Queue[tuple[Task, int] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # accepted, not finished
        self._running = 0
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._seconds = 1.0  # moving average of one task's duration, for Retry-After

    @property
    def pending(self) -> int:
        """Return how many images are accepted and not finished (queued or running)."""
        return self._pending

    @property
    def running(self) -> int:
        """Return how many images are being processed now."""
        return self._running

    def start(self) -> None:
        """Start the worker threads."""
        for n in range(self.workers):
            thread = threading.Thread(target=self._loop, name=f"imgproc-serve-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking tasks, let each thread finish the one in hand, and drop the rest
        (job images stay queued in the store; a waiting /v1/process call gets 503)."""
        self._stopping = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def retry_after(self) -> int:
        """Return the seconds a refused client should wait: the queue's expected drain time."""
        return max(1, math.ceil(self._pending * self._seconds / self.workers))

    def check_room(self, images: int = 1) -> None:
        """Raise Busy unless `images` more would fit now (checked again when reserving)."""
        if self._stopping:
            raise Busy("the server is stopping", retry_after=5, status=503)
        if self._pending + images > self.capacity:
            raise Busy(f"queue full ({self._pending} of {self.capacity} images waiting or "
                       "running); retry later", retry_after=self.retry_after())

    def reserve(self, images: int, *, force: bool = False) -> None:
        """Count `images` as accepted, or raise Busy; `force` accepts past the capacity
        (jobs found in the store at start-up were accepted before)."""
        with self._lock:
            if not force:
                self.check_room(images)
            self._pending += images

    def release(self, images: int) -> None:
        """Give back images reserved for work that will not be submitted."""
        with self._lock:
            self._pending -= images

    def submit(self, task: Task, *, images: int = 1) -> None:
        """Queue a task for which `images` were reserved; they are released when it ends."""
        self._queue.put((task, images))

    async def run(self, fn: Callable[[], T]) -> T:
        """Return fn() run on a worker thread after the images queued before it; raise Busy
        when the queue is full or the server stops before its turn."""
        self.reserve(1)
        call = _Call(fn)
        self.submit(call)
        return await asyncio.wrap_future(call.future)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping:
                self._drain(item)
                return
            task, images = item
            with self._lock:
                self._running += images
            start = time.perf_counter()
            try:
                task()
            except Exception:  # a task's own failure never stops the worker
                log.exception("serve task failed")
            finally:
                seconds = (time.perf_counter() - start) / images
                with self._lock:
                    self._running -= images
                    self._pending -= images
                    self._seconds = 0.8 * self._seconds + 0.2 * seconds

    def _drain(self, item: tuple[Task, int] | None) -> None:
        """Refuse what is still queued when stopping: a waiting caller gets 503; job images
        stay queued in the store for the next start."""
        while True:
            if item is not None and isinstance(item[0], _Call):
                item[0].future.set_exception(Busy("the server is stopping", retry_after=5,
                                                  status=503))
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return


class _Call(Generic[T]):
    """A task whose result a caller awaits."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.future: Future[T] = Future()

    def __call__(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:
            self.future.set_exception(exc)
