"""Engines: where a batch's images run. `local` is threads in this process; others (`dask`,
or a third party's) run the same `process_one` elsewhere from a picklable description.

An engine is opened once per batch (or daemon), maps jobs to outcomes, and is closed. It is
registered through the `imgproc_engines` hook, like processors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from imgproc.batch import Job, Outcome, Step, prepare, process_one
from imgproc.config import Config, EngineSettings, LoggingSettings, OutputSettings, RuntimeSettings
from imgproc.errors import UsageError
from imgproc.hookspecs import hookimpl
from imgproc.images import TEMP_SUFFIX
from imgproc.registry import Registry, host_version
from imgproc.runtime import Runtime

if TYPE_CHECKING:
    from contextlib import ExitStack

    from imgproc.watch import Watch


class Engine(Protocol):
    """Runs jobs and yields their outcomes; a context manager that releases what it started."""

    def map(self, jobs: Iterable[Job]) -> Iterator[Outcome]:
        """Yield one Outcome per job, in the order they finish; each names its job's output.

        Never raises for one image: a lost worker or an engine fault is that job's failed
        outcome. Closing the iterator early cancels the jobs not yet started.
        """
        ...

    def check(self, output: Path, sample: Path) -> None:
        """Raise EngineError unless the engine can write into `output` and read `sample` (an
        input file or folder) where its images run. `map` checks its first job itself; the
        watch daemon calls this at start, before any file arrives."""
        ...

    def close(self) -> None:
        """Stop what the engine started (threads, a local cluster); idempotent."""
        ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step by name: what a worker needs to rebuild it from its own plugins."""

    processor: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Work:
    """A batch's per-image function as names and settings only, small and picklable.

    `fingerprint` is what the client has (imgproc version, each processor's plugin and
    version, each model's sha256): a worker with anything else is refused before any image.
    `plugins_dir` is the client's --plugins-dir, given to the workers an engine starts itself;
    workers started by the user load their own entry points and $IMGPROC_PLUGINS_DIR.
    """

    steps: tuple[StepSpec, ...]
    runtime: RuntimeSettings
    output: OutputSettings
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    fingerprint: Mapping[str, str] = field(default_factory=dict)
    plugins_dir: Path | None = None

    def key(self) -> str:
        """Return a digest of the pipeline and settings: workers cache one Runtime per key."""
        text = repr((self.steps, self.runtime, self.output, sorted(self.fingerprint.items())))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class EngineOpener(Protocol):
    """Opens an engine for one batch or daemon."""

    def __call__(self, work: Work, *, settings: EngineSettings, steps: Sequence[Step],
                 runtime: Runtime) -> Engine: ...


@dataclass(frozen=True)
class EngineKind:
    """An engine a plugin registers: its name and how to open it.

    `open` gets the picklable `work` (what remote workers need), the `[engine]` settings, and
    the pipeline and Runtime already built in this process (what an in-process engine uses).
    """

    name: str
    summary: str
    open: EngineOpener


def fingerprint(registry: Registry, names: Iterable[str]) -> dict[str, str]:
    """Return what must match between client and workers for the processors `names`."""
    found = {"imgproc": host_version()}
    for name in names:
        entry = registry.processors.get(name)
        if entry is None:
            found[f"processor {name}"] = "missing"
            continue
        found[f"processor {name}"] = f"plugin {entry.plugin} {entry.version}"
        for model in entry.processor.models:
            found[f"model {name}/{model.name}"] = f"sha256 {model.sha256[:16]}"
    return found


def describe_work(steps: Sequence[Step], registry: Registry, config: Config, *,
                  plugins_dir: Path | None = None) -> Work:
    """Return the picklable description of running `steps` with `config`'s settings."""
    names = [step.processor.name for step in steps]
    return Work(steps=tuple(StepSpec(s.processor.name, _absolute_images(s)) for s in steps),
                runtime=config.runtime, output=config.output, logging=config.logging,
                fingerprint=fingerprint(registry, names), plugins_dir=plugins_dir)


def _absolute_images(step: Step) -> dict[str, Any]:
    """Return the step's options with image options (fixed files) as absolute paths: a worker
    has its own working directory."""
    images = {o.name for o in step.processor.options if o.image}
    return {k: str(Path(v).absolute()) if k in images and v else v
            for k, v in step.options.items()}


def open_engine(registry: Registry, config: Config, steps: Sequence[Step], runtime: Runtime,
                *, plugins_dir: Path | None = None) -> Engine:
    """Return the engine `config.engine.kind` opened for `steps`; UsageError if unknown."""
    settings = config.engine
    kind = registry.engines.get(settings.kind)
    if kind is None:
        known = ", ".join(sorted(registry.engines)) or "none"
        raise UsageError(f"no engine {settings.kind!r} (available: {known})")
    if settings.address and settings.kind == "local":
        raise UsageError("--address names a cluster scheduler: use it with --engine dask")
    work = describe_work(steps, registry, config, plugins_dir=plugins_dir)
    return kind.open(work, settings=settings, steps=steps, runtime=runtime)


def open_watch_engines(registry: Registry, config: Config, watches: Sequence[Watch],
                       runtime: Runtime, *, stack: ExitStack,
                       plugins_dir: Path | None = None) -> dict[int, Engine]:
    """Return {rule index: engine} for the watch rules whose images run elsewhere (the rule's
    `engine`, else `[engine] kind`), each opened on `stack` and checked against the rule's
    folders now, before any file arrives; rules that run here (`local`) get none."""
    engines: dict[int, Engine] = {}
    for index, watch in enumerate(watches):
        kind = watch.rule.engine or config.engine.kind
        if kind == "local":
            continue
        engine = stack.enter_context(open_engine(registry, config.replace("engine", kind=kind),
                                                 watch.steps, runtime, plugins_dir=plugins_dir))
        engine.check(watch.rule.output, watch.rule.input)
        engines[index] = engine
    return engines


class LocalEngine:
    """Runs jobs on threads of this process, sharing one Runtime (its ONNX sessions)."""

    def __init__(self, steps: Sequence[Step], runtime: Runtime, output: OutputSettings, *,
                 workers: int = 1) -> None:
        prepare(steps, runtime)  # a model or fixed-image error stops the work before any image
        self.steps, self.runtime, self.output = list(steps), runtime, output
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="imgproc-local")

    def map(self, jobs: Iterable[Job]) -> Iterator[Outcome]:
        """Yield one Outcome per job as the threads finish them."""
        futures: list[Future[Outcome]] = [
            self._pool.submit(process_one, job, self.steps, self.runtime, self.output)
            for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def check(self, output: Path, sample: Path) -> None:
        """Do nothing: this process already runs the batch's checks (`prepare`, the CLI's
        output-folder probe)."""

    def close(self) -> None:
        """Wait for the images in hand; drop the rest."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _open_local(work: Work, *, settings: EngineSettings, steps: Sequence[Step],
                runtime: Runtime) -> Engine:
    return LocalEngine(steps, runtime, work.output, workers=work.runtime.workers)


def _open_dask(work: Work, *, settings: EngineSettings, steps: Sequence[Step],
               runtime: Runtime) -> Engine:
    try:
        from imgproc.dask_engine import DaskEngine  # distributed is an optional extra
    except ImportError as exc:
        raise UsageError(f"--engine dask needs Dask: pip install 'imgproc[dask]' ({exc})") \
            from None
    return DaskEngine(work, settings)


@hookimpl
def imgproc_engines() -> list[EngineKind]:
    """Return the host's engines: local threads and a Dask cluster."""
    return [
        EngineKind("local", "Threads in this process (--workers), sharing model sessions.",
                   _open_local),
        EngineKind("dask", "A Dask distributed cluster (--address), or a local one per core.",
                   _open_dask),
    ]


def sweep_temporaries(jobs: Iterable[Job]) -> int:
    """Remove the hidden temporary files a killed writer left beside these jobs' outputs;
    return how many. Only names derived from the jobs' outputs are touched."""
    wanted: dict[Path, set[str]] = {}
    for job in jobs:
        wanted.setdefault(job.output.parent, set()).add(f".{job.output.name}.")
    removed = 0
    for folder, prefixes in wanted.items():
        removed += _sweep_folder(folder, prefixes)
    return removed


def _sweep_folder(folder: Path, prefixes: set[str]) -> int:
    try:
        names = os.listdir(folder)
    except OSError:  # not created yet, or unreadable: nothing of ours there
        return 0
    removed = 0
    for name in names:
        if not name.endswith(TEMP_SUFFIX):
            continue
        stem = name[:-len(TEMP_SUFFIX)]  # ".<output name>.<random>" (write_atomic's mkstemp)
        if stem[:stem.rfind(".") + 1] in prefixes:
            (folder / name).unlink(missing_ok=True)
            removed += 1
    return removed
