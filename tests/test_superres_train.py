"""Tests of the super-resolution protocol code, network shapes and resumable trainer."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from exporters import (  # noqa: E402
    superres,
    superres_data,
    superres_export,
    superres_metrics,
    superres_net,
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """Return a 256x250x3 uint8 crop of scikit-image's astronaut."""
    return skimage_data.astronaut()[:256, 100:350]


@pytest.mark.parametrize("scale", [2, 3, 4], ids=["x2", "x3", "x4"])
def test_bicubic_psnr_is_finite_and_self_psnr_is_inf(astronaut: np.ndarray, scale: int) -> None:
    hr = superres_data.crop_to_multiple(astronaut, scale)
    lr = np.asarray(superres_data.make_lr(Image.fromarray(astronaut), scale))
    sr = superres_metrics.bicubic_upscale(lr, scale)
    psnr = superres_metrics.psnr_y(sr, hr, scale)
    assert 20.0 < psnr < 40.0
    assert superres_metrics.psnr_y(hr, hr, scale) == math.inf
    self_ssim = superres_metrics.ssim_y(hr, hr, scale)
    assert 0.5 < superres_metrics.ssim_y(sr, hr, scale) < self_ssim + 1e-9
    assert superres_metrics.ssim_y(hr, hr, scale) == pytest.approx(1.0)


def test_make_lr_crops_to_a_multiple_of_the_scale() -> None:
    lr = superres_data.make_lr(Image.new("RGB", (101, 75)), 3)
    assert lr.size == (33, 25)


def test_rgb_to_y_spans_16_to_235(astronaut: np.ndarray) -> None:
    black, white = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8)
    assert superres_metrics.rgb_to_y(black) == pytest.approx(16.0)
    assert superres_metrics.rgb_to_y(white) == pytest.approx(235.0, abs=1e-9)
    y = superres_metrics.rgb_to_y(astronaut)
    assert y.shape == astronaut.shape[:2]
    assert y.min() >= 16.0 and y.max() <= 235.0
    np.testing.assert_allclose(superres_metrics.rgb_to_y(astronaut / 255.0), y)


@pytest.mark.parametrize("preset", ["best", "fast"])
@pytest.mark.parametrize("scale", [2, 3, 4], ids=["x2", "x3", "x4"])
@pytest.mark.parametrize("size", [(7, 5), (1, 1)], ids=["7x5", "1x1"])
def test_model_output_is_scale_times_input(preset: str, scale: int, size: tuple[int, int]) -> None:
    model = superres_net.build_model(preset).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size), scale)
        fixed = superres_net.FixedScale(model, scale)(torch.rand(2, 3, *size))
    assert out.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert fixed.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert torch.isfinite(out).all() and fixed.min() >= 0.0 and fixed.max() <= 1.0


@pytest.mark.parametrize("loss", ["l1", "l2", "psnr_ssim"])
def test_losses_are_finite_and_differentiable(loss: str) -> None:
    sr = torch.rand(2, 3, 24, 24, requires_grad=True)
    value = superres_metrics.loss_value(loss, sr, torch.rand(2, 3, 24, 24), 2)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(sr.grad).all()


@pytest.fixture
def image_dirs(tmp_path: Path, astronaut: np.ndarray) -> tuple[Path, Path]:
    """Return (train dir, val dir) holding a few small PNG crops of scikit-image pictures."""
    train, val = tmp_path / "train", tmp_path / "val"
    train.mkdir()
    val.mkdir()
    for i, img in enumerate([astronaut[:96, :96], astronaut[150:246, 100:210],
                             skimage_data.coffee()[:100, :120]]):
        Image.fromarray(img).save(train / f"{i}.png")
    Image.fromarray(skimage_data.chelsea()[:40, :52]).save(val / "v.png")
    return train, val


def test_training_writes_a_checkpoint_and_resumes(tmp_path: Path,
                                                  image_dirs: tuple[Path, Path]) -> None:
    train_dir, val_dir = image_dirs

    def config(steps: int) -> superres.TrainConfig:
        return superres.TrainConfig(out=tmp_path / "run", preset="fast", steps=steps, batch=2,
                                    patch=12, val_every=3, ckpt_every=3, threads=1,
                                    device="cpu", train_dirs=[train_dir], val_dir=val_dir)

    first = superres.train(config(3))
    assert first.start_step == 0 and first.step == 3
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["preset"] == "fast"
    assert (tmp_path / "run" / "best.pt").exists()

    second = superres.train(config(5))
    assert second.start_step == 3 and second.step == 5
    assert [row["step"] for row in second.history] == [3, 5]
    lines = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(math.isfinite(r["psnr_x4"]) for r in second.history)

    # the export's card line comes from the run's stored config, found beside best.pt
    config_5 = superres_export.run_config(tmp_path / "run" / "best.pt")
    assert config_5 is not None and config_5["steps"] == 5
    assert superres_export.describe_training(5, config_5).endswith("the end of a 5-step run")
    line_3 = superres_export.describe_training(3, config_5, "a note")
    assert "a checkpoint of a 5-step run" in line_3
    assert superres_export.run_config(tmp_path / "elsewhere" / "best.pt") is None


@pytest.mark.export
def test_training_can_continue_an_exported_model(tmp_path: Path,
                                                 image_dirs: tuple[Path, Path]) -> None:
    train_dir, val_dir = image_dirs

    def config(run: str, steps: int, init: Path | None = None) -> superres.TrainConfig:
        return superres.TrainConfig(out=tmp_path / run, preset="fast", steps=steps, batch=2,
                                    patch=12, val_every=2, threads=1, device="cpu",
                                    train_dirs=[train_dir], val_dir=val_dir, init=init)

    # Tails start at zero (the net starts as the bilinear upscale) and export drops zero biases:
    # 4 steps train every tail, then the shared layers (x2 again).
    trained = superres.train(config("first", 4)).model
    for scale in superres_net.SCALES:
        superres_export.export_scale(trained, preset="fast", scale=scale, step=4, metrics={},
                              out_dir=tmp_path / "shipped")
    continued = superres.Trainer(config("second", 0, init=tmp_path / "shipped")).model
    for name, tensor in trained.state_dict().items():  # every scale's tail, the shared body
        torch.testing.assert_close(continued.state_dict()[name], tensor, rtol=0, atol=0)
    fresh = superres.Trainer(config("fresh", 0)).model
    assert not torch.equal(fresh.head.weight, trained.head.weight)
    stored = superres_export.run_config(tmp_path / "second" / "best.pt")
    assert stored is None  # no step was run, so no checkpoint either
    line = superres_export.describe_training(4, asdict(config("x", 4, tmp_path / "shipped")))
    assert line.endswith(f"started from the exported models in {tmp_path / 'shipped'}")


def test_a_batch_is_the_same_with_a_thread_pool(image_dirs: tuple[Path, Path]) -> None:
    images = [np.asarray(Image.open(p)) for p in sorted(image_dirs[0].glob("*.png"))]

    def batch(pool: ThreadPoolExecutor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return superres_data.sample_batch(images, scale=3, patch=10, batch=6,
                                          rng=np.random.default_rng(7), pool=pool)

    with ThreadPoolExecutor(3) as pool:
        threaded = batch(pool)
    alone = batch(None)
    assert threaded[0].shape == (6, 3, 10, 10) and threaded[1].shape == (6, 3, 30, 30)
    assert threaded[0].dtype == torch.uint8
    for a, b in zip(threaded, alone, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("extra", [0, 3])
def test_a_grown_body_computes_what_the_net_did(extra: int) -> None:
    torch.manual_seed(0)
    net = superres_net.build_model("best").eval()
    blocks = net.preset.blocks + extra
    for p in net.parameters():  # trained-like weights: every block does something
        torch.nn.init.normal_(p, std=0.05)
    bigger = superres_net.grown(net, blocks).eval()
    assert bigger.preset.blocks == blocks and len(bigger.body) == blocks + 1
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        for scale in superres_net.SCALES:
            torch.testing.assert_close(bigger(x, scale), net(x, scale), rtol=0, atol=1e-6)
    if blocks > net.preset.blocks:  # new blocks learn: first conv random, second zero
        assert bigger.body[net.preset.blocks].conv1.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot grow"):
        superres_net.grown(bigger, blocks - 1)


def test_a_grown_run_resumes_and_exports_its_depth(tmp_path: Path,
                                                   image_dirs: tuple[Path, Path]) -> None:
    train_dir, val_dir = image_dirs

    def config(steps: int, blocks: int | None) -> superres.TrainConfig:
        return superres.TrainConfig(out=tmp_path / "run", preset="fast", steps=steps, batch=2,
                                    patch=12, val_every=2, ckpt_every=2, threads=1,
                                    device="cpu", train_dirs=[train_dir], val_dir=val_dir,
                                    blocks=blocks)

    assert superres.train(config(2, 5)).model.preset.blocks == 5
    assert superres.train(config(4, 5)).start_step == 2  # resumed at its own depth
    with pytest.raises(ValueError, match="of 5 blocks"):
        superres.Trainer(config(6, None))
    model, preset, step = superres_export.checkpoint_facts(tmp_path / "run" / "best.pt")
    assert (preset, step, model.preset.blocks) == ("fast", 4, 5)
    assert "5 residual blocks" in superres_export.describe_architecture(model.preset, 2)


def test_an_ema_run_validates_keeps_and_exports_the_average(tmp_path: Path,
                                                          image_dirs: tuple[Path, Path]) -> None:
    train_dir, val_dir = image_dirs
    trainer = superres.train(superres.TrainConfig(
        out=tmp_path / "run", preset="fast", steps=3, batch=2, patch=12, val_every=3,
        ckpt_every=3, threads=1, device="cpu", train_dirs=[train_dir], val_dir=val_dir,
        ema=0.5))
    averaged, trained = trainer.evaluated.state_dict(), trainer.model.state_dict()
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained)
    for name in ("best.pt", "last.pt"):  # best.pt holds the average; last.pt holds both
        loaded = superres_net.load_trained(tmp_path / "run" / name, torch.device("cpu"))
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, averaged[key], rtol=0, atol=0)
    line = superres_export.describe_training(3, superres_export.run_config(
        tmp_path / "run" / "best.pt"))
    assert "exponential moving average (decay 0.5)" in line


@pytest.mark.export
def test_a_grown_run_starts_at_the_exported_model(tmp_path: Path,
                                                  image_dirs: tuple[Path, Path]) -> None:
    train_dir, val_dir = image_dirs
    torch.manual_seed(3)
    shipped = superres_net.build_model("fast").eval()
    for p in shipped.parameters():  # trained-like weights: every layer does something
        torch.nn.init.normal_(p, std=0.05)
    for scale in superres_net.SCALES:
        superres_export.export_scale(shipped, preset="fast", scale=scale, step=1, metrics={},
                                     out_dir=tmp_path / "shipped")
    run = superres.Trainer(superres.TrainConfig(
        out=tmp_path / "run", preset="fast", steps=0, device="cpu", train_dirs=[train_dir],
        val_dir=val_dir, init=tmp_path / "shipped", blocks=4))
    grown = run.model.eval()
    assert grown.preset.blocks == 4
    x = torch.rand(1, 3, 8, 10)
    with torch.no_grad():
        for scale in superres_net.SCALES:
            torch.testing.assert_close(grown(x, scale), shipped(x, scale), rtol=0, atol=1e-6)


def test_a_checkpoint_without_its_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="'best' checkpoint from before architectures"):
        superres_net.checkpoint_arch({"preset": "best", "model": {}})


def test_continuing_from_a_folder_without_the_presets_models_names_the_file(
        tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"superres-best-x2\.onnx"):
        superres.Trainer(superres.TrainConfig(out=tmp_path / "run", preset="best",
                                              device="cpu", init=tmp_path))


def test_the_train_command_finds_its_data_under_data(tmp_path: Path,
                                                     image_dirs: tuple[Path, Path]) -> None:
    train_dir, val_dir = image_dirs
    data = tmp_path / "data"
    (data / "sr-val").mkdir(parents=True)
    train_dir.rename(data / "sr-train")
    val_dir.rename(data / "sr-val" / "McMaster18")
    args = ["train", "--preset", "fast", "--out", str(tmp_path / "run"), "--steps", "1",
            "--batch", "1", "--patch", "12", "--device", "cpu"]
    result = CliRunner().invoke(superres.cli, [*args, "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "stopped at step 1" in result.output
    config = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["config"]
    assert config["train_dirs"] == [str(data / "sr-train")]
    assert config["val_dir"] == str(data / "sr-val" / "McMaster18")
    missing = CliRunner().invoke(superres.cli, [*args, "--data", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere/sr-train does not exist" in missing.output
