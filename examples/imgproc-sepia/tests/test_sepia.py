"""The imgproc-sepia plugin's own tests, written as any plugin author would write them.

Run from the repository root or from examples/imgproc-sepia (after `pip install -e .`):

    python -m pytest examples/imgproc-sepia/tests -q
"""

from __future__ import annotations

import json
from pathlib import Path

import imgproc_sepia
import numpy as np
import pytest
from PIL import Image

from imgproc import Processor
from imgproc.testing import check_processor, run_cli, run_processor

PROCESSORS = {p.name: p for p in imgproc_sepia.imgproc_processors()}


def run(processor: Processor, image: np.ndarray, **options: object) -> np.ndarray:
    """Return `processor` applied to one image, its options resolved as the host resolves them."""
    return run_processor(processor, [image], **options)


@pytest.mark.parametrize("processor", PROCESSORS.values(), ids=PROCESSORS.keys())
def test_processor_keeps_the_imgproc_contract(processor: Processor) -> None:
    check_processor(processor)


def test_the_plugin_provides_its_processors() -> None:
    assert sorted(PROCESSORS) == ["autocontrast", "sepia"]


def test_sepia_strength_zero_returns_the_input_unchanged() -> None:
    image = np.random.default_rng(1).random((9, 13, 3), dtype=np.float32)
    np.testing.assert_allclose(run(PROCESSORS["sepia"], image, strength=0.0), image, atol=1e-6)


def test_full_sepia_makes_grey_warm() -> None:
    grey = np.full((4, 4, 3), 0.5, dtype=np.float32)
    red, green, blue = run(PROCESSORS["sepia"], grey)[0, 0]
    assert red > green > blue


def test_autocontrast_stretches_a_low_contrast_image() -> None:
    image = 0.4 + 0.2 * np.random.default_rng(2).random((32, 48, 3), dtype=np.float32)
    out = run(PROCESSORS["autocontrast"], image, cutoff=0.0)
    assert out.shape == image.shape
    for channel in range(3):
        assert out[:, :, channel].min() == pytest.approx(0.0, abs=0.01)
        assert out[:, :, channel].max() == pytest.approx(1.0, abs=0.01)


def test_sepia_runs_end_to_end_through_the_imgproc_cli(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep the developer's environment out: no ./config.toml, no plugin filters or extra dirs.
    monkeypatch.chdir(tmp_path)
    for name in ("IMGPROC_CONFIG", "IMGPROC_PLUGINS", "IMGPROC_PLUGINS_DIR"):
        monkeypatch.delenv(name, raising=False)
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(
        src / "sub" / "b.png")

    result = run_cli("run", "--plugin", "sepia", "-O", "strength=0.5", "--recursive", "--json",
                     str(src), "-o", str(out))

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["failed"]) == (2, 0)
    expected = run(PROCESSORS["sepia"], pixels.astype(np.float32) / 255, strength=0.5)
    with Image.open(out / "a.png") as img:
        assert img.mode == "RGB"
        written = np.asarray(img, dtype=np.float32) / 255
    np.testing.assert_allclose(written, expected, atol=1 / 255 + 1e-6)
    with Image.open(out / "sub" / "b.png") as img:
        assert (img.mode, img.size) == ("RGBA", (8, 8))  # the host re-attached the alpha
