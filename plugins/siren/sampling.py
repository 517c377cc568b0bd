"""Sampling a fitted tile grid on any output grid: per-tile blocks blended without seams."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgproc_plugins.siren.network import Layout


@dataclass(frozen=True)
class Block:
    """The output pixels one tile renders: rows r0:r1, columns c0:c1, and their blend weights."""

    r0: int
    r1: int
    c0: int
    c1: int
    weight: np.ndarray  # (r1 - r0) x (c1 - c0)


def output_blocks(layout: Layout, out_h: int, out_w: int) -> list[Block]:
    """Return, per tile, the output pixels whose centres fall inside it, with blend weights."""
    blocks = []
    for y0, x0, th, tw in layout.tiles:
        rows, wy = _axis(y0, th, layout.height, out_h)
        cols, wx = _axis(x0, tw, layout.width, out_w)
        blocks.append(Block(rows[0], rows[1], cols[0], cols[1], np.outer(wy, wx)))
    return blocks


def _axis(start: int, size: int, length: int, out_len: int) -> tuple[tuple[int, int], np.ndarray]:
    # Output pixel j has its centre at X = (j + 0.5) * length / out_len on the input plane.
    first = math.ceil(start * out_len / length - 0.5)
    last = math.ceil((start + size) * out_len / length - 0.5)
    first, last = max(first, 0), min(last, out_len)
    centres = (np.arange(first, last) + 0.5) * length / out_len
    # Weight ramps down towards a tile edge that has a neighbour, never at the image border.
    to_start = centres - start if start > 0 else np.inf
    to_end = start + size - centres if start + size < length else np.inf
    ramp = np.minimum(to_start, to_end) / max(size / 4, 1)
    return (first, last), np.clip(ramp, 1e-3, 1.0).astype(np.float32)


def block_coords(layout: Layout, blocks: list[Block], out_h: int, out_w: int,
                 pixels_per_unit: float) -> tuple[np.ndarray, int]:
    """Return tile-local coords [tiles, points, 2] of every block (zero-padded) and points."""
    points = max((b.r1 - b.r0) * (b.c1 - b.c0) for b in blocks)
    coords = np.zeros((len(blocks), max(points, 1), 2), dtype=np.float32)
    for i, ((y0, x0, th, tw), b) in enumerate(zip(layout.tiles, blocks, strict=True)):
        ys = ((np.arange(b.r0, b.r1) + 0.5) * layout.height / out_h - y0 - th / 2)
        xs = ((np.arange(b.c0, b.c1) + 0.5) * layout.width / out_w - x0 - tw / 2)
        ys, xs = ys / pixels_per_unit, xs / pixels_per_unit
        grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(-1, 2)
        coords[i, : len(grid)] = grid
    return coords, points


def blend(values: np.ndarray, blocks: list[Block], out_h: int, out_w: int) -> np.ndarray:
    """Return the H x W x C image from per-tile block values [tiles, points, C], blended."""
    channels = values.shape[2]
    out = np.zeros((out_h, out_w, channels), dtype=np.float32)
    total = np.zeros((out_h, out_w, 1), dtype=np.float32)
    for i, b in enumerate(blocks):
        h, w = b.r1 - b.r0, b.c1 - b.c0
        tile_values = values[i, : h * w].reshape(h, w, channels)
        out[b.r0:b.r1, b.c0:b.c1] += tile_values * b.weight[..., None]
        total[b.r0:b.r1, b.c0:b.c1] += b.weight[..., None]
    return out / np.maximum(total, 1e-12)


def render(run: Callable[[np.ndarray], np.ndarray], layout: Layout, out_h: int, out_w: int, *,
           pixels_per_unit: float, chunk: int = 4096) -> np.ndarray:
    """Return the fitted image sampled on an out_h x out_w grid; `run` maps coords to values
    (ONNX Runtime or PyTorch), called on chunks of points so memory stays bounded."""
    blocks = output_blocks(layout, out_h, out_w)
    coords, points = block_coords(layout, blocks, out_h, out_w, pixels_per_unit)
    values = np.concatenate([run(np.ascontiguousarray(coords[:, i:i + chunk]))
                             for i in range(0, coords.shape[1], chunk)], axis=1)
    return blend(values, blocks, out_h, out_w)
