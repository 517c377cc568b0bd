"""refit: fit a SIREN to each image and resample it at any size through ONNX Runtime.

By default (solver=ridge) the tile networks share sine layers learned on photos and each
tile's linear output layer is solved in closed form: one solve per image, no training steps.
solver=adam trains every layer of every tile instead (the default until issue 18).

    imgproc run --plugin refit --option scale=3.5 in/ -o out/
    imgproc run -p refit -O width=1920 -O save_network=true in/ -o out/
    imgproc render out/photo.network.onnx --scale 8 -o big.png
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import structlog

from imgproc import (
    ModelFile,
    Option,
    Picture,
    Processor,
    hookimpl,
    open_session,
    output_size,
    size_options,
    write_image,
)
from imgproc_plugins import require_torch

IMGPROC_API_VERSION = "1.0"
log = structlog.get_logger("imgproc.refit")
OUTPUTS = ("gradient", "laplacian")


INITS = ("learned", "random")
SOLVERS = ("ridge", "adam")
MODELS = Path(__file__).parent / "models"
INIT_MODEL = ModelFile.from_facts(MODELS / "refit-init.json")  # adam: every layer's start
BASIS_MODEL = ModelFile.from_facts(MODELS / "refit-basis.json")  # ridge: the shared layers
LEARNED = {"adam": INIT_MODEL, "ridge": BASIS_MODEL}


def config_from(options: dict[str, Any]) -> Any:
    """Return the SirenConfig the options ask for; tile, features and ridge left unset come
    from the solver's learned weights (their network shape, whichever init is asked for)."""
    from imgproc_plugins.siren import learned

    shape = learned.config_for(dict(LEARNED[options["solver"]].facts))
    chosen = {name: getattr(shape, name) if options[name] is None else options[name]
              for name in ("tile", "features", "ridge")}
    return replace(shape, **chosen, width=options["hidden"], depth=options["depth"],
                   omega0=options["omega0"], lr=options["lr"], steps=options["steps"],
                   target_psnr=options["target_psnr"], seed=options["seed"],
                   overlap=options["overlap"], pixels_per_unit=options["pixels_per_unit"],
                   max_seconds=options["max_seconds"], warmup=options["warmup"],
                   decay=options["decay"], sample=options["sample"])


def learned_init(options: dict[str, Any]) -> Any:
    """Return the solver's learned weights when the options ask for them, else None."""
    from imgproc_plugins.siren import learned

    return learned.load(LEARNED[options["solver"]]) if options["init"] == "learned" else None


def refit(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Return the image fitted as a SIREN grid and rendered at the requested size."""
    from imgproc_plugins import siren

    image = images[0]
    height, width = image.shape[:2]
    out_h, out_w = output_size(height, width, options)
    fit = siren.fit_image(image, config_from(options), init=learned_init(options))
    log.info("fitted", solver=fit.config.solver, steps=fit.steps, psnr=round(fit.psnr, 2),
             seconds=round(fit.seconds, 2), tiles=len(fit.layout.tiles))
    network = siren.to_onnx(fit, facts={"colour": "sRGB", "range": [0, 1],
                                        "input_size": [height, width]}).SerializeToString()
    session = context.transient_session("refit-siren", network)
    out = siren.render(lambda c: session.run({siren.ONNX_INPUT: c})[0], fit.layout, out_h, out_w,
                       pixels_per_unit=fit.config.pixels_per_unit, shared=fit.model.shared)
    if options["save_network"]:
        context.add_output("network.onnx", network)
    for name in _outputs(options["outputs"]):
        context.add_output(f"{name}.png", derivative_image(fit, name, out_h, out_w))
    return np.clip(out, 0.0, 1.0)


def _outputs(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def derivative_image(fit: Any, kind: str, out_h: int, out_w: int) -> np.ndarray:
    """Return `derivatives` scaled for viewing (gradient: / max; Laplacian: 0.5 + x / 2 max)."""
    values = derivatives(fit, kind, out_h, out_w)
    peak = float(np.abs(values).max()) or 1.0
    return values / peak if kind == "gradient" else 0.5 + values / (2 * peak)


def derivatives(fit: Any, kind: str, out_h: int, out_w: int) -> np.ndarray:
    """Return the fitted image's luma gradient magnitude, or its Laplacian, per input pixel
    unit, sampled on the output grid: exact derivatives of the network, through autograd."""
    import torch

    from imgproc_plugins import siren

    def run(coords: np.ndarray) -> np.ndarray:
        values = luma_derivative(fit.model, torch.from_numpy(coords), kind,
                                 fit.config.pixels_per_unit)
        return values.unsqueeze(-1).detach().numpy()

    return siren.render(run, fit.layout, out_h, out_w, points=1 << 14,
                        pixels_per_unit=fit.config.pixels_per_unit)


def luma_derivative(model: Any, coords: Any, kind: str, pixels_per_unit: float) -> Any:
    """Return |grad luma| or the Laplacian of luma (per pixel, per pixel squared) of the
    network at coords [tiles, points, 2], through autograd."""
    import torch

    points = coords.detach().clone().requires_grad_(True)
    luma = model(points) @ torch.tensor([0.299, 0.587, 0.114], dtype=points.dtype)
    (grad,) = torch.autograd.grad(luma.sum(), points, create_graph=kind == "laplacian")
    # d/d(pixel) = d/du * du/d(pixel), and du/d(pixel) = 1 / pixels_per_unit on both axes.
    if kind == "gradient":
        return grad.norm(dim=-1) / pixels_per_unit
    second = [torch.autograd.grad(grad[..., i].sum(), points, retain_graph=True)[0][..., i]
              for i in range(2)]
    return (second[0] + second[1]) / pixels_per_unit ** 2


def _validate(options: dict[str, Any]) -> None:
    require_torch()
    unknown = set(_outputs(options["outputs"])) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"outputs: unknown {', '.join(sorted(unknown))}; known: "
                         + ", ".join(OUTPUTS))
    config = config_from(options)
    if 2 * config.overlap >= config.tile:
        raise ValueError("overlap must be less than half of tile")
    if options["init"] == "learned":
        wrong = learned_init(options).mismatch(config)
        if wrong:
            raise ValueError(f"init=learned was meta-learned for another network: {wrong}; "
                             "use init=random for other shapes")


PROCESSOR = Processor(
    name="refit",
    summary="Fit a SIREN to each image and resample it at any size.",
    process=refit,
    options=(
        *size_options(2.0, min_scale=0.01, max_scale=64.0),
        Option("solver", str, "ridge", "ridge: the tiles share learned sine layers "
               "(models/refit-basis.onnx) and each tile's output layer is solved in closed "
               "form, one solve per image; adam: every layer of every tile trained by Adam "
               "(the default until issue 18; models/refit-init.onnx)", choices=SOLVERS),
        Option("steps", int, 300, "adam: most optimisation steps per image", min=1),
        Option("target_psnr", float, 36.0, "adam: stop once the fit reaches this PSNR (dB)",
               min=1.0),
        Option("max_seconds", float, 0.0, "adam: stop each fit after this long (0: no limit)",
               min=0.0),
        Option("hidden", int, 32, "units of each tile network's sine layers but the last",
               min=1, max=1024),
        Option("features", int, None, "units of the last sine layer (default: the solver's "
               "learned network's, ridge 256, adam 32)", min=1, max=4096),
        Option("depth", int, 3, "sine layers of each tile network", min=1, max=16),
        Option("omega0", float, 30.0, "SIREN frequency factor w0", min=0.1),
        Option("init", str, "learned", "learned: start from weights learned on photos "
               "(the solver's model file); random: SIREN's random initialisation",
               choices=INITS),
        Option("ridge", float, None, "ridge: penalty per pixel on the output weights "
               "(default: the one learned with the basis); larger is smoother", min=0.0),
        Option("lr", float, 2e-3, "adam: learning rate", min=1e-7, max=1.0),
        Option("sample", float, 0.5, "adam: share of each tile's pixels one step fits, drawn "
               "anew each step, until the fit is 3 dB from its target or a third of `steps` "
               "is done (1: all pixels)", min=0.01, max=1.0),
        Option("warmup", int, 0, "adam: steps over which the learning rate ramps up "
               "(0: none)", min=0),
        Option("decay", float, 0.0, "adam: learning-rate factor reached at the last step, "
               "exponentially (0: constant rate)", min=0.0, max=1.0),
        Option("seed", int, 0, "weight initialisation seed (same seed, same output)"),
        Option("tile", int, None, "tile size in input pixels, one small network per tile "
               "(default: the solver's learned network's, ridge 16, adam 32)", min=2),
        Option("overlap", int, 4, "pixels shared by neighbouring tiles", min=0),
        Option("pixels_per_unit", float, 64.0, "pixels per coordinate unit: with omega0, sets "
               "the frequency per pixel (the paper's 256-pixel images: 128)", min=1.0),
        Option("save_network", bool, False, "write <stem>.network.onnx beside the output"),
        Option("outputs", str, "", "also write gradient and/or laplacian images "
               "(comma-separated)"),
    ),
    models=(BASIS_MODEL, INIT_MODEL),
    validate=_validate,
)


@hookimpl
def imgproc_processors() -> list[Processor]:
    """Return the refit processor."""
    return [PROCESSOR]


@click.command()
@click.argument("network", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--width", type=click.IntRange(min=1), help="Output width (aspect kept).")
@click.option("--height", type=click.IntRange(min=1), help="Output height (aspect kept).")
@click.option("--scale", type=click.FloatRange(min=0.01, max=64.0), default=1.0,
              show_default=True, help="Size factor when neither width nor height is given.")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="Image file to write (format from its suffix).")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
              show_default=True)
def render(network: Path, width: int | None, height: int | None, scale: float, output: Path,
           provider: str) -> None:
    """Render a network saved by `refit -O save_network=true` at any size, no refitting."""
    from imgproc_plugins import siren

    data = network.read_bytes()
    layout, config = siren.read_network(data, name=str(network))
    out_h, out_w = output_size(layout.height, layout.width,
                               {"width": width, "height": height, "scale": scale})
    session = open_session(data, name=network.name, provider=provider)
    pixels = siren.render(lambda c: session.run({siren.ONNX_INPUT: c})[0], layout, out_h, out_w,
                          pixels_per_unit=config.pixels_per_unit,
                          shared=config.solver == "ridge")
    write_image(output, Picture(np.clip(pixels, 0.0, 1.0)))
    click.echo(f"{output}: {out_w}x{out_h} from {network} ({session.provider})")


@hookimpl
def imgproc_commands() -> list[click.Command]:
    """Return `imgproc render`."""
    return [render]


__all__ = ["PROCESSOR"]
