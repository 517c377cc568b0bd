"""Sampling a fitted tile grid on any output grid: per-tile blocks blended without seams."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
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


@functools.lru_cache(maxsize=4096)
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


@functools.lru_cache(maxsize=4096)
def _local(first: int, last: int, start: int, size: int, length: int, out_len: int,
           pixels_per_unit: float) -> np.ndarray:
    """Return the tile-local coordinates of output pixels first..last-1 along one axis."""
    centres = (np.arange(first, last) + 0.5) * length / out_len
    return ((centres - start - size / 2) / pixels_per_unit).astype(np.float32)


def _tile_axes(layout: Layout, blocks: list[Block], out_h: int, out_w: int,
               pixels_per_unit: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield each block's tile-local x and y coordinates."""
    for (y0, x0, th, tw), b in zip(layout.tiles, blocks, strict=True):
        yield (_local(b.c0, b.c1, x0, tw, layout.width, out_w, pixels_per_unit),
               _local(b.r0, b.r1, y0, th, layout.height, out_h, pixels_per_unit))


def _stacked(grids: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Return the (x, y) grids as coords [grids, points, 2], zero-padded to the largest."""
    points = max(len(xs) * len(ys) for xs, ys in grids)
    coords = np.zeros((len(grids), max(points, 1), 2), dtype=np.float32)
    for i, (xs, ys) in enumerate(grids):
        coords[i, : len(xs) * len(ys)] = np.stack(np.meshgrid(xs, ys, indexing="xy"),
                                                  axis=-1).reshape(-1, 2)
    return coords


def block_coords(layout: Layout, blocks: list[Block], out_h: int, out_w: int,
                 pixels_per_unit: float) -> np.ndarray:
    """Return tile-local coords [tiles, points, 2] of every block (zero-padded)."""
    return _stacked(list(_tile_axes(layout, blocks, out_h, out_w, pixels_per_unit)))


def coordinate_sets(layout: Layout, blocks: list[Block], out_h: int, out_w: int,
                    pixels_per_unit: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct tile-local coordinate sets of the blocks [sets, points, 2] and,
    per tile, the index of its set."""
    found: dict[tuple[bytes, bytes], int] = {}
    grids, which = [], np.empty(len(blocks), dtype=np.int64)
    for i, (xs, ys) in enumerate(_tile_axes(layout, blocks, out_h, out_w, pixels_per_unit)):
        key = (xs.tobytes(), ys.tobytes())
        if key not in found:
            found[key] = len(grids)
            grids.append((xs, ys))
        which[i] = found[key]
    return _stacked(grids), which


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
           pixels_per_unit: float, points: int = 1 << 16, shared: bool = False) -> np.ndarray:
    """Return the fitted image sampled on an out_h x out_w grid; `run` maps coords to values
    (ONNX Runtime or PyTorch), called on about `points` points at a time (the same share of
    every tile's), so memory stays bounded however many tiles there are.

    `shared`: the tile networks share their sine layers (the ridge solver), and `run` accepts
    one coordinate set [1, points, 2] for all tiles. Tiles whose output pixels sit alike (all
    of them at scales that map the tile grid onto whole output pixels, bar the last row and
    column) are then evaluated together: their features once, only the output layer per tile.
    """
    blocks = output_blocks(layout, out_h, out_w)
    if shared:
        sets, which = coordinate_sets(layout, blocks, out_h, out_w, pixels_per_unit)
        if len(sets) <= MAX_SHARED_SETS:
            return blend(_render_sets(run, sets, which, points), blocks, out_h, out_w)
    coords = block_coords(layout, blocks, out_h, out_w, pixels_per_unit)
    chunk = max(1, points // len(blocks))
    values = np.concatenate([run(np.ascontiguousarray(coords[:, i:i + chunk]))
                             for i in range(0, coords.shape[1], chunk)], axis=1)
    return blend(values, blocks, out_h, out_w)


# Each set costs every tile's output layer on its points: a handful is cheap next to the
# features of every tile (256 per point), many are not.
MAX_SHARED_SETS = 8


def _render_sets(run: Callable[[np.ndarray], np.ndarray], sets: np.ndarray, which: np.ndarray,
                 points: int) -> np.ndarray:
    """Return values [tiles, points, C] running each coordinate set once for all tiles and
    keeping, per tile, the values at its own set."""
    chunk = max(1, points * 16 // len(which))  # outputs are C wide, not features wide
    parts = []
    for i in range(0, sets.shape[1], chunk):
        outs = [run(np.ascontiguousarray(one[None, i:i + chunk])) for one in sets]
        parts.append(outs[0] if len(outs) == 1 else
                     np.choose(which[:, None, None], outs))
    return np.concatenate(parts, axis=1)
