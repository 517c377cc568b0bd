"""Image I/O with Pillow: read common files into float RGB, alpha and metadata; write atomically."""

from __future__ import annotations

import io
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from imgproc.errors import ImageError

# Pillow's own bomb check is global and fires before we can name the file and the limit:
# we check the header size against the configured limit ourselves instead.
Image.MAX_IMAGE_PIXELS = None

SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
FORMAT_SUFFIXES = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
_EXIF_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF"}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF", "BMP"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
TEMP_SUFFIX = ".imgproc-tmp"


@dataclass
class Picture:
    """An image as the host hands it to processors: float32 RGB in [0, 1] plus what to carry."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    exif: bytes | None = None
    icc: bytes | None = None
    mode: str = "RGB"


def output_suffix(input_path: Path, fmt: str) -> str:
    """Return the output file suffix for `--format fmt` (same keeps the input's suffix)."""
    if fmt != "same":
        return FORMAT_SUFFIXES[fmt]
    suffix = input_path.suffix
    return suffix if suffix.lower() in SUFFIX_FORMATS else ".png"


def read_image(path: Path, *, max_pixels: int) -> Picture:
    """Return the image at `path`, upright (EXIF orientation applied), split into RGB and alpha."""
    _check_file(path)
    try:
        with Image.open(path) as img:
            _check_size(path, img, max_pixels)
            img.load()
            return _to_picture(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (no known image format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(path, f"truncated or corrupt image data ({exc})") from None


def write_image(path: Path, picture: Picture, *, jpeg_quality: int = 95,
                webp_quality: int = 95) -> list[str]:
    """Write `picture` to `path` atomically (format from the suffix); return notes on changes."""
    fmt = SUFFIX_FORMATS.get(path.suffix.lower(), "PNG")
    img, notes = _to_pil(picture, fmt)
    params: dict[str, Any] = {"format": fmt}
    if fmt == "JPEG":
        params.update(quality=jpeg_quality, subsampling=0 if jpeg_quality >= 90 else 2)
    elif fmt == "WEBP":
        params.update(quality=webp_quality)
    if picture.exif and fmt in _EXIF_FORMATS:
        params["exif"] = picture.exif
    if picture.icc and _icc_matches(picture.icc, img.mode):
        params["icc_profile"] = picture.icc
    write_atomic(path, lambda fh: img.save(fh, **params))
    return notes


def write_atomic(path: Path, save: Callable[[IO[bytes]], None]) -> None:
    """Write a file through a hidden temporary name in its folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            save(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise ImageError(path, "broken symlink")
    if path.is_dir():
        raise ImageError(path, "is a directory, not an image file")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(path, "not a regular file (device, socket or pipe)")  # would block
    if info.st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ImageError(path, "permission denied")


def _check_size(path: Path, img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(path, f"{width}x{height} = {width * height:,} pixels is above the "
                         f"limit of {max_pixels:,} (runtime.max_image_pixels)")


def _to_picture(img: Image.Image) -> Picture:
    exif = img.getexif().tobytes() if img.getexif() else None
    icc = img.info.get("icc_profile") or None
    mode = img.mode
    if mode == "CMYK":
        return Picture(_array(_cmyk_to_rgb(img, icc)), None, exif, None, mode)
    alpha = None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        img = rgba.convert("RGB")
    return Picture(_array(img), alpha, exif, icc, mode)


def _array(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT:
        grey = np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
    elif img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    else:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return np.repeat(grey[:, :, None], 3, axis=2)


def _cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        # A CMYK file's profile describes ink, not screen colour: convert through it to sRGB.
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"),
                                              outputMode="RGB")
        if converted is not None:
            return converted
    return img.convert("RGB")


def _to_pil(picture: Picture, fmt: str) -> tuple[Image.Image, list[str]]:
    pixels = picture.pixels
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    img = Image.fromarray(_to_uint8(pixels))
    if picture.alpha is None:
        return img, []
    alpha = Image.fromarray(_to_uint8(picture.alpha)).resize(img.size, Image.Resampling.BICUBIC)
    if fmt not in _ALPHA_FORMATS:
        white = Image.new(img.mode, img.size, "white")
        return Image.composite(img, white, alpha), [f"alpha flattened onto white: {fmt} has none"]
    img.putalpha(alpha)
    return img, []


_ROWS_PER_BLOCK = 256  # float temporaries of one block, not of the whole (maybe 192 MP) image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Return [0, 1] floats as rounded uint8 (NaN -> 0, out of range clipped), converting a block
    of rows at a time: a 16000x12000 RGB output needs 0.6 GB here, not three 2.3 GB temporaries."""
    out = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, array.shape[0], _ROWS_PER_BLOCK):
        block = np.nan_to_num(array[start:start + _ROWS_PER_BLOCK], copy=True)
        np.clip(block, 0.0, 1.0, out=block)
        block *= 255.0
        block += 0.5
        out[start:start + _ROWS_PER_BLOCK] = block  # the cast truncates: +0.5 makes it round
    return out


def _icc_matches(icc: bytes, mode: str) -> bool:
    # Bytes 16-20 of an ICC header name its colour space; a grey profile on RGB pixels is wrong.
    space = icc[16:20]
    return space == (b"GRAY" if mode in ("L", "LA") else b"RGB ")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask() is process-wide, not safe to toggle per thread
