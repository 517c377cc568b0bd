"""imgproc: plugin-based batch image processing on ONNX Runtime.

This module is the public plugin API: every name in `__all__` (and `imgproc.testing`) is
what a plugin may rely on, versioned by `API_VERSION` (semantic versioning, see CHANGELOG.md).
Every other module is internal and may change without notice. The built-in plugins import
nothing else from imgproc: they are the proof that this surface is enough.
"""

from __future__ import annotations

from imgproc.api_version import API_VERSION
from imgproc.errors import (
    ImageError,
    ImgprocError,
    ModelError,
    OptionError,
    ProviderError,
    UsageError,
)
from imgproc.hookspecs import hookimpl
from imgproc.images import Picture, read_image, write_image
from imgproc.processor import ModelFile, Option, ProcessFn, Processor
from imgproc.runtime import Context
from imgproc.session import Session, open_session
from imgproc.sizing import output_size, resize, size_options
from imgproc.tiles import process_tiled, tile_starts

__all__ = [
    "API_VERSION",
    "Context",
    "ImageError",
    "ImgprocError",
    "ModelError",
    "ModelFile",
    "Option",
    "OptionError",
    "Picture",
    "ProcessFn",
    "Processor",
    "ProviderError",
    "Session",
    "UsageError",
    "hookimpl",
    "open_session",
    "output_size",
    "process_tiled",
    "read_image",
    "resize",
    "size_options",
    "tile_starts",
    "write_image",
]
