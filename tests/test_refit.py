"""refit: SIREN grids fitted per image, rendered at any size through ONNX Runtime."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from skimage import data

from exporters.superres_metrics import psnr_y
from imgproc import ModelError, ModelFile, output_size
from imgproc.cli import cli
from imgproc.runtime import Runtime
from imgproc_plugins import siren
from imgproc_plugins.refit import BASIS_MODEL, INIT_MODEL, PROCESSOR, derivatives, luma_derivative
from imgproc_plugins.siren import learned

from .conftest import read_rgb

QUICK = siren.SirenConfig(steps=150, target_psnr=40.0, tile=16, overlap=2)
RIDGE = dataclasses.replace(QUICK, solver="ridge", features=96)  # random basis: any shape


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """Return a 40x56 crop of scikit-image's astronaut as float RGB."""
    return data.astronaut()[100:140, 180:236].astype(np.float32) / 255


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a - b) ** 2)))


def _torch_render(fit: siren.Fit, height: int, width: int) -> np.ndarray:
    with torch.no_grad():
        return siren.render(lambda c: fit.model(torch.from_numpy(c)).numpy(), fit.layout,
                            height, width, pixels_per_unit=fit.config.pixels_per_unit)


def _options(**changes: object) -> dict:
    return PROCESSOR.resolve_options({k: v for k, v in changes.items()})


@pytest.mark.parametrize(("options", "expected"), [
    ({"scale": 2.0}, (80, 120)),
    ({"scale": 3.5}, (140, 210)),
    ({"width": 90}, (60, 90)),
    ({"height": 20}, (20, 30)),
    ({"width": 7, "height": 9}, (9, 7)),
    ({"scale": 0.01}, (1, 1)),
], ids=str)
def test_output_size(options: dict, expected: tuple[int, int]) -> None:
    assert output_size(40, 60, {"scale": 2.0, **options}) == expected


def test_a_fit_reproduces_its_image_at_scale_one(photo: np.ndarray) -> None:
    fit = siren.fit_image(photo, QUICK)
    out = _torch_render(fit, *photo.shape[:2])
    assert fit.psnr >= QUICK.target_psnr or fit.steps == QUICK.steps
    assert _psnr(out, photo) > 35  # pixel centres land on pixel centres


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (17, 23), (40, 56)], ids=str)
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.5], ids=lambda s: f"x{s}")
@pytest.mark.parametrize("config", [dataclasses.replace(QUICK, steps=5), RIDGE],
                         ids=["adam", "ridge"])
def test_onnx_network_matches_pytorch_at_any_size(photo: np.ndarray, size: tuple[int, int],
                                                  scale: float, config: siren.SirenConfig
                                                  ) -> None:
    image = photo[: size[0], : size[1]]
    fit = siren.fit_image(image, config)
    session = ort.InferenceSession(siren.to_onnx(fit).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    out_h, out_w = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    # shared: one coordinate set for many tiles, through the graph's run-time reshape
    by_ort = siren.render(lambda c: session.run(None, {"coords": c})[0], fit.layout, out_h, out_w,
                          pixels_per_unit=fit.config.pixels_per_unit, shared=fit.model.shared)
    by_torch = _torch_render(fit, out_h, out_w)
    assert by_ort.shape == (out_h, out_w, 3)
    assert np.abs(by_ort - by_torch).max() < 1e-4


@pytest.mark.parametrize("size", [(40, 56), (37, 61)], ids=str)
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 3.5, 1.37], ids=lambda s: f"x{s}")
def test_shared_rendering_matches_per_tile_rendering(photo: np.ndarray, size: tuple[int, int],
                                                     scale: float) -> None:
    # Tiles evaluated together on one coordinate set (few sets at whole-pixel scales) must
    # give what every tile on its own coordinates gives; x1.37 has too many sets to share.
    fit = siren.fit_image(np.resize(photo, (*size, 3)), RIDGE)
    out_h, out_w = round(size[0] * scale), round(size[1] * scale)

    def run(coords: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fit.model(torch.from_numpy(coords)).numpy()

    together = siren.render(run, fit.layout, out_h, out_w, pixels_per_unit=64.0, shared=True,
                            points=64)
    alone = siren.render(run, fit.layout, out_h, out_w, pixels_per_unit=64.0, points=1 << 20)
    assert np.abs(together - alone).max() < 1e-5


@pytest.mark.parametrize(("solver", "init", "seed_matters"), [
    ("adam", "random", True), ("adam", "learned", True), ("ridge", "random", True),
    ("ridge", "learned", False)], ids=["adam-random", "adam-learned", "ridge-random",
                                       "ridge-learned"])
def test_same_seed_same_output_other_seed_other_output(photo: np.ndarray, solver: str,
                                                       init: str, seed_matters: bool) -> None:
    # The seed draws the random init and the pixels each Adam step samples (a learned start
    # is the same for every seed, the samples are not; a learned basis's solve has neither).
    context = Runtime().context(PROCESSOR)
    run = [PROCESSOR.process([photo], options=_options(solver=solver, steps=20, seed=s,
                                                       init=init), context=context)
           for s in (1, 1, 2)]
    assert np.array_equal(run[0], run[1])
    assert (np.abs(run[0] - run[2]).max() > 1e-3) == seed_matters


def test_the_learned_init_fits_faster_than_a_random_one() -> None:
    # A 96x96 crop no patch of the meta-training came from; same Adam steps from each start.
    crop = data.astronaut()[200:296, 150:246].astype(np.float32) / 255
    config = dataclasses.replace(siren.SirenConfig(), steps=10, target_psnr=99.0)
    init = learned.load(INIT_MODEL)
    assert init.mismatch(config) is None
    random_fit = siren.fit_image(crop, config)
    learned_fit = siren.fit_image(crop, config, init=init)
    # Measured with the shipped init: 22.6 dB against 18.8 dB after 10 steps.
    assert learned_fit.psnr > random_fit.psnr + 2.0, (learned_fit.psnr, random_fit.psnr)


@pytest.fixture(scope="module")
def basis() -> learned.LearnedInit:
    """Return the ridge solver's shipped basis."""
    return learned.load(BASIS_MODEL)


def test_one_ridge_solve_fits_a_photo_crop(basis: learned.LearnedInit) -> None:
    # A 96x96 crop no patch of the basis's training came from: one solve, no Adam step.
    crop = data.astronaut()[200:296, 150:246].astype(np.float32) / 255
    config = basis.config()
    fit = siren.fit_image(crop, config, init=basis)
    random_fit = siren.fit_image(crop, config)  # SIREN's init as the basis: same shape
    assert fit.steps == 0 and fit.model.shared
    # Measured with the shipped basis: 51.7 dB, against 31.1 dB from a random one.
    assert fit.psnr > 45.0 and random_fit.psnr < fit.psnr - 10, (fit.psnr, random_fit.psnr)
    assert _psnr(_torch_render(fit, 96, 96), crop) > 45.0


def test_ridge_upsampling_beats_bicubic(basis: learned.LearnedInit) -> None:
    # The benchmark's protocol on a 128x128 crop: Pillow's bicubic shrink x2, PSNR-Y with 2
    # pixels shaved. Measured: 29.99 dB against bicubic's 29.32 (random basis: 26.53).
    hr = Image.fromarray(data.astronaut()[180:308, 150:278])
    lr = hr.resize((64, 64), Image.Resampling.BICUBIC)
    fit = siren.fit_image(np.asarray(lr, np.float32) / 255, basis.config(), init=basis)
    target = np.asarray(hr, np.float32) / 255
    ours = psnr_y(np.clip(_torch_render(fit, 128, 128), 0, 1), target, 2)
    bicubic = psnr_y(np.asarray(lr.resize((128, 128), Image.Resampling.BICUBIC), np.float32)
                     / 255, target, 2)
    assert ours > bicubic + 0.3, (ours, bicubic)


@pytest.mark.parametrize("group", [1, 3], ids=lambda g: f"group{g}")
def test_the_ridge_solve_is_the_same_in_groups(group: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    image = data.coffee()[:128, :128].astype(np.float32) / 255
    whole = siren.fit_image(image, RIDGE)
    monkeypatch.setattr(siren.fit, "GROUP_TILES", group)  # 16 x group tiles per product
    grouped = siren.fit_image(image, RIDGE)
    assert len(whole.layout.tiles) > 16 * group
    assert torch.allclose(whole.model.out_weight, grouped.model.out_weight, atol=1e-5)
    assert abs(whole.psnr - grouped.psnr) < 1e-3


def test_a_learned_init_file_that_does_not_match_its_sha256_is_refused(tmp_path: Path) -> None:
    for suffix in (".onnx", ".json"):
        (tmp_path / f"refit-init{suffix}").write_bytes(INIT_MODEL.path.with_suffix(
            suffix).read_bytes())
    with (tmp_path / "refit-init.onnx").open("ab") as file:
        file.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        learned.load(ModelFile.from_facts(tmp_path / "refit-init.json"))


def test_tiles_blend_without_seams(photo: np.ndarray) -> None:
    fit = siren.fit_image(photo, QUICK)
    out = _torch_render(fit, 160, 224)
    rows = np.abs(np.diff(out, axis=0)).max(axis=(1, 2))
    seams = [y * 4 - 1 for y, _, _, _ in fit.layout.tiles if y > 0]
    assert rows[seams].max() <= 1.5 * np.percentile(rows, 99)  # no jump stands out at a seam


def test_derivatives_are_exact_on_a_ramp() -> None:
    ramp = np.tile(np.linspace(0, 1, 48, dtype=np.float32)[None, :, None], (20, 1, 3))
    fit = siren.fit_image(ramp, dataclasses.replace(QUICK, target_psnr=45, steps=300))
    gradient = derivatives(fit, "gradient", 20, 48)
    slope = 1 / 47  # luma rises 1/47 per input pixel
    assert abs(np.median(gradient) - slope) < 0.15 * slope


@pytest.mark.parametrize("kind", ["gradient", "laplacian"])
def test_autograd_derivatives_match_finite_differences(photo: np.ndarray, kind: str) -> None:
    fit = siren.fit_image(photo, dataclasses.replace(QUICK, steps=30))
    ppu = fit.config.pixels_per_unit
    model = fit.model.double()
    coords = torch.rand(len(fit.layout.tiles), 50, 2, dtype=torch.float64) - 0.5
    exact = luma_derivative(model, coords, kind, ppu)
    h = 1e-3 / ppu  # a thousandth of a pixel, in coordinate units
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)

    def f(dx: float, dy: float) -> torch.Tensor:
        with torch.no_grad():
            return model(coords + torch.tensor([dx, dy], dtype=torch.float64)) @ luma

    gx, gy = (f(h, 0) - f(-h, 0)) / (2 * h), (f(0, h) - f(0, -h)) / (2 * h)
    if kind == "gradient":
        numeric = torch.sqrt(gx ** 2 + gy ** 2) / ppu
    else:
        numeric = (f(h, 0) + f(-h, 0) + f(0, h) + f(0, -h) - 4 * f(0, 0)) / h ** 2 / ppu ** 2
    assert torch.allclose(exact, numeric, rtol=1e-4, atol=1e-4 * float(numeric.abs().max()))


def test_run_save_network_and_render_it_again(tmp_path: Path, photo: np.ndarray) -> None:
    (tmp_path / "in").mkdir()
    Image.fromarray((photo * 255).round().astype(np.uint8)).save(tmp_path / "in" / "a.png")
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "-p", "refit", "-O", "scale=1", "-O", "steps=120",
                                 "-O", "save_network=true", "-O", "outputs=gradient,laplacian",
                                 str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "a.gradient.png", "a.laplacian.png", "a.network.onnx", "a.png"]
    network = onnx.load(out / "a.network.onnx")
    meta = {p.key: p.value for p in network.metadata_props}
    assert '"input_size": [40, 56]' not in meta["layout"] and meta["input_size"] == "[40, 56]"
    again = runner.invoke(cli, ["render", str(out / "a.network.onnx"), "-o",
                                str(tmp_path / "same.png")])
    assert again.exit_code == 0, again.output
    assert np.abs(read_rgb(tmp_path / "same.png") - read_rgb(out / "a.png")).max() <= 1 / 255
    wide = runner.invoke(cli, ["render", str(out / "a.network.onnx"), "--width", "140", "-o",
                               str(tmp_path / "wide.png")])
    assert wide.exit_code == 0 and read_rgb(tmp_path / "wide.png").shape == (100, 140, 3)


@pytest.mark.parametrize(("option", "message"), [
    ("outputs=curl", "outputs: unknown curl"),
    ("tile=8", "overlap must be less than half of tile"),
    ("scale=0", "below the minimum"),
    ("hidden=48", "init=learned was meta-learned for another network: hidden=48"),
    ("features=128", "init=learned was meta-learned for another network: features=128"),
    ("init=zeros", "not one of learned, random"),
    ("solver=sgd", "not one of ridge, adam"),
], ids=["outputs", "overlap", "scale", "learned-shape", "learned-features", "init", "solver"])
def test_bad_options_are_refused_before_any_image(tmp_path: Path, option: str,
                                                  message: str) -> None:
    result = CliRunner().invoke(cli, ["run", "-p", "refit", "-O", option, "-O", "overlap=4",
                                      str(tmp_path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in result.output


def test_grouped_fitting_matches_one_batch(photo: np.ndarray,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = dataclasses.replace(QUICK, steps=15, target_psnr=99.0)
    whole = siren.fit_image(photo, config)
    monkeypatch.setattr(siren.fit, "GROUP_TILES", 4)  # many groups of independent tile networks
    grouped = siren.fit_image(photo, config)
    assert len(whole.layout.tiles) > 4
    # Adam is blind to the loss's scale and tiles share nothing: the same networks result, up
    # to Adam's epsilon and float rounding, which training amplifies a little here and there.
    a, b = _torch_render(whole, 40, 56), _torch_render(grouped, 40, 56)
    assert np.mean(np.abs(a - b)) < 1e-3
    assert abs(_psnr(a, photo) - _psnr(b, photo)) < 0.3


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p, format="JPEG"),
     "is not an ONNX model (a JPEG image)"),
    (lambda p: p.write_bytes(Path(PROCESSOR.models[0].path).parent.joinpath(
        "superres-fast-x2.onnx").read_bytes()), "is an ONNX model (pytorch, inputs: image) but "
     "not a fitted SIREN"),
], ids=["jpeg", "superres-onnx"])
def test_render_refuses_a_file_that_is_not_a_saved_network(tmp_path: Path, make: object,
                                                           says: str) -> None:
    path = tmp_path / "photo.network.onnx"
    make(path)  # type: ignore[operator]
    result = CliRunner().invoke(cli, ["render", str(path), "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_sampled_steps_stop_only_once_all_pixels_reach_the_target(photo: np.ndarray) -> None:
    config = dataclasses.replace(siren.SirenConfig(), sample=0.5, target_psnr=30.0, steps=400)
    fit = siren.fit_image(photo, config, init=learned.load(INIT_MODEL))
    assert fit.steps < config.steps and fit.psnr >= 30.0  # fit.psnr: every pixel


@pytest.mark.parametrize("config", [dataclasses.replace(QUICK, sample=0.5), RIDGE],
                         ids=["sample", "ridge"])
def test_fits_of_pixels_refuse_another_loss(photo: np.ndarray,
                                            config: siren.SirenConfig) -> None:
    with pytest.raises(ValueError, match="need the pixel loss"):
        siren.fit_image(photo, config, loss=lambda model, coords, out, tiles: out.mean())


def test_the_previous_default_is_one_option_away() -> None:
    from imgproc_plugins.refit import config_from

    new, old = config_from(_options()), config_from(_options(solver="adam"))
    assert (new.solver, new.tile, new.features) == ("ridge", 16, 256)
    assert old == dataclasses.replace(siren.SirenConfig(), sample=0.5)  # issue 18's first half


@pytest.mark.export
def test_meta_training_resumes_and_exports_an_init_the_plugin_loads(tmp_path: Path) -> None:
    from exporters import refit_init

    run = tmp_path / "run"
    refit_init.train(run, steps=1, batch=4, inner_steps=2, outer_rate=0.5, seed=3, threads=1)
    refit_init.train(run, steps=2, batch=4, inner_steps=2, outer_rate=0.5, seed=3, threads=1)
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 2  # resumed, not redone
    result = refit_init.export(run, tmp_path / "models", val_patches=8)
    init = learned.load(ModelFile.from_facts(result.facts_path))
    assert init.mismatch(siren.SirenConfig()) is None
    saved = torch.load(run / "last.pt", weights_only=False)["start"]
    for name, value in init.weights.items():
        assert torch.equal(value, saved[name][0]), name


@pytest.mark.export
def test_basis_training_resumes_and_exports_a_basis_the_plugin_loads(tmp_path: Path) -> None:
    from exporters import refit_init

    run = tmp_path / "run"
    refit_init.train_basis(run, steps=1, batch=4, rate=1e-3, seed=3, threads=1)
    refit_init.train_basis(run, steps=2, batch=4, rate=1e-3, seed=3, threads=1)
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == 2  # resumed, not redone
    result = refit_init.export_basis(run, tmp_path / "models", val_patches=8)
    basis = learned.load(ModelFile.from_facts(result.facts_path))
    config = basis.config()
    assert basis.mismatch(config) is None and config.solver == "ridge"
    assert config.ridge == pytest.approx(float(torch.exp(state["log_ridge"])))
    assert sorted(basis.weights) == sorted(k for k in state["basis"] if not k.startswith("out"))
    fit = siren.fit_image(data.astronaut()[:40, :40].astype(np.float32) / 255, config,
                          init=basis)
    assert fit.psnr > 20
