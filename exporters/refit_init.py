"""Meta-learn refit's initialisation (Tancik et al. 2021) and export it next to the models.

    python -m exporters.refit_init train --run runs/refit-init --steps 6000   # resumable
    python -m exporters.refit_init export --run runs/refit-init               # -> plugins/models

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
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from exporters.onnx_export import ExportResult, ModelCard, export_model
from exporters.training import cosine_factor, restore_rng, rng_states, save_atomic
from imgproc import ModelFile
from imgproc_plugins.siren import learned
from imgproc_plugins.siren.fit import pixel_coords
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
    return learned.from_model(start, width=config.width, depth=config.depth,
                              omega0=config.omega0, tile=config.tile,
                              pixels_per_unit=config.pixels_per_unit)


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
              default=Path("runs/refit-init"), show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=OUT_DIR,
              show_default=True)
def export_command(run: Path, out_dir: Path) -> None:
    """Export RUN/last.pt to OUT_DIR/refit-init.{onnx,json,md}."""
    result = export(run, out_dir)
    click.echo(f"wrote {result.onnx_path} (sha256 {result.sha256})")


if __name__ == "__main__":
    main()
