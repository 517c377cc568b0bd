"""SIREN (Sitzmann et al. 2020) fitted to an image as a grid of small networks trained together.

One network over a large image is impractical (the research notes): instead the image is cut
into overlapping tiles and each tile gets a small SIREN f(u, v) -> values; all tile networks are
one batched model (weights [tiles, fan_in, fan_out]) trained full-batch in one optimiser.
Coordinates are tile-local in [-1, 1]; pixel i covers [i, i + 1) and is sampled at its centre,
so any output grid maps onto the same continuous image plane and scale 1 reproduces the input.

The fitted network becomes ONNX by writing the graph directly (MatMul, Add, Sin with the
weights as initializers): no tracing, so nothing about image size is baked in.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from imgproc.tiles import tile_starts

ONNX_INPUT, ONNX_OUTPUT = "coords", "values"


@dataclass(frozen=True)
class SirenConfig:
    """Network and fit settings (defaults measured to fit a 512x512 photo to 30 dB in < 60 s;
    the default target goes further, since resampling quality follows fit quality)."""

    width: int = 32  # hidden units per tile network
    depth: int = 3  # sine layers (the first, with omega0 on its input, and the hidden ones)
    omega0: float = 30.0
    lr: float = 2e-3
    steps: int = 300
    target_psnr: float = 36.0  # stop early once the fit reaches this on the image's own pixels
    seed: int = 0
    tile: int = 32
    overlap: int = 4
    # Pixels per coordinate unit. The paper maps a 256-pixel image onto [-1, 1] (128 px per
    # unit); tile-local [-1, 1] coordinates would make w0 = 30 sixteen times higher per pixel,
    # and the network would wiggle between pixel centres (bad for resampling and derivatives).
    pixels_per_unit: float = 64.0
    max_seconds: float = 0.0  # stop after this long (0: no time limit)


@dataclass(frozen=True)
class Layout:
    """Where each tile network sits on the input image (pixels)."""

    height: int
    width: int
    tiles: list[tuple[int, int, int, int]]  # (y0, x0, tile height, tile width)

    @classmethod
    def for_image(cls, height: int, width: int, tile: int, overlap: int) -> Layout:
        """Return the tile layout covering an image."""
        th, tw = min(tile, height), min(tile, width)
        return cls(height, width, [(y, x, th, tw) for y in tile_starts(height, tile, overlap)
                                   for x in tile_starts(width, tile, overlap)])


class TiledSiren(torch.nn.Module):
    """Independent SIRENs, one per tile, evaluated as one batched model."""

    def __init__(self, tiles: int, *, channels: int, config: SirenConfig) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(config.seed)
        w0, n = config.omega0, config.width
        sizes = [2] + [n] * config.depth
        self.omega0 = w0
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            # First layer U(-1/n, 1/n); later ones U(-sqrt(6/n)/w0, sqrt(6/n)/w0) (the paper).
            # Stored already multiplied by w0: sin(w0 (Wx + b)) = sin(W'x + b'), which saves
            # an element-wise multiply forward and backward (a quarter of the step time).
            bound = 1 / fan_in if i == 0 else math.sqrt(6 / fan_in) / w0
            self.weights.append(_uniform((tiles, fan_in, fan_out), w0 * bound, g))
            self.biases.append(_uniform((tiles, 1, fan_out), w0 / math.sqrt(fan_in), g))
        self.out_weight = _uniform((tiles, n, channels), math.sqrt(6 / n) / w0, g)
        self.out_bias = torch.nn.Parameter(torch.zeros(tiles, 1, channels))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Return Adam groups giving the w0-scaled sine layers w0 times the learning rate, so
        training matches the unscaled parametrisation (Adam steps are scale-free)."""
        sine = [*self.weights, *self.biases]
        return [{"params": sine, "lr": lr * self.omega0},
                {"params": [self.out_weight, self.out_bias], "lr": lr}]

    def take(self, tiles: slice) -> TiledSiren:
        """Return a model holding copies of the networks of `tiles` (to train separately)."""
        part = copy.deepcopy(self)
        with torch.no_grad():
            for mine, theirs in zip(part.parameters(), self.parameters(), strict=True):
                mine.data = theirs.data[tiles].clone()
        return part

    def put(self, tiles: slice, part: TiledSiren) -> None:
        """Copy the networks of `part` back into `tiles`."""
        with torch.no_grad():
            for mine, theirs in zip(self.parameters(), part.parameters(), strict=True):
                mine.data[tiles] = theirs.data

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Return values [tiles, points, channels] at tile-local coords [tiles, points, 2]."""
        h = coords
        for weight, bias in zip(self.weights, self.biases, strict=True):
            h = torch.sin(torch.baddbmm(bias, h, weight))
        return torch.baddbmm(self.out_bias, h, self.out_weight)


def _uniform(shape: tuple[int, ...], bound: float, g: torch.Generator) -> torch.nn.Parameter:
    return torch.nn.Parameter((torch.rand(shape, generator=g) * 2 - 1) * bound)


@dataclass
class Fit:
    """A fitted image: the model, its layout and how the fit went."""

    model: TiledSiren
    layout: Layout
    config: SirenConfig
    steps: int
    psnr: float
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)  # step, s, psnr


def pixel_coords(layout: Layout, pixels_per_unit: float) -> torch.Tensor:
    """Return every tile's own pixel centres in tile-local coordinates [tiles, th*tw, 2]
    (origin at the tile centre, `pixels_per_unit` pixels per unit)."""
    _, _, th, tw = layout.tiles[0]
    v = ((torch.arange(th) + 0.5) - th / 2) / pixels_per_unit
    u = ((torch.arange(tw) + 0.5) - tw / 2) / pixels_per_unit
    grid = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1).reshape(1, -1, 2)
    return grid.expand(len(layout.tiles), -1, -1).contiguous()


def tile_targets(values: np.ndarray, layout: Layout) -> torch.Tensor:
    """Return each tile's pixels [tiles, th*tw, channels] from an H x W x C array."""
    return torch.stack([torch.from_numpy(np.ascontiguousarray(
        values[y:y + h, x:x + w])).reshape(h * w, -1) for y, x, h, w in layout.tiles])


# loss(model, coords, out, tiles): `model` holds the networks of tiles[tiles] (a slice of the
# layout), `coords` their pixel centres and `out` the model there.
Objective = Callable[[TiledSiren, torch.Tensor, torch.Tensor, slice], torch.Tensor]
GROUP_TILES = 512  # tile networks trained at once: bounds memory on large images


def fit_image(image: np.ndarray, config: SirenConfig, *, loss: Objective | None = None) -> Fit:
    """Return a SIREN grid fitted to an H x W x C float image (MSE on its pixels by default).

    The tile networks are independent, so a large image is fitted GROUP_TILES tiles at a time
    (memory stays bounded; each group stops on its own). `loss`, when given, is minimised
    instead of the MSE; the PSNR that stops a group is still measured against `image`
    (gradient supervision for the merge plugin uses this).
    """
    layout = Layout.for_image(image.shape[0], image.shape[1], config.tile, config.overlap)
    model = TiledSiren(len(layout.tiles), channels=image.shape[2], config=config)
    coords = pixel_coords(layout, config.pixels_per_unit)
    target = tile_targets(image.astype(np.float32), layout)
    objective = loss or (lambda m, c, out, tiles: torch.mean((out - target[tiles]) ** 2))
    start, history, steps = time.perf_counter(), [], 0
    for first in range(0, len(layout.tiles), GROUP_TILES):
        tiles = slice(first, first + GROUP_TILES)
        budget = config.max_seconds * len(range(*tiles.indices(len(layout.tiles)))) / len(
            layout.tiles)
        group = model.take(tiles)
        history = _train(group, coords[tiles], target[tiles],
                         functools.partial(_on_tiles, objective, tiles), config, budget)
        model.put(tiles, group)
        steps = max(steps, history[-1][0])
    with torch.no_grad():
        psnr = _psnr(float(torch.mean((model(coords) - target) ** 2)))
    return Fit(model, layout, config, steps, psnr, time.perf_counter() - start, history)


def _on_tiles(objective: Objective, tiles: slice, model: TiledSiren, coords: torch.Tensor,
              out: torch.Tensor) -> torch.Tensor:
    return objective(model, coords, out, tiles)


def _train(model: TiledSiren, coords: torch.Tensor, target: torch.Tensor,
           objective: Callable[[TiledSiren, torch.Tensor, torch.Tensor], torch.Tensor],
           config: SirenConfig, budget: float) -> list[tuple[int, float, float]]:
    """Train one group of tile networks; return its (step, seconds, psnr) history."""
    optimiser = torch.optim.Adam(model.param_groups(config.lr))
    start, history = time.perf_counter(), []
    for step in range(1, config.steps + 1):
        optimiser.zero_grad(set_to_none=True)
        out = model(coords)
        objective(model, coords, out).backward()
        optimiser.step()
        psnr = _psnr(float(torch.mean((out.detach() - target) ** 2)))
        history.append((step, time.perf_counter() - start, psnr))
        if psnr >= config.target_psnr or (budget and history[-1][1] >= budget):
            break
    return history


def gradient_objective(gx: np.ndarray, gy: np.ndarray, means_of: np.ndarray,
                       layout: Layout, pixels_per_unit: float) -> Objective:
    """Return a loss matching the network's forward differences to a target gradient field
    (gx, gy: H x W x C, forward differences, 0 at the far edges) - gradient supervision.

    Differences of the network one pixel apart are compared with the discrete field, the
    quantity the exact Poisson solve matches too. Gradients leave each tile's constant free,
    so each tile's mean is tied to that of `means_of` (e.g. the exact solve) as well.
    """
    tx, ty = tile_targets(gx, layout), tile_targets(gy, layout)
    height, width = gx.shape[:2]
    valid_x = np.ones((height, width, 1), np.float32)
    valid_x[:, -1] = 0.0  # no neighbour to the right of the last column
    valid_y = np.ones((height, width, 1), np.float32)
    valid_y[-1] = 0.0
    mx, my = tile_targets(valid_x, layout), tile_targets(valid_y, layout)
    means = tile_targets(means_of.astype(np.float32), layout).mean(dim=1)
    step = 1.0 / pixels_per_unit

    def loss(model: TiledSiren, coords: torch.Tensor, out: torch.Tensor,
             tiles: slice) -> torch.Tensor:
        dx = model(coords + coords.new_tensor([step, 0.0])) - out
        dy = model(coords + coords.new_tensor([0.0, step])) - out
        fit = torch.mean(mx[tiles] * (dx - tx[tiles]) ** 2) \
            + torch.mean(my[tiles] * (dy - ty[tiles]) ** 2)
        return fit + torch.mean((out.mean(dim=1) - means[tiles]) ** 2)

    return loss


def _psnr(mse: float) -> float:
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


# -- sampling any output grid -------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """The output pixels one tile renders: rows r0:r1, columns c0:c1, and their blend weights."""

    r0: int
    r1: int
    c0: int
    c1: int
    weight: np.ndarray  # (r1 - r0) x (c1 - c0)


def output_blocks(layout: Layout, out_h: int, out_w: int) -> list[Block]:
    """Return, per tile, the output pixels whose centres fall inside it, with blend weights."""
    blocks = []
    for y0, x0, th, tw in layout.tiles:
        rows, wy = _axis(y0, th, layout.height, out_h)
        cols, wx = _axis(x0, tw, layout.width, out_w)
        blocks.append(Block(rows[0], rows[1], cols[0], cols[1], np.outer(wy, wx)))
    return blocks


def _axis(start: int, size: int, length: int, out_len: int) -> tuple[tuple[int, int], np.ndarray]:
    # Output pixel j has its centre at X = (j + 0.5) * length / out_len on the input plane.
    first = math.ceil(start * out_len / length - 0.5)
    last = math.ceil((start + size) * out_len / length - 0.5)
    first, last = max(first, 0), min(last, out_len)
    centres = (np.arange(first, last) + 0.5) * length / out_len
    # Weight ramps down towards a tile edge that has a neighbour, never at the image border.
    to_start = centres - start if start > 0 else np.inf
    to_end = start + size - centres if start + size < length else np.inf
    ramp = np.minimum(to_start, to_end) / max(size / 4, 1)
    return (first, last), np.clip(ramp, 1e-3, 1.0).astype(np.float32)


def block_coords(layout: Layout, blocks: list[Block], out_h: int, out_w: int,
                 pixels_per_unit: float) -> tuple[np.ndarray, int]:
    """Return tile-local coords [tiles, points, 2] of every block (zero-padded) and points."""
    points = max((b.r1 - b.r0) * (b.c1 - b.c0) for b in blocks)
    coords = np.zeros((len(blocks), max(points, 1), 2), dtype=np.float32)
    for i, ((y0, x0, th, tw), b) in enumerate(zip(layout.tiles, blocks, strict=True)):
        ys = ((np.arange(b.r0, b.r1) + 0.5) * layout.height / out_h - y0 - th / 2)
        xs = ((np.arange(b.c0, b.c1) + 0.5) * layout.width / out_w - x0 - tw / 2)
        ys, xs = ys / pixels_per_unit, xs / pixels_per_unit
        grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(-1, 2)
        coords[i, : len(grid)] = grid
    return coords, points


def blend(values: np.ndarray, blocks: list[Block], out_h: int, out_w: int) -> np.ndarray:
    """Return the H x W x C image from per-tile block values [tiles, points, C], blended."""
    channels = values.shape[2]
    out = np.zeros((out_h, out_w, channels), dtype=np.float32)
    total = np.zeros((out_h, out_w, 1), dtype=np.float32)
    for i, b in enumerate(blocks):
        h, w = b.r1 - b.r0, b.c1 - b.c0
        tile_values = values[i, : h * w].reshape(h, w, channels)
        out[b.r0:b.r1, b.c0:b.c1] += tile_values * b.weight[..., None]
        total[b.r0:b.r1, b.c0:b.c1] += b.weight[..., None]
    return out / np.maximum(total, 1e-12)


def render(run: Callable[[np.ndarray], np.ndarray], layout: Layout, out_h: int, out_w: int, *,
           pixels_per_unit: float, chunk: int = 4096) -> np.ndarray:
    """Return the fitted image sampled on an out_h x out_w grid; `run` maps coords to values
    (ONNX Runtime or PyTorch), called on chunks of points so memory stays bounded."""
    blocks = output_blocks(layout, out_h, out_w)
    coords, points = block_coords(layout, blocks, out_h, out_w, pixels_per_unit)
    values = np.concatenate([run(np.ascontiguousarray(coords[:, i:i + chunk]))
                             for i in range(0, coords.shape[1], chunk)], axis=1)
    return blend(values, blocks, out_h, out_w)


# -- ONNX ---------------------------------------------------------------------------------------

def to_onnx(fit: Fit, *, facts: dict[str, Any] | None = None) -> onnx.ModelProto:
    """Return the fitted network as an ONNX model: coords [tiles, points, 2] -> values; the
    layout, config and `facts` go into its metadata so it can be rendered again later."""
    model = fit.model
    inits, nodes, h = [], [], ONNX_INPUT
    for i, (weight, bias) in enumerate(zip(model.weights, model.biases, strict=True)):
        inits += [_init(f"w{i}", weight), _init(f"b{i}", bias)]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"z{i}"]),
                  helper.make_node("Sin", [f"z{i}"], [f"h{i}"])]
        h = f"h{i}"
    inits += [_init("w_out", model.out_weight), _init("b_out", model.out_bias)]
    nodes += [helper.make_node("MatMul", [h, "w_out"], ["m_out"]),
              helper.make_node("Add", ["m_out", "b_out"], [ONNX_OUTPUT])]
    tiles, channels = model.out_weight.shape[0], model.out_weight.shape[2]
    graph = helper.make_graph(
        nodes, "tiled_siren",
        [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, [tiles, "points", 2])],
        [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT,
                                       [tiles, "points", channels])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="imgproc.siren")
    proto.ir_version = 8
    meta = {"layout": json.dumps(asdict(fit.layout)), "config": json.dumps(asdict(fit.config)),
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
