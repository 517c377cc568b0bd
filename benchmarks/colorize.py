"""colorize: quality of the shipped model on color-val and on photographs it has not seen, a
before/after contact sheet, and speed on 2 CPU threads for a 1-megapixel photo.

    python benchmarks/run.py colorize
    IMGPROC_COLORIZE_LIMIT=5 python benchmarks/colorize.py   # quick look: 5 val images

Quality follows ../shared/data/README.md: the input is the ground truth's lightness as a grey
image (`grey_of`), the output is compared on 8-bit RGB (PSNR) and scored with Hasler and
Suesstrunk's colourfulness, with the trainer's own functions. The model runs through the real
plugin path (`PROCESSOR.process` with a host Runtime on the CPU provider, 2 intra-op threads).
Everything about the model (variant, render size, the training run) is read from
plugins/models/colorize.json at run time, so a re-exported model needs no edit here.

The PyTorch eager column runs the training run's checkpoint (runs/colorize/<run>/last.pt, the
run named in the model's facts) when present, else a fresh net of the same architecture (the
same speed: the weights do not change the work).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage import data
from timing import REPEATS, best_time  # benchmarks/ is on sys.path (run.py)

from exporters.colorize_metrics import (
    colourfulness,
    evaluate,
    load_val_rgb,
    psnr_rgb,
    to8,
    torch_predictor,
)
from exporters.colorize_nets import Bins, Colorizer, NetConfig, build_net, load_trained
from exporters.datadir import DEFAULT_DATA
from imgproc import resize
from imgproc.config import RuntimeSettings
from imgproc.runtime import Runtime
from imgproc_plugins.colorize import CHROMA_GAIN, MODEL, PROCESSOR
from imgproc_plugins.lab import colorize_lab, grey_of, lightness, working_size

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHEET = DOCS / "colorize-contact-sheet.png"
VAL = Path(os.environ.get("IMGPROC_COLORIZE_VAL", DEFAULT_DATA / "color-val"))
LIMIT = int(os.environ["IMGPROC_COLORIZE_LIMIT"]) if os.environ.get("IMGPROC_COLORIZE_LIMIT") \
    else None
THREADS = 2
STRENGTHS = (1.0, 1.5, 2.0)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # ship inside scikit-image: no download
SHEET_EVERY, SHEET_VAL, TILE_HEIGHT = 12, 8, 128
SPEED_SIDE = 1000  # astronaut resized to 1000x1000: 1 megapixel
LARGER_RENDER_SIZES = (256, 512)
BAR_SECONDS = 0.5
ROUNDS = 3


# ---------------------------------------------------------------------------------- model

def card() -> dict[str, Any]:
    """Return the shipped model's JSON card (plugins/models/colorize.json), read now."""
    return json.loads(MODEL.path.with_suffix(".json").read_text())


def facts() -> dict[str, Any]:
    """Return the shipped model's facts (variant, loss, width, render_size, run, ...)."""
    return dict(card().get("facts", {}))


def runtime() -> Runtime:
    """Return a host Runtime on the CPU provider with THREADS intra-op threads."""
    return Runtime(RuntimeSettings(provider="cpu", intra_op_threads=THREADS,
                                   inter_op_threads=1))


def checkpoint_path(f: dict[str, Any]) -> Path | None:
    """Return runs/colorize/<run>/last.pt of the model's training run, or None if unknown."""
    return ROOT / "runs" / "colorize" / str(f["run"]) / "last.pt" if f.get("run") else None


def eager_model(f: dict[str, Any]) -> tuple[Colorizer, str]:
    """Return the PyTorch model for the eager timings and a sentence saying which it is."""
    cfg = NetConfig(variant=str(f["variant"]), loss=str(f["loss"]), width=float(f["width"]))
    temperature = float(f["temperature"]) if f.get("temperature") is not None else 1.0
    ckpt = checkpoint_path(f)
    if ckpt is not None and ckpt.exists():
        model, ck = load_trained(ckpt, torch.device("cpu"), temperature)
        same = (model.cfg.variant, model.cfg.loss, model.cfg.width) == \
            (cfg.variant, cfg.loss, cfg.width)
        if same:
            return model, (f"PyTorch eager ran the training run's checkpoint "
                           f"`{ckpt.relative_to(ROOT)}` (epoch {ck['epoch']}).")
    torch.manual_seed(0)
    n_bins = int(f["bins"])
    bins = Bins(np.zeros((n_bins, 2), np.float32), np.ones(n_bins, np.float32)) \
        if cfg.loss == "class" else None
    model = Colorizer(build_net(cfg, n_bins), cfg, bins, temperature).eval()
    where = f"`{ckpt.relative_to(ROOT)}` is absent" if ckpt is not None \
        else "the model's facts name no training run"
    if ckpt is not None and ckpt.exists():
        where = f"`{ckpt.relative_to(ROOT)}` is a different architecture"
    return model, (f"PyTorch eager ran a fresh {cfg.variant}/{cfg.loss} net of width "
                   f"{cfg.width:g}{f' with {n_bins} ab bins' if n_bins else ''} ({where}; "
                   f"the same architecture has the same speed).")


# ---------------------------------------------------------------------------------- quality

Colorize = Callable[[np.ndarray, float], np.ndarray]


def plugin_colorize(rt: Runtime) -> Colorize:
    """Return colorize(grey float RGB, strength) -> 8-bit RGB through PROCESSOR.process."""

    def colorize(grey: np.ndarray, strength: float) -> np.ndarray:
        options = PROCESSOR.resolve_options({"strength": strength})
        return to8(PROCESSOR.process([grey], options=options, context=rt.context(PROCESSOR)))

    return colorize


def quality(images: Sequence[tuple[str, np.ndarray]], colorize: Colorize,
            keep: set[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Return markdown rows (greyscale floor, each strength, ground truth) of the protocol's
    mean PSNR and colourfulness over images, and the strength-1 outputs of the names in keep."""
    floor = evaluate(images, lambda lt: np.zeros((*lt.shape, 2), np.float32),
                     render_size=int(facts()["render_size"]))
    rows = ["| | RGB PSNR dB | colourfulness |", "| --- | ---: | ---: |",
            f"| greyscale input | {floor['psnr']:.2f} | {floor['colourfulness']:.1f} |"]
    greys = [(name, truth, grey_of(truth.astype(np.float32) / 255)) for name, truth in images]
    kept: dict[str, np.ndarray] = {}
    for strength in STRENGTHS:
        psnrs, colours = [], []
        for name, truth, grey in greys:
            out = colorize(grey, strength)
            psnrs.append(psnr_rgb(out, truth))
            colours.append(colourfulness(out))
            if strength == 1.0 and name in keep:
                kept[name] = out
        rows.append(f"| colorize (shipped, strength {strength:g}) | {np.mean(psnrs):.2f} | "
                    f"{np.mean(colours):.1f} |")
    truth_colour = np.mean([colourfulness(truth) for _, truth in images])
    rows.append(f"| ground truth | - | {truth_colour:.1f} |")
    return rows, kept


def photos() -> list[tuple[str, np.ndarray]]:
    """Return (name, 8-bit RGB) of the scikit-image colour photos that load (all four ship
    with the package; one that would need a download is left out)."""
    out = []
    for name in PHOTOS:
        try:
            out.append((name, np.asarray(getattr(data, name)())[..., :3]))
        except Exception:  # a file missing from the package would need a download
            continue
    return out


# ---------------------------------------------------------------------------------- sheet

def _tile(rgb8: np.ndarray) -> Image.Image:
    img = Image.fromarray(rgb8)
    width = max(1, round(img.width * TILE_HEIGHT / img.height))
    return img.resize((width, TILE_HEIGHT), Image.Resampling.LANCZOS)


def contact_sheet(rows: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    """Write a PNG with one row per image: grey input | colorize output | ground truth."""
    font = ImageFont.load_default()
    columns = ("grey input", "colorize (strength 1)", "ground truth")
    tiles = [[_tile(to8(grey_of(truth.astype(np.float32) / 255))), _tile(out), _tile(truth)]
             for _, out, truth in rows]
    gap, head = 4, 18
    widths = [max(t[c].width for t in tiles) for c in range(3)]
    sheet = Image.new("RGB", (sum(widths) + gap * 4, head + len(tiles) * (TILE_HEIGHT + gap)
                              + gap), "white")
    draw = ImageDraw.Draw(sheet)
    xs = [gap + sum(widths[:c]) + gap * c for c in range(3)]
    for x, label in zip(xs, columns, strict=True):
        draw.text((x, 4), label, fill="black", font=font)
    for r, ((name, _, _), row) in enumerate(zip(rows, tiles, strict=True)):
        y = head + r * (TILE_HEIGHT + gap)
        for x, width, tile in zip(xs, widths, row, strict=True):
            sheet.paste(tile, (x + (width - tile.width) // 2, y))
        label = Path(name).stem
        box = draw.textbbox((xs[0] + 3, y + 3), label, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill="black")
        draw.text((xs[0] + 3, y + 3), label, fill="white", font=font)
    path.parent.mkdir(exist_ok=True)
    sheet.save(path, optimize=True)


# ---------------------------------------------------------------------------------- speed

def interleaved(timers: Sequence[Callable[[], float]], rounds: int = ROUNDS) -> list[float]:
    """Return each timer's least seconds over `rounds` rounds that call the timers in turn."""
    best = [float("inf")] * len(timers)
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer())
    return best


def speed(rt: Runtime, model: Colorizer) -> tuple[list[str], float]:
    """Return markdown rows of best seconds for a 1-megapixel photo at the default render size
    and the larger ones, and the ONNX Runtime end-to-end seconds at the default."""
    torch.set_num_threads(THREADS)
    rgb = resize(data.astronaut().astype(np.float32) / 255, SPEED_SIDE, SPEED_SIDE)
    light = lightness(rgb)[..., None]
    session = rt.context(PROCESSOR).session(MODEL.name)
    default = int(facts()["render_size"])

    def end_to_end(render: int) -> float:
        options = PROCESSOR.resolve_options({"render_size": render, "strength": 1.0})
        return best_time(lambda: PROCESSOR.process([rgb], options=options,
                                                   context=rt.context(PROCESSOR)))

    def net_input(render: int) -> np.ndarray:
        small = resize(light, *working_size(*rgb.shape[:2], render),
                       resample=Image.Resampling.BOX)
        return np.ascontiguousarray(small[None, None, ..., 0], dtype=np.float32)

    def onnx_network(render: int) -> float:
        x = net_input(render)
        return best_time(lambda: session.run({"lightness": x}))

    def eager_network(render: int) -> float:
        x = torch.from_numpy(net_input(render))

        def forward() -> object:
            with torch.inference_mode():
                return model(x)

        return best_time(forward)

    predict = torch_predictor(model, torch.device("cpu"))
    # ONNX Runtime and eager timed in alternation over ROUNDS rounds, each side's best kept: the
    # load from other jobs comes in bursts that would otherwise fall on one side only.
    ort_e2e, eager_e2e, ort_net, eager_net = interleaved([
        lambda: end_to_end(default),
        lambda: best_time(lambda: colorize_lab(rgb, predict, render_size=default,
                                               strength=CHROMA_GAIN)),
        lambda: onnx_network(default),
        lambda: eager_network(default)])
    rows = ["| render_size | network input | ONNX Runtime, process() s | PyTorch eager, same "
            "pipeline s | ONNX Runtime, network only s | PyTorch eager, network only s |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    h, w = working_size(*rgb.shape[:2], default)
    rows.append(f"| {default} (default) | {w}x{h} | {ort_e2e:.3f} | {eager_e2e:.3f} | "
                f"{ort_net:.3f} | {eager_net:.3f} |")
    for render in (s for s in LARGER_RENDER_SIZES if s != default):
        h, w = working_size(*rgb.shape[:2], render)
        rows.append(f"| {render} | {w}x{h} | {end_to_end(render):.3f} | - | "
                    f"{onnx_network(render):.3f} | - |")
    return rows, ort_e2e


# ---------------------------------------------------------------------------------- section

def _model_line(f: dict[str, Any]) -> str:
    keys = ("variant", "loss", "width", "bins", "temperature", "render_size", "epochs", "run",
            "chroma_gain")
    return ", ".join(f"{k} {f[k]}" for k in keys if f.get(k) not in (None, ""))


def run() -> str:
    """Return the markdown section: quality on color-val and on unseen photos, the contact
    sheet, and the 1-megapixel speed table."""
    load = os.getloadavg()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log I/O in timings
    f = facts()
    rt = runtime()
    colorize = plugin_colorize(rt)

    val = load_val_rgb(VAL, LIMIT)
    names = [name for name, _ in val]
    sheet_names = names[::SHEET_EVERY][:SHEET_VAL]
    val_rows, val_kept = quality(val, colorize, set(sheet_names))
    unseen = photos()
    photo_rows, photo_kept = quality(unseen, colorize, {name for name, _ in unseen})
    truths = dict(val) | dict(unseen)
    contact_sheet([(name, {**val_kept, **photo_kept}[name], truths[name])
                   for name in [*sheet_names, *(name for name, _ in unseen)]], SHEET)

    model, eager_note = eager_model(f)
    speed_rows, seconds = speed(rt, model)
    metrics = card().get("metrics", {})
    card_note = ""
    if "color-val PSNR dB (model)" in metrics:
        card_note = (f" The model card reports {metrics['color-val PSNR dB (model)']} dB and "
                     f"colourfulness {metrics.get('color-val colourfulness (model)')} on "
                     f"color-val (measured from the PyTorch checkpoint at export).")
    verdict = "meets" if seconds < BAR_SECONDS else "misses"
    return "\n".join([
        "## colorize",
        "",
        f"Shipped model `{MODEL.path.name}` ({_model_line(f)}), run through "
        f"`PROCESSOR.process` on the host's ONNX Runtime session (CPU, {THREADS} threads) at "
        f"its default render size. Protocol of ../shared/data/README.md: the input is the "
        f"ground truth's lightness as a grey image; PSNR on 8-bit RGB against the ground "
        f"truth, Hasler-Suesstrunk colourfulness (means over the images); strength scales "
        f"the predicted chroma.",
        "",
        f"Quality on `{VAL.name}` ({len(val)} images, short side 256; `IMGPROC_COLORIZE_VAL` / "
        f"`IMGPROC_COLORIZE_LIMIT` to change):",
        "",
        *val_rows,
        "",
        f"Quality on photographs the model has not seen (scikit-image: "
        f"{', '.join(f'{name} {im.shape[1]}x{im.shape[0]}' for name, im in unseen)}; "
        f"full size):",
        "",
        *photo_rows,
        "",
        f"Before and after: {len(sheet_names)} `{VAL.name}` images (every {SHEET_EVERY}th by "
        f"name) and the scikit-image photos, grey input | colorize | ground truth, "
        f"{TILE_HEIGHT} px tall.",
        "",
        f"![contact sheet]({SHEET.name})",
        "",
        f"Speed on {THREADS} CPU threads for a 1-megapixel photo (astronaut resized to "
        f"{SPEED_SIDE}x{SPEED_SIDE}), best of {REPEATS} after a warm-up, seconds; at the "
        f"default render size ONNX Runtime and eager are timed in turn over {ROUNDS} rounds "
        f"and each keeps its best (other jobs' load comes in bursts). "
        f"process() is the whole plugin call (lightness, box downscale, network, bicubic "
        f"chroma upscale, Lab to RGB); the eager pipeline is the same `colorize_lab` with "
        f"PyTorch predicting the chroma; network only is one forward pass at the working "
        f"size. torch {torch.__version__}.",
        "",
        *speed_rows,
        "",
        f"1-megapixel photo through ONNX Runtime at the default render size: {seconds:.3f} s, "
        f"which {verdict} the bar of {BAR_SECONDS:g} s. {eager_note}{card_note} Load average "
        f"at the start: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on {os.cpu_count()} "
        f"cores.",
        "",
    ])


if __name__ == "__main__":
    print(run())
