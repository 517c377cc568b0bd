"""Multipart uploads streamed to disk under a size cap; safe file names; formats sniffed."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from imgproc.images import SUFFIX_FORMATS
from imgproc.serve.errors import ApiError, NotAnImage, TooLarge

MAX_FIELD_BYTES = 64 * 1024  # a form field (plugin, options, format), never a file
MAX_FIELDS = 16  # text fields in one form: with MAX_FIELD_BYTES, at most 1 MiB held in memory
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 100
# Pillow format -> the suffix imgproc writes for it ("same" keeps the input's format).
FORMAT_SUFFIX = {fmt: suffix for suffix, fmt in reversed(SUFFIX_FORMATS.items())}
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
               "TIFF": "image/tiff", "BMP": "image/bmp"}


def media_type(path: Path) -> str:
    """Return the Content-Type of an image file imgproc wrote (from its suffix)."""
    return MEDIA_TYPES.get(SUFFIX_FORMATS.get(path.suffix.lower(), ""), "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    """One uploaded file, already on disk under a name the server chose."""

    field: str
    name: str  # the client's file name reduced to a safe one (never used as a path as given)
    path: Path
    size: int


@dataclass
class Form:
    """A parsed multipart form: text fields and the uploaded files, in order."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[Upload] = field(default_factory=list)

    def text(self, name: str, default: str | None = None) -> str | None:
        """Return the text field `name`, or `default` when the form has none."""
        return self.fields.get(name, default)

    def uploads(self, *names: str) -> list[Upload]:
        """Return the files sent under any of the field names `names`."""
        return [u for u in self.files if u.field in names]


def safe_name(raw: str | None, index: int) -> str:
    """Return a file name made from a client's name: its last component, in [A-Za-z0-9._-],
    never hidden, never `..`, at most 100 characters (`image-N` when nothing is left)."""
    base = re.split(r"[/\\]", raw or "")[-1]
    base = _UNSAFE.sub("_", base).lstrip(".")
    if not base.strip("._-"):
        return f"image-{index + 1}"
    if len(base) > _MAX_NAME:
        stem, dot, suffix = base.rpartition(".")
        keep = suffix[:10] if dot else ""
        base = (stem if dot else base)[: _MAX_NAME - len(keep) - 1] + (f".{keep}" if keep else "")
    return base


def unique_names(names: list[str]) -> list[str]:
    """Return `names` with repeats made unique (case-insensitively): a.png, a-2.png, a-3.png."""
    seen: set[str] = set()
    out = []
    for name in names:
        stem, dot, suffix = name.rpartition(".")
        if not dot:
            stem, suffix = name, ""
        candidate, n = name, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{stem}-{n}" + (f".{suffix}" if dot else "")
        seen.add(candidate.lower())
        out.append(candidate)
    return out


@dataclass(frozen=True)
class Sniffed:
    """What the bytes of an upload are, read from its header (nothing decoded yet)."""

    format: str
    width: int
    height: int

    @property
    def suffix(self) -> str:
        """Return the suffix imgproc gives a file of this format."""
        return FORMAT_SUFFIX.get(self.format, f".{self.format.lower()}")


def sniff(path: Path, *, max_pixels: int) -> Sniffed:
    """Return the image format and size of the file at `path`; raise NotAnImage or ApiError
    (422) naming the reason when it is no image or holds more pixels than `max_pixels`."""
    if path.stat().st_size == 0:
        raise NotAnImage("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            width, height, fmt = img.width, img.height, img.format or "unknown"
    except UnidentifiedImageError:
        raise NotAnImage("not an image (no known image format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(f"corrupt image header ({exc})", status=422) from None
    if width * height > max_pixels:
        raise ApiError(f"{width}x{height} = {width * height} pixels is above the pixel limit "
                       f"{max_pixels}", status=422)
    return Sniffed(fmt, width, height)


async def receive_form(content_type: str | None, chunks: AsyncIterator[bytes], folder: Path, *,
                       max_file_bytes: int, max_files: int, length: int | None = None) -> Form:
    """Return the multipart form read from `chunks`, each file written to `folder` as it
    arrives (never held whole in memory); raise TooLarge past `max_file_bytes` for one file,
    or at once when the declared `length` could not fit."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError("expected a multipart/form-data body", status=415)
    most = max_files * max_file_bytes + MAX_FIELDS * MAX_FIELD_BYTES + 2**20  # + part headers
    if length is not None and length > most:
        raise TooLarge(f"request body of {length} bytes is larger than the upload limit of "
                       f"{max_file_bytes // 2**20} MB per file ({max_files} file(s) at most)")
    folder.mkdir(parents=True, exist_ok=True)
    collector = _Collector(folder, max_file_bytes=max_file_bytes, max_files=max_files)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # python-multipart's parse errors: a malformed body
        raise ApiError(f"malformed multipart body ({exc})") from None
    finally:
        collector.close()
    if not collector.complete:
        raise ApiError("multipart body ended before its closing boundary")
    return collector.form


class _Collector:
    """python-multipart callbacks: headers per part, fields into memory, files onto disk."""

    def __init__(self, folder: Path, *, max_file_bytes: int, max_files: int) -> None:
        self.folder = folder
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.form = Form()
        self.complete = False
        self._header: list[bytes] = [b"", b""]
        self._headers: dict[bytes, bytes] = {}
        self._field = ""
        self._filename: str | None = None
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._size = 0
        self._text = bytearray()

    def callbacks(self) -> dict[str, object]:
        """Return the callback table MultipartParser expects."""
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._end, "on_end": self._finished}

    def _begin(self) -> None:
        self._headers, self._size, self._text = {}, 0, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header[0].lower()] = self._header[1]
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._field = params.get(b"name", b"").decode("utf-8", "replace")
        raw = params.get(b"filename")
        self._filename = None if raw is None else raw.decode("utf-8", "replace")
        if self._filename is None and len(self.form.fields) >= MAX_FIELDS:
            raise ApiError(f"too many form fields (at most {MAX_FIELDS})", status=413)
        if self._filename is not None:
            if len(self.form.files) >= self.max_files:
                raise ApiError(f"too many files (at most {self.max_files} per request)",
                               status=413)
            self._path = self.folder / f"upload-{len(self.form.files):05d}"
            self._file = open(self._path, "wb")  # noqa: SIM115 - closed in _end or close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._file is not None:
            if self._size > self.max_file_bytes:
                raise TooLarge(f"file {safe_name(self._filename, len(self.form.files))!r} is "
                               f"larger than the upload limit of "
                               f"{self.max_file_bytes // 2**20} MB")
            self._file.write(data[start:end])
        elif self._size > MAX_FIELD_BYTES:
            raise TooLarge(f"form field {self._field!r} is larger than {MAX_FIELD_BYTES} bytes")
        else:
            self._text += data[start:end]

    def _end(self) -> None:
        if self._file is None:
            self.form.fields[self._field] = self._text.decode("utf-8", "replace")
            return
        self._file.flush()
        os.fsync(self._file.fileno())  # an accepted job is on disk before the answer
        self._file.close()
        self._file = None
        assert self._path is not None
        self.form.files.append(Upload(self._field, safe_name(self._filename, len(self.form.files)),
                                      self._path, self._size))

    def _finished(self) -> None:
        self.complete = True

    def close(self) -> None:
        """Close a file left open by a body that stopped or failed in the middle of it."""
        if self._file is not None:
            self._file.close()
            self._file = None
