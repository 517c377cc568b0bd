"""Output-size options (`scale`, `width`, `height`) and float resizing, for any plugin that
resizes (superres, refit and merge among the built-ins)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from imgproc.processor import Option


def size_options(default_scale: float, *, min_scale: float,
                 max_scale: float) -> tuple[Option, ...]:
    """Return the `scale`, `width` and `height` options."""
    return (
        Option("scale", float, default_scale,
               "output size factor (ignored when width or height is set)",
               min=min_scale, max=max_scale),
        Option("width", int, None, "output width in pixels (height follows the aspect)", min=1),
        Option("height", int, None, "output height in pixels (width follows the aspect)", min=1),
    )


def output_size(height: int, width: int, options: Mapping[str, Any]) -> tuple[int, int]:
    """Return the output (height, width): width/height if given (aspect kept when only one
    is), otherwise the input size times `scale`."""
    out_w, out_h = options.get("width"), options.get("height")
    if out_w and out_h:
        return out_h, out_w
    if out_w:
        return max(1, round(height * out_w / width)), out_w
    if out_h:
        return out_h, max(1, round(width * out_h / height))
    scale = options["scale"]
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: np.ndarray, height: int, width: int, *,
           resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Return a float32 H x W x C image resized to height x width, channel by channel.

    Pillow's mode F keeps the float values (no 8-bit rounding) and antialiases when shrinking.
    """
    if image.shape[:2] == (height, width):
        return image
    planes = [Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
              for c in range(image.shape[2])]
    return np.stack([np.asarray(p.resize((width, height), resample)) for p in planes], axis=2)
