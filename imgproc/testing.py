"""A contract test plugin authors call from their own test suites.

    from imgproc.testing import check_processor

    def test_contract():
        for processor in my_plugin.imgproc_processors():
            check_processor(processor)
"""

from __future__ import annotations

import numpy as np

from imgproc.config import RuntimeSettings
from imgproc.processor import Processor
from imgproc.runtime import Runtime
from imgproc.session import sha256_file

SIZES = ((1, 1), (3, 7), (17, 23))


def check_processor(processor: Processor, *, sizes: tuple[tuple[int, int], ...] = SIZES,
                    runtime: Runtime | None = None) -> None:
    """Raise AssertionError naming the first way `processor` breaks the plugin contract."""
    _check_declaration(processor)
    runtime = runtime or Runtime(RuntimeSettings(provider="cpu"))
    options = processor.resolve_options()
    rng = np.random.default_rng(0)
    for height, width in sizes:
        images = [rng.random((height, width, 3), dtype=np.float32)
                  for _ in range(processor.inputs)]
        out = processor.process(images, options=dict(options),
                                context=runtime.context(processor))
        _check_output(processor, out, (height, width))


def _check_declaration(processor: Processor) -> None:
    # Processor() itself refuses bad names, summaries, input counts and duplicate options.
    for option in processor.options:
        if option.default is not None:
            option.parse(option.default, processor=processor.name)
    for model in processor.models:
        assert model.path.is_file(), f"{processor.name}: model file {model.path} is missing"
        assert sha256_file(model.path) == model.sha256, \
            f"{processor.name}: {model.path} does not match its declared sha256"


def _check_output(processor: Processor, out: object, size: tuple[int, int]) -> None:
    label = f"{processor.name} on {size[0]}x{size[1]}"
    assert isinstance(out, np.ndarray), f"{label}: returned {type(out).__name__}, not ndarray"
    assert out.ndim == 3 and out.shape[2] in (1, 3), \
        f"{label}: returned shape {out.shape}, expected H x W x 1|3"
    assert out.shape[0] >= 1 and out.shape[1] >= 1, f"{label}: returned an empty image"
    assert np.isfinite(out).all(), f"{label}: returned NaN or infinity"
    assert out.min() >= -0.01 and out.max() <= 1.01, \
        f"{label}: values {out.min():.3f}..{out.max():.3f} outside [0, 1]"
