"""ONNX Runtime sessions: providers chosen in one place, one session per model, reused."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from imgproc.errors import ModelError, ProviderError
from imgproc.processor import ModelFile

if TYPE_CHECKING:
    import onnxruntime

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

log = structlog.get_logger("imgproc.session")


def choose_providers(requested: str, available: Sequence[str]) -> list[str]:
    """Return the execution providers to ask for, in order, for `auto`, `cuda` or `cpu`."""
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise ProviderError(
                "provider 'cuda' was requested but this onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}); install imgproc[gpu] (onnxruntime-gpu)")
        return [CUDA, CPU]
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ProviderError(f"unknown provider {requested!r}: expected auto, cuda or cpu")


def available_providers() -> list[str]:
    """Return the execution providers this onnxruntime build offers."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Session:
    """One loaded model and the provider it actually runs on."""

    model: ModelFile
    provider: str
    inner: onnxruntime.InferenceSession

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Return the model's outputs for named inputs (thread-safe, as ONNX Runtime is)."""
        return list(self.inner.run(None, dict(feeds)))


class SessionPool:
    """Creates each model's session once and hands the same one to every image and worker."""

    def __init__(self, *, provider: str = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0) -> None:
        self.provider = provider
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self._sessions: dict[Path, Session] = {}
        self._lock = threading.Lock()

    def get(self, model: ModelFile) -> Session:
        """Return the session for `model`, creating it on first use."""
        key = Path(model.path).resolve()
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = self._create(model)
            return self._sessions[key]

    def loaded(self) -> list[Session]:
        """Return the sessions created so far."""
        with self._lock:
            return list(self._sessions.values())

    def transient(self, name: str, data: bytes) -> Session:
        """Return a session for an in-memory model made for one image (a fitted network),
        with the same provider choice as every other session; it is not cached."""
        digest = hashlib.sha256(data).hexdigest()
        return self._create(ModelFile(name, Path(f"<in-memory {name}>"), digest), data)

    def _create(self, model: ModelFile, data: bytes | None = None) -> Session:
        import onnxruntime

        if data is None:
            _verify(model)
        providers = choose_providers(self.provider, available_providers())
        try:
            inner = onnxruntime.InferenceSession(data if data is not None else str(model.path),
                                                 self._options(onnxruntime), providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"model {model.name} ({model.path}) failed to load: {exc}") from exc
        actual = inner.get_providers()[0]
        if self.provider == "cuda" and actual != CUDA:
            # ONNX Runtime falls back to the CPU silently when CUDA libraries are missing.
            raise ProviderError(f"provider 'cuda' was requested but model {model.name} got "
                                f"{actual}: the CUDA libraries (CUDA 12/13, cuDNN 9) did not load")
        if data is None:  # per-image sessions would flood the log
            log.info("session created", model=model.name, provider=actual,
                     requested=self.provider)
        return Session(model, actual, inner)

    def _options(self, ort: Any) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = self.inter_op_threads
        return opts


def _verify(model: ModelFile) -> None:
    path = Path(model.path)
    if not path.is_file():
        raise ModelError(f"model {model.name}: file {path} is missing")
    digest = sha256_file(path)
    if digest != model.sha256:
        raise ModelError(f"model {model.name}: {path} has sha256 {digest}, expected "
                         f"{model.sha256} (corrupt or replaced file)")
