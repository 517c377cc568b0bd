"""Built-in processors on CUDA through the public API: the provider that ran is CUDA and the
pixels are the CPU's (run where ONNX Runtime's CUDA provider is usable; skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest

from imgproc import Processor
from imgproc.cuda import cuda_status
from imgproc.testing import make_context, run_processor
from imgproc_plugins.colorize import PROCESSOR as COLORIZE
from imgproc_plugins.superres import PROCESSOR as SUPERRES

pytestmark = pytest.mark.gpu

CASES = {"superres-fast-x2": (SUPERRES, {"model": "fast", "scale": 2.0}),
         "superres-best-x3": (SUPERRES, {"scale": 3.0}),
         "colorize": (COLORIZE, {})}


@pytest.fixture(scope="module", autouse=True)
def cuda_usable() -> None:
    """Skip this module unless ONNX Runtime's CUDA provider can run here."""
    ort = pytest.importorskip("onnxruntime")
    status = cuda_status(ort)
    if not status.usable:
        pytest.skip(f"CUDA is not usable here: {status.reason}")


@pytest.mark.parametrize(("processor", "options"), CASES.values(), ids=CASES.keys())
def test_cuda_gives_the_cpu_pixels(processor: Processor, options: dict[str, object]) -> None:
    image = np.random.default_rng(0).random((67, 45, 3), dtype=np.float32)
    cuda = make_context(processor, provider="cuda")
    on_gpu = run_processor(processor, [image], context=cuda, **options)
    on_cpu = run_processor(processor, [image], **options)
    assert cuda.provider == "CUDAExecutionProvider"
    assert on_gpu.shape == on_cpu.shape
    # TF32 convolutions on recent GPUs differ from the CPU in the 4th digit: below an 8-bit step.
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1 / 255)
