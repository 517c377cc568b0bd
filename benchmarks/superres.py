"""superres: speed per output megapixel (ONNX Runtime vs PyTorch eager vs Pillow bicubic) on 2
CPU threads, and quality (PSNR-Y/SSIM-Y vs bicubic) of the shipped models on a folder of HR images.

    python benchmarks/run.py superres
    IMGPROC_SR_HR=/path/to/Set5 python benchmarks/run.py superres

Quality follows ../shared/data/README.md: HR cropped to a multiple of the scale, LR by Pillow
bicubic, Y (BT.601, 16-235) with `scale` border pixels shaved (the trainer's own functions).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from timing import REPEATS, best_time  # benchmarks/ is on sys.path (run.py)

from exporters.superres import (
    bicubic_upscale,
    build_model,
    list_images,
    load_rgb,
    load_trained,
    make_lr,
    psnr_y,
    single_scale,
    ssim_y,
)
from imgproc_plugins.superres import MODEL_SCALES, MODELS, model_name

ROOT = Path(__file__).resolve().parents[1]
HR_DIR = Path(os.environ.get("IMGPROC_SR_HR", ROOT.parent / "shared" / "data" / "sr-val"
                             / "McMaster18"))
CHECKPOINT = ROOT / "runs" / "superres-best" / "best.pt"
THREADS = 2
SPEED_INPUT = 256  # LR side of the speed test image


def session(scale: int) -> ort.InferenceSession:
    """Return a CPU ONNX Runtime session of the shipped x`scale` model on THREADS threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / f"{model_name(scale)}.onnx"), options,
                                providers=["CPUExecutionProvider"])


def eager_model(scale: int) -> torch.nn.Module:
    """Return the x`scale` PyTorch module: the checkpoint when present, else a fresh net of the
    same architecture (the same speed: the weights do not change the work)."""
    net = load_trained(CHECKPOINT, torch.device("cpu")) if CHECKPOINT.exists() \
        else build_model("best")
    return single_scale(net, scale)


def speed_rows() -> list[str]:
    """Return markdown rows: seconds per output megapixel for each scale and runtime."""
    torch.set_num_threads(THREADS)
    x = np.random.default_rng(0).random((1, 3, SPEED_INPUT, SPEED_INPUT), dtype=np.float32)
    lr = Image.fromarray((x[0].transpose(1, 2, 0) * 255).astype(np.uint8))
    rows = ["| scale | output | ONNX Runtime s/MP | PyTorch eager s/MP | Pillow bicubic s/MP |",
            "| --- | --- | ---: | ---: | ---: |"]
    for scale in MODEL_SCALES:
        side = SPEED_INPUT * scale
        mp = side * side / 1e6
        sess, module, xt = session(scale), eager_model(scale), torch.from_numpy(x)

        def by_torch(module: torch.nn.Module = module, xt: torch.Tensor = xt) -> object:
            with torch.inference_mode():
                return module(xt)

        timings = (best_time(lambda sess=sess: sess.run(None, {"image": x})),
                   best_time(by_torch),
                   best_time(lambda side=side: lr.resize((side, side), Image.BICUBIC)))
        rows.append(f"| x{scale} | {side}x{side} | "
                    + " | ".join(f"{t / mp:.3f}" for t in timings) + " |")
    return rows


def onnx_upscale(sess: ort.InferenceSession) -> Callable[[np.ndarray, int], np.ndarray]:
    """Return upscale(lr uint8 HxWx3, scale) -> uint8 through an ONNX Runtime session."""

    def upscale(lr: np.ndarray, scale: int) -> np.ndarray:
        x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / 255
        y = sess.run(None, {"image": x})[0][0].transpose(1, 2, 0)
        return np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)

    return upscale


def quality_rows(hr_dir: Path) -> list[str]:
    """Return markdown rows: mean PSNR-Y/SSIM-Y of bicubic and the shipped model per scale."""
    hrs = [load_rgb(p) for p in list_images([hr_dir])]
    if not hrs:
        return [f"_No images in {hr_dir}: quality table skipped._"]
    rows = ["| scale | bicubic PSNR-Y / SSIM-Y | superres-best PSNR-Y / SSIM-Y | gain (dB) |",
            "| --- | ---: | ---: | ---: |"]
    for scale in MODEL_SCALES:
        model = onnx_upscale(session(scale))
        scores: dict[str, list[tuple[float, float]]] = {"bicubic": [], "model": []}
        for hr_full in hrs:
            lr_pil = make_lr(Image.fromarray(hr_full), scale)
            lr = np.asarray(lr_pil)
            hr = hr_full[: lr.shape[0] * scale, : lr.shape[1] * scale]
            for key, sr in (("bicubic", bicubic_upscale(lr, scale)), ("model", model(lr, scale))):
                scores[key].append((psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)))
        (bp, bs), (mp, ms) = (np.mean(scores[k], axis=0) for k in ("bicubic", "model"))
        rows.append(f"| x{scale} | {bp:.2f} / {bs:.4f} | {mp:.2f} / {ms:.4f} | {mp - bp:+.2f} |")
    return rows


def run() -> str:
    """Return the markdown section: the speed table and the quality table."""
    hr_name = HR_DIR.name
    return "\n".join([
        "## superres",
        "",
        f"Speed on {THREADS} CPU threads, {SPEED_INPUT}x{SPEED_INPUT} RGB input, best of "
        f"{REPEATS} after a warm-up, seconds per output megapixel (untiled). Eager runs the "
        "same single-scale module that was exported.",
        "",
        *speed_rows(),
        "",
        f"Quality on {hr_name} ({len(list_images([HR_DIR]))} HR images, `IMGPROC_SR_HR` to "
        "change; protocol of ../shared/data/README.md), shipped ONNX models, untiled:",
        "",
        *quality_rows(HR_DIR),
        "",
    ])


if __name__ == "__main__":
    print(run())
