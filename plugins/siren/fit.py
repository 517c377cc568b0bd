"""Fitting a tile-network grid to an image (or, for merge, to a gradient field)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from imgproc_plugins.siren import learned
from imgproc_plugins.siren.network import Layout, SirenConfig, TiledSiren


@dataclass
class Fit:
    """A fitted image: the model, its layout and how the fit went."""

    model: TiledSiren
    layout: Layout
    config: SirenConfig
    steps: int  # Adam steps (0: the ridge solver's one solve)
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
    _, _, h, w = layout.tiles[0]  # every tile has the same size
    windows = np.lib.stride_tricks.sliding_window_view(values, (h, w), axis=(0, 1))
    ys, xs = (np.array([tile[i] for tile in layout.tiles]) for i in (0, 1))
    picked = windows[ys, xs]  # [tiles, C, h, w]: one copy, no per-tile Python
    return torch.from_numpy(np.ascontiguousarray(picked.transpose(0, 2, 3, 1))).reshape(
        len(layout.tiles), h * w, -1)


# loss(model, coords, out, tiles): `model` holds the networks of tiles[tiles] (a slice of the
# layout), `coords` their pixel centres and `out` the model there.
Objective = Callable[[TiledSiren, torch.Tensor, torch.Tensor, slice], torch.Tensor]
GROUP_TILES = 512  # tile networks trained at once: bounds memory on large images
# Below this many tile pixels one thread beats two: each op is too small to share, and on a
# busy machine every op then waits for the second thread (a 36x44 merge fit: 124 s -> 9 s).
SMALL_WORK = 32 * 1024
# With config.sample < 1, steps fit a random share of the pixels (cheaper, and faster per
# pixel: smaller tensors stay in cache) until the fit is FULL_BATCH_DB from its target.
# All pixels again after this share of the step limit, so a fit that is cut off by the
# limit (x4 upsampling inputs: about 34 dB at 300 steps) ends as precise as a full-batch one.
FULL_BATCH_DB = 3.0
SAMPLED_SHARE = 1 / 3
History = list[tuple[int, float, float]]  # (step, seconds, psnr before the step)


def fit_image(image: np.ndarray, config: SirenConfig, *, loss: Objective | None = None,
              init: learned.LearnedInit | None = None) -> Fit:
    """Return a SIREN grid fitted to an H x W x C float image (MSE on its pixels by default).

    config.solver "ridge": one closed-form solve of every tile's output layer on the shared
    sine layers (`solve_outputs`). "adam": the tile networks are independent, so a large
    image is fitted GROUP_TILES tiles at a time (memory stays bounded; each group stops on its
    own). `loss`, when given, is minimised instead of the MSE (Adam only); the PSNR that stops
    a group is still measured against `image` (gradient supervision for the merge plugin uses
    this). `init`, when given, is a learned initialisation (`siren.learned`): every tile
    network (or the shared sine layers) starts from it instead of at random.
    """
    if loss is not None and (config.sample < 1 or config.solver == "ridge"):
        raise ValueError("sample < 1 and the ridge solver fit pixels: they need the pixel loss")
    layout = Layout.for_image(image.shape[0], image.shape[1], config.tile, config.overlap)
    model = TiledSiren(len(layout.tiles), channels=image.shape[2], config=config)
    coords = pixel_coords(layout, config.pixels_per_unit)
    target = tile_targets(image.astype(np.float32), layout)
    start, history, steps = time.perf_counter(), [], 0
    with _threads(1 if target.shape[0] * target.shape[1] < SMALL_WORK else None):
        if config.solver == "ridge":
            if init is not None:
                learned.load_into(model, init)
            squared = solve_outputs(model, coords[:1], target, ridge=config.ridge)
            history = [(0, time.perf_counter() - start, _psnr(squared / target.numel()))]
        else:
            squared, history, steps = _fit_groups(model, coords, target, config, loss=loss,
                                                  init=init)
    psnr = _psnr(squared / target.numel())
    return Fit(model, layout, config, steps, psnr, time.perf_counter() - start, history)


def _fit_groups(model: TiledSiren, coords: torch.Tensor, target: torch.Tensor,
                config: SirenConfig, *, loss: Objective | None,
                init: learned.LearnedInit | None) -> tuple[float, History, int]:
    """Train the tile networks GROUP_TILES at a time with Adam; return the summed squared
    error, the last group's history and the most steps a group took."""
    objective = loss or (lambda m, c, out, tiles: torch.mean((out - target[tiles]) ** 2))
    squared, history, steps, count = 0.0, [], 0, len(target)
    for first in range(0, count, GROUP_TILES):
        tiles = slice(first, first + GROUP_TILES)
        budget = config.max_seconds * len(range(*tiles.indices(count))) / count
        group = model.take(tiles)
        if init is not None:
            learned.load_into(group, init)
        history = _train(group, coords[tiles], target[tiles],
                         functools.partial(_on_tiles, objective, tiles), config, budget)
        model.put(tiles, group)
        steps = max(steps, history[-1][0] if history else 0)
        with torch.no_grad():
            squared += float(torch.sum((group(coords[tiles]) - target[tiles]) ** 2))
    return squared, history, steps


def solve_outputs(model: TiledSiren, coords: torch.Tensor, target: torch.Tensor, *,
                  ridge: float) -> float:
    """Set every tile's output layer to the ridge-regression solution on the shared sine
    layers' features at `coords` [1, points, 2] for its pixels `target` [tiles, points, C];
    return the summed squared error. The features are the same for every tile, so one
    (features+1)^2 solve serves all of them: each tile then costs one small matrix product."""
    with torch.no_grad():
        features = with_ones(model.features(coords)[0])
        solution = ridge_solution(features, ridge)  # [features + 1, points]
        residual = torch.eye(len(features)) - features @ solution  # pixels -> fit error
        squared, group = 0.0, GROUP_TILES * 16  # a tile costs little here: big products
        for first in range(0, len(target), group):
            part = target[first:first + group]
            pixels = part.transpose(0, 1).reshape(part.shape[1], -1)  # [points, tiles * C]
            weights = (solution @ pixels).reshape(-1, len(part), part.shape[2]).transpose(0, 1)
            model.out_weight[first:first + group] = weights[:, :-1]
            model.out_bias[first:first + group] = weights[:, -1:]
            squared += float(torch.sum((residual @ pixels) ** 2))
    return squared


def with_ones(features: torch.Tensor) -> torch.Tensor:
    """Return features [..., points, n] with a column of ones appended (the output bias)."""
    return torch.cat([features, torch.ones(*features.shape[:-1], 1)], dim=-1)


def ridge_solution(features: torch.Tensor, ridge: float | torch.Tensor) -> torch.Tensor:
    """Return the matrix [n, points] that maps pixel values at the points to the ridge-
    regression output weights on `features` [points, n] (from `with_ones`): penalty `ridge`
    per point. Differentiable in both (the basis trainer learns through it)."""
    wide = features.double()  # the normal equations square the condition number: float64
    gram = wide.T @ wide + ridge * len(wide) * torch.eye(wide.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, wide.T).float()


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch threads (None: as configured)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _on_tiles(objective: Objective, tiles: slice, model: TiledSiren, coords: torch.Tensor,
              out: torch.Tensor) -> torch.Tensor:
    return objective(model, coords, out, tiles)


def _train(model: TiledSiren, coords: torch.Tensor, target: torch.Tensor,
           objective: Callable[[TiledSiren, torch.Tensor, torch.Tensor], torch.Tensor],
           config: SirenConfig, budget: float) -> History:
    """Train one group of tile networks with Adam; return its (step, seconds, psnr) history."""
    optimiser = torch.optim.Adam(model.param_groups(config.lr))
    rates = [group["lr"] for group in optimiser.param_groups]
    start, history = time.perf_counter(), []
    points = coords.shape[1]
    subset = max(1, round(points * config.sample))
    generator = torch.Generator().manual_seed(config.seed)
    for step in range(1, config.steps + 1):
        if step > SAMPLED_SHARE * config.steps or (
                history and history[-1][2] >= config.target_psnr - FULL_BATCH_DB):
            subset = points  # near the target or the step limit: a sample's noise would stall
        for group, rate in zip(optimiser.param_groups, rates, strict=True):
            group["lr"] = rate * schedule(step, config)
        optimiser.zero_grad(set_to_none=True)
        if subset < points:  # the same random pixels in every tile (tiles share coords)
            chosen = torch.randperm(points, generator=generator)[:subset]
            step_coords, step_target = coords[:, chosen], target[:, chosen]
            out = model(step_coords)
            torch.mean((out - step_target) ** 2).backward()
        else:
            step_target = target
            out = model(coords)
            objective(model, coords, out).backward()
        optimiser.step()
        psnr = _psnr(float(torch.mean((out.detach() - step_target) ** 2)))
        if subset < points and psnr >= config.target_psnr:
            psnr = _full_psnr(model, coords, target)  # a sample's PSNR is only an estimate
        history.append((step, time.perf_counter() - start, psnr))
        if psnr >= config.target_psnr or (budget and history[-1][1] >= budget):
            break
    return history


def _full_psnr(model: TiledSiren, coords: torch.Tensor, target: torch.Tensor) -> float:
    """Return the PSNR of `model` on all of its tiles' pixels."""
    with torch.no_grad():
        return _psnr(float(torch.mean((model(coords) - target) ** 2)))


def schedule(step: int, config: SirenConfig) -> float:
    """Return the learning-rate factor at `step` (1-based): a linear warm-up over
    `config.warmup` steps, then, with `config.decay`, an exponential decay to `decay` times
    the rate at step `config.steps`."""
    ramp = min(1.0, step / config.warmup) if config.warmup else 1.0
    return ramp * config.decay ** (step / config.steps) if config.decay else ramp


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
