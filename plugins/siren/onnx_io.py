"""A fitted tile grid as an ONNX graph written directly (MatMul, Add, Sin with the weights as
initializers): no tracing, so nothing about image size is baked in; the layout and settings
travel in its metadata so `imgproc render` can sample it again later."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from imgproc import UsageError
from imgproc_plugins.siren.fit import Fit
from imgproc_plugins.siren.network import Layout, SirenConfig

ONNX_INPUT, ONNX_OUTPUT = "coords", "values"


def to_onnx(fit: Fit, *, facts: dict[str, Any] | None = None) -> onnx.ModelProto:
    """Return the fitted network as an ONNX model: coords [tiles, points, 2] -> values; the
    layout, config and `facts` go into its metadata so it can be rendered again later."""
    model = fit.model
    tiles, features, channels = model.out_weight.shape
    inits, nodes, h = [], [], ONNX_INPUT
    if model.shared:  # one matrix product over every tile's points, not one per tile
        inits.append(numpy_helper.from_array(np.array([-1, 2], np.int64), "flat"))
        nodes.append(helper.make_node("Reshape", [h, "flat"], ["flat_coords"]))
        h = "flat_coords"
    for i, (weight, bias) in enumerate(zip(model.weights, model.biases, strict=True)):
        inits += [_init(f"w{i}", weight[0] if model.shared else weight),
                  _init(f"b{i}", bias[0] if model.shared else bias)]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"]),
                  helper.make_node("Sin", [f"z{i}"], [f"h{i}"])]
        h = f"h{i}"
    if model.shared:  # back to [coordinate sets, points, features], sizes read at run time
        inits += [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
                  (("zero", [0]), ("one", [1]), ("rest", [-1, features]))]
        nodes += [helper.make_node("Shape", [ONNX_INPUT], ["coords_shape"]),
                  helper.make_node("Slice", ["coords_shape", "zero", "one"], ["sets"]),
                  helper.make_node("Concat", ["sets", "rest"], ["unflat"], axis=0),
                  helper.make_node("Reshape", [h, "unflat"], ["tiled"])]
        h = "tiled"
    inits += [_init("w_out", model.out_weight), _init("b_out", model.out_bias)]
    nodes += [helper.make_node("MatMul", [h, "w_out"], ["m_out"]),
              helper.make_node("Add", ["m_out", "b_out"], [ONNX_OUTPUT])]
    graph = helper.make_graph(
        nodes, "tiled_siren",
        [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT,
                                       [tiles if not model.shared else "sets", "points", 2])],
        [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT,
                                       [tiles, "points", channels])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="imgproc.siren")
    proto.ir_version = 8
    layout = fit.layout  # not asdict(): it deep-copies every tile (seconds at 12 MP)
    meta = {"layout": json.dumps({"height": layout.height, "width": layout.width,
                                  "tiles": layout.tiles}),
            "config": json.dumps(asdict(fit.config)),
            "fit": json.dumps({"steps": fit.steps, "psnr": fit.psnr, "seconds": fit.seconds}),
            **{k: json.dumps(v) for k, v in (facts or {}).items()}}
    helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    return proto


def _init(name: str, tensor: torch.Tensor) -> TensorProto:
    return numpy_helper.from_array(tensor.detach().numpy().astype(np.float32), name)


def stored_fit(proto: onnx.ModelProto) -> tuple[Layout, SirenConfig]:
    """Return the layout and config stored in a fitted network's metadata."""
    meta = {p.key: p.value for p in proto.metadata_props}
    data = json.loads(meta["layout"])
    layout = Layout(data["height"], data["width"], [tuple(t) for t in data["tiles"]])
    return layout, SirenConfig(**json.loads(meta["config"]))


def read_network(data: bytes, *, name: str) -> tuple[Layout, SirenConfig]:
    """Return the layout and config of a network saved by refit (`save_network=true`); raise
    UsageError saying what the file is when it is not one (an image, another ONNX model)."""
    from google.protobuf.message import DecodeError

    hint = "a network saved by `imgproc run -p refit -O save_network=true` (*.network.onnx)"
    try:
        proto = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        proto = None
    if proto is None or not proto.graph.node:
        raise UsageError(f"{name} is not an ONNX model ({_looks_like(data)}); render needs "
                         f"{hint}")
    keys = {p.key for p in proto.metadata_props}
    if not {"layout", "config"} <= keys:
        inputs = ", ".join(i.name for i in proto.graph.input) or "none"
        raise UsageError(f"{name} is an ONNX model ({proto.producer_name or 'unknown producer'}"
                         f", inputs: {inputs}) but not a fitted SIREN; render needs {hint}")
    try:
        return stored_fit(proto)
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(f"{name}: its refit metadata is damaged ({error})") from None


def _looks_like(data: bytes) -> str:
    """Return what the first bytes of a file say it is, for an error message."""
    signatures = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image",
                  b"GIF8": "a GIF image", b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image",
                  b"RIFF": "a RIFF file (WebP?)", b"BM": "a BMP image", b"PK": "a zip archive"}
    found = next((kind for magic, kind in signatures.items() if data.startswith(magic)), None)
    return found or ("an empty file" if not data else "unrecognised contents")
