"""An example third-party imgproc plugin: sepia toning and auto-contrast, no model needed."""

from __future__ import annotations

from typing import Any

import numpy as np

from imgproc import Context, Option, Processor, hookimpl

IMGPROC_API_VERSION = "1.0"  # the imgproc plugin API this plugin is written for

# The classic sepia matrix (rows: output R, G, B; columns: input R, G, B).
SEPIA = np.array([[0.393, 0.769, 0.189],
                  [0.349, 0.686, 0.168],
                  [0.272, 0.534, 0.131]], dtype=np.float32)


def sepia(images: list[np.ndarray], *, options: dict[str, Any],
          context: Context) -> np.ndarray:
    """Return the image toned sepia, mixed with the original by `strength`."""
    image = images[0]
    toned = np.clip(image @ SEPIA.T, 0.0, 1.0)
    strength = options["strength"]
    return (1.0 - strength) * image + strength * toned


def autocontrast(images: list[np.ndarray], *, options: dict[str, Any],
                 context: Context) -> np.ndarray:
    """Return the image with each channel stretched between its low and high percentiles."""
    image = images[0]
    cutoff = options["cutoff"]
    low = np.percentile(image, cutoff, axis=(0, 1), keepdims=True)
    high = np.percentile(image, 100.0 - cutoff, axis=(0, 1), keepdims=True)
    return np.clip((image - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)


@hookimpl
def imgproc_processors() -> list[Processor]:
    """Return the two processors of this plugin."""
    return [
        Processor(
            name="sepia",
            summary="Tone an image sepia.",
            process=sepia,
            options=(Option("strength", float, 1.0, "0 = unchanged, 1 = full sepia",
                            min=0.0, max=1.0),),
        ),
        Processor(
            name="autocontrast",
            summary="Stretch each channel between its low and high percentiles.",
            process=autocontrast,
            options=(Option("cutoff", float, 0.5, "percent clipped at each end",
                            min=0.0, max=49.0),),
        ),
    ]
