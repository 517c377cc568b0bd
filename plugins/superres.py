"""superres: single-image super-resolution with the shipped CNN (x2, x3, x4), at any factor.

    imgproc run --plugin superres --option scale=4 photos/ -o big/
    imgproc run -p superres -O scale=2.5 photos/ -o big/
    imgproc run -p superres -O width=1920 photos/ -o big/
    imgproc run -p superres -O model=fast photos/ -o big/

Two model sizes ship, each as `models/superres-<model>-x{2,3,4}.onnx` exported from the preset of
that name in `exporters.superres` (training data, steps and McMaster18 figures are in their model
cards): `best` (the default, a 16-block residual net of 48 channels) and `fast` (2 blocks of 16
channels, about a twentieth of the time, and quicker than OpenCV's ESPCN at x4). A factor
that is not 2, 3 or 4 runs the nearest model scale at or above it (x4 above 4)
and then resizes to the exact size with Lanczos, as Real-ESRGAN's `--outscale` does. A factor of
1 or less runs no model (only the resize). The host tiles large inputs (`context.tiled`) and
upscales alpha alongside.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgproc import (
    Context,
    ModelFile,
    Option,
    Processor,
    Session,
    hookimpl,
    output_size,
    resize,
    size_options,
)

IMGPROC_API_VERSION = "1.0"
MODELS = Path(__file__).parent / "models"
MODEL_SIZES = ("best", "fast")
MODEL_SCALES = (2, 3, 4)


def model_name(scale: int, size: str = "best") -> str:
    """Return the name of the shipped model of a size ("best" or "fast") for an integer scale."""
    return f"superres-{size}-x{scale}"


def model_scale(factor: float) -> int | None:
    """Return the model scale to run for a size factor: the smallest one at or above it, 4
    above 4, or None when the factor is 1 or less (a plain resize does it)."""
    if factor <= 1.0:
        return None
    return next((s for s in MODEL_SCALES if s >= factor), MODEL_SCALES[-1])


def upscale_fn(session: Session,
               ensemble: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Return a function mapping an H x W x 3 tile to its model upscale (H*s x W*s x 3).

    ensemble: the geometric self-ensemble (Lim et al., EDSR+): the mean of the model's upscales
    of the tile under the 8 flips and 90-degree rotations, each turned back; 8x the time.
    """

    def run_once(tile: np.ndarray) -> np.ndarray:
        nchw = np.ascontiguousarray(tile.transpose(2, 0, 1)[None], dtype=np.float32)
        return session.run({"image": nchw})[0][0].transpose(1, 2, 0)

    if not ensemble:
        return run_once

    def run(tile: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for flip in (False, True):
            flipped = tile[:, ::-1] if flip else tile
            for k in range(4):
                out = np.rot90(run_once(np.rot90(flipped, k)), -k)
                out = out[:, ::-1] if flip else out
                total = out.copy() if total is None else np.add(total, out, out=total)
        assert total is not None
        return np.multiply(total, 1.0 / 8.0, out=total)

    return run


def superres(images: list[np.ndarray], *, options: dict[str, Any],
             context: Context) -> np.ndarray:
    """Return the image upscaled to the requested size, clipped to [0, 1]."""
    image = images[0]
    height, width = image.shape[:2]
    out_h, out_w = output_size(height, width, options)
    # The larger per-axis factor decides: width= and height= together may stretch one axis.
    scale = model_scale(max(out_h / height, out_w / width))
    if scale is not None:
        run = upscale_fn(context.session(model_name(scale, options["model"])),
                         ensemble=options["ensemble"])
        image = context.tiled(run, image, scale=scale)
    out = resize(image, out_h, out_w, resample=Image.Resampling.LANCZOS)
    if out is images[0]:  # the input itself (factor 1): never change it in place
        return np.clip(out, 0.0, 1.0)
    return np.clip(out, 0.0, 1.0, out=out)  # in place: at 16000x12000 a copy is 2.3 GB


PROCESSOR = Processor(
    name="superres",
    summary="Upscale images with a super-resolution CNN (x2/x3/x4, any factor via resize).",
    process=superres,
    options=(
        *size_options(4.0, min_scale=1.0, max_scale=16.0),
        Option("model", str, "best", "best: the 16-block net (quality); fast: the 2-block net, "
               "about 20x faster (docs/benchmarks.md)", choices=MODEL_SIZES),
        Option("ensemble", bool, False, "average the model over the 8 flips/rotations of the "
               "input (geometric self-ensemble): a little sharper, 8x the time"),
    ),
    models=tuple(ModelFile.from_facts(MODELS / f"{model_name(scale, size)}.json")
                 for size in MODEL_SIZES for scale in MODEL_SCALES),
)


@hookimpl
def imgproc_processors() -> list[Processor]:
    """Return the superres processor."""
    return [PROCESSOR]


__all__ = ["MODEL_SCALES", "MODEL_SIZES", "PROCESSOR", "model_name", "model_scale"]
