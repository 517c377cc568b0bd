"""Meta-learn refit's initialisation (Tancik et al. 2021) and export it next to the models.

    python -m exporters.refit_init train --run runs/refit-init --steps 4000   # resumable
    python -m exporters.refit_init export --run runs/refit-init               # -> plugins/models

Each meta step draws a batch of tile-sized patches from ../shared/data/sr-train (T91 and
BSDS400, each image shrunk by a random factor first, so the init also suits low-resolution
inputs and fine-detail photos), starts every patch's network from the shared sine weights
with its output layer solved by least squares (`siren.learned.start`), takes the learned SGD
steps (`siren.learned.adapt`, differentiated through: MAML with Meta-SGD step sizes) and
moves the shared weights, step sizes and ridge to lower the patches' error after those steps.
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
    return pixel_coords(layout, config.pixels_per_unit).expand(count, -1, -1)


def random_start(config: SirenConfig, *, inner_steps: int, lr0: float) -> learned.LearnedInit:
    """Return the meta-training start: SIREN's own init, equal step sizes, a small ridge."""
    model = TiledSiren(1, channels=3, config=config)
    sine = tuple(t.detach()[0].clone() for pair in zip(model.weights, model.biases, strict=True)
                 for t in pair)
    return learned.LearnedInit(
        sine=sine, step_lrs=torch.full((inner_steps, 2 * config.depth + 2), math.log(lr0)),
        log_ridge=torch.tensor(math.log(1e-3)), omega0=config.omega0, tile=config.tile,
        pixels_per_unit=config.pixels_per_unit)


def meta_loss(init: learned.LearnedInit, coords: torch.Tensor, patches: torch.Tensor,
              *, create_graph: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Return the mean squared error after the learned steps, and the errors before each."""
    rates = init.step_lrs.exp()  # stored as logs so they stay positive
    params = learned.start(init, coords, patches)
    params, errors = learned.adapt(params, coords, patches, rates, create_graph=create_graph)
    return learned.tile_losses(learned.forward(params, coords), patches).mean(), errors


def _trainables(init: learned.LearnedInit) -> list[torch.Tensor]:
    return [*init.sine, init.step_lrs, init.log_ridge]


def train(run: Path, *, steps: int, batch: int, inner_steps: int, lr: float, seed: int,
          threads: int, lr0: float) -> None:
    """Meta-train, checkpointing to run/last.pt every 25 steps; resumes from it when present."""
    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    config = SirenConfig()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    init, done = random_start(config, inner_steps=inner_steps, lr0=lr0), 0
    if (run / "last.pt").exists():
        state = torch.load(run / "last.pt", weights_only=False)
        init, done = state["init"], state["step"]
        restore_rng(state["rng"], rng)
    for tensor in _trainables(init):
        tensor.requires_grad_(True)
    optimiser = torch.optim.Adam([{"params": list(init.sine), "lr": lr},
                                  {"params": [init.step_lrs, init.log_ridge], "lr": 1e-2}])
    if done:
        optimiser.load_state_dict(state["optimiser"])
    images = load_images(TRAIN_DIRS)
    coords = tile_coords(config, batch)
    base = [group["lr"] for group in optimiser.param_groups]
    with (run / "log.jsonl").open("a") as log:
        while done < steps:
            start = time.perf_counter()
            for group, rate in zip(optimiser.param_groups, base, strict=True):
                group["lr"] = rate * cosine_factor(done, steps)
            loss, errors = meta_loss(init, coords, sample_patches(images, rng, count=batch,
                                                                  size=config.tile))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            done += 1
            log.write(json.dumps({"step": done, "psnr_by_step": [_db(e) for e in errors],
                                  "psnr": _db(float(loss)), "s": time.perf_counter() - start})
                      + "\n")
            if done % 25 == 0 or done == steps:
                log.flush()
                save_atomic({"init": init, "step": done, "optimiser": optimiser.state_dict(),
                             "rng": rng_states(rng), "seed": seed, "batch": batch,
                             "lr": lr}, run / "last.pt")


def _db(mse: float) -> float:
    return round(10 * math.log10(1 / mse), 3) if mse > 0 else math.inf


def validate(init: learned.LearnedInit, *, count: int = 512, seed: int = 7
             ) -> list[float]:
    """Return PSNR (dB, of the mean error) on color-val patches after 0..K learned steps."""
    images = load_images((VAL_DIR,))
    patches = sample_patches(images, np.random.default_rng(seed), count=count, size=init.tile)
    config = SirenConfig()
    coords = tile_coords(config, count)
    plain = learned.LearnedInit(tuple(t.detach() for t in init.sine), init.step_lrs.detach(),
                                init.log_ridge.detach(), init.omega0, init.tile,
                                init.pixels_per_unit)
    final, errors = meta_loss(plain, coords, patches, create_graph=False)
    return [_db(e) for e in errors] + [_db(float(final))]


class Basis(torch.nn.Module):
    """The learned sine layers as a module (coords [points, 2] -> features), for export."""

    def __init__(self, init: learned.LearnedInit) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(t.detach().clone()) for t in init.sine[0::2])
        self.biases = torch.nn.ParameterList(
            torch.nn.Parameter(t.detach().clone()) for t in init.sine[1::2])

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Return the learned features at coords [points, 2]."""
        sine = [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]
        return learned.features(sine, coords)


def export(run: Path, out_dir: Path = OUT_DIR) -> ExportResult:
    """Return the result of exporting run/last.pt as refit-init.{onnx,json,md}."""
    state = torch.load(run / "last.pt", weights_only=False)
    init = state["init"]
    random = random_start(SirenConfig(), inner_steps=len(init.step_lrs), lr0=1e-3)
    ours, theirs = validate(init), validate(random)
    metrics: dict[str, float | str] = {
        "validation": "512 random 32x32 patches of color-val (shrunk 0.35-1x), PSNR of the "
                      "mean squared error"}
    for k, (db, db_random) in enumerate(zip(ours, theirs, strict=True)):
        metrics[f"PSNR after head solve + {k} learned steps (dB)"] = db
        metrics[f"same from SIREN's random init, untrained step sizes (dB), {k} steps"] = \
            db_random
    card = ModelCard(
        name=learned.INIT_MODEL,
        summary="Meta-learned starting weights of refit's tile networks (init=learned).",
        architecture=(
            f"The sine layers of one tile network ({init.depth} layers of {init.width}, "
            f"omega0 {init.omega0:g}, weights stored pre-multiplied by omega0) on "
            f"{init.tile}x{init.tile} tiles at {init.pixels_per_unit:g} pixels per unit: "
            "coords [points, 2] -> features [points, width]. refit copies them into every "
            "tile, solves each tile's output layer by ridge least squares, then takes "
            f"{len(init.step_lrs)} SGD steps with the learned per-step, per-tensor rates "
            "(facts: step_lrs, log_ridge) before continuing with Adam."),
        training_data="patches of ../shared/data/sr-train (T91, BSDS400 train+test), each "
                      f"image shrunk by a log-uniform factor in [{MIN_SHRINK}, 1], random "
                      "flips and transposes",
        training_steps=(f"{state['step']} meta steps (MAML through the learned steps, "
                        f"Meta-SGD rates), batch {state['batch']} patches, Adam {state['lr']:g} "
                        "on the weights and 1e-2 on the log rates and ridge, cosine decay, "
                        f"seed {state['seed']}"),
        metrics=metrics,
        facts=learned.facts_of(init),
    )
    example = {"coords": tile_coords(SirenConfig(), 1)[0]}
    return export_model(Basis(init), card=card, example_inputs=example,
                        output_names=["features"], dynamic_axes={"coords": {0: "points"},
                                                                 "features": {0: "points"}},
                        parity_inputs=[{"coords": torch.rand(7, 2) - 0.5}], out_dir=out_dir)


@click.group()
def main() -> None:
    """Meta-learn and export refit's learned initialisation."""


@main.command("train")
@click.option("--run", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/refit-init"), show_default=True)
@click.option("--steps", type=int, default=3000, show_default=True, help="Meta steps in all.")
@click.option("--batch", type=int, default=48, show_default=True, help="Patches per step.")
@click.option("--inner-steps", type=int, default=3, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True,
              help="Adam rate on the (omega0-scaled) sine weights.")
@click.option("--lr0", type=float, default=1e-2, show_default=True,
              help="Starting SGD rate of the learned steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
def train_command(run: Path, steps: int, batch: int, inner_steps: int, lr: float, lr0: float,
                  seed: int, threads: int) -> None:
    """Meta-train (resumes from RUN/last.pt)."""
    train(run, steps=steps, batch=batch, inner_steps=inner_steps, lr=lr, seed=seed,
          threads=threads, lr0=lr0)


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
