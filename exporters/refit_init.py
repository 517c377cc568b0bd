"""Meta-learn refit's initialisations (Tancik et al. 2021) and export them next to the models.

    python -m exporters.refit_init train --run runs/refit-init --steps 6000   # resumable
    python -m exporters.refit_init export --run runs/refit-init               # -> plugins/models
    python -m exporters.refit_init train-basis --run runs/refit-basis --steps 4000
    python -m exporters.refit_init export --basis --run runs/refit-basis

The ridge solver's basis (`train-basis`): the sine layers every tile shares, learned through
the closed-form fit itself. Each step shrinks photo patches by a factor from SCALES with
Pillow's bicubic (the benchmark's degradation), solves the output layer on the small patch's
pixels, and scores the fitted network at the large patch's pixel centres (and, at factor 1,
on the pixels it was fitted to), so the basis learns to fit and to interpolate; the ridge
penalty is learned with it (as a log).

Reptile (Nichol et al. 2018): each meta step draws a batch of tile-sized patches from
../shared/data/sr-train (T91 and BSDS400, each image shrunk by a random factor first, so the
start also suits low-resolution inputs and fine-detail photos), fits one copy of the shared
starting weights to each patch with refit's own optimiser (Adam at its default rate, the same
`TiledSiren` the plugin trains) for a few steps, and moves the shared weights part of the way
towards the mean of the fitted copies. No second-order terms: a meta step costs the inner steps.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from exporters.onnx_export import ExportResult, ModelCard, export_model
from exporters.training import cosine_factor, restore_rng, rng_states, save_atomic
from imgproc import ModelFile
from imgproc_plugins.siren import learned
from imgproc_plugins.siren.fit import pixel_coords, ridge_solution, with_ones
from imgproc_plugins.siren.network import Layout, SirenConfig, TiledSiren

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN_DIRS = ("sr-train/T91", "sr-train/BSDS400")
VAL_DIR = "color-val"
OUT_DIR = Path(__file__).resolve().parent.parent / "plugins" / "models"
MIN_SHRINK = 0.35  # images are shrunk by a log-uniform factor in [MIN_SHRINK, 1]


def load_images(folders: tuple[str, ...], root: Path = DATA) -> list[Image.Image]:
    """Return every image under the folders as RGB (kept as PIL images: small, uint8)."""
    paths = sorted(p for folder in folders for p in (root / folder).iterdir()
                   if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        raise click.ClickException(f"no images under {root} / {folders}")
    return [Image.open(p).convert("RGB") for p in paths]


def sample_patches(images: list[Image.Image], rng: np.random.Generator, *, count: int,
                   size: int, per_image: int = 6) -> torch.Tensor:
    """Return `count` random size x size patches [count, size*size, 3] (shrunk, flipped)."""
    patches: list[np.ndarray] = []
    while len(patches) < count:
        image = images[int(rng.integers(len(images)))]
        shrink = math.exp(rng.uniform(math.log(MIN_SHRINK), 0.0))
        w, h = max(size, round(image.width * shrink)), max(size, round(image.height * shrink))
        pixels = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255
        for _ in range(min(per_image, count - len(patches))):
            y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
            patch = pixels[y:y + size, x:x + size]
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            if rng.random() < 0.5:
                patch = patch.transpose(1, 0, 2)
            patches.append(np.clip(patch, 0, 1).reshape(-1, 3))
    return torch.from_numpy(np.stack(patches))


def tile_coords(config: SirenConfig, count: int) -> torch.Tensor:
    """Return pixel-centre coords [count, tile*tile, 2] of full-size tiles."""
    layout = Layout(config.tile, config.tile, [(0, 0, config.tile, config.tile)])
    return pixel_coords(layout, config.pixels_per_unit).expand(count, -1, -1).contiguous()


def reptile_step(start: TiledSiren, patches: torch.Tensor, coords: torch.Tensor, *,
                 config: SirenConfig, inner_steps: int, outer_rate: float) -> list[float]:
    """Move `start` (one tile network) towards its fits to `patches`; return the PSNR of the
    mean error before each inner step and after the last."""
    copies = TiledSiren(len(patches), channels=3, config=config)
    learned.load_into(copies, _as_init(start, config))
    errors = _fit_copies(copies, coords, patches, config=config, steps=inner_steps)
    with torch.no_grad():
        for shared, fitted in zip(start.parameters(), copies.parameters(), strict=True):
            shared += outer_rate * (fitted.mean(dim=0, keepdim=True) - shared)
    return errors


def _fit_copies(copies: TiledSiren, coords: torch.Tensor, patches: torch.Tensor, *,
                config: SirenConfig, steps: int) -> list[float]:
    """Fit each tile network of `copies` to its patch with Adam (refit's optimiser and rate);
    return the PSNR of the mean error before each step and after the last."""
    optimiser = torch.optim.Adam(copies.param_groups(config.lr))
    errors = []
    for _ in range(steps):
        loss = torch.mean((copies(coords) - patches) ** 2)
        errors.append(_db(float(loss.detach())))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        errors.append(_db(float(torch.mean((copies(coords) - patches) ** 2))))
    return errors


def _as_init(start: TiledSiren, config: SirenConfig) -> learned.LearnedInit:
    return learned.from_model(start, config)


def train(run: Path, *, steps: int, batch: int, inner_steps: int, outer_rate: float,
          seed: int, threads: int, init: Path | None = None) -> None:
    """Meta-train, checkpointing to run/last.pt every 25 steps; resumes from it when present,
    else starts from `init` (an exported refit-init.json) or SIREN's own initialisation."""
    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    config = SirenConfig()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    start, done = TiledSiren(1, channels=3, config=config), 0  # SIREN's own init, seed 0
    earlier = ""  # how the weights it continues were trained (the card says both)
    if init is not None and not (run / "last.pt").exists():
        learned.load_into(start, learned.load(ModelFile.from_facts(init)))
        earlier = json.loads(init.read_text())["training_steps"]
    if (run / "last.pt").exists():
        state = torch.load(run / "last.pt", weights_only=False)
        start.load_state_dict(state["start"])
        done, earlier = state["step"], state.get("earlier", "")
        restore_rng(state["rng"], rng)
    images = load_images(TRAIN_DIRS)
    coords = tile_coords(config, batch)
    with (run / "log.jsonl").open("a") as log:
        while done < steps:
            begin = time.perf_counter()
            rate = outer_rate * cosine_factor(done, steps, floor=0.1)
            errors = reptile_step(start, sample_patches(images, rng, count=batch,
                                                        size=config.tile),
                                  coords, config=config, inner_steps=inner_steps,
                                  outer_rate=rate)
            done += 1
            log.write(json.dumps({"step": done, "psnr_by_step": errors, "rate": rate,
                                  "s": round(time.perf_counter() - begin, 3)}) + "\n")
            if done % 25 == 0 or done == steps:
                log.flush()
                save_atomic({"start": start.state_dict(), "step": done, "rng": rng_states(rng),
                             "seed": seed, "batch": batch, "inner_steps": inner_steps,
                             "outer_rate": outer_rate, "earlier": earlier}, run / "last.pt")


def _db(mse: float) -> float:
    return round(10 * math.log10(1 / mse), 3) if mse > 0 else math.inf


CURVE_STEPS = (0, 5, 10, 20, 40)


def validate(start: TiledSiren | None, *, count: int = 256, seed: int = 7) -> list[float]:
    """Return PSNR (dB, of the mean error) on color-val patches after each of CURVE_STEPS Adam
    steps at refit's rate, from `start` (None: SIREN's random init)."""
    config = SirenConfig()
    patches = sample_patches(load_images((VAL_DIR,)), np.random.default_rng(seed),
                             count=count, size=config.tile)
    copies = TiledSiren(count, channels=3, config=config)
    if start is not None:
        learned.load_into(copies, _as_init(start, config))
    errors = _fit_copies(copies, tile_coords(config, count), patches, config=config,
                         steps=max(CURVE_STEPS))
    return [errors[n] for n in CURVE_STEPS]


def export(run: Path, out_dir: Path = OUT_DIR, *, val_patches: int = 256) -> ExportResult:
    """Return the result of exporting run/last.pt as refit-init.{onnx,json,md}."""
    state = torch.load(run / "last.pt", weights_only=False)
    config = SirenConfig()
    start = TiledSiren(1, channels=3, config=config)
    start.load_state_dict(state["start"])
    ours, theirs = validate(start, count=val_patches), validate(None, count=val_patches)
    metrics: dict[str, float | str] = {
        "validation": f"{val_patches} random 32x32 patches of color-val (each image shrunk "
                      "0.35-1x), "
                      f"Adam at refit's rate {config.lr:g}, PSNR of the mean squared error"}
    for n, db, db_random in zip(CURVE_STEPS, ours, theirs, strict=True):
        metrics[f"after {n} steps: learned init (dB)"] = db
        metrics[f"after {n} steps: SIREN random init (dB)"] = db_random
    card = ModelCard(
        name=learned.INIT_MODEL,
        summary="Meta-learned starting weights of refit's tile networks (init=learned).",
        architecture=(
            f"One tile network of refit: {config.depth} sine layers of {config.width} "
            f"(omega0 {config.omega0:g}, weights stored pre-multiplied by omega0) and a linear "
            f"output to RGB, on {config.tile}x{config.tile} tiles at "
            f"{config.pixels_per_unit:g} pixels per unit: coords [1, points, 2] -> values "
            "[1, points, 3]. refit copies it into every tile network, then fits as usual."),
        training_data="patches of ../shared/data/sr-train (T91, BSDS400 train+test), each "
                      f"image shrunk by a log-uniform factor in [{MIN_SHRINK}, 1], random "
                      "flips and transposes",
        training_steps=(f"{state['step']} Reptile meta steps from "
                        + (f"an earlier export ({state['earlier']})" if state.get("earlier")
                           else "SIREN's init")
                        + f", seed {state['seed']}: batch {state['batch']} patches, "
                        f"{state['inner_steps']} inner Adam steps at {config.lr:g}, outer "
                        f"rate {state['outer_rate']:g} on a cosine to a tenth"),
        metrics=metrics,
        facts=_as_init(start, config).facts(),
    )
    example = {"coords": tile_coords(config, 1)}
    return export_model(start, card=card, example_inputs=example, output_names=["values"],
                        dynamic_axes={"coords": {1: "points"}, "values": {1: "points"}},
                        parity_inputs=[{"coords": torch.rand(1, 7, 2) - 0.5}], out_dir=out_dir)


SCALES = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # shrink factors: 4 x factor is whole pixels
MARGIN = 4  # small-patch pixels shrunk along each side and cut away: no patch-edge effects
HR_POINTS = 2048  # large-patch pixel centres one step scores (drawn at random)


def basis_config() -> SirenConfig:
    """Return the ridge solver's network: 16x16 tiles, sine layers 32, 32 and 256 wide (as
    many features as a tile has pixels, so the fit can interpolate them)."""
    return SirenConfig(solver="ridge", tile=16, features=256)


def upsampling_pairs(images: list[Image.Image], rng: np.random.Generator, *, count: int,
                     size: int, scale: float) -> tuple[torch.Tensor, ...]:
    """Return `count` random photo patches shrunk by `scale` [count, size*size, 3], the
    patches themselves [count, n*n, 3] (n = size * scale) and Pillow's bicubic enlargement of
    the shrunk ones (random flips and transposes)."""
    n, pad = round(size * scale), round(MARGIN * scale)
    small, large, bicubic = [], [], []
    while len(small) < count:
        image = images[int(rng.integers(len(images)))]
        side = n + 2 * pad
        if min(image.size) < side:
            continue
        y, x = int(rng.integers(image.height - side + 1)), int(rng.integers(image.width - side + 1))
        crop = image.crop((x, y, x + side, y + side))
        for flip in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.TRANSPOSE):
            crop = crop.transpose(flip) if rng.random() < 0.5 else crop
        shrunk = crop.resize((size + 2 * MARGIN,) * 2, Image.Resampling.BICUBIC)
        grown = shrunk.resize((side, side), Image.Resampling.BICUBIC)
        for out, picture, cut in ((small, shrunk, MARGIN), (large, crop, pad),
                                  (bicubic, grown, pad)):
            pixels = np.asarray(picture, np.float32)[cut:-cut, cut:-cut] / 255
            out.append(pixels.reshape(-1, 3))
    return tuple(torch.from_numpy(np.stack(group)) for group in (small, large, bicubic))


def scaled_coords(config: SirenConfig, scale: float) -> torch.Tensor:
    """Return the tile-local coords [1, n*n, 2] of the pixel centres of a tile enlarged by
    `scale` (n = tile * scale): where the large patch's pixels sit on the small tile."""
    n = round(config.tile * scale)
    axis = ((torch.arange(n) + 0.5) * config.tile / n - config.tile / 2) / config.pixels_per_unit
    return torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(1, -1, 2)


def ridge_predictions(basis: TiledSiren, small: torch.Tensor, log_ridge: torch.Tensor, *,
                      config: SirenConfig, scale: float, points: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Return each small patch's ridge fit evaluated at the enlarged pixel centres (all, or
    `points` of them) [count, points, 3]."""
    solution = ridge_solution(with_ones(basis.features(tile_coords(config, 1))[0]),
                              torch.exp(log_ridge))
    where = scaled_coords(config, scale)
    where = where if points is None else where[:, points]
    return with_ones(basis.features(where)[0]) @ (solution @ small)


def train_basis(run: Path, *, steps: int, batch: int, rate: float, seed: int,
                threads: int) -> None:
    """Train the ridge basis from refit-init's sine layers (their first 32 units of the last,
    the rest SIREN's init), checkpointing to run/last.pt every 25 steps (resumes from it)."""
    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    config = basis_config()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    basis = TiledSiren(1, channels=3, config=config)
    _start_from_init(basis)
    log_ridge = torch.nn.Parameter(torch.tensor(math.log(config.ridge)))
    optimiser = torch.optim.Adam([{"params": [*basis.weights, *basis.biases], "lr": rate},
                                  {"params": [log_ridge], "lr": 0.01}])
    done = 0
    if (run / "last.pt").exists():
        state = torch.load(run / "last.pt", weights_only=False)
        basis.load_state_dict(state["basis"])
        log_ridge.data = state["log_ridge"]
        optimiser.load_state_dict(state["optimiser"])
        done = state["step"]
        restore_rng(state["rng"], rng)
    images = load_images(TRAIN_DIRS)
    with (run / "log.jsonl").open("a") as log:
        while done < steps:
            begin, scale = time.perf_counter(), SCALES[done % len(SCALES)]
            for group, base in zip(optimiser.param_groups, (rate, 0.01), strict=True):
                group["lr"] = base * cosine_factor(done, steps, floor=0.1)
            small, large, _ = upsampling_pairs(images, rng, count=batch, size=config.tile,
                                               scale=scale)
            points = torch.randperm(large.shape[1])[:HR_POINTS]
            out = ridge_predictions(basis, small, log_ridge, config=config, scale=scale,
                                    points=points)
            loss = torch.mean((out - large[:, points]) ** 2)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            done += 1
            log.write(json.dumps({"step": done, "scale": scale, "psnr": _db(float(loss.detach())),
                                  "ridge": math.exp(float(log_ridge.detach())),
                                  "s": round(time.perf_counter() - begin, 3)}) + "\n")
            if done % 25 == 0 or done == steps:
                log.flush()
                save_atomic({"basis": basis.state_dict(), "log_ridge": log_ridge.detach(),
                             "optimiser": optimiser.state_dict(), "step": done,
                             "rng": rng_states(rng), "seed": seed, "batch": batch,
                             "rate": rate}, run / "last.pt")


def _start_from_init(basis: TiledSiren) -> None:
    """Copy refit-init's sine layers into the basis's first units (a start near photos)."""
    start = learned.load()
    with torch.no_grad():
        for name, param in basis.named_parameters():
            if name in start.weights and not name.startswith("out_"):
                value = start.weights[name]
                param[0, ..., : value.shape[-1]] = value


VAL_SCALES = (1.0, 2.0, 4.0)


def validate_basis(basis: TiledSiren, log_ridge: torch.Tensor, *, count: int = 256,
                   seed: int = 7) -> dict[str, float]:
    """Return PSNR (dB, of the mean error) of ridge fits on color-val patches, rendered at the
    patch's pixels and enlarged x2 and x4, with Pillow's bicubic enlargement beside them."""
    config = basis_config()
    images = load_images((VAL_DIR,))
    rng = np.random.default_rng(seed)
    found = {}
    for scale in VAL_SCALES:
        small, large, bicubic = upsampling_pairs(images, rng, count=count, size=config.tile,
                                                 scale=scale)
        with torch.no_grad():
            out = ridge_predictions(basis, small, log_ridge, config=config, scale=scale)
        found[f"x{scale:g}: ridge fit (dB)"] = _db(float(torch.mean((out - large) ** 2)))
        if scale > 1:
            found[f"x{scale:g}: bicubic (dB)"] = _db(float(torch.mean((bicubic - large) ** 2)))
    return found


class FeatureNet(torch.nn.Module):
    """The basis as a graph: coords [1, points, 2] -> features [1, points, n] (the sine
    layers' initializers keep TiledSiren's names, which `learned.load` looks for)."""

    def __init__(self, basis: TiledSiren) -> None:
        super().__init__()
        self.weights, self.biases = basis.weights, basis.biases
        self.basis = [basis]  # a list: not a submodule, so its parameters are not renamed

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Return the basis's features at coords."""
        return self.basis[0].features(coords)


def export_basis(run: Path, out_dir: Path = OUT_DIR, *, val_patches: int = 256) -> ExportResult:
    """Return the result of exporting run/last.pt as refit-basis.{onnx,json,md}."""
    state = torch.load(run / "last.pt", weights_only=False)
    ridge = math.exp(float(state["log_ridge"]))
    config = replace(basis_config(), ridge=ridge)
    basis = TiledSiren(1, channels=3, config=config)
    basis.load_state_dict(state["basis"])
    metrics: dict[str, float | str] = {
        "validation": f"{val_patches} random color-val patches per factor, shrunk by Pillow's "
                      "bicubic to 16x16, ridge fit of the 16x16 pixels rendered at the "
                      "original's pixel centres, PSNR (RGB) of the mean squared error",
        **validate_basis(basis, state["log_ridge"], count=val_patches)}
    random = TiledSiren(1, channels=3, config=config)  # SIREN's own init, seed 0
    for key, value in validate_basis(random, state["log_ridge"], count=val_patches).items():
        if "ridge" in key:
            metrics[key.replace("ridge fit", "ridge fit, SIREN random init")] = value
    card = ModelCard(
        name=learned.BASIS_MODEL,
        summary="Learned basis of refit's ridge solver: the sine layers every tile shares.",
        architecture=(
            f"The shared sine layers of refit's tile networks: {config.depth} layers "
            f"({config.width}, {config.width}, {config.features} units, omega0 "
            f"{config.omega0:g}, weights stored pre-multiplied by omega0) on "
            f"{config.tile}x{config.tile} tiles at {config.pixels_per_unit:g} pixels per unit: "
            f"coords [1, points, 2] -> features [1, points, {config.features}]. refit solves "
            f"each tile's linear output layer on them in closed form (ridge {ridge:.3g} per "
            "pixel, learned with the basis)."),
        training_data="patches of ../shared/data/sr-train (T91, BSDS400 train+test), shrunk "
                      f"by Pillow's bicubic by {', '.join(f'{s:g}' for s in SCALES)} in "
                      "turn, random flips and transposes",
        training_steps=(f"{state['step']} Adam steps at {state['rate']:g} (ridge's log at "
                        f"0.01), cosine to a tenth, seed {state['seed']}, batch "
                        f"{state['batch']} patches, {HR_POINTS} random pixel centres of the "
                        "originals scored per step; from refit-init's sine layers"),
        metrics=metrics,
        facts=learned.from_model(basis, config).facts(),
    )
    example = {"coords": tile_coords(config, 1)}
    return export_model(FeatureNet(basis), card=card, example_inputs=example,
                        output_names=["features"],
                        dynamic_axes={"coords": {1: "points"}, "features": {1: "points"}},
                        parity_inputs=[{"coords": torch.rand(1, 7, 2) - 0.5}], out_dir=out_dir)


@click.group()
def main() -> None:
    """Meta-learn and export refit's learned initialisation."""


@main.command("train")
@click.option("--run", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/refit-init"), show_default=True)
@click.option("--steps", type=int, default=6000, show_default=True, help="Meta steps in all.")
@click.option("--batch", type=int, default=64, show_default=True, help="Patches per step.")
@click.option("--inner-steps", type=int, default=12, show_default=True)
@click.option("--outer-rate", type=float, default=0.5, show_default=True,
              help="Reptile step towards the fitted copies' mean (cosine to a tenth).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--init", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start from an exported refit-init.json (continue a shipped init).")
def train_command(run: Path, steps: int, batch: int, inner_steps: int, outer_rate: float,
                  seed: int, threads: int, init: Path | None) -> None:
    """Meta-train (resumes from RUN/last.pt)."""
    train(run, steps=steps, batch=batch, inner_steps=inner_steps, outer_rate=outer_rate,
          seed=seed, threads=threads, init=init)


@main.command("export")
@click.option("--run", type=click.Path(file_okay=False, path_type=Path),
              help="The run to export [default: runs/refit-init, with --basis runs/refit-basis]")
@click.option("--basis", is_flag=True, help="Export the ridge solver's basis (train-basis).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=OUT_DIR,
              show_default=True)
def export_command(run: Path | None, basis: bool, out_dir: Path) -> None:
    """Export RUN/last.pt to OUT_DIR/refit-init.{onnx,json,md} (--basis: refit-basis.*)."""
    run = run or Path("runs/refit-basis" if basis else "runs/refit-init")
    result = (export_basis if basis else export)(run, out_dir)
    click.echo(f"wrote {result.onnx_path} (sha256 {result.sha256})")


@main.command("train-basis")
@click.option("--run", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/refit-basis"), show_default=True)
@click.option("--steps", type=int, default=4000, show_default=True)
@click.option("--batch", type=int, default=64, show_default=True, help="Patches per step.")
@click.option("--rate", type=float, default=1e-3, show_default=True,
              help="Adam's rate for the sine layers (cosine to a tenth).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
def train_basis_command(run: Path, steps: int, batch: int, rate: float, seed: int,
                        threads: int) -> None:
    """Train the ridge solver's basis (resumes from RUN/last.pt)."""
    train_basis(run, steps=steps, batch=batch, rate=rate, seed=seed, threads=threads)


if __name__ == "__main__":
    main()
