"""The colorize networks, ab bins, protocol metrics, resumable trainer and ONNX export.

Everything runs on tiny networks (width 0.125) and a handful of generated JPEGs in tmp_path:
no test needs ../shared/data (export_checkpoint's color-val is pointed at the generated images).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from exporters import (  # noqa: E402
    colorize,
    colorize_data,
    colorize_export,
    colorize_nets,
)
from exporters.colorize import TrainConfig, loss_value, train  # noqa: E402
from exporters.colorize_metrics import colourfulness, psnr_rgb  # noqa: E402
from exporters.colorize_nets import (  # noqa: E402
    AB_SCALE,
    BIN_STEP,
    Bins,
    Colorizer,
    NetConfig,
    annealed_mean,
    build_net,
)
from exporters.onnx_export import ModelCard  # noqa: E402
from imgproc.session import sha256_file  # noqa: E402

WIDTH = 0.125  # the smallest sensible network: 8-32 channels
HISTORY_KEYS = {"epoch", "seconds", "loss", "val_loss", "psnr", "colourfulness"}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run on one thread (tiny nets: more threads only contend), then give later tests their
    thread count back (train() sets the global count too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_ab(n: int = 4000, seed: int = 0) -> np.ndarray:
    """Return n ab pixels: a gamut-like blob around grey plus a few saturated ones."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 20, (n, 2)), rng.uniform(-80, 80, (n // 20, 2))])


def _lightness(height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"lightness": 100 * torch.rand(1, 1, height, width, generator=g)}


# --- bins ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bins() -> Bins:
    return Bins.fit(_random_ab())


def test_bins_are_grid_cells_the_data_visits(bins: Bins) -> None:
    centres = bins.centres.numpy()
    assert len(bins) == len(centres) == len(bins.weights) > 10
    assert np.abs(centres).max() <= AB_SCALE
    np.testing.assert_array_equal(centres % BIN_STEP, 0)
    assert len(np.unique(centres, axis=0)) == len(centres)
    nearest = np.round(_random_ab() / BIN_STEP) * BIN_STEP
    assert {tuple(c) for c in nearest} == {tuple(c) for c in centres}


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.9], ids=["lam0", "lam0.5", "lam0.9"])
def test_bin_weights_are_positive_rebalanced_and_average_1(lam: float) -> None:
    from scipy.ndimage import gaussian_filter

    ab = _random_ab()
    bins = Bins.fit(ab, lam=lam)
    w = bins.weights.numpy().astype(np.float64)
    assert (w > 0).all()
    # p: the Gaussian-smoothed (sigma 5 ab units = half a cell, radius 2 cells) histogram on
    # the bins, as Zhang et al. define it; recomputed here independently of the code.
    grid = np.arange(-AB_SCALE, AB_SCALE + 1, BIN_STEP)
    idx = np.round((ab + AB_SCALE) / BIN_STEP).astype(int)
    counts = np.zeros((len(grid), len(grid)))
    np.add.at(counts, (idx[:, 0], idx[:, 1]), 1)
    smooth = gaussian_filter(counts / counts.sum(), 0.5, mode="constant", truncate=4.0)
    cells = np.round((bins.centres.numpy() + AB_SCALE) / BIN_STEP).astype(int)
    p = smooth[cells[:, 0], cells[:, 1]]
    p /= p.sum()
    assert float((p * w).sum()) == pytest.approx(1.0, abs=1e-5)
    # w proportional to 1 / ((1 - lam) p + lam / Q): rare colours weigh more.
    ratio = w * ((1 - lam) * p + lam / len(bins))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert w[np.argmin(p)] >= w[np.argmax(p)]


def test_soft_targets_sum_to_1_over_bins_and_peak_at_the_nearest_bin(bins: Bins) -> None:
    ab = torch.from_numpy(np.random.default_rng(1).uniform(-40, 40, (2, 2, 5, 3))
                          ).float()
    target, weight = bins.soft_targets(ab)
    assert target.shape == (2, len(bins), 5, 3) and weight.shape == (2, 5, 3)
    torch.testing.assert_close(target.sum(dim=1), torch.ones(2, 5, 3))
    assert (target >= 0).all() and (weight > 0).all()
    assert ((target > 0).sum(dim=1) == 5).all()  # the k = 5 nearest bins
    flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    nearest = torch.cdist(flat, bins.centres).argmin(dim=1)
    torch.testing.assert_close(target.permute(0, 2, 3, 1).reshape(-1, len(bins)).argmax(dim=1),
                               nearest)
    torch.testing.assert_close(weight.reshape(-1), bins.weights[nearest])


@pytest.mark.parametrize("q", [0, 7, -1], ids=["first", "7", "last"])
def test_decode_of_a_peaked_logit_is_that_bins_centre(bins: Bins, q: int) -> None:
    q = q % len(bins)
    logits = torch.zeros(1, len(bins), 3, 2)
    logits[:, q] = 5.0
    ab = annealed_mean(logits, bins.centres, 0.01)
    assert ab.shape == (1, 2, 3, 2)
    torch.testing.assert_close(ab, bins.centres[q][None, :, None, None].expand(1, 2, 3, 2))
    # Equal logits: every bin equally likely, the plain mean of the centres.
    mean = annealed_mean(torch.zeros(1, len(bins), 1, 1), bins.centres, 1.0)[0, :, 0, 0]
    torch.testing.assert_close(mean, bins.centres.mean(dim=0))


# --- protocol metrics --------------------------------------------------------------------------


def test_colourfulness_is_0_for_grey_and_large_for_saturated() -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (20, 30, 1), dtype=np.uint8), 3, axis=2)
    assert colourfulness(grey) == 0.0
    saturated = np.zeros((20, 30, 3), np.uint8)
    saturated[:, :10, 0] = 255  # red, green and blue thirds
    saturated[:, 10:20, 1] = 255
    saturated[:, 20:, 2] = 255
    pastel = (saturated // 4 + 160).astype(np.uint8)
    assert colourfulness(saturated) > 100  # Hasler-Suesstrunk: above 109 "extremely colourful"
    assert 0 < colourfulness(pastel) < colourfulness(saturated)


def test_psnr_rgb_of_identical_images_is_capped_and_known_errors_match() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (16, 16, 3), dtype=np.uint8)
    same = psnr_rgb(image, image)
    assert math.isfinite(same) and same == pytest.approx(10 * math.log10(255.0**2 / 1e-10))
    assert psnr_rgb(image + 1, image) == pytest.approx(20 * math.log10(255.0))  # MSE 1
    assert psnr_rgb(image, 255 - image) < psnr_rgb(image + 1, image)


# --- networks ----------------------------------------------------------------------------------


CNN_CONFIGS = [(v, loss) for v in ("FR", "SRS", "S130") for loss in ("mse", "class")]


@pytest.mark.parametrize("size", [(1, 1), (13, 5), (37, 23)], ids=["1x1", "13x5", "37x23"])
@pytest.mark.parametrize(("variant", "loss"), CNN_CONFIGS,
                         ids=[f"{v}-{loss}" for v, loss in CNN_CONFIGS])
def test_colorizer_maps_lightness_to_ab_at_about_half_size(
        bins: Bins, variant: str, loss: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(variant=variant, loss=loss, width=WIDTH)
    net = build_net(cfg, len(bins)).eval()
    model = Colorizer(net, cfg, bins if loss == "class" else None, temperature=0.38).eval()
    with torch.no_grad():
        ab = model(_lightness(*size)["lightness"])
        raw = net(_lightness(*size)["lightness"])
    # Three stride-2 convolutions then two 2x upsamplings: 4 * ceil(side / 8).
    assert ab.shape == (1, 2, 4 * math.ceil(size[0] / 8), 4 * math.ceil(size[1] / 8))
    assert torch.isfinite(ab).all()
    if loss == "mse":
        assert raw.shape[1] == 2 and raw.abs().max() <= 1.0  # tanh or sine: ab / 110
        torch.testing.assert_close(ab, raw * AB_SCALE)
    else:
        assert raw.shape[1] == len(bins)
        torch.testing.assert_close(ab, annealed_mean(raw, bins.centres, 0.38))
        assert ab.abs().max() <= AB_SCALE


@pytest.mark.parametrize("loss", ["class", "mse"])
def test_class_hidden_widens_the_layer_before_the_logits_only(bins: Bins, loss: str) -> None:
    narrow = build_net(NetConfig(variant="FR", loss=loss, width=WIDTH), len(bins))
    wide = build_net(NetConfig(variant="FR", loss=loss, width=WIDTH, class_hidden=48),
                     len(bins))
    assert wide.head.in_channels == (48 if loss == "class" else narrow.head.in_channels)
    assert wide.head.out_channels == narrow.head.out_channels
    with torch.no_grad():
        assert wide(_lightness(13, 5)["lightness"]).shape[1] == narrow.head.out_channels


@pytest.mark.parametrize(("variant", "loss", "size"), [
    ("FR", "mse", 16), ("FR", "rebalanced", 16), ("SRS", "class", 16), ("S130", "mse", 16),
    ("FC", "mse", 48),
], ids=["FR-mse", "FR-rebalanced", "SRS-class", "S130-mse", "FC"])
def test_losses_are_finite_and_differentiable(bins: Bins, variant: str, loss: str,
                                              size: int) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(variant=variant, loss=loss, width=WIDTH, fc_hidden=32)
    net = build_net(cfg, len(bins))
    rng = np.random.default_rng(0)
    lab = torch.from_numpy(np.concatenate([rng.uniform(20, 80, (2, 1, size, size)),
                                           rng.uniform(-30, 30, (2, 2, size, size))], axis=1)
                           ).float()
    value = loss_value(cfg, net, lab, bins)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value) and value > 0
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_rebalanced_loss_is_mse_weighted_by_the_target_colours_rarity(bins: Bins) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(variant="FR", loss="rebalanced", width=WIDTH)
    net = build_net(cfg, len(bins))
    lab = torch.zeros(1, 3, 16, 16)
    lab[:, 0] = 50.0
    lab[:, 1:, :8] = torch.tensor([0.0, 0.0])[:, None, None]  # grey: the commonest bin
    lab[:, 1:, 8:] = torch.tensor([-60.0, -60.0])[:, None, None]  # a rare saturated colour
    ab = torch.nn.functional.adaptive_avg_pool2d(lab[:, 1:], (8, 8))
    weights = bins.pixel_weights(ab)
    assert weights.shape == (1, 8, 8)
    assert (weights[:, 4:] > 5 * weights[:, :4]).all()
    with torch.no_grad():
        error = (net(lab[:, :1]) - ab / AB_SCALE).square()
        want = (weights[:, None] * error).mean()
        got = loss_value(cfg, net, lab, bins)
    torch.testing.assert_close(got, want)
    uniform = Bins(bins.centres.numpy(), np.ones(len(bins), np.float32))
    with torch.no_grad():
        torch.testing.assert_close(loss_value(cfg, net, lab, uniform), error.mean())


# --- the trainer -------------------------------------------------------------------------------


def _write_photos(folder: Path, n: int = 8, size: tuple[int, int] = (64, 72)) -> Path:
    """Write n small JPEGs of coloured gradients with a coloured disc and bar; return folder."""
    folder.mkdir(parents=True)
    h, w = size
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    for i in range(n):
        rng = np.random.default_rng(i)
        start, end = rng.random(3), rng.random(3)
        t = (x + y)[:, :, None] / 2
        rgb = (1 - t) * start + t * end
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
        rgb[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.random(3)
        rgb[:, int(w * rng.uniform(0.1, 0.8)):][:, :6] = rng.random(3)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / f"{i:02d}.jpg", quality=95)
    return folder


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Return a folder of 8 generated 64x72 JPEGs (train and val alike)."""
    return _write_photos(tmp_path / "photos")


def _config(tmp_path: Path, photos: Path, run: str = "run", **changes: object) -> TrainConfig:
    fields: dict[str, object] = {
        "out": tmp_path / run, "variant": "SRS", "loss": "mse", "width": WIDTH, "size": 16,
        "batch": 4, "epochs": 2, "eval_every": 1, "threads": 1, "device": "cpu", "seed": 0,
        "train_dirs": [photos], "val_dir": photos, "cache": tmp_path / "cache",
    }
    return TrainConfig(**(fields | changes))  # type: ignore[arg-type]


def _history(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_training_writes_one_history_row_per_epoch(tmp_path: Path, photos: Path) -> None:
    trainer = train(_config(tmp_path, photos))
    rows = _history(tmp_path / "run")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows == json.loads(json.dumps(trainer.history))
    for row in rows:
        assert set(row) == HISTORY_KEYS
        assert all(math.isfinite(row[key]) for key in HISTORY_KEYS)
        assert row["loss"] > 0 and row["val_loss"] > 0 and row["colourfulness"] >= 0
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["net"]["variant"] == "SRS"
    cached = [p.name for p in (tmp_path / "cache").iterdir()]  # train and val: one folder
    assert len(cached) == 1 and cached[0].startswith("photos-18-")


def test_the_image_cache_is_read_again_when_the_folder_changes(tmp_path: Path,
                                                              photos: Path) -> None:
    first = colorize_data.load_folder(photos, 18, tmp_path / "cache")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(photos / "new.jpg")
    second = colorize_data.load_folder(photos, 18, tmp_path / "cache")
    assert (len(first), len(second)) == (8, 9)
    assert len(list((tmp_path / "cache").iterdir())) == 2


@pytest.mark.export
def test_every_training_folder_is_trained_on_and_named_on_the_card(tmp_path: Path,
                                                                   photos: Path) -> None:
    pngs = tmp_path / "T91"
    pngs.mkdir()
    for i in range(4):  # PNG too: T91 is PNG
        Image.new("RGB", (72, 64), (40 * i, 200, 90)).save(pngs / f"t{i}.png")
    (pngs / "notes.txt").write_text("not an image")
    trainer = train(_config(tmp_path, photos, variant="FR", epochs=1, eval_every=5,
                            train_dirs=[photos, pngs]))
    assert trainer.steps_per_epoch == (8 + 4) // 4
    result = colorize_export.export_checkpoint(tmp_path / "run" / "last.pt",
                                               out_dir=tmp_path / "out", val_dir=photos)
    data = json.loads(result.facts_path.read_text())["training_data"]
    assert data == (f"photos ({photos}): 8 images; T91 ({pngs}): 4 images, the T91 "
                    "super-resolution images (Yang et al.); research use")


def test_fewer_images_than_a_batch_is_an_error(tmp_path: Path, photos: Path) -> None:
    with pytest.raises(ValueError, match="make no batch of 16"):
        colorize.train(_config(tmp_path, photos, batch=16))


def test_training_resumes_from_the_last_epoch(tmp_path: Path, photos: Path) -> None:
    first = train(_config(tmp_path, photos, epochs=1))
    assert first.epoch == 1
    second = train(_config(tmp_path, photos, epochs=2))
    assert second.epoch == 2
    assert [row["epoch"] for row in second.history] == [1, 2]
    assert second.history[0] == first.history[0]
    assert [row["epoch"] for row in _history(tmp_path / "run")] == [1, 2]
    # Nothing left to do: a third call trains nothing and writes no row.
    third = train(_config(tmp_path, photos, epochs=2))
    assert third.epoch == 2 and len(_history(tmp_path / "run")) == 2


def test_same_seed_gives_the_same_first_epoch(tmp_path: Path, photos: Path) -> None:
    a = train(_config(tmp_path, photos, "a", epochs=1, eval_every=5))
    b = train(_config(tmp_path, photos, "b", epochs=1, eval_every=5))
    c = train(_config(tmp_path, photos, "c", epochs=1, eval_every=5, seed=1))
    assert a.history[0]["loss"] == b.history[0]["loss"]
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]
    for name, tensor in a.net.state_dict().items():
        torch.testing.assert_close(tensor, b.net.state_dict()[name], rtol=0, atol=0)
    assert c.history[0]["loss"] != a.history[0]["loss"]


def test_resuming_with_another_network_is_refused(tmp_path: Path, photos: Path) -> None:
    train(_config(tmp_path, photos, epochs=1, eval_every=5))
    with pytest.raises(ValueError, match=r"last\.pt is a .*'variant': 'SRS'.* run"):
        train(_config(tmp_path, photos, epochs=2, variant="FR"))
    assert len(_history(tmp_path / "run")) == 1


def test_the_fully_connected_siren_trains_an_epoch(tmp_path: Path) -> None:
    photos = _write_photos(tmp_path / "big", size=(60, 70))  # short side >= 48 * 9 / 8 = 54
    trainer = train(_config(tmp_path, photos, variant="FC", size=48, epochs=1))
    (row,) = _history(tmp_path / "run")
    assert row["epoch"] == 1 and set(row) == HISTORY_KEYS
    assert all(math.isfinite(row[key]) for key in HISTORY_KEYS)
    assert isinstance(trainer.net, colorize_nets.FCSiren)


def test_the_commands_find_their_data_under_data(tmp_path: Path, photos: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the image cache goes to ./runs/colorize-cache
    data = tmp_path / "data"
    data.mkdir()
    (data / "color-train").symlink_to(photos)
    (data / "color-val").symlink_to(photos)
    train_args = ["train", "--out", str(tmp_path / "run"), "--width", str(WIDTH), "--size",
                  "16", "--batch", "4", "--epochs", "1", "--device", "cpu", "--data", str(data)]
    result = CliRunner().invoke(colorize.cli, train_args)
    assert result.exit_code == 0, result.output
    config = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["config"]
    assert (config["train_dirs"], config["val_dir"]) == ([str(data / "color-train")],
                                                         str(data / "color-val"))
    ckpt = str(tmp_path / "run" / "last.pt")
    result = CliRunner().invoke(colorize.cli, ["evaluate", "--ckpt", ckpt, "--data", str(data)])
    assert result.exit_code == 0 and "color-val (8 images)" in result.output, result.output
    missing = CliRunner().invoke(colorize.cli, [*train_args[:-1], str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere/color-train does not exist" in missing.output


# --- export ------------------------------------------------------------------------------------


PARITY_CONFIGS = [("SRS", "class"), ("S130", "mse")]


def _assert_matches_on_a_new_size(onnx_path: Path, model: torch.nn.Module) -> None:
    """The exported file reproduces the model on 37 x 23, a size export did not check."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    new = _lightness(37, 23, seed=99)["lightness"]
    (got,) = session.run(["ab"], {"lightness": new.numpy()})
    with torch.no_grad():
        want = model(new).numpy()
    assert got.shape == want.shape == (1, 2, 20, 12)
    # ab is in Lab units (up to 110): 1e-4 absolute plus the export's 1e-3 relative.
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


@pytest.mark.export
@pytest.mark.slow  # 5-7 s each: the study variants; the shipped FR export is checked by default
@pytest.mark.parametrize(("variant", "loss"), PARITY_CONFIGS,
                         ids=[f"{v}-{loss}" for v, loss in PARITY_CONFIGS])
def test_export_parity_at_odd_sizes(tmp_path: Path, bins: Bins, variant: str,
                                    loss: str) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(variant=variant, loss=loss, width=WIDTH)
    model = Colorizer(build_net(cfg, len(bins)), cfg, bins if loss == "class" else None,
                      temperature=0.38).eval()
    card = ModelCard(name="colorize", summary="test", architecture="tiny", training_data="none",
                     training_steps="0", metrics={}, facts={"variant": variant, "loss": loss})
    # export_checkpoint's own path: export_model raises ParityError beyond atol 1e-4 / rtol 1e-3.
    result = colorize_export.export_colorizer(model, card=card, out_dir=tmp_path)
    facts = json.loads(result.facts_path.read_text())
    assert facts["parity"]["checked_shapes"] == [[1, 1, 72, 96], [1, 1, 1, 1], [1, 1, 7, 5],
                                                 [1, 1, 65, 47]]
    assert facts["inputs"][0]["shape"] == [1, 1, "height", "width"]
    assert facts["sha256"] == sha256_file(result.onnx_path)
    _assert_matches_on_a_new_size(result.onnx_path, model)


def _export_fresh(out: Path, width: float) -> tuple[torch.nn.Module, Path]:
    """Return a fresh FR/mse network of width and the ONNX file it was exported to."""
    torch.manual_seed(0)
    cfg = NetConfig(variant="FR", loss="mse", width=width)
    net = build_net(cfg, 0)
    card = ModelCard(name="colorize", summary="test", architecture="fresh", training_data="none",
                     training_steps="0", metrics={}, facts={})
    result = colorize_export.export_colorizer(Colorizer(net, cfg, None, 1.0).eval(), card=card,
                                       out_dir=out)
    return net, result.onnx_path


@pytest.mark.export
def test_training_can_start_from_an_exported_model(tmp_path: Path, photos: Path) -> None:
    shipped, onnx_path = _export_fresh(tmp_path / "out", width=0.5)  # the shipped width
    tuned = train(_config(tmp_path, photos, "tuned", variant="FR", loss="rebalanced", width=0.5,
                          epochs=0, init=onnx_path))
    assert tuned.net.state_dict().keys() == shipped.state_dict().keys()
    for name, tensor in shipped.state_dict().items():
        torch.testing.assert_close(tuned.net.state_dict()[name], tensor, rtol=0, atol=0)
    fresh = train(_config(tmp_path, photos, "fresh", variant="FR", width=0.5, epochs=0, seed=1))
    assert not torch.equal(fresh.net.head.weight, shipped.head.weight)


@pytest.mark.export
@pytest.mark.slow  # 6 s: exports a width-0.125 net to find the folded weight
def test_starting_from_an_export_that_folded_weights_is_refused(tmp_path: Path,
                                                                photos: Path) -> None:
    # At width 0.125 the exporter folds the fusion weight's two slices into new constants.
    _, onnx_path = _export_fresh(tmp_path / "out", width=WIDTH)
    with pytest.raises(ValueError, match=r"do not hold fusion\.0\.weight by name"):
        train(_config(tmp_path, photos, variant="FR", epochs=0, init=onnx_path))


@pytest.mark.export
def test_export_checkpoint_writes_model_sidecar_and_card(tmp_path: Path, photos: Path) -> None:
    train(_config(tmp_path, photos, variant="FR", epochs=1, eval_every=5))
    result = colorize_export.export_checkpoint(tmp_path / "run" / "last.pt",
                                               out_dir=tmp_path / "out", val_dir=photos)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "colorize.json", "colorize.md", "colorize.onnx"]
    facts = json.loads(result.facts_path.read_text())
    assert facts["sha256"] == sha256_file(tmp_path / "out" / "colorize.onnx")
    assert [v["name"] for v in facts["inputs"]] == ["lightness"]
    assert [v["name"] for v in facts["outputs"]] == ["ab"]
    assert facts["facts"]["variant"] == "FR" and facts["facts"]["render_size"] == 18
    assert facts["facts"]["epochs"] == 1 and facts["facts"]["temperature"] is None
    assert [1, 1, 1, 1] in facts["parity"]["checked_shapes"]
    assert facts["parity"]["max_abs_error"] < 1e-4
    assert math.isfinite(facts["metrics"]["color-val PSNR dB (model)"])
    card = result.card_path.read_text()
    assert card.startswith("# colorize\n") and "Variant FR" in card
    assert "ceil(H/8)*4 x ceil(W/8)*4" in card  # the output size the graph really has
    # The exported file reproduces the checkpoint on a size it was not checked on.
    model, _ = colorize_nets.load_trained(tmp_path / "run" / "last.pt", torch.device("cpu"))
    _assert_matches_on_a_new_size(result.onnx_path, model)
