"""refit: fit PSNR against time (reference SIREN vs ours), rendering speed, and arbitrary-scale
upsampling quality next to bicubic on sr-val (protocol of ../shared/data/README.md).

    python benchmarks/run.py refit
    IMGPROC_SR_VAL=/path/to/hr/pngs IMGPROC_BENCH_LIMIT=18 python benchmarks/run.py refit
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from skimage import data
from timing import best_time  # benchmarks/ is on sys.path (run.py)

from exporters.superres_metrics import psnr_y
from imgproc_plugins import siren

BUDGET_S = 60.0
CHECKPOINTS_S = (10, 20, 30, 45, 60)
SCALES = (2.0, 3.5, 4.0)
SR_VAL = Path(os.environ.get("IMGPROC_SR_VAL", Path(__file__).resolve().parents[2]
                             / "shared" / "data" / "sr-val" / "McMaster18"))
LIMIT = int(os.environ.get("IMGPROC_BENCH_LIMIT", "18"))
# The research notes' reference: one SIREN over the whole image, 3 hidden layers of 256,
# Adam lr 1e-4, full batch, coordinates over [-1, 1] (256 pixels per unit at 512 px).
REFERENCE = siren.SirenConfig(width=256, depth=3, lr=1e-4, steps=10**6, target_psnr=99.0,
                              tile=512, overlap=0, pixels_per_unit=256.0, max_seconds=BUDGET_S)
OURS = replace(siren.SirenConfig(), steps=10**6, target_psnr=99.0, max_seconds=BUDGET_S)


def _photos() -> dict[str, np.ndarray]:
    def square(pixels: np.ndarray) -> np.ndarray:
        img = Image.fromarray(pixels).resize((512, 512), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.float32) / 255

    return {"astronaut": square(data.astronaut()), "coffee": square(data.coffee())}


def _psnr_at(history: list[tuple[int, float, float]], seconds: float) -> str:
    reached = [p for _, t, p in history if t <= seconds]
    return f"{reached[-1]:.2f}" if reached else "-"


def _time_to(history: list[tuple[int, float, float]], db: float) -> str:
    return next((f"{t:.1f}" for _, t, p in history if p >= db), f"> {BUDGET_S:.0f}")


def fit_table() -> list[str]:
    """Return markdown rows: PSNR on the photo's own pixels after given seconds of fitting."""
    marks = " | ".join(f"dB @ {s} s" for s in CHECKPOINTS_S)
    rule = " | ".join("---:" for _ in CHECKPOINTS_S)
    rows = [f"| image | configuration | parameters | s/step | {marks} | s to 30 dB |",
            f"| --- | --- | ---: | ---: | {rule} | ---: |"]
    for name, photo in _photos().items():
        for label, config in (("reference 3x256, one network, lr 1e-4", REFERENCE),
                              ("ours: 32x32 tiles of 3x32, lr 2e-3", OURS)):
            fit = siren.fit_image(photo, config)
            params = sum(p.numel() for p in fit.model.parameters())
            rows.append(f"| {name} 512x512 | {label} | {params:,} | "
                        f"{fit.seconds / fit.steps:.2f} | "
                        + " | ".join(_psnr_at(fit.history, s) for s in CHECKPOINTS_S)
                        + f" | {_time_to(fit.history, 30.0)} |")
    return rows


def render_table() -> list[str]:
    """Return markdown rows: time to render a fitted 512x512 photo at 2048x2048."""
    photo = _photos()["astronaut"]
    fit = siren.fit_image(photo, replace(OURS, max_seconds=5.0))
    session = ort.InferenceSession(siren.to_onnx(fit).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    ppu = fit.config.pixels_per_unit

    def by_ort() -> np.ndarray:
        return siren.render(lambda c: session.run(None, {"coords": c})[0], fit.layout, 2048,
                            2048, pixels_per_unit=ppu)

    def by_torch() -> np.ndarray:
        with torch.no_grad():
            return siren.render(lambda c: fit.model(torch.from_numpy(c)).numpy(), fit.layout,
                                2048, 2048, pixels_per_unit=ppu)

    rows = ["| renderer (512x512 fit -> 2048x2048) | seconds | s per output MP |",
            "| --- | ---: | ---: |"]
    for label, fn in (("ONNX Runtime (CPU)", by_ort), ("PyTorch eager", by_torch)):
        seconds = best_time(fn, repeats=2, warm_up=False)
        rows.append(f"| {label} | {seconds:.2f} | {seconds / (2048 * 2048 / 1e6):.2f} |")
    return rows


def _crop_multiple(hr: Image.Image, scale: float) -> Image.Image:
    # Whole-pixel LR sizes: a multiple of 2 or 4, or of 7 for x3.5 (7 HR pixels = 2 LR).
    step = {2.0: 2, 3.5: 7, 4.0: 4}[scale]
    return hr.crop((0, 0, hr.width - hr.width % step, hr.height - hr.height % step))


def upscale_table() -> list[str]:
    """Return markdown rows: PSNR-Y of refit and bicubic upscaling on sr-val HR images."""
    files = sorted(SR_VAL.glob("*.png"))[:LIMIT]
    if not files:
        return [f"(no images under {SR_VAL})"]
    rows = ["| scale | refit PSNR-Y | bicubic PSNR-Y | refit fit s/image |",
            "| --- | ---: | ---: | ---: |"]
    for scale in SCALES:
        ours, bicubic, seconds = [], [], []
        for path in files:
            hr = _crop_multiple(Image.open(path).convert("RGB"), scale)
            lr = hr.resize((round(hr.width / scale), round(hr.height / scale)),
                           Image.Resampling.BICUBIC)
            hr_a = np.asarray(hr, dtype=np.float32) / 255
            fit = siren.fit_image(np.asarray(lr, dtype=np.float32) / 255, siren.SirenConfig())
            with torch.no_grad():
                up = siren.render(lambda c, m=fit.model: m(torch.from_numpy(c)).numpy(),
                                  fit.layout, hr.height, hr.width,
                                  pixels_per_unit=fit.config.pixels_per_unit)
            shave = math.ceil(scale)
            ours.append(psnr_y(np.clip(up, 0, 1), hr_a, shave))  # the SR protocol's code
            bic = np.asarray(lr.resize(hr.size, Image.Resampling.BICUBIC), np.float32) / 255
            bicubic.append(psnr_y(bic, hr_a, shave))
            seconds.append(fit.seconds)
        rows.append(f"| x{scale:g} | {np.mean(ours):.2f} | {np.mean(bicubic):.2f} | "
                    f"{np.mean(seconds):.1f} |")
    return rows


def run() -> str:
    """Return the markdown section for refit."""
    torch.set_num_threads(os.cpu_count() or 1)
    files = len(sorted(SR_VAL.glob("*.png"))[:LIMIT])
    return "\n".join([
        "## refit: SIREN fit speed, rendering, and arbitrary-scale upsampling", "",
        f"Fit PSNR on the photo's own pixels after a wall-clock budget of {BUDGET_S:.0f} s "
        "(PyTorch, 2 CPU threads). Bar: a 512x512 photo to 30 dB in under 60 s.", "",
        *fit_table(), "",
        *render_table(), "",
        f"Upsampling {files} images of `{SR_VAL.name}` (HR cropped to whole LR pixels, LR by "
        "Pillow bicubic, PSNR-Y with `ceil(scale)` pixels shaved), refit at its defaults "
        "(fit to 36 dB or 300 steps) against bicubic:", "",
        *upscale_table(), "",
        "Read honestly: a SIREN fitted to the low-resolution pixels interpolates between them "
        "without any prior about natural images, so it does not beat bicubic; refit is for "
        "resampling at any size from one stored network, its exact derivatives and "
        "continuous rendering, not for super-resolution (that is the superres plugin's job)."])
