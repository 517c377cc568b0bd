"""Shared fixtures: tiny images, a tiny ONNX model, the test plugins and a CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from imgproc import ModelFile, Processor
from imgproc.cli import cli
from imgproc.registry import Registry, load_registry
from imgproc.session import sha256_file

LOCAL_PLUGINS = Path(__file__).parent / "local_plugins"


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """Return a function that writes a small deterministic image file and returns its path."""

    def write(path: Path, size: tuple[int, int] = (24, 16), mode: str = "RGB",
              **save: Any) -> Path:
        rng = np.random.default_rng(len(str(path)))
        rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb.convert(mode).save(path, **save)
        return path

    return write


@pytest.fixture
def registry() -> Registry:
    """Return a registry with the installed plugins and the tests' local plugins."""
    return load_registry(plugins_dir=LOCAL_PLUGINS)


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Result]:
    """Return a function running the imgproc CLI in-process, in tmp_path, with test plugins."""
    monkeypatch.chdir(tmp_path)  # no stray ./config.toml is picked up
    monkeypatch.delenv("IMGPROC_CONFIG", raising=False)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--plugins-dir", str(LOCAL_PLUGINS), *args])

    return invoke


@pytest.fixture
def halve_model(tmp_path: Path) -> ModelFile:
    """Return a real ONNX model (image * 0.5, dynamic height/width) written under tmp_path."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "height", "width"])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "height", "width"])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    graph = helper.make_graph([helper.make_node("Mul", ["image", "half"], ["output"])],
                              "halve", [image], [output], [half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "models" / "halve.onnx"
    path.parent.mkdir()
    onnx.save(model, path)
    return ModelFile("halve", path, sha256_file(path), ("image",), ("output",))


@pytest.fixture
def halve(halve_model: ModelFile) -> Processor:
    """Return a processor that runs the halve model through a session and the tiling helper."""

    def process(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
        session = context.session("halve")

        def run(tile: np.ndarray) -> np.ndarray:
            nchw = np.ascontiguousarray(tile.transpose(2, 0, 1)[None])
            return session.run({"image": nchw})[0][0].transpose(1, 2, 0)

        return context.tiled(run, images[0])

    return Processor("halve", "Halve every pixel value with a tiny ONNX model.", process,
                     models=(halve_model,))


def read_rgb(path: Path) -> np.ndarray:
    """Return an image file as float32 RGB in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255
