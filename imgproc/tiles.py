"""Tiled processing: run an image function over overlapping tiles and blend them without seams."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral

import numpy as np

# One axis of the tile grid: (input start, input size, output weights along that axis).
AxisTile = tuple[int, int, np.ndarray]


def process_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    scale: int = 1,
    tile: int = 512,
    overlap: int = 32,
) -> np.ndarray:
    """Return fn(image) computed over overlapping tiles blended without seams."""
    _validate(image, scale, tile, overlap)
    height, width = image.shape[:2]
    if height <= tile and width <= tile:
        return fn(image)
    rows, row_sum = _axis(height, tile, overlap, scale)
    cols, col_sum = _axis(width, tile, overlap, scale)
    out = _accumulate(fn, image, rows, cols, scale)
    # The 2-D weight is an outer product over a full grid, so its sum is the outer product
    # of the per-axis sums: normalise in place instead of keeping an output-sized weight map.
    out /= row_sum[:, None, None]
    out /= col_sum[None, :, None]
    return out


def _validate(image: np.ndarray, scale: int, tile: int, overlap: int) -> None:
    """Return None; raise ValueError naming the first bad argument."""
    if image.ndim != 3:
        raise ValueError(f"image must be H x W x C, got shape {image.shape}")
    for name, value in (("scale", scale), ("tile", tile), ("overlap", overlap)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if overlap < 0 or 2 * overlap >= tile:
        raise ValueError(f"overlap must satisfy 0 <= overlap and 2*overlap < tile, "
                         f"got overlap={overlap}, tile={tile}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Return the start offsets of tiles covering [0, length) along one axis."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    # The last tile is shifted back to end at the border so it stays full-size (no padding).
    return [*starts, length - tile]


def _rise(n: int) -> np.ndarray:
    """Return n raised-cosine samples rising from near 0 to near 1, never reaching either."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    # Sampled at pixel centres, a rise and the mirrored fall sum to exactly 1 when aligned.
    return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _ramp(size: int, lead: int, trail: int) -> np.ndarray:
    """Return 1-D weights of length size: 1 inside, ramping over lead/trail samples at the ends."""
    weights = np.ones(size, dtype=np.float32)
    if lead:
        weights[:lead] = _rise(lead)
    if trail:
        weights[size - trail:] = _rise(trail)[::-1]
    return weights


def _axis(length: int, tile: int, overlap: int, scale: int) -> tuple[list[AxisTile], np.ndarray]:
    """Return the tiles along one axis and the summed output weight at each output position."""
    tiles: list[AxisTile] = []
    total = np.zeros(length * scale, dtype=np.float32)
    ramp = overlap * scale
    for start in tile_starts(length, tile, overlap):
        size = min(tile, length)
        # Image borders keep full weight: nothing on the other side to hand over to.
        weights = _ramp(size * scale, ramp if start > 0 else 0,
                        ramp if start + size < length else 0)
        total[start * scale:(start + size) * scale] += weights
        tiles.append((start, size, weights))
    return tiles, total


def _accumulate(
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    rows: list[AxisTile],
    cols: list[AxisTile],
    scale: int,
) -> np.ndarray:
    """Return the weighted sum of fn over every tile, allocated once fn's channels are known."""
    out: np.ndarray | None = None
    for y, h, wy in rows:
        for x, w, wx in cols:
            # Contiguous input: model runtimes (onnxruntime, torch) copy or reject strided views.
            result = np.asarray(fn(np.ascontiguousarray(image[y:y + h, x:x + w])), np.float32)
            if out is None:
                out = np.zeros((image.shape[0] * scale, image.shape[1] * scale, result.shape[-1]),
                               dtype=np.float32)
            _check_result(result, (h * scale, w * scale, out.shape[2]))
            out[y * scale:(y + h) * scale, x * scale:(x + w) * scale] += (
                result * np.outer(wy, wx)[:, :, None])
    assert out is not None  # _axis always yields at least one tile per axis
    return out


def _check_result(result: np.ndarray, expected: tuple[int, int, int]) -> None:
    """Return None; raise ValueError when fn's output does not have the expected shape."""
    if result.shape != expected:
        raise ValueError(f"fn returned shape {result.shape} for a tile, expected {expected} "
                         "(h*scale x w*scale x the channel count of its first result)")
