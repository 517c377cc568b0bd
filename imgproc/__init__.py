"""imgproc: plugin-based batch image processing on ONNX Runtime.

Plugin authors need only what this module exports: `hookimpl`, `Processor`, `Option`,
`ModelFile`, and `imgproc.testing` for their test suites.
"""

from __future__ import annotations

from imgproc.errors import ImageError, ImgprocError, OptionError
from imgproc.hookspecs import hookimpl
from imgproc.processor import ModelFile, Option, Processor

__all__ = ["ImageError", "ImgprocError", "ModelFile", "Option", "OptionError", "Processor",
           "hookimpl"]
