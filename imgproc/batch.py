"""The data path: find inputs -> read -> process -> write atomically -> record the outcome."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np
import structlog

from imgproc.config import OutputSettings
from imgproc.errors import Fault, ImageError, SessionError, TransientError, UsageError
from imgproc.images import (
    SUFFIX_FORMATS,
    TEMP_SUFFIX,
    Picture,
    output_suffix,
    read_image,
    write_atomic,
    write_image,
)
from imgproc.links import NOT_FOLLOWED, readable_path
from imgproc.processor import Processor
from imgproc.runtime import Context, Runtime

if TYPE_CHECKING:
    from imgproc.engine import Engine

Status = Literal["done", "skipped", "failed"]
log = structlog.get_logger("imgproc.batch")


@dataclass(frozen=True)
class Job:
    """One output to make from one input per processor input (merge takes two)."""

    inputs: tuple[Path, ...]
    output: Path


@dataclass(frozen=True)
class Outcome:
    """What happened to one job (or to an entry that never became a job)."""

    inputs: tuple[Path, ...]
    output: Path | None
    status: Status
    reason: str | None = None
    ms: float = 0.0
    provider: str = "none"
    extras: tuple[Path, ...] = ()  # files a processor asked to write beside the output
    fault: Fault | None = None  # whose fault a failure was: input, output or environment

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        data["inputs"] = [str(p) for p in self.inputs]
        data["extras"] = [str(p) for p in self.extras]
        data["output"] = str(self.output) if self.output else None
        data["ms"] = round(self.ms, 2)
        return data


@dataclass
class Plan:
    """The jobs to run, and the entries set aside while finding them."""

    jobs: list[Job] = field(default_factory=list)
    rejected: list[Outcome] = field(default_factory=list)


@dataclass
class Summary:
    """Every outcome of a batch, in input order."""

    outcomes: list[Outcome]
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        """Return how many outcomes have `status`."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """Return 0 when nothing failed, 1 otherwise."""
        return 1 if self.count("failed") else 0

    def to_json(self) -> dict[str, Any]:
        """Return the machine-readable summary printed by `imgproc run --json`."""
        return {"done": self.count("done"), "skipped": self.count("skipped"),
                "failed": self.count("failed"), "seconds": round(self.seconds, 3),
                "outcomes": [o.to_json() for o in self.outcomes]}


# -- find inputs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Scan:
    """How folders are scanned: into sub-folders or not, following links inside the tree or not."""

    outdir: Path
    recursive: bool
    follow_symlinks: bool


def plan_batch(inputs: Sequence[Path], outdir: Path, *, arity: int = 1, recursive: bool = False,
               fmt: str = "same", follow_symlinks: bool = False) -> Plan:
    """Return the jobs for `inputs`: outputs mirror each input's relative path under `outdir`.

    Links found in a folder are set aside unless `follow_symlinks`, and even then only followed
    to files inside that folder (imgproc.links); a followed link's job reads its target.
    """
    plan = Plan()
    scan = _Scan(outdir, recursive, follow_symlinks)
    if arity == 1:
        for root in inputs:
            for rel_inputs, rel in _entries(root, scan, plan):
                plan.jobs.append(Job(rel_inputs, outdir / rel.with_suffix(
                    output_suffix(rel, fmt))))
    else:
        _pair(inputs, scan, arity, fmt, plan)
    _reject_conflicts(plan)
    return plan


def _entries(root: Path, scan: _Scan, plan: Plan) -> Iterator[tuple[tuple[Path], Path]]:
    if root.is_dir() and not root.is_symlink():
        for path, source in _scan(root, scan, plan).items():
            yield (source,), path.relative_to(root)
    elif root.is_symlink() and not root.exists():
        plan.rejected.append(Outcome((root,), None, "failed", "broken symlink"))
    elif root.exists():
        # A file named on the command line is taken as given, symlink or not (like cp -H).
        yield (root,), Path(root.name)
    else:
        plan.rejected.append(Outcome((root,), None, "failed", "no such file or directory"))


def _scan(root: Path, scan: _Scan, plan: Plan) -> dict[Path, Path]:
    """Return {path found: path to read} for the image files under `root`, in name order."""
    found: dict[Path, Path] = {}
    skip_dir = scan.outdir.resolve()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in sorted(files + dirs):
            _consider(here / name, root, scan, plan, found)
        # Never descend into the output folder, hidden folders or symlinked folders.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (here / d).resolve() != skip_dir and not (here / d).is_symlink())
        if not scan.recursive:
            break
    return dict(sorted(found.items()))


def _consider(path: Path, root: Path, scan: _Scan, plan: Plan,
              found: dict[Path, Path]) -> None:
    if path.name.startswith(".") or path.name.endswith(TEMP_SUFFIX):
        return
    if path.suffix.lower() not in SUFFIX_FORMATS:
        return
    if path.is_symlink():
        try:
            found[path] = readable_path(path, root, follow=scan.follow_symlinks)
        except ImageError as exc:
            status: Status = "skipped" if exc.reason == NOT_FOLLOWED else "failed"
            plan.rejected.append(Outcome((path,), None, status, exc.reason, fault="input"))
    elif path.is_dir():
        if not scan.recursive:
            plan.rejected.append(Outcome((path,), None, "skipped",
                                         "is a directory named like an image"))
    else:
        found[path] = path


def _pair(inputs: Sequence[Path], scan: _Scan, arity: int, fmt: str, plan: Plan) -> None:
    if len(inputs) != arity:
        raise UsageError(f"this processor takes {arity} inputs (files or folders), "
                         f"got {len(inputs)}")
    if all(p.is_file() for p in inputs):
        first = inputs[0]
        plan.jobs.append(Job(tuple(inputs), scan.outdir / Path(first.name).with_suffix(
            output_suffix(first, fmt))))
        return
    if not all(p.is_dir() for p in inputs):
        raise UsageError("inputs must be all files or all folders: "
                         + ", ".join(str(p) for p in inputs))
    scans = [_scan(r, scan, plan) for r in inputs]
    tables = [_by_stem(r, found, plan) for r, found in zip(inputs, scans, strict=True)]
    for key in sorted(set().union(*tables)):
        members = [t.get(key) for t in tables]
        if any(m is None for m in members):
            missing = [str(r) for r, m in zip(inputs, members, strict=True) if m is None]
            present = next(m for m in members if m is not None)
            plan.rejected.append(Outcome((present,), None, "skipped",
                                         f"no partner in {', '.join(missing)}"))
            continue
        rel = members[0].relative_to(inputs[0])  # type: ignore[union-attr]
        sources = tuple(found[m] for found, m in zip(scans, members, strict=True))  # type: ignore[index]
        plan.jobs.append(Job(sources, scan.outdir / rel.with_suffix(output_suffix(rel, fmt))))


def _by_stem(root: Path, paths: Iterable[Path], plan: Plan) -> dict[Path, Path]:
    table: dict[Path, Path] = {}
    for path in paths:
        key = path.relative_to(root).with_suffix("")
        if key in table:
            plan.rejected.append(Outcome((path,), None, "failed", f"same name as {table[key]} "
                                         "(inputs are paired by name without suffix)",
                                         fault="input"))
        else:
            table[key] = path
    return table


def _reject_conflicts(plan: Plan) -> None:
    sources = {p.resolve() for job in plan.jobs for p in job.inputs}
    claimed: dict[Path, Job] = {}
    kept: list[Job] = []
    for job in plan.jobs:
        target = job.output.resolve()
        if target in sources:
            plan.rejected.append(Outcome(job.inputs, job.output, "failed",
                                         "output would overwrite an input"))
        elif target in claimed:
            plan.rejected.append(Outcome(job.inputs, job.output, "failed",
                                         f"output name collides with {claimed[target].inputs[0]}"))
        else:
            claimed[target] = job
            kept.append(job)
    plan.jobs = kept


# -- read, process, write, record -------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One processor with its resolved options; a pipeline is a sequence of steps."""

    processor: Processor
    options: dict[str, Any]


def check_pipeline(steps: Sequence[Step]) -> None:
    """Raise UsageError unless every step after the first takes exactly one image."""
    if not steps:
        raise UsageError("a pipeline needs at least one processor")
    for step in steps[1:]:
        if step.processor.arity(step.options) != 1:
            raise UsageError(f"{step.processor.name} takes {step.processor.inputs} images and "
                             "can only be the first step of a pipeline")


def process_one(job: Job, steps: Sequence[Step], runtime: Runtime,
                output: OutputSettings) -> Outcome:
    """Return the outcome of running `steps` on one job. Never raises (but KeyboardInterrupt):
    every fault at read, process or write becomes a `failed` outcome with its reason and whose
    fault it was (docs/faults.md), so no image can end a batch or a daemon worker."""
    start = time.perf_counter()
    contexts: list[Context] = []
    names = "+".join(step.processor.name for step in steps)
    try:
        contexts = [runtime.context(step.processor) for step in steps]
        pictures = [read_image(p, max_pixels=runtime.settings.max_image_pixels)
                    for p in job.inputs]
        for step, context in zip(steps, contexts, strict=True):
            fixed = [runtime.fixed_image(p) for p in step.processor.image_options(step.options)]
            pictures = [_run(step, pictures + fixed, context, job.inputs[0])]
        notes = write_image(job.output, pictures[0], jpeg_quality=output.jpeg_quality,
                            webp_quality=output.webp_quality)
        extras = _write_extras(job.output, contexts, output)
    except ImageError as exc:
        return _failed(job, exc.path, exc.reason, exc.fault, start, contexts, names)
    except (Exception, SystemExit) as exc:  # a host bug or an unforeseen fault: this image only
        log.exception("unexpected error", path=str(job.inputs[0]), plugin=names)
        return _failed(job, job.inputs[0], f"unexpected {type(exc).__name__}: {exc}", "input",
                       start, contexts, names)
    ms = (time.perf_counter() - start) * 1000
    provider = _providers(contexts)
    log.info("image done", path=str(job.inputs[0]), output=str(job.output), plugin=names,
             ms=round(ms, 1), provider=provider, **({"notes": notes} if notes else {}),
             **({"extras": [str(p) for p in extras]} if extras else {}))
    return Outcome(job.inputs, job.output, "done", None, ms, provider, tuple(extras))


def _failed(job: Job, path: Path, reason: str, fault: Fault, start: float,
            contexts: Sequence[Context], names: str) -> Outcome:
    ms = (time.perf_counter() - start) * 1000
    provider = _providers(contexts)
    log.warning("image failed", path=str(path), plugin=names, reason=reason, fault=fault,
                ms=round(ms, 1), provider=provider)
    return Outcome(job.inputs, job.output, "failed", reason, ms, provider, fault=fault)


def _write_extras(output: Path, contexts: Sequence[Context],
                  settings: OutputSettings) -> list[Path]:
    written = []
    for context in contexts:
        for suffix, data in context.extra_outputs.items():
            path = output.with_name(f"{output.stem}.{suffix}")
            if isinstance(data, bytes):
                write_atomic(path, _writer(data))
            else:
                write_image(path, Picture(np.asarray(data, dtype=np.float32)),
                            jpeg_quality=settings.jpeg_quality, webp_quality=settings.webp_quality)
            written.append(path)
    return written


def _writer(data: bytes) -> Callable[[IO[bytes]], None]:
    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    return write


def _providers(contexts: Sequence[Context]) -> str:
    used = sorted({p for c in contexts for p in c.providers})
    return ",".join(used) or "none"


def _run(step: Step, pictures: list[Picture], context: Context, path: Path) -> Picture:
    processor = step.processor
    try:
        pixels = processor.process([p.pixels for p in pictures], options=dict(step.options),
                                   context=context)
    except ImageError as exc:  # the plugin does not know the path: name it here
        raise type(exc)(path, f"{processor.name}: {exc.reason}") from exc
    except SessionError as exc:  # the runtime failed, not the image: retried later
        raise TransientError(path, f"{processor.name}: {exc}") from exc
    except (Exception, SystemExit) as exc:  # a plugin bug fails this image, never the batch
        raise ImageError(path, f"{processor.name} failed: {type(exc).__name__}: {exc}") from exc
    _check_result(processor, pixels, path)
    first = pictures[0]
    return Picture(np.asarray(pixels, dtype=np.float32), first.alpha, first.exif, first.icc,
                   first.depth)


def _check_result(processor: Processor, pixels: object, path: Path) -> None:
    ok = (isinstance(pixels, np.ndarray) and pixels.ndim == 3 and pixels.shape[2] in (1, 3)
          and pixels.shape[0] > 0 and pixels.shape[1] > 0)
    if not ok:
        shape = getattr(pixels, "shape", type(pixels).__name__)
        raise ImageError(path, f"{processor.name} returned {shape}, expected an H x W x 1|3 array")


def check_output_folder(folder: Path) -> None:
    """Create `folder` if needed and prove it writable with a probe file; raise UsageError
    naming the folder and the reason otherwise (before any image is touched)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"output folder {folder}: a file is in the way") from None
    except OSError as exc:
        raise UsageError(f"output folder {folder} cannot be created: "
                         f"{exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".imgproc-probe-") as probe:
            probe.write(b"probe")
    except OSError as exc:
        raise UsageError(f"output folder {folder} is not writable: {exc.strerror or exc}")\
            from None


def prepare(steps: Sequence[Step], runtime: Runtime) -> None:
    """Load every step's model sessions now, so a model or provider error stops the work
    before any image is read."""
    check_pipeline(steps)
    for step in steps:
        for path in step.processor.image_options(step.options):
            try:
                runtime.fixed_image(path)  # a bad fixed image stops the work before any job
            except ImageError as exc:
                raise UsageError(f"{step.processor.name}: image option: {exc}") from None
        context = runtime.context(step.processor)
        for model in step.processor.models:
            context.session(model.name)


def run_batch(plan: Plan, steps: Sequence[Step], runtime: Runtime, output: OutputSettings, *,
              workers: int = 1, skip_existing: bool = False,
              progress: Callable[[Outcome], None] | None = None,
              engine: Engine | None = None) -> Summary:
    """Return the summary of running every job of `plan` on `engine` (default: `workers`
    threads in this process, closed at the end; an engine given is left open)."""
    from imgproc.engine import LocalEngine, sweep_temporaries  # engine builds on this module

    start = time.perf_counter()
    sweep_temporaries(plan.jobs)  # what a crashed earlier run left behind
    finished: dict[Path | None, Outcome] = {}  # by output: unique among a plan's jobs
    todo = []
    for job in plan.jobs:
        if skip_existing and job.output.exists():
            _record(finished, Outcome(job.inputs, job.output, "skipped",
                                      "output exists (--skip-existing)"), progress)
        else:
            todo.append(job)
    owned = engine is None
    engine = engine or LocalEngine(steps, runtime, output, workers=workers)
    try:
        for outcome in engine.map(todo):
            _record(finished, outcome, progress)
    finally:
        if owned:
            engine.close()
    sweep_temporaries(todo)  # a worker killed mid-write leaves its temporary file
    outcomes = [finished[job.output] for job in plan.jobs]
    return Summary(plan.rejected + outcomes, time.perf_counter() - start)


def _record(finished: dict[Path | None, Outcome], outcome: Outcome,
            progress: Callable[[Outcome], None] | None) -> None:
    finished[outcome.output] = outcome
    if progress is not None:
        progress(outcome)
