"""The tile-network grid: its settings, where each tile sits, and the batched SIREN model."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from imgproc import tile_starts


@dataclass(frozen=True)
class SirenConfig:
    """Network and fit settings. The defaults are the Adam fit (merge's method=siren uses them;
    measured to fit a 512x512 photo to 30 dB in < 60 s); refit's defaults are the ridge
    solver's (its learned basis's shape)."""

    # adam: every layer of every tile network trained by Adam; ridge: the sine layers are
    # shared by all tiles (a learned basis) and each tile's linear output layer is the
    # closed-form ridge solution on their features (one solve instead of hundreds of steps).
    solver: str = "adam"
    width: int = 32  # hidden units per tile network
    depth: int = 3  # sine layers (the first, with omega0 on its input, and the hidden ones)
    features: int = 0  # units of the last sine layer, the features the output mixes (0: width)
    ridge: float = 1e-6  # ridge solver: penalty on the output weights, per pixel
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
    warmup: int = 0  # Adam steps over which the learning rate ramps up linearly (0: none)
    decay: float = 0.0  # rate factor reached at the last step, exponentially (0: constant)
    sample: float = 1.0  # share of each tile's pixels that one step fits (random each step)


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
    """Independent SIRENs, one per tile, evaluated as one batched model. With the ridge
    solver the sine layers have one copy (tile dimension 1) that every tile shares."""

    def __init__(self, tiles: int, *, channels: int, config: SirenConfig) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(config.seed)
        w0, n = config.omega0, config.features or config.width
        sizes = [2] + [config.width] * (config.depth - 1) + [n]
        self.omega0 = w0
        self.shared = config.solver == "ridge"
        copies = 1 if self.shared else tiles
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            # First layer U(-1/n, 1/n); later ones U(-sqrt(6/n)/w0, sqrt(6/n)/w0) (the paper).
            # Stored already multiplied by w0: sin(w0 (Wx + b)) = sin(W'x + b'), which saves
            # an element-wise multiply forward and backward (a quarter of the step time).
            bound = 1 / fan_in if i == 0 else math.sqrt(6 / fan_in) / w0
            self.weights.append(_uniform((copies, fan_in, fan_out), w0 * bound, g))
            self.biases.append(_uniform((copies, 1, fan_out), w0 / math.sqrt(fan_in), g))
        # The ridge solver solves the output layer: drawing it would be wasted (seconds at 12 MP).
        self.out_weight = (torch.nn.Parameter(torch.zeros(tiles, n, channels)) if self.shared
                           else _uniform((tiles, n, channels), math.sqrt(6 / n) / w0, g))
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
            for mine, theirs in zip(part._per_tile(), self._per_tile(), strict=True):
                mine.data = theirs.data[tiles].clone()
        return part

    def put(self, tiles: slice, part: TiledSiren) -> None:
        """Copy the networks of `part` back into `tiles`."""
        with torch.no_grad():
            for mine, theirs in zip(self._per_tile(), part._per_tile(), strict=True):
                mine.data[tiles] = theirs.data

    def _per_tile(self) -> list[torch.nn.Parameter]:
        sine = [] if self.shared else [*self.weights, *self.biases]
        return [*sine, self.out_weight, self.out_bias]

    def features(self, coords: torch.Tensor) -> torch.Tensor:
        """Return the last sine layer [tiles, points, features] at coords [tiles, points, 2]
        (shared layers: [1, points, features] from coords [1, points, 2] serve every tile)."""
        h = coords
        for weight, bias in zip(self.weights, self.biases, strict=True):
            h = torch.sin(_affine(h, weight, bias))
        return h

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Return values [tiles, points, channels] at tile-local coords [tiles, points, 2]
        (or [1, points, 2]: the same coords for every tile)."""
        return _affine(self.features(coords), self.out_weight, self.out_bias)


def _affine(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # baddbmm (fused) wants equal batches; otherwise one side broadcasts over the tiles.
    return torch.baddbmm(bias, h, weight) if len(weight) == len(h) else h @ weight + bias


def _uniform(shape: tuple[int, ...], bound: float, g: torch.Generator) -> torch.nn.Parameter:
    return torch.nn.Parameter((torch.rand(shape, generator=g) * 2 - 1) * bound)
