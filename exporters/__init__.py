"""Export trained PyTorch models to checked, carded ONNX files (needs the `export` extra)."""

from __future__ import annotations

from exporters.onnx_export import (
    ExportError,
    ExportResult,
    ModelCard,
    ParityError,
    check_parity,
    count_parameters,
    export_model,
    sha256_file,
)

__all__ = [
    "ExportError",
    "ExportResult",
    "ModelCard",
    "ParityError",
    "check_parity",
    "count_parameters",
    "export_model",
    "sha256_file",
]
