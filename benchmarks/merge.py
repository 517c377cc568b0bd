"""Poisson merge speed: the `merge` processor on ONNX Runtime vs the PyTorch module it was
exported from (eager) vs the float64 SciPy reference, at 512x512 and 1000x1000.

The inputs are skimage's astronaut and coffee resized to each size. The ONNX Runtime column
is the whole `process()` call through the host's session (building the feeds, the graph, the
clip), with the DCT bases for the size already cached by a warm-up call; PyTorch and SciPy
time the bare solve. The issue's bar: a 1-megapixel merge in under 1 s on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import structlog
import torch
from skimage import data
from timing import REPEATS, best_time  # benchmarks/ is on sys.path (run.py)

from exporters.merge import PoissonMerge, reference_merge, torch_feeds
from imgproc import resize
from imgproc.config import RuntimeSettings
from imgproc.runtime import Runtime
from imgproc_plugins.merge import imgproc_processors

SIZES = ((512, 512), (1000, 1000))
MODES = ("mean", "mixed")
BAR_SECONDS = 1.0


def _images(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return astronaut and coffee as float32 RGB resized to height x width."""
    return tuple(resize(image.astype(np.float32) / 255, height, width)  # type: ignore[return-value]
                 for image in (data.astronaut(), data.coffee()))


def _timings(a: np.ndarray, b: np.ndarray, mode: str) -> tuple[float, float, float]:
    """Return the best seconds of ONNX Runtime (process()), PyTorch eager and SciPy."""
    processor = imgproc_processors()[0]
    runtime = Runtime(RuntimeSettings(provider="cpu"))
    options = processor.resolve_options({"mode": mode})
    mixed = mode == "mixed"
    feeds = torch_feeds(a, b, weight=0.5, mixed=mixed)
    module = PoissonMerge()

    def eager() -> None:
        with torch.inference_mode():
            module(*feeds.values())

    return (
        best_time(lambda: processor.process([a, b], options=dict(options),
                                          context=runtime.context(processor))),
        best_time(eager),
        best_time(lambda: reference_merge(a, b, weight=0.5, mixed=mixed)),
    )


def run() -> str:
    """Return the markdown table of merge timings."""
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log I/O in timings
    rows = []
    for height, width in SIZES:
        a, b = _images(height, width)
        rows += [((height, width), mode, *_timings(a, b, mode)) for mode in MODES]
    lines = ["## Poisson merge (`merge`)", "",
             f"A = astronaut, B = coffee, resized to each size; best of {REPEATS} after a warm-up "
             f"call; torch {torch.__version__} with {torch.get_num_threads()} threads.", "",
             "| size | mode | ONNX Runtime, process() (s) | PyTorch eager (s) "
             "| SciPy reference, float64 (s) |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {h}x{w} | {mode} | {ort_s:.3f} | {torch_s:.3f} | {scipy_s:.3f} |"
              for (h, w), mode, ort_s, torch_s, scipy_s in rows]
    worst = max(ort_s for (h, w), _, ort_s, _, _ in rows if h * w >= 10**6)
    verdict = "meets" if worst < BAR_SECONDS else "MISSES"
    lines += ["", f"1-megapixel merge through ONNX Runtime: {worst:.3f} s at worst over the "
              f"modes, which {verdict} the bar of {BAR_SECONDS:g} s."]
    return "\n".join(lines)


__all__ = ["run"]
