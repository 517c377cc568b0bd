"""refit: seconds to 30 dB at 512x512, 1 MP and 4 MP (the ridge solver, today's default, next
to the previous default, the Adam fit, and the reference SIREN), whole CLI runs with peak
memory, rendering speed, and arbitrary-scale upsampling next to bicubic on sr-val
(../shared/data/README.md).

    python benchmarks/run.py refit
    IMGPROC_SR_VAL=/path/to/hr/pngs IMGPROC_BENCH_LIMIT=18 python benchmarks/run.py refit

Test photos: skimage's astronaut, coffee, chelsea and rocket, each resized (Lanczos) to
512x512, alone or tiled into mosaics (1024x1024 = 1 MP, 2048x2048 = 4 MP, 1536x1024 for the
CLI), so every size has the pixel-level detail of a real photo rather than an upscaled one.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from skimage import data
from timing import best_time, measured_program  # benchmarks/ is on sys.path (run.py)

from exporters.superres_metrics import psnr_y
from imgproc_plugins import siren
from imgproc_plugins.refit import BASIS_MODEL, INIT_MODEL
from imgproc_plugins.siren import learned

TARGET_DB = 30.0
BUDGET_S_PER_MP = 150.0  # a fit that has not reached the target by then is cut off ...
BUDGET_CAP_S = 300.0  # ... or after this long at any size
SCALES = (2.0, 3.5, 4.0)
SR_VAL = Path(os.environ.get("IMGPROC_SR_VAL", Path(__file__).resolve().parents[2]
                             / "shared" / "data" / "sr-val" / "McMaster18"))
LIMIT = int(os.environ.get("IMGPROC_BENCH_LIMIT", "18"))
GNU_TIME = "/usr/bin/time"  # peak memory of the CLI runs (see _program)
# The defaults before issue 18: Adam, SIREN's random init, every pixel in every step.
BEFORE = replace(siren.SirenConfig(), sample=1.0)
# The previous default (`-O solver=adam`): Adam from the Reptile init, half the pixels.
ADAM = replace(siren.SirenConfig(), sample=0.5)
# Today's default: shared learned sine layers, each tile's output layer solved (ridge).
RIDGE = learned.load(BASIS_MODEL).config()
# The research notes' reference: one SIREN over the whole image, 3 hidden layers of 256,
# Adam lr 1e-4, full batch, coordinates over [-1, 1] (256 pixels per unit at 512 px).
REFERENCE = siren.SirenConfig(width=256, depth=3, lr=1e-4, steps=10**6, tile=512, overlap=0,
                              pixels_per_unit=256.0)
# (label, config, learned weights (None: SIREN's init), sizes it runs at)
CONFIGS = (
    ("now: ridge solve on the learned basis (default)", RIDGE, BASIS_MODEL,
     ("512", "1 MP", "4 MP")),
    ("ridge solve on a random basis (`-O init=random`)", RIDGE, None, ("512", "1 MP", "4 MP")),
    ("previous default: Adam from the learned init, half the pixels per step "
     "(`-O solver=adam`)", ADAM, INIT_MODEL, ("512", "1 MP", "4 MP")),
    ("before issue 18: Adam, random init, all pixels per step", BEFORE, None, ("512",)),
    ("reference SIREN 3x256, one network, lr 1e-4", REFERENCE, None, ("512",)),
)


def _square(pixels: np.ndarray) -> np.ndarray:
    image = Image.fromarray(pixels).resize((512, 512), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255


def _photos() -> list[np.ndarray]:
    return [_square(f()) for f in (data.astronaut, data.coffee, data.chelsea, data.rocket)]


def mosaic(rows: int, cols: int) -> np.ndarray:
    """Return rows x cols 512-pixel photos (flipped on repeats) as one float image."""
    photos = _photos()
    grid = [[_flip(photos[(r * cols + c) % 4], (r * cols + c) // 4) for c in range(cols)]
            for r in range(rows)]
    return np.concatenate([np.concatenate(row, axis=1) for row in grid], axis=0)


def _flip(image: np.ndarray, how: int) -> np.ndarray:
    return image[:, ::-1] if how % 2 else (image[::-1] if how % 3 else image)


def _images() -> dict[str, np.ndarray]:
    return {"512": _photos()[0], "1 MP": mosaic(2, 2), "4 MP": mosaic(4, 4)}


def _time_to(fit: siren.Fit, budget: float) -> str:
    """Return the fit's seconds and the PSNR it ended at, or what it reached when the budget
    cut it off (a ridge fit is one solve: it ends where it ends)."""
    if fit.psnr < TARGET_DB and fit.steps:
        return f"> {budget:.0f} ({fit.psnr:.1f} dB)"
    return f"{fit.seconds:.{2 if fit.seconds < 10 else 1}f} ({fit.psnr:.1f} dB)"


def fit_table() -> list[str]:
    """Return markdown rows: seconds to fit each image to 30 dB, per configuration."""
    images = _images()
    rows = ["| configuration | " + " | ".join(f"{k} s to 30 dB" for k in images)
            + " | s/step at 512 |", "| --- | " + " | ".join("---:" for _ in images) + " | ---: |"]
    for label, config, weights, sizes in CONFIGS:
        cells, per_step = [], "-"
        for key, image in images.items():
            if key not in sizes:
                cells.append("-")
                continue
            budget = min(BUDGET_S_PER_MP * max(image.shape[0] * image.shape[1] / 1e6, 0.5),
                         BUDGET_CAP_S)
            fit = siren.fit_image(image, replace(config, steps=10**6, target_psnr=TARGET_DB,
                                                 max_seconds=budget),
                                  init=weights and learned.load(weights))
            cells.append(_time_to(fit, budget))
            if key == "512":
                per_step = f"{fit.seconds / fit.steps:.3f}" if fit.steps else "one solve"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {per_step} |")
    return rows


def cli_table() -> list[str]:
    """Return markdown rows: whole `imgproc run -p refit` programs (fit to 30 dB, render at
    1x, read and write included) with their peak memory."""
    runs = (("previous default (`-O solver=adam`)", (2, 3), ["solver=adam"]),
            ("now (defaults)", (2, 3), []), ("now (defaults)", (4, 4), []),
            ("now (defaults)", (6, 8), []))
    rows = ["| options | image | seconds | s per MP | peak memory (GB) |",
            "| --- | --- | ---: | ---: | ---: |"]
    imgproc = str(Path(sys.executable).with_name("imgproc"))
    with tempfile.TemporaryDirectory() as scratch:
        for label, (r, c), extra in runs:
            folder = Path(scratch) / f"{r}x{c}"
            if not folder.exists():
                folder.mkdir()
                Image.fromarray((mosaic(r, c) * 255).round().astype(np.uint8)).save(
                    folder / "photo.png")
            options = [f"-O{o}" for o in ("scale=1", f"target_psnr={TARGET_DB:g}", *extra)]
            seconds, gb = _program([imgproc, "run", "-p", "refit", *options, str(folder),
                                    "-o", str(Path(scratch) / f"out-{len(rows)}")])
            mp = r * c * 512 * 512 / 1e6
            rows.append(f"| {label} | {c * 512}x{r * 512} ({mp:.1f} MP) | {seconds:.1f} | "
                        f"{seconds / mp:.1f} | {gb:.2f} |")
    return rows


def _program(command: list[str]) -> tuple[float, float]:
    """Return (wall seconds, peak resident GB) of a command, the peak as GNU time reports it
    from its own small process: on Linux a child forked from this benchmark's (large) process
    keeps this process's high-water mark through fork and exec, so its own ru_maxrss says
    this process's peak (measured: `python -c pass` "peaks" at 1.14 GB after 1.2 GB here)."""
    if not Path(GNU_TIME).exists():
        return measured_program(command)
    with tempfile.NamedTemporaryFile("r") as peak:
        seconds, _ = measured_program([GNU_TIME, "-o", peak.name, "-f", "%M", *command])
        return seconds, int(peak.read().split()[-1]) / 2**20  # kB -> GB


def render_table() -> list[str]:
    """Return markdown rows: time to render a fitted 512x512 photo at 2048x2048 (x4) and at
    1843x1843 (x3.6: output pixels that do not line up with the tile grid)."""
    rows = ["| network (512x512 fit) | renderer | x4 s | s per output MP | x3.6 s |",
            "| --- | --- | ---: | ---: | ---: |"]
    for label, config, weights in (("ridge (default)", RIDGE, BASIS_MODEL),
                                   ("Adam (`solver=adam`)", replace(ADAM, max_seconds=5.0),
                                    INIT_MODEL)):
        fit = siren.fit_image(_photos()[0], config, init=learned.load(weights))
        session = ort.InferenceSession(siren.to_onnx(fit).SerializeToString(),
                                       providers=["CPUExecutionProvider"])

        def by_ort(size: int, fit: siren.Fit = fit, session: Any = session) -> np.ndarray:
            return siren.render(lambda c: session.run(None, {"coords": c})[0], fit.layout,
                                size, size, pixels_per_unit=fit.config.pixels_per_unit,
                                shared=fit.model.shared)

        def by_torch(size: int, fit: siren.Fit = fit) -> np.ndarray:
            with torch.no_grad():
                return siren.render(lambda c: fit.model(torch.from_numpy(c)).numpy(),
                                    fit.layout, size, size, shared=fit.model.shared,
                                    pixels_per_unit=fit.config.pixels_per_unit)

        for name, fn in (("ONNX Runtime (CPU)", by_ort), ("PyTorch eager", by_torch)):
            x4, odd = (best_time(lambda n=n, fn=fn: fn(n), repeats=2, warm_up=False)
                       for n in (2048, 1843))
            rows.append(f"| {label} | {name} | {x4:.2f} | {x4 / (2048 * 2048 / 1e6):.2f} | "
                        f"{odd:.2f} |")
    return rows


def _crop_multiple(hr: Image.Image, scale: float) -> Image.Image:
    # Whole-pixel LR sizes: a multiple of 2 or 4, or of 7 for x3.5 (7 HR pixels = 2 LR).
    step = {2.0: 2, 3.5: 7, 4.0: 4}[scale]
    return hr.crop((0, 0, hr.width - hr.width % step, hr.height - hr.height % step))


def upscale_table() -> list[str]:
    """Return markdown rows: PSNR-Y of refit (before and now) and bicubic on sr-val HR images."""
    files = sorted(SR_VAL.glob("*.png"))[:LIMIT]
    if not files:
        return [f"(no images under {SR_VAL})"]
    rows = ["| scale | previous default (`solver=adam`): PSNR-Y | fit s/image | now (ridge): "
            "PSNR-Y | fit s/image | bicubic PSNR-Y |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for scale in SCALES:
        scores: dict[str, list[float]] = {"before": [], "now": [], "bicubic": [],
                                          "before_s": [], "now_s": []}
        for path in files:
            hr = _crop_multiple(Image.open(path).convert("RGB"), scale)
            lr = hr.resize((round(hr.width / scale), round(hr.height / scale)),
                           Image.Resampling.BICUBIC)
            hr_a = np.asarray(hr, dtype=np.float32) / 255
            shave = math.ceil(scale)
            for name, config, weights in (("before", ADAM, INIT_MODEL),
                                          ("now", RIDGE, BASIS_MODEL)):
                fit = siren.fit_image(np.asarray(lr, dtype=np.float32) / 255, config,
                                      init=learned.load(weights))
                with torch.no_grad():
                    up = siren.render(lambda c, m=fit.model: m(torch.from_numpy(c)).numpy(),
                                      fit.layout, hr.height, hr.width, shared=fit.model.shared,
                                      pixels_per_unit=fit.config.pixels_per_unit)
                scores[name].append(psnr_y(np.clip(up, 0, 1), hr_a, shave))
                scores[f"{name}_s"].append(fit.seconds)
            bic = np.asarray(lr.resize(hr.size, Image.Resampling.BICUBIC), np.float32) / 255
            scores["bicubic"].append(psnr_y(bic, hr_a, shave))
        mean = {k: float(np.mean(v)) for k, v in scores.items()}
        rows.append(f"| x{scale:g} | {mean['before']:.2f} | {mean['before_s']:.1f} | "
                    f"{mean['now']:.2f} | {mean['now_s']:.1f} | {mean['bicubic']:.2f} |")
    return rows


def run() -> str:
    """Return the markdown section for refit."""
    torch.set_num_threads(os.cpu_count() or 1)
    files = len(sorted(SR_VAL.glob("*.png"))[:LIMIT])
    return "\n".join([
        "## refit: SIREN fit speed, rendering, and arbitrary-scale upsampling", "",
        f"Seconds of fitting (PyTorch, {torch.get_num_threads()} threads) until the PSNR on "
        f"the photo's own pixels reaches {TARGET_DB:g} dB, cut off after "
        f"{BUDGET_S_PER_MP:g} s per MP (at most {BUDGET_CAP_S:g} s); all rows in one run, one "
        "after the other. The "
        "issue's bar: a whole CLI run of a 1-2 MP photo at <= 5 s per MP.", "",
        *fit_table(), "",
        "Whole `imgproc run -p refit -O scale=1 -O target_psnr=30` programs (torch start-up, "
        "read, fit, render through ONNX Runtime, write), each a fresh process (the ridge "
        "solver has no target: its one solve ends above it):", "",
        *cli_table(), "",
        *render_table(), "",
        "A ridge network shares its 256 features among the tiles whose output pixels sit alike "
        "(all of them when the tile stride maps onto whole output pixels: x1, x2, x3.5, x4 "
        "here), so it renders fast there; at other factors (x3.6) every tile computes its own "
        "features, 8 times as many as an Adam network's 32.", "",
        f"Upsampling {files} images of `{SR_VAL.name}` (HR cropped to whole LR pixels, LR by "
        "Pillow bicubic, PSNR-Y with `ceil(scale)` pixels shaved), refit's previous default "
        "(Adam to 36 dB or 300 steps) and today's (one ridge solve), against bicubic:", "",
        *upscale_table(), "",
        "Read honestly: the ridge solver's basis was trained on sr-train photos shrunk with "
        "this very Pillow bicubic (`python -m exporters.refit_init train-basis`), so it is a "
        "learned interpolator for that degradation, linear in the pixels of each tile; its "
        "gain over bicubic is that of a better linear filter, not of super-resolution (the "
        "superres plugin's CNNs are several dB better). refit is for resampling at any size "
        "from one stored network, its exact derivatives and continuous rendering."])
