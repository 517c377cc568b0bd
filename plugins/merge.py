"""The `merge` processor: two images combined in the gradient domain (Poisson, exact DCT solve).

The exact solve is `imgproc_plugins.poisson` (FFT-based DCTs, one colour channel at a time):
a 12 MP merge peaks well under 1.5 GB and runs in seconds on 2 cores. It used to be an ONNX
graph with DCTs as matrix products, whose cost grows as H * W * (H + W) (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imgproc import Context, Option, Processor, hookimpl, resize
from imgproc_plugins import require_torch
from imgproc_plugins.poisson import poisson_merge, target_field

MODES = ("mean", "mixed")
METHODS = ("exact", "siren")


def merge(images: list[np.ndarray], *, options: dict[str, Any], context: Context) -> np.ndarray:
    """Return A and B merged in the gradient domain, clipped to [0, 1] (H x W x 3 of A).

    B is resized to A's size first. The field is weight * grad A + (1 - weight) * grad B
    (`mean`) or, per pixel, whichever colour gradient is stronger (`mixed`); the mean colour,
    which gradients leave free, is weight * mean(A) + (1 - weight) * mean(B) in `mean` mode
    (so the result is the plain blend) and (mean(A) + mean(B)) / 2 in `mixed` mode. The whole
    image is one Poisson problem, so it is solved in one piece rather than through tiles
    (tiles would each get their own mean).
    """
    first, second = images
    if second.shape[:2] != first.shape[:2]:
        second = resize(second, *first.shape[:2])
    mixed = options["mode"] == "mixed"
    solved = poisson_merge(first, second, weight=options["weight"], mixed=mixed)
    if options["method"] == "siren":
        solved = merge_with_siren(first, second, solved, options=options, context=context)
    return np.clip(solved, 0.0, 1.0, out=solved)


def merge_with_siren(a: np.ndarray, b: np.ndarray, exact: np.ndarray, *,
                     options: dict[str, Any], context: Context) -> np.ndarray:
    """Return the merge as a SIREN grid fitted to the combined gradient field (gradient
    supervision, the SIREN paper's composition experiment), rendered through ONNX Runtime.

    Each tile's mean comes from the exact solve (gradients leave it free); the fit stops at
    `steps` or once it is within 40 dB of the exact solve.
    """
    from dataclasses import replace

    from imgproc_plugins import siren

    gx, gy = target_field(a, b, weight=options["weight"], mixed=options["mode"] == "mixed")
    config = replace(siren.SirenConfig(), steps=options["steps"], seed=options["seed"],
                     target_psnr=40.0)
    layout = siren.Layout.for_image(a.shape[0], a.shape[1], config.tile, config.overlap)
    loss = siren.gradient_objective(gx, gy, exact, layout, config.pixels_per_unit)
    fit = siren.fit_image(exact, config, loss=loss)
    session = context.transient_session("merge-siren", siren.to_onnx(fit).SerializeToString())
    return siren.render(lambda c: session.run({siren.ONNX_INPUT: c})[0], fit.layout,
                        a.shape[0], a.shape[1], pixels_per_unit=config.pixels_per_unit)


def _validate(options: dict[str, Any]) -> None:
    if options["method"] == "siren":
        require_torch()


@hookimpl
def imgproc_processors() -> list[Processor]:
    """Return the merge processor."""
    return [Processor(
        name="merge",
        summary="Merge two images in the gradient domain (Poisson).",
        process=merge,
        inputs=2,
        options=(
            Option("mode", str, "mean", "mean: weighted mean of the gradients; mixed: per "
                   "pixel the stronger gradient", choices=MODES),
            Option("weight", float, 0.5, "weight of A in mean mode (ignored by mixed)",
                   min=0.0, max=1.0),
            Option("with", str, None, "merge every input with this one image file",
                   image=True),
            Option("method", str, "exact", "exact: the DCT Poisson solve; siren: a SIREN "
                   "fitted to the gradient field", choices=METHODS),
            Option("steps", int, 300, "most fit steps with method=siren", min=1),
            Option("seed", int, 0, "SIREN initialisation seed with method=siren"),
        ),
        validate=_validate,
    )]
