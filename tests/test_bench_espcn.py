"""benchmarks/superres.py's OpenCV ESPCN: the exported graph runs in OpenCV DNN as in PyTorch at
sizes other than the export's, and the dnn_superres-style upsample gives a BGR image x4."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2", reason="the ESPCN benchmark rows need opencv-python-headless")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import superres as bench  # noqa: E402 - benchmarks/superres.py


@pytest.fixture(scope="module")
def espcn_x4() -> tuple[torch.nn.Module, object, object]:
    """Return (the PyTorch ESPCN x4, its cv2.dnn.Net, the upsample function)."""
    net, upsample = bench.opencv_espcn(4)
    return bench.espcn_net(4), net, upsample


@pytest.mark.export
@pytest.mark.parametrize("shape", [(32, 32), (37, 53)], ids=["export-size", "odd-size"])
def test_opencv_dnn_runs_the_exported_espcn_as_pytorch_does(
        espcn_x4: tuple[torch.nn.Module, object, object], shape: tuple[int, int]) -> None:
    module, net, _ = espcn_x4
    y = np.random.default_rng(1).random((1, 1, *shape), dtype=np.float32)
    net.setInput(y)
    got = net.forward()
    with torch.inference_mode():
        want = module(torch.from_numpy(y)).numpy()
    assert got.shape == want.shape == (1, 1, shape[0] * 4, shape[1] * 4)
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.export
def test_the_upsample_turns_bgr_into_bgr_four_times_larger(
        espcn_x4: tuple[torch.nn.Module, object, object]) -> None:
    _, _, upsample = espcn_x4
    bgr = np.random.default_rng(2).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    out = upsample(bgr)
    assert out.shape == (84, 136, 3) and out.dtype == np.uint8
