"""ONNX Runtime sessions: provider choice, one session per model, sha256 checks, doctor."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import onnxruntime
import pytest
from click.testing import CliRunner

from imgproc import ModelFile, Processor
from imgproc.config import parse_config
from imgproc.errors import ConfigError, ModelError, ProviderError, RuntimeMissing
from imgproc.session import (
    CPU,
    CUDA,
    TENSORRT,
    CudaOptions,
    SessionPool,
    choose_providers,
    provider_options,
)

HAS_CUDA = CUDA in onnxruntime.get_available_providers()


@pytest.mark.parametrize(("requested", "available", "expected"), [
    ("auto", [CUDA, CPU], [CUDA, CPU]),
    ("auto", [CPU], [CPU]),
    ("auto", ["AzureExecutionProvider", CPU], [CPU]),
    ("cpu", [CUDA, CPU], [CPU]),
    ("cuda", [CUDA, CPU], [CUDA, CPU]),
])
def test_choose_providers(requested: str, available: list[str], expected: list[str]) -> None:
    assert choose_providers(requested, available) == expected


def test_cuda_without_the_cuda_provider_fails_clearly() -> None:
    with pytest.raises(ProviderError, match=r"no CUDA provider .* install imgproc\[gpu\]"):
        choose_providers("cuda", [CPU])


@pytest.mark.skipif(HAS_CUDA, reason="this machine has the CUDA provider")
def test_a_cuda_batch_never_falls_back_to_the_cpu(halve_model: ModelFile) -> None:
    with pytest.raises(ProviderError, match="'cuda' was requested"):
        SessionPool(provider="cuda").get(halve_model)


def test_one_session_per_model_reused(halve_model: ModelFile) -> None:
    pool = SessionPool(provider="cpu", intra_op_threads=1)
    first = pool.get(halve_model)
    assert pool.get(dataclasses.replace(halve_model)) is first
    assert first.provider == CPU
    assert pool.loaded() == [first]


def test_a_model_that_does_not_match_its_sha256_is_refused(halve_model: ModelFile) -> None:
    with open(halve_model.path, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="has sha256 .* expected .*corrupt or replaced"):
        SessionPool().get(halve_model)


def test_a_missing_model_is_named(tmp_path: Path) -> None:
    model = ModelFile("ghost", tmp_path / "ghost.onnx", "0" * 64)
    with pytest.raises(ModelError, match="model ghost: file .*ghost.onnx is missing"):
        SessionPool().get(model)


def test_model_file_reads_the_exporter_sidecar(halve_model: ModelFile) -> None:
    sidecar = halve_model.path.with_suffix(".json")
    sidecar.write_text(json.dumps({
        "name": "halve", "file": "halve.onnx", "sha256": halve_model.sha256,
        "inputs": [{"name": "image"}], "outputs": [{"name": "output"}], "facts": {"scale": 1}}))
    model = ModelFile.from_facts(sidecar)
    assert model == dataclasses.replace(halve_model, facts={"scale": 1})


def test_doctor_shows_the_provider_each_model_got(halve: Processor, tmp_path: Path) -> None:
    plugin = tmp_path / "halve_plugin.py"
    plugin.write_text(
        "from pathlib import Path\n"
        "from imgproc import ModelFile, Processor, hookimpl\n"
        f"MODEL = ModelFile('halve', Path({str(halve.models[0].path)!r}), "
        f"{halve.models[0].sha256!r})\n"
        "@hookimpl\n"
        "def imgproc_processors():\n"
        "    return [Processor('halve', 'Halve.', lambda images, **kw: images[0] / 2,"
        " models=(MODEL,))]\n")
    from imgproc.cli import cli

    result = CliRunner().invoke(cli, ["--plugins-dir", str(tmp_path), "doctor", "--json"])
    report = json.loads(result.stdout)
    assert {"processor": "halve", "model": "halve", "provider": CPU} in report["models"]


@pytest.mark.parametrize(("requested", "available", "expected"), [
    ("tensorrt", [TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU]),
    ("auto", [TENSORRT, CUDA, CPU], [CUDA, CPU]),  # TensorRT only when asked: engines build slowly
], ids=["tensorrt", "auto-skips-tensorrt"])
def test_tensorrt_is_offered_on_request(requested: str, available: list[str],
                                        expected: list[str]) -> None:
    assert choose_providers(requested, available) == expected


@pytest.mark.parametrize(("requested", "available", "problem", "match"), [
    ("cuda", [CPU], "onnxruntime 1.0 is the CPU-only build", "'cuda' was requested but "
     "onnxruntime 1.0 is the CPU-only build"),
    ("cuda", [CUDA, CPU], "no NVIDIA driver: libcuda.so.1 cannot be loaded",
     "'cuda' was requested but CUDA cannot run here: no NVIDIA driver"),
    ("tensorrt", [CUDA, CPU], "", "no TensorRT provider"),
], ids=["cpu-build", "no-driver", "no-tensorrt"])
def test_a_strict_gpu_request_names_the_reason(requested: str, available: list[str],
                                               problem: str, match: str) -> None:
    with pytest.raises(ProviderError, match=match):
        choose_providers(requested, available, cuda_problem=problem)


def test_auto_takes_the_cpu_when_cuda_cannot_run() -> None:
    assert choose_providers("auto", [CUDA, CPU], cuda_problem="no CUDA device") == [CPU]


@pytest.mark.parametrize(("options", "expected"), [
    (CudaOptions(), {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE", "use_tf32": "0"}),
    (CudaOptions(device_id=1, conv_algo_search="heuristic", memory_limit_mb=2048, tf32=True),
     {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "1",
      "gpu_mem_limit": str(2048 * 1024 * 1024), "arena_extend_strategy": "kSameAsRequested"}),
], ids=["defaults", "configured"])
def test_cuda_provider_options(options: CudaOptions, expected: dict[str, str]) -> None:
    assert provider_options(CUDA, options) == expected
    assert provider_options(CPU, options) == {}


def test_config_runtime_keys_reach_the_cuda_options() -> None:
    settings = parse_config({"runtime": {"cuda_device_id": 3, "cuda_memory_limit_mb": 512,
                                         "cudnn_conv_algo_search": "heuristic",
                                         "cuda_tf32": True}}).runtime
    assert SessionPool.from_settings(settings).cuda == CudaOptions(3, "heuristic", 512, True)
    with pytest.raises(ConfigError, match="cudnn_conv_algo_search.*not one of exhaustive"):
        parse_config({"runtime": {"cudnn_conv_algo_search": "fast"}})


def test_without_onnxruntime_a_pool_names_both_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(RuntimeMissing, match=r"\[cpu\] extra .*\[gpu\] extra"):
        SessionPool()
