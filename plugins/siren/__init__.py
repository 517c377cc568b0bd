"""SIREN (Sitzmann et al. 2020) fitted to an image as a grid of small networks trained together.

One network over a large image is impractical (the research notes): instead the image is cut
into overlapping tiles and each tile gets a small SIREN f(u, v) -> values; all tile networks are
one batched model (weights [tiles, fan_in, fan_out]), either trained together by Adam or (the
ridge solver) sharing their sine layers, a learned basis, with each tile's linear output layer
solved in closed form. Coordinates are tile-local; pixel i covers [i, i + 1) and is sampled at
its centre, so any output grid maps onto the same continuous image plane and scale 1
reproduces the input.

The modules: `network` (settings, layout, the batched model), `fit` (fitting), `learned` (the
learned initialisation and basis), `sampling` (rendering any output grid), `onnx_io` (the fitted
network as an ONNX graph). refit and merge's method=siren use it; it needs PyTorch.
"""

from __future__ import annotations

from imgproc_plugins.siren.fit import Fit, fit_image, gradient_objective, pixel_coords
from imgproc_plugins.siren.network import Layout, SirenConfig, TiledSiren
from imgproc_plugins.siren.onnx_io import (
    ONNX_INPUT,
    ONNX_OUTPUT,
    read_network,
    stored_fit,
    to_onnx,
)
from imgproc_plugins.siren.sampling import render

__all__ = ["ONNX_INPUT", "ONNX_OUTPUT", "Fit", "Layout", "SirenConfig", "TiledSiren",
           "fit_image", "gradient_objective", "pixel_coords", "read_network", "render",
           "stored_fit", "to_onnx"]
