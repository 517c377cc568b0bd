"""The `dask` engine: the same `process_one` on the workers of a Dask distributed cluster.

The client ships a `Work` (processor names, resolved options, settings) and `Job`s (paths),
never pixels; inputs and outputs live on a filesystem every worker mounts at the same path.
Each worker process builds its plugins and its Runtime (ONNX sessions) once per Work and keeps
them. One image is one task, so a lost worker costs only the images it held: Dask reruns them
elsewhere, and an image that kills every worker it touches fails alone ("worker lost").
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import CancelledError
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import dask
import structlog
from distributed import Client, Future, LocalCluster, as_completed
from distributed.scheduler import KilledWorker

from imgproc.batch import Job, Outcome, Step, prepare, process_one
from imgproc.config import EngineSettings
from imgproc.engine import Work, fingerprint
from imgproc.errors import EngineError, ImgprocError
from imgproc.logs import configure_logging
from imgproc.registry import load_registry
from imgproc.runtime import Runtime

PLUGINS_DIR_ENV = "IMGPROC_PLUGINS_DIR"
PROBE_PREFIX = ".imgproc-probe-"
KEEP_PREPARED = 4  # pipelines a long-lived worker keeps loaded (one per distinct batch setup)

log = structlog.get_logger("imgproc.dask")

# Dask settings for a cluster imgproc starts itself (docs/engines.md recommends them for yours):
LOCAL_CLUSTER_CONFIG = {
    # A worker holds only the images it runs (Dask's default queues one more on it), so a
    # worker's death blames only those.
    "distributed.scheduler.worker-saturation": 1.0,
    # Dask sets MALLOC_TRIM_THRESHOLD_ for its workers, which turns every large buffer into a
    # fresh mmap: measured here, 8-10 ms of CPU more per 512x384 image, growing with its size.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,  # a stack sample every 10 ms, unused here
}


class DaskEngine:
    """Runs jobs as Dask tasks on a cluster at `settings.address` (or $DASK_SCHEDULER_ADDRESS),
    or on a local cluster started for this engine and closed with it."""

    def __init__(self, work: Work, settings: EngineSettings) -> None:
        self.settings = settings
        self.cluster: LocalCluster | None = None
        address = (settings.address or os.environ.get("DASK_SCHEDULER_ADDRESS")
                   or dask.config.get("scheduler-address", None))
        try:
            if address:
                self.client = _connect(address, settings.timeout)
            else:
                self.cluster = _local_cluster(work, settings)
                work = _share_cores(work, settings)
                self.client = Client(self.cluster, set_as_default=False)
            self.client.wait_for_workers(1, timeout=settings.timeout)
        except BaseException:
            self.close()
            raise
        self.work = work
        self._batch = secrets.token_hex(4)
        self._numbers = itertools.count()  # task keys; next() is atomic, map may run in threads
        self._checked = False
        self._check_lock = threading.Lock()
        log.info("dask engine ready", scheduler=self.client.scheduler.address,
                 workers=len(self.client.nthreads()), local=self.cluster is not None,
                 dashboard=self.client.dashboard_link if settings.dashboard else None)

    def map(self, jobs: Iterable[Job]) -> Iterator[Outcome]:
        """Yield one Outcome per job as the cluster finishes them (one task per image)."""
        todo = iter(jobs)
        first = next(todo, None)
        if first is None:
            return
        with self._check_lock:
            if not self._checked:
                self.check(first.output.parent, first.inputs[0])
        pending: dict[str, tuple[Future, Job]] = {}
        window = max(16, 4 * sum(self.client.nthreads().values()))  # bounds scheduler memory
        # Results are fetched as each task ends, in the background: an Outcome still held by a
        # worker that dies next is lost and recomputed, so fetch it while the worker lives.
        running = as_completed([self._submit(job, pending) for job in _chain(first, todo, window)],
                               loop=self.client.loop, with_results=True, raise_errors=False)
        retried: set[Path] = set()
        try:
            for future, value in running:
                _, job = pending.pop(future.key)
                result = _unwrapped(value)
                if isinstance(result, KilledWorker) and job.output not in retried:
                    # A worker death blames every image the worker held, not only the one that
                    # killed it: a second, fresh task tells an innocent neighbour apart.
                    retried.add(job.output)
                    running.add(self._submit(job, pending))
                    continue
                yield _outcome(result, job, tries=2 if job.output in retried else 1)
                following = next(todo, None)
                if following is not None:
                    running.add(self._submit(following, pending))
        finally:
            if pending:
                self.client.cancel([future for future, _ in pending.values()])

    def check(self, output: Path, sample: Path) -> None:
        """Raise EngineError unless every worker sees the `output` folder (a probe file written
        there) and `sample` (an input file or folder), and has the same imgproc, plugins and
        models as the client (and can load them)."""
        folder = output.absolute()  # workers have their own working directory
        folder.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        probe = folder / f"{PROBE_PREFIX}{token}"
        probe.write_text(token)
        try:
            reports = self.client.run(check_worker, self.work, probe, sample.absolute())
        finally:
            probe.unlink(missing_ok=True)
        problems = {addr: reason for addr, reason in reports.items() if reason}
        if problems:
            addr, reason = sorted(problems.items())[0]
            more = f" (and {len(problems) - 1} more workers)" if len(problems) > 1 else ""
            raise EngineError(f"dask worker {addr}: {reason}{more}")
        self._checked = True

    def _submit(self, job: Job, pending: dict[str, tuple[Future, Job]]) -> Future:
        key = f"imgproc-{self._batch}-{next(self._numbers)}"
        future = self.client.submit(run_job, self.work, _absolute(job), key=key, pure=False)
        pending[key] = (future, job)
        return future

    def close(self) -> None:
        """Disconnect; stop the local cluster if this engine started one."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _absolute(job: Job) -> Job:
    return Job(tuple(p.absolute() for p in job.inputs), job.output.absolute())


def _as_given(outcome: Outcome, job: Job) -> Outcome:
    """Return a worker's outcome with the job's paths as the client gave them (relative ones
    stay relative, as with the local engine)."""
    extras = tuple(job.output.with_name(p.name) for p in outcome.extras)
    return replace(outcome, inputs=job.inputs, output=job.output, extras=extras)


def _chain(first: Job, rest: Iterator[Job], count: int) -> Iterator[Job]:
    yield first
    for _ in range(count - 1):
        job = next(rest, None)
        if job is None:
            return
        yield job


def _connect(address: str, timeout: float) -> Client:
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise EngineError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def _local_cluster(work: Work, settings: EngineSettings) -> LocalCluster:
    env = {PLUGINS_DIR_ENV: str(work.plugins_dir.absolute())} if work.plugins_dir else {}
    with dask.config.set(LOCAL_CLUSTER_CONFIG):
        return LocalCluster(n_workers=settings.workers or usable_cores(),
                            threads_per_worker=settings.threads_per_worker, processes=True,
                            host="127.0.0.1", dashboard_address=settings.dashboard or None,
                            env=env)


def _share_cores(work: Work, settings: EngineSettings) -> Work:
    """Return `work` with ONNX Runtime threads split between the local cluster's workers,
    unless the user set them: one machine's cores, not one machine's cores per worker."""
    if work.runtime.intra_op_threads:
        return work
    workers = settings.workers or usable_cores()
    threads = max(1, usable_cores() // (workers * settings.threads_per_worker))
    return replace(work, runtime=replace(work.runtime, intra_op_threads=threads))


def usable_cores() -> int:
    """Return the cores this process may run on (its CPU affinity: a Slurm or container
    allocation), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _unwrapped(value: object) -> object:
    """Return a task's Outcome, or its exception (Dask gives an errored task's result as the
    (type, exception, traceback) of sys.exc_info)."""
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value[1]
    return value


def _outcome(result: object, job: Job, *, tries: int = 1) -> Outcome:
    """Return the job's outcome from its task's result: the worker's Outcome, or the exception
    that ended the task turned into a failure with its reason."""
    if isinstance(result, Outcome):
        return _as_given(result, job)
    if isinstance(result, KilledWorker):
        # Every worker that ran it died, twice: the image (a decoder crash, a bomb that
        # exhausts memory), so an input fault: counted, and quarantined by the daemon.
        deaths = tries * (result.allowed_failures + 1)
        fault, reason = "input", (f"worker lost: {deaths} workers died running it in {tries} "
                                  f"tasks (last {_address(result.last_worker)})")
    elif isinstance(result, CancelledError):
        fault, reason = "environment", ("scheduler lost: the task was cancelled (the "
                                        "scheduler went away)")
    else:  # the task raised on the worker: this image's failure only
        fault, reason = "environment", f"worker error: {type(result).__name__}: {result}"
    log.warning("image failed", path=str(job.inputs[0]), reason=reason)
    return Outcome(job.inputs, job.output, "failed", reason, fault=fault)


def _address(worker: object) -> str:
    return str(getattr(worker, "address", worker))


# -- on the workers ---------------------------------------------------------------------------

_prepared: OrderedDict[str, tuple[list[Step], Runtime]] = OrderedDict()  # per worker process
_prepared_lock = threading.Lock()


def run_job(work: Work, job: Job) -> Outcome:
    """Return the outcome of one job, run on a worker with its cached pipeline and Runtime."""
    steps, runtime = pipeline(work)
    return process_one(job, steps, runtime, work.output)


def pipeline(work: Work) -> tuple[list[Step], Runtime]:
    """Return this process's steps and Runtime for `work`, built once (plugins from entry
    points and $IMGPROC_PLUGINS_DIR, sessions loaded) and kept for the next tasks."""
    key = work.key()
    with _prepared_lock:
        if key in _prepared:
            _prepared.move_to_end(key)
            return _prepared[key]
        configure_logging(level=work.logging.level, fmt=work.logging.format)
        plugins_dir = os.environ.get(PLUGINS_DIR_ENV)
        registry = load_registry(plugins_dir=Path(plugins_dir) if plugins_dir else None)
        names = [step.processor for step in work.steps]
        mismatch = _mismatch(work.fingerprint, fingerprint(registry, names))
        if mismatch:
            raise EngineError(mismatch)
        steps = [Step(registry.get(s.processor).processor, dict(s.options)) for s in work.steps]
        runtime = Runtime(work.runtime)
        prepare(steps, runtime)
        _prepared[key] = (steps, runtime)
        while len(_prepared) > KEEP_PREPARED:
            _prepared.popitem(last=False)
        return steps, runtime


def check_worker(work: Work, probe: Path, sample: Path) -> str | None:
    """Return why this worker cannot run `work` (None when it can): the client's probe file
    unseen, an input unseen, other versions, or a pipeline that fails to load."""
    token = probe.name.removeprefix(PROBE_PREFIX)
    try:
        seen = probe.read_text()
    except OSError:
        seen = None
    if seen != token:
        return (f"does not see the output folder {probe.parent} (probe file missing): inputs "
                "and outputs must be on a filesystem every worker mounts at the same path")
    if not sample.exists():
        return f"does not see the input {sample}"
    try:
        pipeline(work)
    except ImgprocError as exc:
        return " ".join(str(exc).split())
    return None


def _mismatch(client: Mapping[str, str], worker: Mapping[str, str]) -> str | None:
    diffs = [f"{key} is {worker.get(key, 'missing')} here, {value} on the client"
             for key, value in client.items() if worker.get(key) != value]
    return "; ".join(diffs) or None
