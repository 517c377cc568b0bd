"""Why ONNX Runtime's CUDA provider can or cannot run here, in one line a user can act on."""

from __future__ import annotations

import contextlib
import ctypes
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

CUDA = "CUDAExecutionProvider"
CUDNN = "libcudnn.so.9"
DRIVER = "libcuda.so.1"
SHARED_LIB = "libonnxruntime_providers_shared.so"
CUDA_LIB = "libonnxruntime_providers_cuda.so"

Loader = Callable[..., object]


@dataclass(frozen=True)
class CudaStatus:
    """Whether the CUDA provider should work here; `reason` says why not, in one line."""

    usable: bool
    reason: str = ""
    devices: int = 0


def installed_runtimes() -> list[str]:
    """Return which ONNX Runtime distributions are installed (both is the install trap)."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            metadata.version(dist)
            found.append(dist)
    return found


def preload(ort: ModuleType) -> list[str]:
    """Load the CUDA and cuDNN libraries from NVIDIA's pip packages (as torch ships them), when
    this onnxruntime offers `preload_dlls`; return the lines it printed about failures."""
    if not hasattr(ort, "preload_dlls") or CUDA not in ort.get_available_providers():
        return []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # it prints; keep stdout clean for --json
        try:
            ort.preload_dlls()
        except Exception as exc:  # a bad install must not stop the CPU path
            print(f"preload_dlls failed: {exc}")
    return [line for line in printed.getvalue().splitlines() if "ailed" in line]


def cuda_status(ort: ModuleType, *, load: Loader = ctypes.CDLL) -> CudaStatus:
    """Return whether ORT's CUDA provider can run: CUDA build, driver, device, libraries."""
    if CUDA not in ort.get_available_providers():
        return CudaStatus(False, _cpu_build_reason(ort, installed_runtimes()))
    if not sys.platform.startswith("linux"):
        return CudaStatus(True, devices=-1)  # the library probe below is Linux-only
    preload(ort)
    devices, problem = device_count(load=load)
    if problem:
        return CudaStatus(False, problem)
    missing = missing_library(Path(ort.__file__).parent / "capi", load=load)
    if missing:
        return CudaStatus(False, missing, devices)
    return CudaStatus(True, devices=devices)


def _cpu_build_reason(ort: ModuleType, installed: list[str]) -> str:
    version = getattr(ort, "__version__", "?")
    if "onnxruntime-gpu" in installed and "onnxruntime" in installed:
        return (f"onnxruntime {version} here is the CPU build: both onnxruntime and "
                "onnxruntime-gpu are installed and the CPU one owns the module; keep one: pip "
                "uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    return (f"onnxruntime {version} is the CPU-only build (no CUDAExecutionProvider): "
            "install imgproc[gpu] (onnxruntime-gpu) in place of imgproc[cpu]")


def device_count(*, load: Loader = ctypes.CDLL) -> tuple[int, str]:
    """Return (CUDA devices, "") through the driver API, or (0, why there are none)."""
    try:
        driver = load(DRIVER)
    except OSError:
        return 0, f"no NVIDIA driver: {DRIVER} cannot be loaded (no GPU on this machine?)"
    code = driver.cuInit(0)  # type: ignore[attr-defined]
    if code != 0:
        return 0, f"no usable CUDA device: cuInit returned error {code}" + (
            " (no CUDA-capable device is detected)" if code == 100 else "")
    count = ctypes.c_int(0)
    code = driver.cuDeviceGetCount(ctypes.byref(count))  # type: ignore[attr-defined]
    if code != 0 or count.value == 0:
        return 0, f"no CUDA device visible (cuDeviceGetCount: error {code}, {count.value})"
    return count.value, ""


def missing_library(capi: Path, *, load: Loader = ctypes.CDLL) -> str:
    """Return "" when ORT's CUDA provider library and cuDNN load, else which one failed."""
    provider = capi / CUDA_LIB
    if not provider.exists():
        return f"{provider} is missing: reinstall onnxruntime-gpu"
    try:
        load(str(capi / SHARED_LIB), mode=ctypes.RTLD_GLOBAL)
        load(str(provider))
    except OSError as exc:
        return f"the CUDA provider library did not load: {_first_line(exc)} (CUDA 12/13 runtime)"
    try:
        load(CUDNN)
    except OSError as exc:
        return f"cuDNN 9 did not load: {_first_line(exc)}"
    return ""


def _first_line(exc: OSError) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
