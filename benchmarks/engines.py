"""Engines: images per second with the local engine vs a 2-worker local Dask cluster on the
same cores, the engine's per-image overhead on a trivial plugin, and start-up time.

Every batch goes through `run_batch` with an engine from `open_engine`, as `imgproc run` does.
Logging is at warning level on the client and the workers alike, so no log I/O is timed.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from imgproc.batch import Plan, Step, plan_batch, run_batch
from imgproc.config import Config, EngineSettings
from imgproc.dask_engine import usable_cores
from imgproc.engine import Engine, open_engine
from imgproc.logs import configure_logging
from imgproc.registry import Registry, load_registry
from imgproc.runtime import Runtime

COUNT = 200
SIZE = (512, 384)
RUNS = 2  # best of; each run writes into a fresh folder
STARTS = 3
TRIVIAL = '''
from imgproc import Processor, hookimpl


def identity(images, *, options, context):
    return images[0]


@hookimpl
def imgproc_processors():
    return [Processor("identity", "Return the image unchanged.", identity)]
'''
WARM = 4  # images of the warm-up batch (sessions and caches loaded) before each timing
TRIVIAL_CASE = "trivial (identity)"
CASES = [("superres fast x2", "superres", {"model": "fast", "scale": 2}),
         ("colorize", "colorize", {}),
         (TRIVIAL_CASE, "identity", {})]


def _make_inputs(folder: Path) -> None:
    rng = np.random.default_rng(0)
    base = np.asarray(Image.effect_mandelbrot(SIZE, (-2, -1.2, 1, 1.2), 64).convert("RGB"))
    folder.mkdir(parents=True)
    for i in range(COUNT):
        pixels = np.clip(base.astype(int) + rng.integers(-30, 30, 3), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")


@dataclasses.dataclass(frozen=True)
class Setup:
    """One engine configuration: its label, engine kind, local threads, cluster workers."""

    label: str
    kind: str
    workers: int


SETUPS = [Setup("local, 1 thread", "local", 1), Setup("local, 2 threads", "local", 2),
          Setup("dask, 1 worker", "dask", 1), Setup("dask, 2 workers", "dask", 2)]


def _config(setup: Setup) -> Config:
    # ONNX Runtime threads set, not left to it: the cores split between local threads or
    # cluster workers the same way (its default counts the machine's cores, not ours).
    threads = max(1, usable_cores() // setup.workers) if setup.kind == "dask" else usable_cores()
    config = Config().replace("logging", level="warning")
    config = config.replace("runtime", provider="cpu", workers=setup.workers,
                            intra_op_threads=threads)
    return dataclasses.replace(config, engine=EngineSettings(kind=setup.kind,
                                                             workers=setup.workers))


@dataclasses.dataclass(frozen=True)
class Rate:
    """Images per second (wall clock, best run) and CPU milliseconds per image (every process
    of the engine: this one, and a local cluster's worker processes; median run)."""

    per_second: float
    cpu_ms: float


def _cpu_seconds() -> float:
    """Return the CPU time used so far by this process and its live child processes."""
    processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
    return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


def _rate(engine: Engine, plan_for: Callable[[], Plan], steps: list[Step],
          runtime: Runtime, config: Config) -> Rate:
    walls, cpus = [], []
    warm = plan_for()
    run_batch(Plan(warm.jobs[:WARM]), steps, runtime, config.output, engine=engine)
    for _ in range(RUNS):
        plan = plan_for()
        start, cpu = time.perf_counter(), _cpu_seconds()
        summary = run_batch(plan, steps, runtime, config.output, engine=engine)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu)
        assert summary.count("done") == COUNT, summary.to_json()
    return Rate(COUNT / min(walls), float(np.median(cpus)) * 1000 / COUNT)


def _measure_rates(registry: Registry, work: Path, plugins: Path) -> dict[tuple[str, str], Rate]:
    rates = {}
    counter = iter(range(10**6))
    for setup in SETUPS:
        config = _config(setup)
        for label, name, options in CASES:
            if setup.label == "dask, 1 worker" and label != TRIVIAL_CASE:
                continue  # only for the per-image overhead
            steps = [Step(registry.get(name).processor,
                          registry.get(name).processor.resolve_options(options))]
            runtime = Runtime(config.runtime)

            def plan_for() -> Plan:
                return plan_batch([work / "in"], work / f"out{next(counter)}")

            with open_engine(registry, config, steps, runtime, plugins_dir=plugins) as engine:
                rates[setup.label, label] = _rate(engine, plan_for, steps, runtime, config)
    return rates


def _start_up(registry: Registry, plugins: Path, work: Path) -> dict[str, float]:
    """Return seconds: open (cluster up, client connected), first image (the workers' up-front
    check and pipeline load included), close."""
    config = _config(Setup("dask, 2 workers", "dask", 2))
    steps = [Step(registry.get("identity").processor, {})]
    times: dict[str, list[float]] = {"open": [], "first": [], "close": []}
    for n in range(STARTS):
        plan = plan_batch([work / "in" / "img000.png"], work / f"start{n}")
        start = time.perf_counter()
        engine = open_engine(registry, config, steps, Runtime(config.runtime),
                             plugins_dir=plugins)
        opened = time.perf_counter()
        run_batch(plan, steps, Runtime(config.runtime), config.output, engine=engine)
        first = time.perf_counter()
        engine.close()
        closed = time.perf_counter()
        times["open"].append(opened - start)
        times["first"].append(first - opened)
        times["close"].append(closed - first)
    return {k: float(np.median(v)) for k, v in times.items()}


def run() -> str:
    """Return the markdown section: rates, overhead and start-up."""
    configure_logging(level="warning")
    work = Path(tempfile.mkdtemp(prefix="imgproc-bench-engines-"))
    try:
        _make_inputs(work / "in")
        plugins = work / "plugins"
        plugins.mkdir()
        (plugins / "trivial.py").write_text(TRIVIAL)
        registry = load_registry(plugins_dir=plugins)
        rates = _measure_rates(registry, work, plugins)
        start_up = _start_up(registry, plugins, work)
    finally:
        shutil.rmtree(work)
    return _report(rates, start_up)


def _report(rates: dict[tuple[str, str], Rate], start_up: dict[str, float]) -> str:
    lines = ["## Engines: local threads vs a local Dask cluster", "",
             f"{COUNT} PNG images of {SIZE[0]}x{SIZE[1]} through `run_batch` with the engine "
             f"`imgproc run` opens, after a {WARM}-image warm-up; `--provider cpu`, on the same "
             f"{usable_cores()} cores. Dask workers are processes of one thread each with ONNX "
             "Runtime's threads split between them (cores / workers); local threads share one "
             "process and its sessions, ONNX Runtime given every core. Wall-clock rates are "
             f"the best of {RUNS} runs and depend on what else the machine runs (its load "
             "average is below); CPU time per image counts every process of the engine "
             "(median run) and depends far less on it.", ""]
    lines += _table(rates, "images per second", lambda r: r.per_second, higher_is_better=True)
    lines += [""]
    lines += _table(rates, "CPU ms per image", lambda r: r.cpu_ms, higher_is_better=False)
    local, dask = rates["local, 1 thread", TRIVIAL_CASE], rates["dask, 1 worker", TRIVIAL_CASE]
    lines += ["", "Per-image overhead of the Dask engine on the trivial plugin, one worker vs "
              f"one local thread: {1000 / dask.per_second - 1000 / local.per_second:.1f} ms "
              f"of wall clock ({1000 / local.per_second:.1f} vs {1000 / dask.per_second:.1f}) "
              f"and {dask.cpu_ms - local.cpu_ms:.1f} ms of CPU ({local.cpu_ms:.1f} vs "
              f"{dask.cpu_ms:.1f}) per image.", "",
              f"Start-up of `--engine dask` without an address (median of {STARTS}): local "
              f"cluster of 2 workers up and connected in {start_up['open']:.2f} s, first image "
              f"done (the workers' up-front check, plugins and pipeline loaded) "
              f"{start_up['first']:.2f} s later, cluster closed in {start_up['close']:.2f} s."]
    return "\n".join(lines)


def _table(rates: dict[tuple[str, str], Rate], title: str, value: Callable[[Rate], float], *,
           higher_is_better: bool) -> list[str]:
    """Return one markdown table of `value` per case and setup, and the share of the best
    local setup's performance that the 2-worker cluster keeps."""
    lines = [f"| {title} | " + " | ".join(s.label for s in SETUPS)
             + " | dask 2 workers vs best local |", "| --- |" + " ---: |" * (len(SETUPS) + 1)]
    for label, _, _ in CASES:
        row = [f"{value(rates[s.label, label]):.1f}" if (s.label, label) in rates else "-"
               for s in SETUPS]
        local = [value(rates[s.label, label]) for s in SETUPS if s.kind == "local"]
        dask = value(rates["dask, 2 workers", label])
        share = dask / max(local) if higher_is_better else min(local) / dask
        lines.append(f"| {label} | " + " | ".join(row) + f" | {share:.0%} |")
    return lines


__all__ = ["run"]
