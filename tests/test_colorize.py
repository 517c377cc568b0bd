"""The `colorize` processor and its colour maths: Lab against scikit-image, grey, colour and
sepia inputs, odd sizes, strength, alpha and EXIF through the CLI, and the shipped ONNX model
against its card.

The shipped model's weights change with every training run, so nothing here depends on the
colours it predicts: only on what holds for any model of its interface (`lightness`
N x 1 x H x W in 0-100 -> `ab` N x 2 x h' x w'), plus the card checks that read the sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")
skimage_color = pytest.importorskip("skimage.color")

from imgproc.cli import cli  # noqa: E402
from imgproc.config import RuntimeSettings  # noqa: E402
from imgproc.runtime import Runtime  # noqa: E402
from imgproc.session import sha256_file  # noqa: E402
from imgproc_plugins.colorize import CHROMA_GAIN, MODEL, MODELS, PROCESSOR  # noqa: E402
from imgproc_plugins.lab import (  # noqa: E402
    colorize_lab,
    grey_of,
    lab_to_rgb,
    lightness,
    rgb_to_lab,
    working_size,
)

# Same input lightness, different input chroma: the processor reduces every input to L first,
# so outputs may differ only by the float32 error of grey_of (L within ~1e-4) carried through
# the model and lab_to_rgb. Measured 5e-7 with the placeholder model; half an 8-bit level here.
RECOLOUR_ATOL = 2e-3
# strength=0 keeps the input's L: lab_to_rgb(L, 0, 0) and back, in float32 (measured 1e-5 in L,
# 6e-5 in a, b).
GREY_LAB_ATOL = 0.5
SEPIA = np.array([[0.393, 0.769, 0.189],
                  [0.349, 0.686, 0.168],
                  [0.272, 0.534, 0.131]])


# --- images ------------------------------------------------------------------------------------


def _astronaut() -> np.ndarray:
    """Return skimage's astronaut at 64x64, float32 RGB in [0, 1]."""
    img = Image.fromarray(skimage_data.astronaut()).resize((64, 64), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255


def _coffee() -> np.ndarray:
    """Return skimage's coffee at 40x60, float32 RGB in [0, 1]."""
    img = Image.fromarray(skimage_data.coffee()).resize((60, 40), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255


def _grey() -> np.ndarray:
    """Return skimage's camera at 48x48 as RGB with three equal channels."""
    img = Image.fromarray(skimage_data.camera()).resize((48, 48), Image.Resampling.BOX)
    return np.repeat(np.asarray(img, dtype=np.float32)[:, :, None] / 255, 3, axis=2)


def _sepia() -> np.ndarray:
    """Return the grey image toned with the classic sepia matrix (clipped to [0, 1])."""
    return np.clip(_grey() @ SEPIA.T, 0.0, 1.0).astype(np.float32)


IMAGES: dict[str, Callable[[], np.ndarray]] = {
    "grey": _grey, "astronaut": _astronaut, "coffee": _coffee, "sepia": _sepia,
}


def _random_rgb(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 3))


def _chroma(rgb: np.ndarray) -> float:
    """Return the mean Lab chroma |ab| of an RGB image."""
    return float(np.hypot(*rgb_to_lab(rgb)[..., 1:].transpose(2, 0, 1)).mean())


# --- the processor as the host runs it -------------------------------------------------------


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    """Return one CPU runtime (one thread) whose session pool every test here shares."""
    return Runtime(RuntimeSettings(provider="cpu", intra_op_threads=1, inter_op_threads=1))


@pytest.fixture
def process(runtime: Runtime) -> Callable[..., np.ndarray]:
    """Return a function calling the processor as the host does, with options by keyword."""

    def run(image: np.ndarray, **options: object) -> np.ndarray:
        return PROCESSOR.process([image], options=PROCESSOR.resolve_options(options),
                                 context=runtime.context(PROCESSOR))

    return run


# --- Lab maths ---------------------------------------------------------------------------------


RGB_SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "random": lambda: _random_rgb(500),
    # Below 0.04045 the sRGB curve is linear and below (6/29)^3 so is Lab's f: both branches.
    "dark": lambda: _random_rgb(200, seed=1) * 0.02,
    "corners": lambda: np.array([[[r, g, b]] for r in (0, 1) for g in (0, 1) for b in (0, 1)],
                                dtype=np.float64),
    "photo": lambda: _astronaut().astype(np.float64),
}


@pytest.mark.parametrize("sample", RGB_SAMPLES.values(), ids=list(RGB_SAMPLES))
def test_rgb_to_lab_matches_scikit_image(sample: Callable[[], np.ndarray]) -> None:
    rgb = sample()
    lab = rgb_to_lab(rgb)
    assert lab.dtype == np.float32 and lab.shape == rgb.shape
    np.testing.assert_allclose(lab, skimage_color.rgb2lab(rgb), rtol=0, atol=1e-3)
    # lightness() computes L from Y alone, in float32: the same L up to float32 rounding.
    np.testing.assert_allclose(lightness(rgb), lab[..., 0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("sample", RGB_SAMPLES.values(), ids=list(RGB_SAMPLES))
def test_lab_to_rgb_matches_scikit_image_and_round_trips(
        sample: Callable[[], np.ndarray]) -> None:
    rgb = sample()
    lab = skimage_color.rgb2lab(rgb)
    back = lab_to_rgb(lab)
    assert back.dtype == np.float32 and back.shape == rgb.shape
    np.testing.assert_allclose(back, skimage_color.lab2rgb(lab), rtol=0, atol=1e-5)
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, rtol=0, atol=1e-5)


def test_lab_to_rgb_clips_out_of_gamut_colours() -> None:
    lab = np.array([[[50.0, 127.0, -127.0], [100.0, -120.0, 120.0], [0.0, 80.0, 80.0],
                     [120.0, 0.0, 0.0], [-10.0, 0.0, 0.0]]])
    rgb = lab_to_rgb(lab)
    assert np.isfinite(rgb).all()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


@pytest.mark.parametrize("image", IMAGES.values(), ids=list(IMAGES))
def test_grey_of_has_no_chroma_and_the_same_lightness(image: Callable[[], np.ndarray]) -> None:
    rgb = image()
    grey = grey_of(rgb)
    lab = rgb_to_lab(grey)
    assert grey.shape == rgb.shape and grey.dtype == np.float32
    np.testing.assert_allclose(lab[..., 1:], 0.0, atol=1e-3)
    np.testing.assert_allclose(lab[..., 0], lightness(rgb), rtol=0, atol=1e-3)
    # Neutral: R = G = B, up to the D65 white (0.95047, 1, 1.08883) differing from the sRGB
    # matrix's row sums (0.950456, 1, 1.088754) in the 5th digit, as in scikit-image.
    np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-4)
    np.testing.assert_allclose(grey[..., 1], grey[..., 2], atol=1e-4)


# --- colorize_lab with a stand-in predictor ----------------------------------------------------


@pytest.mark.parametrize(("height", "width", "render", "expected"), [
    (100, 50, 72, (144, 72)),
    (48, 64, 72, (72, 96)),
    (1, 1, 16, (16, 16)),
    (3, 7, 16, (16, 37)),
    (400, 300, 72, (96, 72)),
    (1, 4000, 72, (72, 576)),
], ids=["tall", "wide", "1x1", "3x7", "shrink", "thin strip capped at 8:1"])
def test_working_size_puts_render_size_on_the_short_side(
        height: int, width: int, render: int, expected: tuple[int, int]) -> None:
    assert working_size(height, width, render) == expected


@pytest.mark.parametrize("ab_size", [(5, 3), (1, 1), (40, 90)], ids=["5x3", "1x1", "40x90"])
def test_colorize_lab_feeds_the_working_size_and_puts_the_chroma_back(
        ab_size: tuple[int, int]) -> None:
    seen: list[np.ndarray] = []

    def predict(small: np.ndarray) -> np.ndarray:
        seen.append(small)
        return np.broadcast_to(np.float32([20.0, -15.0]), (*ab_size, 2))

    rgb = np.full((21, 33, 3), 0.5, np.float32)  # L = 53.4: a = 20, b = -15 is in gamut
    rgb[:, :4] = 0.45  # some structure in L
    out = colorize_lab(rgb, predict, render_size=16, strength=1.0)
    assert [s.shape for s in seen] == [working_size(21, 33, 16)]
    assert seen[0].min() >= 0.0 and seen[0].max() <= 100.0
    lab = rgb_to_lab(out)
    assert out.shape == rgb.shape
    np.testing.assert_allclose(lab[..., 0], lightness(rgb), atol=0.05)
    np.testing.assert_allclose(lab[..., 1], 20.0, atol=0.05)
    np.testing.assert_allclose(lab[..., 2], -15.0, atol=0.05)
    half = rgb_to_lab(colorize_lab(rgb, predict, render_size=16, strength=0.5))
    np.testing.assert_allclose(half[..., 1:], np.broadcast_to([10.0, -7.5], half[..., 1:].shape),
                               atol=0.05)


# --- the processor: inputs, sizes, strength ----------------------------------------------------


@pytest.mark.parametrize("image", IMAGES.values(), ids=list(IMAGES))
def test_output_is_rgb_of_the_input_size_in_range(process: Callable[..., np.ndarray],
                                                  image: Callable[[], np.ndarray]) -> None:
    rgb = image()
    out = process(rgb)
    assert out.shape == rgb.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("image", [_astronaut, _coffee, _sepia],
                         ids=["astronaut", "coffee", "sepia"])
def test_recolouring_depends_on_lightness_alone(process: Callable[..., np.ndarray],
                                                image: Callable[[], np.ndarray]) -> None:
    rgb = image()
    np.testing.assert_allclose(process(rgb), process(grey_of(rgb)), rtol=0, atol=RECOLOUR_ATOL)


def test_equal_channel_grey_equals_its_neutral_grey(process: Callable[..., np.ndarray]) -> None:
    rgb = _grey()  # 8-bit grey levels: R = G = B exactly
    np.testing.assert_allclose(process(rgb), process(grey_of(rgb)), rtol=0, atol=RECOLOUR_ATOL)


@pytest.mark.parametrize("render", [16, 72, 200])
@pytest.mark.parametrize("size", [(1, 1), (3, 7), (7, 3), (13, 5), (65, 47)],
                         ids=["1x1", "3x7", "7x3", "13x5", "65x47"])
def test_odd_sizes_and_render_sizes_keep_the_input_size(
        process: Callable[..., np.ndarray], size: tuple[int, int], render: int) -> None:
    rgb = np.random.default_rng(size[0] * size[1]).random((*size, 3), dtype=np.float32)
    out = process(rgb, render_size=render)
    assert out.shape == (*size, 3)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("image", IMAGES.values(), ids=list(IMAGES))
def test_strength_0_returns_the_input_lightness_as_grey(process: Callable[..., np.ndarray],
                                                       image: Callable[[], np.ndarray]) -> None:
    rgb = image()
    lab = rgb_to_lab(process(rgb, strength=0))
    np.testing.assert_allclose(lab[..., 0], lightness(rgb), rtol=0, atol=GREY_LAB_ATOL)
    np.testing.assert_allclose(lab[..., 1:], 0.0, rtol=0, atol=GREY_LAB_ATOL)


def test_strength_1_is_the_network_chroma_times_the_cards_gain(
        process: Callable[..., np.ndarray], session: ort.InferenceSession) -> None:
    rgb = _astronaut()

    def predict(small: np.ndarray) -> np.ndarray:
        return session.run(None, {"lightness": small[None, None].astype(np.float32)})[0][0] \
            .transpose(1, 2, 0)

    render = PROCESSOR.resolve_options({})["render_size"]
    want = colorize_lab(rgb, predict, render_size=render, strength=CHROMA_GAIN)
    np.testing.assert_allclose(process(rgb, strength=1.0), want, rtol=0, atol=1e-4)
    facts = json.loads((MODELS / "colorize.json").read_text())["facts"]
    assert facts.get("chroma_gain", 1.0) == CHROMA_GAIN


@pytest.mark.parametrize("image", [_astronaut, _grey], ids=["astronaut", "grey"])
def test_more_strength_gives_at_least_as_much_chroma(process: Callable[..., np.ndarray],
                                                     image: Callable[[], np.ndarray]) -> None:
    rgb = image()
    chroma = [_chroma(process(rgb, strength=s)) for s in (0.0, 1.0, 2.0)]
    assert chroma[0] < 0.5
    assert chroma[0] <= chroma[1] + 1e-6
    assert chroma[1] <= chroma[2] + 1e-6


# --- the CLI: grey files, alpha, EXIF, inputs untouched ----------------------------------------


@pytest.fixture
def run_colorize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[Callable[..., Path]]:
    """Return a function that runs `imgproc run -p colorize` on tmp_path/in into tmp_path/out,
    checks that every input file is unchanged, and returns the output folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMGPROC_CONFIG", raising=False)
    (tmp_path / "config.toml").write_text(  # one ONNX Runtime thread, CPU
        '[runtime]\nprovider = "cpu"\nintra_op_threads = 1\ninter_op_threads = 1\n')

    def run(*options: str) -> Path:
        before = {p: p.read_bytes() for p in (tmp_path / "in").iterdir()}
        result = CliRunner().invoke(cli, ["run", "-p", "colorize", *options,
                                          str(tmp_path / "in"), "-o", str(tmp_path / "out")])
        assert result.exit_code == 0, result.output
        assert {p: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before
        return tmp_path / "out"

    (tmp_path / "in").mkdir()
    yield run


def _photo8(height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(skimage_data.astronaut()).resize((width, height)))


@pytest.mark.parametrize("strength", ["0", "1"])
def test_grey_png_gives_an_rgb_file(run_colorize: Callable[..., Path], tmp_path: Path,
                                    strength: str) -> None:
    grey = Image.fromarray(_photo8(12, 17)).convert("L")
    grey.save(tmp_path / "in" / "g.png")
    out = run_colorize("-O", f"strength={strength}")
    with Image.open(out / "g.png") as img:
        assert img.mode == "RGB"
        assert img.size == (17, 12)
        got = np.asarray(img, dtype=np.int16)
    if strength == "0":  # the file's grey levels in all three channels, up to 8-bit rounding
        np.testing.assert_allclose(got, np.repeat(np.asarray(grey, np.int16)[:, :, None], 3,
                                                  axis=2), rtol=0, atol=1)


def test_rgba_png_keeps_its_alpha_exactly(run_colorize: Callable[..., Path],
                                          tmp_path: Path) -> None:
    rgba = Image.fromarray(_photo8(12, 16)).convert("RGBA")
    alpha = np.random.default_rng(0).integers(0, 256, (12, 16), dtype=np.uint8)
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "in" / "a.png")
    out = run_colorize("-O", "render_size=16")
    with Image.open(out / "a.png") as img:
        assert img.mode == "RGBA" and img.size == (16, 12)
        np.testing.assert_array_equal(np.asarray(img.getchannel("A")), alpha)


def test_jpeg_keeps_its_exif(run_colorize: Callable[..., Path], tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010E] = "colorize test"  # ImageDescription
    exif[0x0131] = "imgproc tests"  # Software
    Image.fromarray(_photo8(20, 24)).save(tmp_path / "in" / "p.jpg", exif=exif.tobytes())
    out = run_colorize("-O", "strength=1.5")
    with Image.open(out / "p.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (24, 20)
        got = img.getexif()
        assert got[0x010E] == "colorize test"
        assert got[0x0131] == "imgproc tests"


# --- the shipped model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((MODELS / "colorize.json").read_text())


def test_the_shipped_onnx_matches_its_card(card: dict) -> None:
    assert card["name"] == "colorize" == MODEL.name
    assert sha256_file(MODELS / card["file"]) == card["sha256"]
    assert [(v["name"], v["shape"][:2], v["shape"][2:]) for v in card["inputs"]] == [
        ("lightness", [1, 1], ["height", "width"])]
    assert [(v["name"], v["shape"][:2]) for v in card["outputs"]] == [("ab", [1, 2])]
    assert all(isinstance(dim, str) for dim in card["outputs"][0]["shape"][2:])  # dynamic
    facts = card["facts"]
    assert isinstance(facts["render_size"], int) and not isinstance(facts["render_size"], bool)
    assert facts["variant"] in ("FR", "SRS", "S130")  # FC has no ab output to ship
    assert (MODELS / "colorize.md").exists()


def test_render_size_default_is_the_cards(card: dict) -> None:
    (render,) = [o for o in PROCESSOR.options if o.name == "render_size"]
    assert render.default == card["facts"]["render_size"]
    assert PROCESSOR.resolve_options({})["render_size"] == card["facts"]["render_size"]
    assert PROCESSOR.resolve_options({})["strength"] == 1.0


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / "colorize.onnx"), options,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 7, 5), (1, 1, 64, 96)],
                         ids=["1x1", "7x5", "64x96"])
def test_the_shipped_model_takes_any_height_and_width(session: ort.InferenceSession,
                                                      shape: tuple[int, ...]) -> None:
    assert [i.name for i in session.get_inputs()] == ["lightness"]
    assert [o.name for o in session.get_outputs()] == ["ab"]
    lightness_in = np.random.default_rng(0).uniform(0, 100, shape).astype(np.float32)
    (ab,) = session.run(None, {"lightness": lightness_in})
    assert ab.dtype == np.float32
    assert ab.ndim == 4 and ab.shape[:2] == (1, 2) and min(ab.shape[2:]) >= 1
    assert np.isfinite(ab).all()
