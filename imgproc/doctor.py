"""`imgproc doctor`: what this machine offers and what each model's session actually got."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from imgproc.config import RuntimeSettings
from imgproc.errors import ImgprocError
from imgproc.registry import Registry
from imgproc.session import SessionPool, available_providers


def diagnose(registry: Registry, settings: RuntimeSettings) -> dict[str, Any]:
    """Return a JSON-ready report of the runtime and of each declared model's session."""
    import onnxruntime

    pool = SessionPool(provider=settings.provider, intra_op_threads=settings.intra_op_threads,
                       inter_op_threads=settings.inter_op_threads)
    models = []
    for entry in sorted(registry.processors.values(), key=lambda r: r.processor.name):
        for model in entry.processor.models:
            row: dict[str, Any] = {"processor": entry.processor.name, "model": model.name}
            try:
                row["provider"] = pool.get(model).provider
            except ImgprocError as exc:
                row["error"] = str(exc)
            models.append(row)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "onnxruntime": onnxruntime.__version__,
        "providers_available": available_providers(),
        "config": f"provider={settings.provider}",
        "warnings": _warnings(),
        "models": models,
        "failures": [{"plugin": f.plugin, "reason": f.reason} for f in registry.failures],
    }


def _warnings() -> list[str]:
    installed = {name for name in ("onnxruntime", "onnxruntime-gpu") if _has(name)}
    if len(installed) == 2:
        return ["both onnxruntime and onnxruntime-gpu are installed and share one module; "
                "keep one: pip uninstall -y onnxruntime onnxruntime-gpu && "
                "pip install onnxruntime-gpu"]
    return []


def _has(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True
