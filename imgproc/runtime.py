"""What a processor sees while it runs: its models' sessions and the tiling helper."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgproc.config import RuntimeSettings
from imgproc.images import Picture, read_image
from imgproc.processor import Processor
from imgproc.session import Session, SessionPool
from imgproc.tiles import process_tiled


@dataclass
class Runtime:
    """Settings and the shared session pool, built once per batch or daemon."""

    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    sessions: SessionPool = field(init=False)

    def __post_init__(self) -> None:
        self._fixed: dict[Path, Picture] = {}
        self._lock = threading.Lock()
        self.sessions = SessionPool.from_settings(self.settings)

    def fixed_image(self, path: Path) -> Picture:
        """Return an image named by an image option, read once and shared by every job."""
        key = path.resolve()
        with self._lock:
            if key not in self._fixed:
                self._fixed[key] = read_image(path, max_pixels=self.settings.max_image_pixels)
            return self._fixed[key]

    def context(self, processor: Processor) -> Context:
        """Return a fresh per-image context for `processor`."""
        return Context(self, processor)


class Context:
    """Per-image access to model sessions and tiling; records which providers ran.

    Public (`imgproc.Context`, what `process` gets as `context`): `session`,
    `transient_session`, `add_output`, `tiled`, `processor` and `provider`. `runtime`,
    `providers` and `extra_outputs` are the host's side and may change.
    """

    def __init__(self, runtime: Runtime, processor: Processor) -> None:
        self.runtime = runtime
        self.processor = processor
        self.providers: set[str] = set()
        self.extra_outputs: dict[str, np.ndarray | bytes] = {}

    def session(self, model: str) -> Session:
        """Return the shared session of the processor's model called `model`."""
        session = self.runtime.sessions.get(self.processor.model(model))
        self.providers.add(session.provider)
        return session

    def transient_session(self, name: str, data: bytes) -> Session:
        """Return a session for a model built for this image alone (e.g. a fitted network)."""
        session = self.runtime.sessions.transient(name, data)
        self.providers.add(session.provider)
        return session

    def add_output(self, suffix: str, data: np.ndarray | bytes) -> None:
        """Ask the host to write `data` beside the main output as <stem>.<suffix>: an image
        (H x W x 1|3 floats in [0, 1], format from the suffix) or raw bytes (e.g. ONNX)."""
        if "/" in suffix or suffix.startswith(".") or "." not in suffix:
            raise ValueError(f"extra output suffix must look like 'name.ext', got {suffix!r}")
        self.extra_outputs[suffix] = data

    def tiled(self, fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *,
              scale: int = 1) -> np.ndarray:
        """Return fn(image) computed tile by tile with the configured tile size and overlap."""
        return process_tiled(fn, image, scale=scale, tile=self.runtime.settings.tile_size,
                             overlap=self.runtime.settings.tile_overlap)

    @property
    def provider(self) -> str:
        """Return the providers used for this image so far, or 'none' for model-free plugins."""
        return ",".join(sorted(self.providers)) or "none"
