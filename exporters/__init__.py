"""Export trained PyTorch models to checked, carded ONNX files (needs the `export` extra)."""

from __future__ import annotations

from exporters import onnx_export
from exporters.onnx_export import *  # noqa: F403 - the public names are onnx_export's

__all__ = onnx_export.__all__
