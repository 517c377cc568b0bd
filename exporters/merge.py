"""The float64 SciPy reference of the Poisson merge, and the measures that tests, the
benchmark and docs use to check the plugin's solver (`imgproc_plugins.poisson`) against it.

The reference is written independently of the plugin (whole-image float64 arrays, SciPy's
`dctn`), so agreement between the two means something. Until issue 18 the merge solver was an
ONNX graph exported from here (`merge-poisson.onnx`, DCTs as matrix products); the FFT solve
that replaced it is 5x faster at 12 MP and peaks at a third of the memory (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

from imgproc_plugins.poisson import Field
from imgproc_plugins.poisson import divergence as np_divergence
from imgproc_plugins.poisson import gradients as np_gradients


def target_field(a: np.ndarray, b: np.ndarray, *, weight: float, mixed: bool) -> Field:
    """Return the combined gradient field of H x W x 3 images as the merge defines it
    (the reference's own code: all channels at once, no masks reused)."""
    (ax, ay), (bx, by) = np_gradients(a), np_gradients(b)
    if not mixed:
        return weight * ax + (1 - weight) * bx, weight * ay + (1 - weight) * by
    take_a = (ax**2 + ay**2).sum(axis=2, keepdims=True) >= (bx**2 + by**2).sum(axis=2,
                                                                                keepdims=True)
    return np.where(take_a, ax, bx), np.where(take_a, ay, by)


def reference_merge(a: np.ndarray, b: np.ndarray, *, weight: float, mixed: bool) -> np.ndarray:
    """Return the float64 H x W x 3 Poisson merge of same-size images, solved with scipy DCTs."""
    from scipy.fft import dctn, idctn  # scipy is only needed for the reference

    a, b = a.astype(np.float64), b.astype(np.float64)
    div = np_divergence(target_field(a, b, weight=weight, mixed=mixed))
    height, width = a.shape[:2]
    eig = (2 - 2 * np.cos(np.pi * np.arange(height) / height))[:, None] \
        + (2 - 2 * np.cos(np.pi * np.arange(width) / width))[None, :]
    spectrum = dctn(div, type=2, norm="ortho", axes=(0, 1))
    eig[0, 0] = 1.0  # the constant mode: spectrum[0, 0] is 0 for a divergence
    solved = -spectrum / eig[:, :, None]
    solved[0, 0] = 0.0
    share = 0.5 if mixed else weight
    mean = share * a.mean(axis=(0, 1)) + (1 - share) * b.mean(axis=(0, 1))
    return idctn(solved, type=2, norm="ortho", axes=(0, 1)) + mean


def gradient_residual(u: np.ndarray, field: Field) -> float:
    """Return ||grad u - g|| / ||g|| (0 when both vanish), in float64."""
    ux, uy = np_gradients(u.astype(np.float64))
    gx, gy = (f.astype(np.float64) for f in field)
    return _relative(np.sqrt(np.sum((ux - gx) ** 2) + np.sum((uy - gy) ** 2)),
                     np.sqrt(np.sum(gx**2) + np.sum(gy**2)))


def normal_residual(u: np.ndarray, field: Field) -> float:
    """Return ||div grad u - div g|| / ||div g||: the least-squares optimality of u, in float64."""
    target = np_divergence(tuple(f.astype(np.float64) for f in field))  # type: ignore[arg-type]
    achieved = np_divergence(np_gradients(u.astype(np.float64)))
    return _relative(float(np.linalg.norm(achieved - target)), float(np.linalg.norm(target)))


def _relative(error: float, scale: float) -> float:
    """Return error / scale, or the bare error when the scale is 0 (a flat field)."""
    return float(error / scale) if scale > 0 else float(error)
