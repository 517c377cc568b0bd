"""A meta-learned starting point for the tile networks, and the few steps it learned to take.

Learned initialisation (Tancik et al. 2021; Meta-SGD, Li et al. 2017): the sine layers of every
tile start from one set of weights meta-learned on natural-image patches (`refit-init.onnx`
next to the models, trained by `python -m exporters.refit_init`). The output layer then starts
at its least-squares optimum for those features (a ridge solve; the features are the same at
every full-size tile, so one factorisation serves them all), and `len(step_lrs)` plain gradient
steps follow with per-step, per-tensor learning rates that were meta-learned with the weights.
The fit continues with Adam afterwards, like a random start, when the target is not yet met.

Everything here is functional over a flat parameter list [w0, b0, w1, b1, ..., w_out, b_out]
(tile dimension first), so the meta-trainer differentiates through the same code that runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from imgproc import ModelError, ModelFile
from imgproc_plugins.siren.network import SirenConfig, TiledSiren

INIT_MODEL = "refit-init"
MODELS = Path(__file__).resolve().parent.parent / "models"
Params = list[torch.Tensor]


@dataclass(frozen=True)
class LearnedInit:
    """Meta-learned sine-layer weights (w0-scaled, as `TiledSiren` stores them), the learned
    step sizes and ridge, and the network shape they belong to."""

    sine: tuple[torch.Tensor, ...]  # w0 [2, width], b0 [1, width], w1, b1, ...
    step_lrs: torch.Tensor  # [steps, 2 * depth + 2]: one rate per step and parameter tensor
    log_ridge: torch.Tensor  # [] ridge of the output-layer solve, relative to mean feature power
    omega0: float
    tile: int
    pixels_per_unit: float

    @property
    def width(self) -> int:
        """Return the hidden units per tile network."""
        return int(self.sine[0].shape[1])

    @property
    def depth(self) -> int:
        """Return the number of sine layers."""
        return len(self.sine) // 2

    def mismatch(self, config: SirenConfig) -> str | None:
        """Return why `config` cannot start from these weights, or None when it can."""
        wanted = {"hidden": (config.width, self.width), "depth": (config.depth, self.depth),
                  "omega0": (config.omega0, self.omega0), "tile": (config.tile, self.tile),
                  "pixels_per_unit": (config.pixels_per_unit, self.pixels_per_unit)}
        wrong = [f"{name}={mine:g} (learned for {theirs:g})"
                 for name, (mine, theirs) in wanted.items() if mine != theirs]
        return ", ".join(wrong) or None


def load(model: ModelFile | None = None) -> LearnedInit:
    """Return the learned initialisation stored in `model` (default: the shipped one)."""
    model = model or ModelFile.from_facts(MODELS / f"{INIT_MODEL}.json")
    try:
        proto = onnx.load(str(model.path))
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as error:  # type: ignore
        raise ModelError(f"{model.path}: cannot read the learned initialisation: {error}") from None
    found = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
             for i in proto.graph.initializer}
    depth = int(model.facts["depth"])
    names = [f"{kind}.{i}" for i in range(depth) for kind in ("weights", "biases")]
    missing = [n for n in names if n not in found]
    if missing:
        raise ModelError(f"{model.path}: no initializer named {', '.join(missing)}")
    return LearnedInit(
        sine=tuple(found[n] for n in names),
        step_lrs=torch.tensor(model.facts["step_lrs"], dtype=torch.float32),
        log_ridge=torch.tensor(float(model.facts["log_ridge"])),
        omega0=float(model.facts["omega0"]), tile=int(model.facts["tile"]),
        pixels_per_unit=float(model.facts["pixels_per_unit"]))


def facts_of(init: LearnedInit) -> dict[str, object]:
    """Return the sidecar facts `load` reads back (the exporter writes them)."""
    return {"depth": init.depth, "width": init.width, "omega0": init.omega0, "tile": init.tile,
            "pixels_per_unit": init.pixels_per_unit,
            "step_lrs": init.step_lrs.detach().tolist(),
            "log_ridge": float(init.log_ridge.detach())}


def features(sine: Sequence[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Return the last sine layer's output at coords [..., points, 2] (weights broadcast)."""
    h = coords
    for weight, bias in zip(sine[0::2], sine[1::2], strict=True):
        h = torch.sin(h @ weight + bias)
    return h


def forward(params: Params, coords: torch.Tensor) -> torch.Tensor:
    """Return the network [w0, b0, ..., w_out, b_out] at coords [tiles, points, 2]."""
    return features(params[:-2], coords) @ params[-2] + params[-1]


def solve_head(feats: torch.Tensor, targets: torch.Tensor, log_ridge: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the least-squares output layer (weight [tiles, F, C], bias [tiles, 1, C]) for
    features [points, F] shared by all tiles and targets [tiles, points, C]."""
    ones = feats.new_ones(feats.shape[0], 1)
    design = torch.cat([feats, ones], dim=1)  # [P, F + 1]: the bias is one more feature
    gram = design.T @ design / design.shape[0]
    ridge = torch.exp(log_ridge) * torch.diagonal(gram).mean()
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    # One solve for every tile: (D^T D / P + ridge I)^-1 D^T / P, applied to all targets.
    projector = torch.linalg.solve(gram + ridge * eye, design.T / design.shape[0])
    head = torch.einsum("fp,tpc->tfc", projector, targets)
    return head[:, :-1], head[:, -1:]


def tile_losses(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return each tile's mean squared error [tiles] (the tiles' own objectives)."""
    return torch.mean((out - target) ** 2, dim=(1, 2))


def start(init: LearnedInit, coords: torch.Tensor, target: torch.Tensor) -> Params:
    """Return the starting parameters of tiles with pixel coords [tiles, points, 2] (the same
    points in every tile) and targets [tiles, points, C]: learned sine layers, solved head."""
    tiles = target.shape[0]
    head = solve_head(features(init.sine, coords[0]), target, init.log_ridge)
    return [p.expand(tiles, *p.shape) for p in init.sine] + list(head)


def leaves(params: Params) -> Params:
    """Return detached per-tile copies that autograd can differentiate (run time)."""
    return [p.detach().clone().requires_grad_() for p in params]


def adapt(params: Params, coords: torch.Tensor, target: torch.Tensor, step_lrs: torch.Tensor,
          *, create_graph: bool = False) -> tuple[Params, list[float]]:
    """Return the parameters after the learned gradient steps, and the mean squared error
    before each step. With `create_graph` the result stays differentiable (meta-training)."""
    errors = []
    for lrs in step_lrs:
        losses = tile_losses(forward(params, coords), target)
        errors.append(float(losses.detach().mean()))
        grads = torch.autograd.grad(losses.sum(), params, create_graph=create_graph)
        params = [p - lr * g for p, lr, g in zip(params, lrs, grads, strict=True)]
        if not create_graph:  # fresh leaves: no chain of old steps kept alive
            params = [p.detach().requires_grad_() for p in params]
    return params, errors


def load_into(model: TiledSiren, params: Params) -> None:
    """Copy a flat parameter list into `model` (one network per tile)."""
    layers = list(zip(model.weights, model.biases, strict=True))
    mine = [t for pair in layers for t in pair] + [model.out_weight, model.out_bias]
    with torch.no_grad():
        for param, value in zip(mine, params, strict=True):
            param.data = value.detach().expand_as(param.data).clone()


def describe(init: LearnedInit) -> str:
    """Return a one-line summary for logs."""
    return json.dumps({"width": init.width, "depth": init.depth, "steps": len(init.step_lrs),
                       "tile": init.tile, "ridge": float(np.exp(float(init.log_ridge)))})
