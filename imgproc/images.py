"""Image I/O with Pillow: read common files into float RGB, alpha and metadata; write atomically."""

from __future__ import annotations

import errno
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

from imgproc.errors import ImageError, OutputError, TransientError

# Pillow's own bomb check is global and fires before we can name the file and the limit:
# we check the header size against the configured limit ourselves instead.
Image.MAX_IMAGE_PIXELS = None

SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
FORMAT_SUFFIXES = {"png": ".png", "jpg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
_EXIF_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF"}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF", "BMP"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_DEEP_FORMATS = {"PNG", "TIFF"}  # formats Pillow writes 16-bit grey to
TEMP_SUFFIX = ".imgproc-tmp"
# The environment failing, not the file or its output path: retried later, never the input's fault.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM,
                              errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ESTALE,
                              errno.ENFILE, errno.EMFILE})


@dataclass
class Picture:
    """An image as the host hands it to processors: float32 RGB in [0, 1] plus what to carry."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    exif: bytes | None = None
    icc: bytes | None = None
    depth: int = 8  # bits per channel of the source: 16-bit grey is written back as 16 bits


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
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            raise TransientError(path, f"cannot read: {exc.strerror}") from None
        raise ImageError(path, f"truncated or corrupt image data ({exc})") from None
    except (SyntaxError, ValueError) as exc:
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
    """Write a file through a hidden temporary name in its folder, then rename it into place.

    Raises OutputError when the path is blocked (a folder or file in the way, permission denied)
    and TransientError when the environment fails (disk full, I/O error, read-only file system).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_fault(path, exc, f"cannot create its folder {path.parent}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _write_fault(path, exc, f"cannot write in {path.parent}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            save(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise _write_fault(path, exc, "cannot write") from None
        raise


def _write_fault(path: Path, exc: OSError, doing: str) -> ImageError:
    if exc.errno in TRANSIENT_ERRNOS:
        return TransientError(path, f"{doing}: {exc.strerror} (will retry)")
    if exc.errno == errno.EISDIR or (exc.errno == errno.EEXIST and path.is_dir()):
        return OutputError(path, "output path is a directory")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return OutputError(path, f"{doing}: a file is in the way")
    return OutputError(path, f"{doing}: {exc.strerror or exc}")


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
        return Picture(_array(_cmyk_to_rgb(img, icc)), None, exif, None)
    alpha = None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        img = rgba.convert("RGB")
    depth = 16 if mode in _SIXTEEN_BIT else 8
    return Picture(_array(img), alpha, exif, icc, depth)


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
    if picture.depth == 16 and picture.alpha is None and fmt in _DEEP_FORMATS:
        grey = _grey(pixels)
        if grey is not None:
            return Image.fromarray(_to_uint(grey, np.uint16)), []
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


_GREY_TOLERANCE = 0.5 / 255  # channels closer than half an 8-bit step: a grey image


def _grey(pixels: np.ndarray) -> np.ndarray | None:
    """Return the one grey channel of H x W x 1|3 pixels, or None if they hold colour (a network
    run on a grey image returns three channels that differ by rounding only: still grey)."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return pixels[:, :, 0]
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    lowest, highest = pixels.min(axis=2), pixels.max(axis=2)
    if float(np.max(highest - lowest, initial=0.0)) > _GREY_TOLERANCE:
        return None
    return pixels.mean(axis=2, dtype=np.float32)


_ROWS_PER_BLOCK = 256  # float temporaries of one block, not of the whole (maybe 192 MP) image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Return [0, 1] floats as rounded uint8 (NaN -> 0, out of range clipped)."""
    return _to_uint(array, np.uint8)


def _to_uint(array: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Return [0, 1] floats as rounded unsigned integers of `dtype` (NaN -> 0, out of range
    clipped), converting a block of rows at a time: a 16000x12000 RGB output needs 0.6 GB here,
    not three 2.3 GB temporaries."""
    top = float(np.iinfo(dtype).max)
    out = np.empty(array.shape, dtype=dtype)
    for start in range(0, array.shape[0], _ROWS_PER_BLOCK):
        block = np.nan_to_num(array[start:start + _ROWS_PER_BLOCK], copy=True)
        np.clip(block, 0.0, 1.0, out=block)
        block *= top
        block += 0.5
        out[start:start + _ROWS_PER_BLOCK] = block  # the cast truncates: +0.5 makes it round
    return out


def _icc_matches(icc: bytes, mode: str) -> bool:
    # Bytes 16-20 of an ICC header name its colour space; a grey profile on RGB pixels is wrong.
    space = icc[16:20]
    return space == (b"GRAY" if mode in ("L", "LA", "I;16") else b"RGB ")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask() is process-wide, not safe to toggle per thread
