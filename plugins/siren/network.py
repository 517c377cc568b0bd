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
