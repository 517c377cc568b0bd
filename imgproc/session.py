"""ONNX Runtime sessions: providers chosen in one place, one session per model, reused."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from imgproc.cuda import cuda_status
from imgproc.errors import ModelError, ProviderError, RuntimeMissing, SessionError
from imgproc.processor import ModelFile

if TYPE_CHECKING:
    import onnxruntime

    from imgproc.config import RuntimeSettings

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
NO_RUNTIME = ("no ONNX Runtime is installed: install imgproc with the [cpu] extra (onnxruntime) or "
              "the [gpu] extra (onnxruntime-gpu, NVIDIA CUDA), e.g. pip install '.[cpu]'")

log = structlog.get_logger("imgproc.session")


def choose_providers(requested: str, available: Sequence[str], *,
                     cuda_problem: str = "") -> list[str]:
    """Return the execution providers to ask for, in order, for `auto`, `cuda`, `tensorrt` or
    `cpu`; `cuda_problem` says why CUDA cannot run here ("" when it can, as far as known)."""
    if requested == "cpu":
        return [CPU]
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available and not cuda_problem else [CPU]
    if requested not in ("cuda", "tensorrt"):
        raise ProviderError(f"unknown provider {requested!r}: expected auto, cuda, tensorrt or cpu")
    if CUDA not in available:
        raise ProviderError(f"provider {requested!r} was requested but " + (cuda_problem or (
            "this onnxruntime has no CUDA provider (available: "
            f"{', '.join(available)}); install imgproc[gpu] (onnxruntime-gpu)")))
    if cuda_problem:
        raise ProviderError(f"provider {requested!r} was requested but CUDA cannot run here: "
                            f"{cuda_problem}")
    if requested == "tensorrt":
        if TENSORRT not in available:
            raise ProviderError("provider 'tensorrt' was requested but this onnxruntime offers no "
                                "TensorRT provider (onnxruntime-gpu plus the TensorRT libraries)")
        return [TENSORRT, CUDA, CPU]
    return [CUDA, CPU]


@dataclass(frozen=True)
class CudaOptions:
    """CUDA provider settings from config.toml [runtime] (docs/gpu.md)."""

    device_id: int = 0
    conv_algo_search: str = "exhaustive"  # exhaustive | heuristic | default (cuDNN's)
    memory_limit_mb: int = 0  # cap on the CUDA memory arena; 0 = none
    tf32: bool = False  # TF32 convolutions and matrix products: faster, ~1e-3 from the CPU


def provider_options(provider: str, cuda: CudaOptions) -> dict[str, str]:
    """Return the ONNX Runtime options for one execution provider (empty for the CPU)."""
    if provider == CUDA:
        options = {"device_id": str(cuda.device_id),
                   "cudnn_conv_algo_search": cuda.conv_algo_search.upper(),
                   "use_tf32": "1" if cuda.tf32 else "0"}  # ORT's own default is on
        if cuda.memory_limit_mb:
            options["gpu_mem_limit"] = str(cuda.memory_limit_mb * 1024 * 1024)
            options["arena_extend_strategy"] = "kSameAsRequested"  # stay under the cap
        return options
    if provider == TENSORRT:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgproc"
        return {"device_id": str(cuda.device_id), "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache / "tensorrt")}
    return {}


def load_onnxruntime() -> ModuleType:
    """Return the onnxruntime module, or raise RuntimeMissing naming the [cpu] and [gpu] extras."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeMissing(NO_RUNTIME) from None
    if not hasattr(onnxruntime, "InferenceSession"):  # files left by uninstalling one of two
        raise RuntimeMissing(f"onnxruntime at {list(onnxruntime.__path__)} is broken (left over "
                             "from uninstalling onnxruntime or onnxruntime-gpu): pip install "
                             "--force-reinstall the one you keep, [cpu] or [gpu]")
    return onnxruntime


def available_providers() -> list[str]:
    """Return the execution providers this onnxruntime build offers."""
    return list(load_onnxruntime().get_available_providers())


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
        """Return the model's outputs for named inputs (thread-safe, as ONNX Runtime is).

        Raises SessionError when ONNX Runtime fails (out of memory, a device error): the host
        reports it as an environment fault and the daemon retries the image later."""
        try:
            return list(self.inner.run(None, dict(feeds)))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise SessionError(f"model {self.model.name} on {self.provider} failed: "
                               f"{type(exc).__name__}: {exc}") from exc


class SessionPool:
    """Creates each model's session once and hands the same one to every image and worker."""

    def __init__(self, *, provider: str = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, cuda: CudaOptions | None = None) -> None:
        load_onnxruntime()  # every command that runs images says at once when none is installed
        self.provider = provider
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.cuda = cuda or CudaOptions()
        self._sessions: dict[Path, Session] = {}
        self._providers: list[str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: RuntimeSettings, *, provider: str | None = None
                      ) -> SessionPool:
        """Return a pool configured by config.toml [runtime] (provider overridable)."""
        return cls(provider=provider or settings.provider,
                   intra_op_threads=settings.intra_op_threads,
                   inter_op_threads=settings.inter_op_threads,
                   cuda=CudaOptions(settings.cuda_device_id, settings.cudnn_conv_algo_search,
                                    settings.cuda_memory_limit_mb, settings.cuda_tf32))

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

    def providers(self) -> list[str]:
        """Return the providers every session of this pool asks for (decided once)."""
        if self._providers is None:
            ort = load_onnxruntime()
            available = list(ort.get_available_providers())
            problem = cuda_status(ort).reason if self.provider != "cpu" else ""
            if problem and self.provider == "auto" and CUDA in available:
                log.warning("CUDA provider not usable, running on the CPU", reason=problem)
            self._providers = choose_providers(self.provider, available, cuda_problem=problem)
        return self._providers

    def _create(self, model: ModelFile, data: bytes | None = None) -> Session:
        ort = load_onnxruntime()
        if data is None:
            _verify(model)
        wanted = self.providers()
        try:
            inner = ort.InferenceSession(
                data if data is not None else str(model.path), self._options(ort),
                providers=[(p, provider_options(p, self.cuda)) for p in wanted])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"model {model.name} ({model.path}) failed to load: {exc}") from exc
        actual = inner.get_providers()[0]
        if self.provider in ("cuda", "tensorrt") and actual != wanted[0]:
            # ONNX Runtime falls back to the CPU silently; its own log says which library failed.
            raise ProviderError(f"provider {self.provider!r} was requested but model {model.name} "
                                f"got {actual}: ONNX Runtime could not start {wanted[0]} (its "
                                "log above names the library; `imgproc doctor --check`)")
        if data is None:  # per-image sessions would flood the log
            log.info("session created", model=model.name, provider=actual,
                     requested=self.provider)
        return Session(model, actual, inner)

    def _options(self, ort: Any) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = self.inter_op_threads
        return opts


def open_session(data: bytes, *, name: str, provider: str = "auto") -> Session:
    """Return a session for an in-memory ONNX model outside any batch (a plugin's own command,
    such as `imgproc render`), with the provider choice and checks every session gets."""
    return SessionPool(provider=provider).transient(name, data)


def _verify(model: ModelFile) -> None:
    path = Path(model.path)
    if not path.is_file():
        raise ModelError(f"model {model.name}: file {path} is missing")
    digest = sha256_file(path)
    if digest != model.sha256:
        raise ModelError(f"model {model.name}: {path} has sha256 {digest}, expected "
                         f"{model.sha256} (corrupt or replaced file)")
