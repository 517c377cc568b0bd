"""Output size options shared by the resizing plugins (refit, superres)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgproc import Option


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
