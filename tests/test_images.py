"""Reading every kind of input, carrying metadata and alpha, refusing bad files, atomic writes."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from imgproc.errors import ImageError
from imgproc.images import TEMP_SUFFIX, Picture, read_image, write_atomic, write_image

LIMIT = 10_000_000


@pytest.mark.parametrize(("mode", "alpha"), [
    ("RGB", False), ("RGBA", True), ("L", False), ("LA", True), ("1", False),
    ("P", False), ("CMYK", False), ("I;16", False), ("I", False), ("F", False),
], ids=str)
def test_every_mode_reads_as_float_rgb(tmp_path: Path, mode: str, alpha: bool) -> None:
    source = Image.fromarray(np.arange(12 * 20 * 3, dtype=np.uint8).reshape(12, 20, 3))
    img = source.convert(mode) if mode not in ("I;16", "I", "F") else _wide(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16", "I", "F") else "x.png")
    img.save(path)
    picture = read_image(path, max_pixels=LIMIT)
    assert picture.pixels.dtype == np.float32
    assert picture.pixels.shape == (12, 20, 3)
    assert picture.pixels.min() >= 0.0 and picture.pixels.max() <= 1.0
    assert (picture.alpha is not None) == alpha


def _wide(mode: str) -> Image.Image:
    ramp = np.linspace(0, 65535, 12 * 20).reshape(12, 20)
    if mode == "F":
        return Image.fromarray((ramp / 65535).astype(np.float32), mode="F")
    return Image.fromarray(ramp.astype(np.uint16 if mode == "I;16" else np.int32))


def test_sixteen_bit_keeps_precision(tmp_path: Path) -> None:
    ramp = (np.arange(400) * 163).astype(np.uint16).reshape(20, 20)  # 400 distinct levels
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    picture = read_image(tmp_path / "deep.png", max_pixels=LIMIT)
    assert np.abs(picture.pixels[:, :, 0] - ramp / 65535).max() < 1e-6
    assert len(np.unique(picture.pixels)) > 256  # more levels than 8 bits hold


def test_palette_transparency_becomes_alpha(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 4, 8))
    img.save(tmp_path / "p.png", transparency=0)
    picture = read_image(tmp_path / "p.png", max_pixels=LIMIT)
    assert picture.alpha is not None
    assert picture.alpha[:, :4].min() == 1.0 and picture.alpha[:, 4:].max() == 0.0


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x013B] = "imgproc test"  # Artist
    return exif


def test_exif_orientation_is_applied_and_reset(tmp_path: Path) -> None:
    wide = np.zeros((10, 30, 3), dtype=np.uint8)
    wide[:, :5] = 255  # a white band on the left edge
    Image.fromarray(wide).save(tmp_path / "o.jpg", exif=_exif(6))  # 6 = rotate 90 CW to view
    picture = read_image(tmp_path / "o.jpg", max_pixels=LIMIT)
    assert picture.pixels.shape[:2] == (30, 10)
    assert picture.pixels[:5].mean() > 0.9  # the band is now on top
    exif = Image.Exif()
    exif.load(picture.exif)
    assert exif.get(0x0112, 1) == 1 and exif[0x013B] == "imgproc test"


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tiff"])
def test_exif_and_icc_reach_the_output(tmp_path: Path, suffix: str) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (9, 7), (200, 100, 50)).save(tmp_path / "in.png", exif=_exif(1),
                                                   icc_profile=icc)
    picture = read_image(tmp_path / "in.png", max_pixels=LIMIT)
    write_image(tmp_path / f"out{suffix}", picture)
    with Image.open(tmp_path / f"out{suffix}") as out:
        assert out.info.get("icc_profile") == icc
        assert out.getexif()[0x013B] == "imgproc test"


def test_alpha_is_resized_to_the_output(tmp_path: Path) -> None:
    alpha = np.zeros((4, 6), dtype=np.float32)
    alpha[:, 3:] = 1.0
    picture = Picture(np.full((8, 12, 3), 0.5, dtype=np.float32), alpha)
    write_image(tmp_path / "big.png", picture)
    with Image.open(tmp_path / "big.png") as out:
        assert out.mode == "RGBA" and out.size == (12, 8)
        channel = np.asarray(out.getchannel("A"))
        assert channel[:, :4].max() < 30 and channel[:, -4:].min() > 225


def test_alpha_is_flattened_onto_white_for_jpeg(tmp_path: Path) -> None:
    picture = Picture(np.zeros((4, 4, 3), dtype=np.float32), np.zeros((4, 4), np.float32))
    notes = write_image(tmp_path / "flat.jpg", picture)
    assert "flattened" in notes[0]
    with Image.open(tmp_path / "flat.jpg") as out:
        assert out.mode == "RGB" and np.asarray(out).min() > 240


def test_grey_output_stays_one_channel(tmp_path: Path) -> None:
    write_image(tmp_path / "g.png", Picture(np.full((5, 5, 1), 0.25, dtype=np.float32)))
    with Image.open(tmp_path / "g.png") as out:
        assert out.mode == "L" and np.asarray(out).max() == 64


@pytest.mark.parametrize("rows", [1, 255, 256, 257, 600])  # around the 256-row conversion block
def test_floats_become_rounded_clipped_bytes(tmp_path: Path, rows: int) -> None:
    pixels = np.random.default_rng(rows).random((rows, 7, 3), dtype=np.float32) * 1.4 - 0.2
    pixels[0, 0] = [np.nan, np.inf, -np.inf]
    before = pixels.copy()
    write_image(tmp_path / "f.png", Picture(pixels))
    with Image.open(tmp_path / "f.png") as out:
        got = np.asarray(out)
    expected = np.round(np.clip(np.nan_to_num(before), 0.0, 1.0) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0].tolist() == [0, 255, 0]
    np.testing.assert_array_equal(pixels, before)  # the caller's array is not changed


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero bytes": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated jpeg": (_truncated_jpeg, "truncated or corrupt"),
    "not an image": (lambda p: p.write_text("hello, not pixels"), "not an image"),
    "directory named like an image": (lambda p: p.mkdir(), "is a directory"),
    "broken symlink": (lambda p: p.symlink_to(p.parent / "missing.png"), "broken symlink"),
    "missing": (lambda p: None, "file not found"),
    "named pipe": (lambda p: os.mkfifo(p), "not a regular file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_get_a_clear_reason(tmp_path: Path, case: str) -> None:
    make, reason = BAD_INPUTS[case]
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageError, match=reason) as info:
        read_image(path, max_pixels=LIMIT)
    assert info.value.path == path and "\n" not in str(info.value)


def test_decompression_bomb_limit_names_the_setting(tmp_path: Path) -> None:
    Image.new("L", (200, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"200x100 = 20,000 pixels .*max_image_pixels"):
        read_image(tmp_path / "big.png", max_pixels=19_999)


def test_unreadable_file_reports_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions do not stop reads (test_cli covers it in a "
                    "subprocess without the read-override capability)")
    with pytest.raises(ImageError, match="permission denied"):
        read_image(path, max_pixels=LIMIT)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"previous complete output")

    def crash(fh: io.BufferedWriter) -> None:
        fh.write(b"half an image")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(target, crash)
    assert target.read_bytes() == b"previous complete output"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_atomic_write_uses_a_hidden_temporary_name(tmp_path: Path) -> None:
    seen: list[str] = []
    write_atomic(tmp_path / "a.png", lambda fh: seen.extend(os.listdir(tmp_path)))
    assert len(seen) == 1 and seen[0].startswith(".a.png.") and seen[0].endswith(TEMP_SUFFIX)
    assert os.listdir(tmp_path) == ["a.png"]
