"""imgproc's built-in plugins, each registered through the `imgproc` entry-point group and
written against the public plugin API alone (what `imgproc` exports; plugins/README.md)."""

from __future__ import annotations

import importlib.util


def require_torch() -> None:
    """Raise ValueError (a usage error, before any image) when PyTorch is not installed:
    refit and merge's method=siren fit a network per image at run time."""
    if importlib.util.find_spec("torch") is None:
        raise ValueError("fitting a SIREN needs PyTorch: pip install 'imgproc[siren]'")
