"""A meta-learned starting point for the tile networks (init=learned).

Learned initialisation (Tancik et al. 2021, "Learned Initializations for Optimizing
Coordinate-Based Neural Representations"), trained with Reptile (Nichol et al. 2018): every
tile network starts from one set of weights meta-learned on natural-image patches, from which
the fit's own optimiser (Adam at refit's rate) reaches a good fit in far fewer steps than from
SIREN's random initialisation. The weights ship as `models/refit-init.onnx` (one tile network,
coords [1, points, 2] -> values), trained by `python -m exporters.refit_init`; its sidecar
records the network shape they belong to, which a fit must match.

The ridge solver's basis (`models/refit-basis.onnx`, `train-basis` in the same exporter) is
stored the same way, without an output layer: the sine layers every tile shares, trained
through the closed-form fit itself; its sidecar adds the solver, the feature count and the
ridge penalty learned with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from imgproc import ModelError, ModelFile
from imgproc_plugins.siren.network import SirenConfig, TiledSiren

INIT_MODEL = "refit-init"  # the Adam solver's start (all layers)
BASIS_MODEL = "refit-basis"  # the ridge solver's shared sine layers
MODELS = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class LearnedInit:
    """One tile network's starting weights (in `TiledSiren.state_dict()` order and names,
    without the tile dimension; the ridge solver's basis has no output layer) and the
    settings they were learned for."""

    weights: dict[str, torch.Tensor]
    width: int
    depth: int
    omega0: float
    tile: int
    pixels_per_unit: float
    solver: str = "adam"
    features: int = 0  # 0: width
    ridge: float = 1e-6  # the ridge solver's penalty the basis was trained with

    def mismatch(self, config: SirenConfig) -> str | None:
        """Return why `config` cannot start from these weights, or None when it can."""
        wanted = {"hidden": (config.width, self.width), "depth": (config.depth, self.depth),
                  "features": (config.features or config.width, self.features or self.width),
                  "omega0": (config.omega0, self.omega0), "tile": (config.tile, self.tile),
                  "pixels_per_unit": (config.pixels_per_unit, self.pixels_per_unit)}
        wrong = [f"{name}={mine:g} (learned for {theirs:g})"
                 for name, (mine, theirs) in wanted.items() if mine != theirs]
        if config.solver != self.solver:
            wrong.insert(0, f"solver={config.solver} (learned for {self.solver})")
        return ", ".join(wrong) or None

    def config(self) -> SirenConfig:
        """Return the default SirenConfig with the network shape (and ridge) learned for."""
        return config_for(self.facts())

    def facts(self) -> dict[str, float | int | str]:
        """Return the sidecar facts `load` reads back (the exporter writes them)."""
        facts: dict[str, float | int | str] = {
            "width": self.width, "depth": self.depth, "omega0": self.omega0,
            "tile": self.tile, "pixels_per_unit": self.pixels_per_unit}
        if self.solver != "adam":
            facts |= {"solver": self.solver, "features": self.features, "ridge": self.ridge}
        return facts


def config_for(facts: dict[str, float | int | str]) -> SirenConfig:
    """Return the default SirenConfig with the network shape that `facts` records."""
    return SirenConfig(solver=str(facts.get("solver", "adam")), width=int(facts["width"]),
                       depth=int(facts["depth"]), features=int(facts.get("features", 0)),
                       ridge=float(facts.get("ridge", SirenConfig.ridge)),
                       omega0=float(facts["omega0"]), tile=int(facts["tile"]),
                       pixels_per_unit=float(facts["pixels_per_unit"]))


def load(model: ModelFile | None = None) -> LearnedInit:
    """Return the learned initialisation stored in `model` (default: the shipped one), read
    once per file and checked against its sha256."""
    model = model or ModelFile.from_facts(MODELS / f"{INIT_MODEL}.json")
    return _load(str(model.path), model.sha256, tuple(sorted(model.facts.items())))


@lru_cache(maxsize=2)
def _load(path: str, sha256: str, facts: tuple[tuple[str, float | int], ...]) -> LearnedInit:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ModelError(f"{path}: cannot read the learned initialisation: {error}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelError(f"{path} does not match its recorded sha256 (corrupt or replaced)")
    found = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
             for i in onnx.load_from_string(data).graph.initializer}
    config = config_for(dict(facts))
    names = _learned_names(TiledSiren(1, channels=3, config=config))
    missing = [name for name in names if name not in found]
    if missing:
        raise ModelError(f"{path}: no initializer named {', '.join(missing)}")
    return from_weights({name: found[name][0] for name in names}, config)


def _learned_names(model: TiledSiren) -> list[str]:
    # The ridge solver solves each tile's output layer: its basis is the sine layers only.
    return [name for name in model.state_dict()
            if not (model.shared and name.startswith("out_"))]


def load_into(model: TiledSiren, init: LearnedInit) -> None:
    """Start every tile network of `model` from the learned weights (those it has)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in init.weights:
                param.data = init.weights[name].expand_as(param).clone()


def from_weights(weights: dict[str, torch.Tensor], config: SirenConfig) -> LearnedInit:
    """Return one tile network's weights as a LearnedInit for `config`'s network shape."""
    return LearnedInit(weights, width=config.width, depth=config.depth, omega0=config.omega0,
                       tile=config.tile, pixels_per_unit=config.pixels_per_unit,
                       solver=config.solver, features=config.features, ridge=config.ridge)


def from_model(model: TiledSiren, config: SirenConfig) -> LearnedInit:
    """Return the first tile network of `model` as a LearnedInit (the meta-trainer's state)."""
    return from_weights({name: p.detach()[0].clone() for name, p in model.named_parameters()
                         if name in _learned_names(model)}, config)
