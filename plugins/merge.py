"""The `merge` processor: two images combined in the gradient domain (Poisson, exact DCT solve).

The solver is the ONNX graph `models/merge-poisson.onnx` (built by `python -m exporters.merge`).
Its shape-dependent constants (orthonormal DCT-II bases and the Neumann Laplacian eigenvalues)
are built here with NumPy and fed as graph inputs, because a traced export would bake the
example size into them (docs: shared NOTES, "ONNX export bakes shapes in").
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from imgproc import ModelFile, Option, Processor, hookimpl, resize
from imgproc_plugins import require_torch

MODELS = Path(__file__).parent / "models"
MODEL = "merge-poisson"
MODES = ("mean", "mixed")
METHODS = ("exact", "siren")


@lru_cache(maxsize=4)
def dct_basis(n: int) -> np.ndarray:
    """Return the n x n orthonormal DCT-II matrix C (float32, read-only): X_hat = C @ x.

    Built in float64 and rounded once, so the float32 basis is orthonormal to ~1e-7.
    """
    k = np.arange(n, dtype=np.float64)[:, None]
    x = np.arange(n, dtype=np.float64)[None, :]
    basis = np.cos(np.pi * k * (2.0 * x + 1.0) / (2.0 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return _frozen(basis)


@lru_cache(maxsize=4)
def laplacian_eigenvalues(n: int) -> np.ndarray:
    """Return the n eigenvalues 2 - 2 cos(pi k / n) of the 1-D Neumann Laplacian (float32).

    Eigenvalue k belongs to row k of `dct_basis(n)`; the first is exactly 0 (the mean), which
    the graph uses to tell the one free constant of a Neumann problem from the rest.
    """
    return _frozen(2.0 - 2.0 * np.cos(np.pi * np.arange(n, dtype=np.float64) / n))


def _frozen(values: np.ndarray) -> np.ndarray:
    """Return `values` as a read-only float32 array (cached arrays are shared by threads)."""
    out = np.ascontiguousarray(values, dtype=np.float32)
    out.flags.writeable = False
    return out


def solver_feeds(a: np.ndarray, b: np.ndarray, *, weight: float, mixed: bool
                 ) -> dict[str, np.ndarray]:
    """Return the graph inputs for H x W x 3 images `a` and `b` of the same size."""
    height, width = a.shape[:2]
    return {
        "a": _nchw(a), "b": _nchw(b),
        "weight": np.array([weight], np.float32),
        "mixed": np.array([1.0 if mixed else 0.0], np.float32),
        "dct_h": dct_basis(height), "dct_w": dct_basis(width),
        "eig_h": laplacian_eigenvalues(height), "eig_w": laplacian_eigenvalues(width),
    }


def _nchw(image: np.ndarray) -> np.ndarray:
    """Return an H x W x 3 image as a contiguous 1 x 3 x H x W float32 array."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def merge(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Return A and B merged in the gradient domain, clipped to [0, 1] (H x W x 3 of A).

    B is resized to A's size first. The field is weight * grad A + (1 - weight) * grad B
    (`mean`) or, per pixel, whichever colour gradient is stronger (`mixed`); the mean colour,
    which gradients leave free, is weight * mean(A) + (1 - weight) * mean(B) in `mean` mode
    (so the result is the plain blend) and (mean(A) + mean(B)) / 2 in `mixed` mode (details:
    `exporters.merge.PoissonMerge`). The whole image is one Poisson problem, so it is solved
    in one piece rather than through `context.tiled` (tiles would each get their own mean);
    time and memory grow as H * W * (H + W) (DCTs as matrix products).
    """
    first, second = images
    if second.shape[:2] != first.shape[:2]:
        second = resize(second, *first.shape[:2])
    feeds = solver_feeds(first, second, weight=options["weight"],
                         mixed=options["mode"] == "mixed")
    solved = context.session(MODEL).run(feeds)[0][0].transpose(1, 2, 0)
    if options["method"] == "siren":
        solved = merge_with_siren(first, second, solved, options=options, context=context)
    return np.clip(solved, 0.0, 1.0)


def merge_with_siren(a: np.ndarray, b: np.ndarray, exact: np.ndarray, *,
                     options: dict[str, Any], context: Any) -> np.ndarray:
    """Return the merge as a SIREN grid fitted to the combined gradient field (gradient
    supervision, the SIREN paper's composition experiment), rendered through ONNX Runtime.

    Each tile's mean comes from the exact solve (gradients leave it free); the fit stops at
    `steps` or once it is within 40 dB of the exact solve.
    """
    from dataclasses import replace

    from exporters.merge import target_field
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
        models=(ModelFile.from_facts(MODELS / f"{MODEL}.json"),),
        validate=_validate,
    )]
