"""Why CUDA is or is not usable: one line naming the build, the driver, the device or the
library that failed, from fake loaders standing in for a GPU machine's libraries."""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imgproc import cuda
from imgproc.cuda import CUDA, CUDA_LIB, CUDNN, DRIVER, SHARED_LIB


class FakeDriver:
    """libcuda.so.1's two calls the probe makes."""

    def __init__(self, init: int = 0, count: int = 1) -> None:
        self.init, self.count = init, count

    def cuInit(self, flags: int) -> int:  # noqa: N802 (the driver API's name)
        return self.init

    def cuDeviceGetCount(self, ref: Any) -> int:  # noqa: N802
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_int)).contents.value = self.count
        return 0


def loader(missing: dict[str, str], driver: FakeDriver | None = None) -> Any:
    """Return a ctypes.CDLL stand-in: names ending as a key of `missing` raise its message."""

    def load(name: str, mode: int = 0) -> object:
        for suffix, message in missing.items():
            if name.endswith(suffix):
                raise OSError(message)
        return driver if name == DRIVER else object()

    return load


@pytest.fixture
def capi(tmp_path: Path) -> Path:
    """Return a folder laid out like onnxruntime-gpu's capi/ (empty library files)."""
    folder = tmp_path / "capi"
    folder.mkdir()
    for name in (SHARED_LIB, CUDA_LIB):
        (folder / name).write_bytes(b"")
    return folder


def fake_ort(tmp_path: Path, providers: list[str]) -> SimpleNamespace:
    return SimpleNamespace(__version__="9.9", __file__=str(tmp_path / "__init__.py"),
                           get_available_providers=lambda: providers)


@pytest.mark.parametrize(("missing", "expected"), [
    ({}, ""),
    ({CUDA_LIB: "libcublasLt.so.13: cannot open shared object file: No such file or directory"},
     "the CUDA provider library did not load: libcublasLt.so.13: cannot open shared object file"),
    ({CUDNN: "libcudnn.so.9: cannot open shared object file: No such file or directory"},
     "cuDNN 9 did not load: libcudnn.so.9: cannot open"),
], ids=["all-load", "no-cublas", "no-cudnn"])
def test_the_library_that_failed_is_named(capi: Path, missing: dict[str, str],
                                          expected: str) -> None:
    problem = cuda.missing_library(capi, load=loader(missing))
    assert problem.startswith(expected) if expected else problem == ""


def test_a_missing_provider_library_means_a_broken_install(tmp_path: Path) -> None:
    assert "reinstall onnxruntime-gpu" in cuda.missing_library(tmp_path, load=loader({}))


@pytest.mark.parametrize(("driver", "missing", "expected"), [
    (None, {DRIVER: "libcuda.so.1: cannot open shared object file"}, (0, "no NVIDIA driver")),
    (FakeDriver(init=100), {}, (0, "no usable CUDA device: cuInit returned error 100 (no CUDA")),
    (FakeDriver(count=0), {}, (0, "no CUDA device visible")),
    (FakeDriver(count=2), {}, (2, "")),
], ids=["no-driver", "no-device", "zero-devices", "two-devices"])
def test_device_count(driver: FakeDriver | None, missing: dict[str, str],
                      expected: tuple[int, str]) -> None:
    count, problem = cuda.device_count(load=loader(missing, driver))
    assert count == expected[0] and problem.startswith(expected[1])


def test_a_cpu_build_says_which_extra_to_install(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "installed_runtimes", lambda: ["onnxruntime"])
    status = cuda.cuda_status(fake_ort(tmp_path, ["CPUExecutionProvider"]))  # type: ignore[arg-type]
    assert not status.usable and "CPU-only build" in status.reason
    assert "imgproc[gpu]" in status.reason


def test_both_runtimes_installed_is_named_as_the_trap(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "installed_runtimes", lambda: ["onnxruntime", "onnxruntime-gpu"])
    status = cuda.cuda_status(fake_ort(tmp_path, ["CPUExecutionProvider"]))  # type: ignore[arg-type]
    assert "both onnxruntime and onnxruntime-gpu are installed" in status.reason


def test_a_gpu_build_with_driver_device_and_libraries_is_usable(capi: Path) -> None:
    ort = fake_ort(capi.parent, [CUDA, "CPUExecutionProvider"])
    status = cuda.cuda_status(ort, load=loader({}, FakeDriver(count=1)))  # type: ignore[arg-type]
    assert status == cuda.CudaStatus(True, devices=1)


def test_a_gpu_build_on_a_machine_without_gpu_says_so(capi: Path) -> None:
    ort = fake_ort(capi.parent, [CUDA, "CPUExecutionProvider"])
    status = cuda.cuda_status(ort, load=loader({DRIVER: "not found"}))  # type: ignore[arg-type]
    assert not status.usable and status.reason.startswith("no NVIDIA driver")


def test_preload_output_is_kept_off_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    def preload_dlls() -> None:
        print("Failed to load libcublas.so.13: not found")

    ort = SimpleNamespace(preload_dlls=preload_dlls, get_available_providers=lambda: [CUDA])
    assert cuda.preload(ort) == ["Failed to load libcublas.so.13: not found"]  # type: ignore[arg-type]
    assert capsys.readouterr().out == ""
