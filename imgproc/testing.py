"""The testing kit for plugin authors (part of the public API): the contract check, running a
processor the way the host does, and the `imgproc` command in-process.

    from imgproc.testing import check_processor, run_processor

    def test_contract():
        for processor in my_plugin.imgproc_processors():
            check_processor(processor)

    def test_strength_zero_is_identity():
        assert np.allclose(run_processor(SEPIA, [image], strength=0.0), image)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from imgproc.config import RuntimeSettings
from imgproc.processor import Processor
from imgproc.runtime import Context, Runtime
from imgproc.session import sha256_file

if TYPE_CHECKING:
    from click.testing import Result

SIZES = ((1, 1), (3, 7), (17, 23))
TILE_SIZE, TILE_OVERLAP = RuntimeSettings.tile_size, RuntimeSettings.tile_overlap


def check_processor(processor: Processor, *, sizes: tuple[tuple[int, int], ...] = SIZES,
                    tile_size: int = TILE_SIZE, tile_overlap: int = TILE_OVERLAP) -> None:
    """Raise AssertionError naming the first way `processor` breaks the plugin contract.

    Small `tile_size` and `tile_overlap` (with sizes above the tile size) exercise tiling.
    """
    _check_declaration(processor)
    runtime = _runtime("cpu", tile_size, tile_overlap)
    options = processor.resolve_options()
    rng = np.random.default_rng(0)
    for height, width in sizes:
        images = [rng.random((height, width, 3), dtype=np.float32)
                  for _ in range(processor.inputs)]
        out = processor.process(images, options=dict(options),
                                context=runtime.context(processor))
        _check_output(processor, out, (height, width))


def make_context(processor: Processor, *, provider: str = "cpu", tile_size: int = TILE_SIZE,
                 tile_overlap: int = TILE_OVERLAP) -> Context:
    """Return a per-image context for `processor`, as the host would give it (CPU by default;
    `context.tiled` cuts tiles of `tile_size` overlapping by `tile_overlap`)."""
    return _runtime(provider, tile_size, tile_overlap).context(processor)


def _runtime(provider: str, tile_size: int, tile_overlap: int) -> Runtime:
    return Runtime(RuntimeSettings(provider=provider, tile_size=tile_size,
                                   tile_overlap=tile_overlap))


def run_processor(processor: Processor, images: list[np.ndarray], *,
                  context: Context | None = None, **options: object) -> np.ndarray:
    """Return `processor` applied to `images`, its options resolved as the host resolves them
    (defaults, then `options`, validated)."""
    values = processor.resolve_options(options)
    return processor.process(images, options=values,
                             context=context or make_context(processor))


def run_cli(*args: str) -> Result:
    """Return the click Result of running `imgproc ARGS...` in this process."""
    from click.testing import CliRunner

    from imgproc.cli import cli

    return CliRunner().invoke(cli, list(args))


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
