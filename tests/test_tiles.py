"""Tests for imgproc.tiles.process_tiled: exactness, tile sizes, seams and argument checks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from imgproc.tiles import process_tiled

Fn = Callable[[np.ndarray], np.ndarray]


def _image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Return a random float32 H x W x C image in [0, 1)."""
    return np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)


def _gradient(size: int = 300) -> np.ndarray:
    """Return a smooth size x size x 3 x+y ramp from 0 to 1."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    return np.repeat(((yy + xx) / (2 * size - 2))[:, :, None], 3, axis=2)


def _pointwise(scale: int) -> Fn:
    """Return a pointwise fn followed by a nearest-neighbour upscale, so tiling is exact."""
    def fn(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(x * 2 + 1, scale, axis=0), scale, axis=1)
    return fn


def _recording(fn: Fn, shapes: list[tuple[int, ...]]) -> Fn:
    """Return fn wrapped to append the shape of every array it is called with."""
    def wrapped(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return fn(x)
    return wrapped


def _box_blur(x: np.ndarray, radius: int = 2) -> np.ndarray:
    """Return x blurred by a (2r+1)^2 box with zero padding, which darkens every tile's edges."""
    height, width = x.shape[:2]
    padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)))
    out = np.zeros_like(x)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out += padded[dy:dy + height, dx:dx + width]
    return out / (2 * radius + 1) ** 2


def _tile_bias(seed: int = 1, magnitude: float = 0.01) -> Fn:
    """Return a fn adding a different small random constant per call, like per-tile model bias."""
    rng = np.random.default_rng(seed)

    def fn(x: np.ndarray) -> np.ndarray:
        return x + np.float32(rng.uniform(-magnitude, magnitude))
    return fn


def _tile_edges(length: int, tile: int, overlap: int) -> set[int]:
    """Return the positions where some tile begins or ends, derived independently of tiles.py."""
    if length <= tile:
        return set()
    starts = [*range(0, length - tile, tile - overlap), length - tile]
    return {edge for s in starts for edge in (s, s + tile)} - {0, length}


def _seam_jumps(out: np.ndarray, edges: set[int], margin: int) -> tuple[float, float]:
    """Return the largest column-to-column jump at tile edges and elsewhere, inside a margin."""
    jumps = np.abs(np.diff(out, axis=1))[margin:-margin].max(axis=(0, 2))
    # jumps[i] is between columns i and i + 1, so an edge at column e is jumps[e - 1].
    at_edge = np.zeros(jumps.shape, dtype=bool)
    at_edge[[e - 1 for e in edges]] = True
    at_edge[:margin] = at_edge[-margin:] = False
    elsewhere = ~at_edge
    elsewhere[:margin] = elsewhere[-margin:] = False
    return float(jumps[at_edge].max()), float(jumps[elsewhere].max())


SIZES = [(1, 1), (3, 7), (100, 37), (257, 513), (40, 200)]


@pytest.mark.parametrize("scale", [1, 2, 3], ids=lambda s: f"x{s}")
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pointwise_tiled_matches_untiled(size: tuple[int, int], scale: int) -> None:
    image = _image(*size)
    fn = _pointwise(scale)
    tiled = process_tiled(fn, image, scale=scale, tile=64, overlap=8)
    assert tiled.shape == (size[0] * scale, size[1] * scale, 3)
    assert tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, fn(image), atol=1e-5)


@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [((17, 5), 3, 1), ((9, 4), 1, 0), ((65, 65), 64, 31), ((300, 300), 64, 0)],
    ids=["tile3", "tile1-no-overlap", "just-over-tile", "no-overlap"],
)
def test_small_tiles_stay_exact(size: tuple[int, int], tile: int, overlap: int) -> None:
    image = _image(*size)
    tiled = process_tiled(_pointwise(2), image, scale=2, tile=tile, overlap=overlap)
    assert np.isfinite(tiled).all()
    np.testing.assert_allclose(tiled, _pointwise(2)(image), atol=1e-5)


@pytest.mark.parametrize(
    "size", [(100, 37), (257, 513), (40, 200), (65, 64), (128, 128)],
    ids=["100x37", "257x513", "wide-only", "65x64", "128x128"],
)
def test_fn_never_sees_more_than_a_tile(size: tuple[int, int]) -> None:
    shapes: list[tuple[int, ...]] = []
    process_tiled(_recording(_pointwise(1), shapes), _image(*size), tile=64, overlap=8)
    assert shapes
    # Shifting the last tile back instead of padding keeps every tile full-size.
    assert set(shapes) == {(min(size[0], 64), min(size[1], 64), 3)}


def test_large_image_goes_through_fn_in_tiles() -> None:
    # np.zeros maps lazily-zeroed pages, so the 288 MB input costs little until tiles are read.
    image = np.zeros((6000, 4000, 3), dtype=np.float32)
    shapes: list[tuple[int, ...]] = []
    out = process_tiled(_recording(lambda x: x + 1, shapes), image, tile=1024, overlap=32)
    assert set(shapes) == {(1024, 1024, 3)}
    assert len(shapes) == 7 * 4  # ceil((6000-32)/992) rows x ceil((4000-32)/992) columns
    assert out.shape == image.shape
    np.testing.assert_allclose(out[::97, ::89], 1.0, atol=1e-5)


def test_single_tile_calls_fn_once_on_whole_image() -> None:
    image = _image(64, 50)
    shapes: list[tuple[int, ...]] = []
    sentinel = np.full((128, 100, 2), 7.0, dtype=np.float32)
    fn = _recording(lambda x: sentinel, shapes)
    out = process_tiled(fn, image, scale=2, tile=64, overlap=8)
    assert shapes == [(64, 50, 3)]
    assert out is sentinel


@pytest.mark.parametrize(
    ("channels", "fn"),
    [
        (3, lambda x: x.mean(axis=2, keepdims=True)),
        (1, lambda x: np.repeat(x, 3, axis=2)),
        (4, lambda x: x[:, :, ::-1] * 0.5),
    ],
    ids=["rgb-to-gray", "gray-to-rgb", "rgba-reversed"],
)
def test_output_channels_may_differ(channels: int, fn: Fn) -> None:
    image = _image(150, 90, channels)
    tiled = process_tiled(fn, image, tile=64, overlap=8)
    expected = fn(image)
    assert tiled.shape == expected.shape
    np.testing.assert_allclose(tiled, expected, atol=1e-5)


def test_box_blur_has_no_seams_and_matches_untiled() -> None:
    image = _gradient(300)
    tiled = process_tiled(_box_blur, image, tile=64, overlap=16)
    at_edge, elsewhere = _seam_jumps(tiled, _tile_edges(300, 64, 16), margin=3)
    assert at_edge <= elsewhere
    # Overlap 16 >= blur radius 2: only the 2 zero-padded pixels at each tile edge are wrong
    # (by up to 40 %), and the raised cosine gives them weights of 0.002-0.02, hence 1e-2.
    untiled = _box_blur(image)
    np.testing.assert_allclose(tiled[3:-3, 3:-3], untiled[3:-3, 3:-3], atol=1e-2)


@pytest.mark.parametrize("overlap", [8, 16, 24], ids=lambda o: f"overlap{o}")
def test_per_tile_bias_is_blended_without_seams(overlap: int) -> None:
    tiled = process_tiled(_tile_bias(), _gradient(300), tile=64, overlap=overlap)
    at_edge, elsewhere = _seam_jumps(tiled, _tile_edges(300, 64, overlap), margin=1)
    assert at_edge <= 1.5 * elsewhere


def test_seam_check_detects_a_seam_without_overlap() -> None:
    # Guards the seam check itself: hard tile borders must be flagged.
    tiled = process_tiled(_tile_bias(), _gradient(300), tile=64, overlap=0)
    at_edge, elsewhere = _seam_jumps(tiled, _tile_edges(300, 64, 0), margin=1)
    assert at_edge > 1.5 * elsewhere


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": 0}, "scale must be a positive integer"),
        ({"scale": -2}, "scale must be a positive integer"),
        ({"scale": 1.5}, "scale must be an integer"),
        ({"tile": 0}, "tile must be >= 1"),
        ({"overlap": -1}, "overlap must satisfy"),
        ({"tile": 64, "overlap": 32}, r"2\*overlap < tile.*overlap=32, tile=64"),
    ],
    ids=["scale0", "scale-neg", "scale-float", "tile0", "overlap-neg", "overlap-too-large"],
)
def test_bad_parameters_raise(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        process_tiled(_pointwise(1), _image(8, 8), **kwargs)  # type: ignore[arg-type]


def test_image_must_have_channels() -> None:
    with pytest.raises(ValueError, match="H x W x C"):
        process_tiled(_pointwise(1), np.zeros((8, 8), dtype=np.float32))


def test_fn_returning_wrong_shape_raises() -> None:
    with pytest.raises(ValueError, match="fn returned shape"):
        process_tiled(_pointwise(1), _image(100, 100), scale=2, tile=64, overlap=8)
