"""superres `ensemble=true`: the geometric self-ensemble (8 flips/rotations averaged)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from skimage import data

from exporters.superres_data import make_lr
from exporters.superres_metrics import psnr_y
from imgproc.cli import cli
from imgproc.config import RuntimeSettings
from imgproc.runtime import Runtime
from imgproc_plugins.superres import PROCESSOR, upscale_fn


def process(image: np.ndarray, **options: object) -> np.ndarray:
    context = Runtime(RuntimeSettings(provider="cpu")).context(PROCESSOR)
    return PROCESSOR.process([image], options=PROCESSOR.resolve_options(options),
                             context=context)


class Recorder:
    """A stand-in session: nearest-neighbour x2 (equivariant), recording what it was given."""

    def __init__(self, bias: np.ndarray | None = None) -> None:
        self.inputs: list[np.ndarray] = []
        self.bias = bias

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["image"]
        self.inputs.append(x)
        y = x.repeat(2, axis=2).repeat(2, axis=3)
        if self.bias is not None:  # not equivariant: a fixed pattern in the output's frame
            y = y + self.bias[: y.shape[2], : y.shape[3]]
        return [y]


def test_ensemble_is_off_by_default() -> None:
    assert PROCESSOR.resolve_options({})["ensemble"] is False


def test_an_equivariant_net_gives_the_same_output_from_8_distinct_inputs() -> None:
    tile = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    session = Recorder()
    single = upscale_fn(session)(tile)
    session.inputs.clear()
    ensembled = upscale_fn(session, ensemble=True)(tile)
    assert len(session.inputs) == 8
    assert {x.shape for x in session.inputs} == {(1, 3, 5, 7), (1, 3, 7, 5)}
    assert len({x.tobytes() for x in session.inputs}) == 8  # the 8 transforms, all different
    assert ensembled.shape == single.shape == (10, 14, 3)
    np.testing.assert_allclose(ensembled, single, rtol=0, atol=1e-6)


def test_each_output_is_turned_back_before_averaging() -> None:
    # A bias fixed in the output's frame averages to the mean of its 8 transforms, not itself.
    bias = np.zeros((14, 14), np.float32)
    bias[0, 0] = 8.0
    tile = np.zeros((7, 7, 3), np.float32)
    out = upscale_fn(Recorder(bias), ensemble=True)(tile)[..., 0]
    corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
    np.testing.assert_allclose(corners, [2.0] * 4, atol=1e-6)  # 8 / 8 transforms x 2 each
    assert float(out.sum()) == pytest.approx(8.0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_ensemble_is_close_to_the_single_pass_and_not_worse(scale: int) -> None:
    hr_pil = Image.fromarray(data.astronaut()[60:180, 180:300])
    lr = np.asarray(make_lr(hr_pil, scale), dtype=np.float32) / 255
    hr = np.asarray(hr_pil)
    single, ens = (process(lr, scale=scale, ensemble=e) for e in (False, True))
    assert ens.shape == single.shape and ens.min() >= 0.0 and ens.max() <= 1.0
    diff = np.abs(ens - single)
    assert 0.0 < float(diff.mean()) < 0.01
    to8 = lambda a: np.round(a * 255).astype(np.uint8)  # noqa: E731
    assert psnr_y(to8(ens), hr, scale) > psnr_y(to8(single), hr, scale) - 0.02


def test_the_cli_takes_ensemble_true(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMGPROC_CONFIG", raising=False)
    (tmp_path / "in").mkdir()
    Image.fromarray(data.astronaut()[100:123, 150:181]).save(tmp_path / "in" / "a.png")
    result = CliRunner().invoke(cli, ["run", "-p", "superres", "-O", "scale=2", "-O",
                                      "ensemble=true", "-O", "model=fast",
                                      str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert out.size == (62, 46)
