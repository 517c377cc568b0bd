"""Tests for exporters.onnx_export: dynamic sizes, parity, sidecar, card and typed errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from exporters import (
    ExportError,
    ExportResult,
    ModelCard,
    ParityError,
    check_parity,
    export_model,
    sha256_file,
)

pytestmark = pytest.mark.export

EXAMPLE = (32, 40)
# Other sizes than the example, odd ones and the smallest one included.
OTHER_SIZES = [(17, 23), (1, 1), (64, 80)]
SIDECAR_KEYS = {"name", "file", "sha256", "parameters", "inputs", "outputs", "opset", "parity",
                "summary", "training_data", "training_steps", "metrics", "facts",
                "exported_with"}


class ShuffleNet(nn.Module):
    """A x2 super-resolution net ending in a pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(12, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class InterpNet(nn.Module):
    """A x2 net: bilinear upsample plus a learned residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
        return up + self.conv(up)


class ExportOnlyOffset(ShuffleNet):
    """A net whose exported graph differs from its eager forward: parity must catch it."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.body(image)
        return out + 1 if torch.compiler.is_exporting() else out


class ShapeToInt(nn.Module):
    """A net that turns a dynamic size into a Python int, which pins it to the example."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * (int(image.shape[2]) // 2)


NETS: dict[str, Callable[[], nn.Module]] = {"pixel-shuffle": ShuffleNet, "bilinear": InterpNet}


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Return a random 1 x 3 x H x W float32 image in [0, 1)."""
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _card(name: str, **changes: object) -> ModelCard:
    """Return a model card for a test net, with fields overridden by `changes`."""
    fields: dict[str, object] = {
        "name": name, "summary": "Tiny x2 test upscaler.",
        "architecture": "Two 3x3 convolutions and an x2 upsample.",
        "training_data": "none (random weights)", "training_steps": "0 steps",
        "metrics": {"Set5 x2 PSNR-Y": 30.125, "note": "untrained"},
        "facts": {"scale": 2, "colour_space": "RGB", "range": [0, 1]},
    }
    return ModelCard(**(fields | changes))  # type: ignore[arg-type]


def _export(module: nn.Module, name: str, out_dir: Path, **changes: object) -> ExportResult:
    """Return `module` exported with dynamic height/width, checked on two other sizes."""
    kwargs: dict[str, object] = {
        "card": _card(name),
        "example_inputs": {"image": _image(*EXAMPLE)},
        "output_names": ["output"],
        "dynamic_axes": {"image": {2: "height", 3: "width"},
                         "output": {2: "out_height", 3: "out_width"}},
        "out_dir": out_dir,
        "parity_inputs": [{"image": _image(17, 23, seed=1)}, {"image": _image(8, 5, seed=2)}],
    }
    return export_model(module, **(kwargs | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, tuple[nn.Module, ExportResult]]:
    """Return each test net with its export result, exported once for the whole module."""
    out_dir = tmp_path_factory.mktemp("models")
    results = {}
    for name, make in NETS.items():
        torch.manual_seed(0)
        module = make()
        results[name] = (module, _export(module, f"test-{name}", out_dir))
    return results


@pytest.mark.parametrize("net", NETS, ids=list(NETS))
def test_export_writes_checked_onnx_sidecar_and_card(
        exported: dict[str, tuple[nn.Module, ExportResult]], net: str) -> None:
    _, result = exported[net]
    out_dir = result.onnx_path.parent
    assert result.onnx_path == out_dir / f"test-{net}.onnx"
    assert result.facts_path == out_dir / f"test-{net}.json"
    assert result.card_path == out_dir / f"test-{net}.md"
    onnx.checker.check_model(str(result.onnx_path), full_check=True)
    # Weights live inside the one file: no external-data sidecar, no partial left behind.
    model = onnx.load(str(result.onnx_path), load_external_data=False)
    assert all(t.data_location == TensorProto.DEFAULT for t in model.graph.initializer)
    assert not list(out_dir.glob(".*partial*"))


@pytest.mark.parametrize("size", [EXAMPLE, *OTHER_SIZES], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("net", NETS, ids=list(NETS))
def test_onnx_matches_torch_on_other_sizes(
        exported: dict[str, tuple[nn.Module, ExportResult]], net: str,
        size: tuple[int, int]) -> None:
    module, result = exported[net]
    image = _image(*size, seed=3)
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        want = module(image).numpy()
    assert got.shape == (1, 3, 2 * size[0], 2 * size[1])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert check_parity(module, result.onnx_path, {"image": image}, atol=1e-4, rtol=1e-3) < 1e-4


@pytest.mark.parametrize("net", NETS, ids=list(NETS))
def test_sidecar_has_schema_and_matching_sha256(
        exported: dict[str, tuple[nn.Module, ExportResult]], net: str) -> None:
    module, result = exported[net]
    facts = json.loads(result.facts_path.read_text())
    assert set(facts) == SIDECAR_KEYS
    assert facts["name"] == f"test-{net}"
    assert facts["file"] == result.onnx_path.name
    assert facts["sha256"] == result.sha256 == sha256_file(result.onnx_path)
    assert facts["sha256"] == hashlib.sha256(result.onnx_path.read_bytes()).hexdigest()
    assert facts["parameters"] == result.parameters == sum(p.numel() for p in module.parameters())
    assert facts["inputs"] == [{"name": "image", "shape": [1, 3, "height", "width"],
                                "dtype": "float32"}]
    assert facts["outputs"] == [{"name": "output", "shape": [1, 3, "2*height", "2*width"],
                                 "dtype": "float32"}]
    assert facts["opset"] == 18
    assert facts["parity"] == {"max_abs_error": result.max_abs_error, "atol": 1e-4,
                               "rtol": 1e-3, "checked_shapes": [[1, 3, 32, 40], [1, 3, 17, 23],
                                                                [1, 3, 8, 5]]}
    assert 0 <= result.max_abs_error < 1e-4
    assert facts["metrics"] == {"Set5 x2 PSNR-Y": 30.125, "note": "untrained"}
    assert facts["facts"] == {"scale": 2, "colour_space": "RGB", "range": [0, 1]}
    assert facts["exported_with"] == {"torch": torch.__version__, "onnx": onnx.__version__,
                                      "onnxruntime": ort.__version__}


def test_card_has_sections_metrics_and_sha256(
        exported: dict[str, tuple[nn.Module, ExportResult]]) -> None:
    _, result = exported["pixel-shuffle"]
    card = result.card_path.read_text()
    assert card.startswith("# test-pixel-shuffle\n\nTiny x2 test upscaler.\n")
    sections = ["Architecture", "Parameters", "Inputs and outputs", "Training data", "Training",
                "Validation", "Parity", "File"]
    positions = [card.index(f"\n## {section}\n") for section in sections]
    assert positions == sorted(positions)
    assert "| Set5 x2 PSNR-Y | 30.125 |" in card
    assert "| note | untrained |" in card
    assert "| output | `output` | 1x3x2*heightx2*width | float32 |" in card
    assert "1x3x17x23" in card
    assert f"{result.parameters:,}" in card
    assert result.sha256 in card


def test_reexport_is_byte_identical(
        exported: dict[str, tuple[nn.Module, ExportResult]], tmp_path: Path) -> None:
    module, first = exported["pixel-shuffle"]
    again = _export(module, "test-pixel-shuffle", tmp_path)
    assert again.sha256 == first.sha256


def test_graph_that_differs_from_eager_raises_parity_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(ParityError, match=r"export-only: parity failed on inputs "
                                          r"image=1x3x32x40: output 'output' differs") as info:
        _export(ExportOnlyOffset(), "export-only", tmp_path)
    assert info.value.model == "export-only"
    assert info.value.max_abs_error == pytest.approx(1.0)
    assert not list(tmp_path.iterdir())  # a failed export leaves no model behind


def test_check_parity_against_another_module_raises(
        exported: dict[str, tuple[nn.Module, ExportResult]]) -> None:
    _, result = exported["pixel-shuffle"]
    torch.manual_seed(1)  # same architecture, other weights
    with pytest.raises(ParityError, match=r"^test-pixel-shuffle: parity failed on inputs "
                                          r"image=1x3x17x23: .*max abs error"):
        check_parity(ShuffleNet(), result.onnx_path, {"image": _image(17, 23)},
                     atol=1e-4, rtol=1e-3)


def test_check_parity_on_size_baked_into_graph_raises(tmp_path: Path) -> None:
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["output"])],
                              "fixed", [image], [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fixed.onnx")
    with pytest.raises(ParityError, match=r"^fixed: .*image=1x3x5x7: ONNX Runtime failed"):
        check_parity(nn.Identity(), tmp_path / "fixed.onnx", {"image": _image(5, 7)},
                     atol=1e-4, rtol=1e-3)


def test_size_pinned_by_python_int_raises_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"^pinned: torch.export could not capture .*"
                                          r"image.*1, 3, 32, 40"):
        _export(ShapeToInt(), "pinned", tmp_path)
    assert not list(tmp_path.iterdir())


BAD_REQUESTS: dict[str, tuple[dict[str, object], str]] = {
    "name-with-slash": ({"card": _card("../up")}, r"plain file stem"),
    "unknown-axes-tensor": ({"dynamic_axes": {"img": {2: "height"}}}, r"names 'img'"),
    "axis-out-of-range": ({"dynamic_axes": {"image": {4: "depth"}}}, r"axis 4 .* out of range"),
    "no-other-size": ({"parity_inputs": None}, r"other than the example.*image\[2\] \(height\)"),
    "parity-input-names": ({"parity_inputs": [{"img": _image(9, 9)}]}, r"parity input names"),
    "facts-not-json": ({"card": _card("bad", facts={"path": Path("x")})}, r"facts .*JSON"),
}


@pytest.mark.parametrize(("changes", "message"), BAD_REQUESTS.values(), ids=list(BAD_REQUESTS))
def test_incoherent_request_raises_export_error_before_exporting(
        tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        _export(ShuffleNet(), "bad", tmp_path, **changes)
    assert not list(tmp_path.iterdir())
