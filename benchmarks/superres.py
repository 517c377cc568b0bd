"""superres: speed per output megapixel (ONNX Runtime vs PyTorch eager vs Pillow bicubic) on 2
CPU threads, x4 side by side with OpenCV's ESPCN (OpenCV DNN), quality (PSNR-Y/SSIM-Y vs bicubic)
of the shipped models on a folder of HR images, and a 4000x3000 photo upscaled x4 through the CLI
(wall time and peak memory).

    python benchmarks/run.py superres                     # all three, into docs/benchmarks.md
    IMGPROC_SR_BIG=0 python benchmarks/run.py superres    # without the 4000x3000 run (minutes)
    python benchmarks/superres.py /path/to/Set5 /path/to/Set14   # quality on your HR sets

The ESPCN rows need OpenCV's Python wheel, which no extra installs (CI runs no benchmarks):
`pip install opencv-python-headless` (4.14 measured).

Quality follows ../shared/data/README.md: HR cropped to a multiple of the scale, LR by Pillow
bicubic, Y (BT.601, 16-235) with `scale` border pixels shaved (the trainer's own functions).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from skimage import data as skimage_data
from timing import REPEATS, best_time  # benchmarks/ is on sys.path (run.py)

from exporters.superres import load_trained
from exporters.superres_data import list_images, load_rgb, make_lr
from exporters.superres_metrics import bicubic_upscale, psnr_y, ssim_y
from exporters.superres_net import build_model, single_scale
from imgproc_plugins.superres import MODEL_SCALES, MODEL_SIZES, MODELS, model_name, upscale_fn

# The x4 output of the 4000x3000 photo is 192 MP: past Pillow's bomb guard, which the host
# lifts too (imgproc/images.py).
Image.MAX_IMAGE_PIXELS = None

ROOT = Path(__file__).resolve().parents[1]
HR_DIR = ROOT.parent / "shared" / "data" / "sr-val" / "McMaster18"  # the protocol's set
RUNS = ROOT / "runs"
THREADS = 2
SPEED_INPUT = 256  # LR side of the speed test image
BIG = (4000, 3000)  # width, height of the photo upscaled x4 through the CLI
RUN_BIG = os.environ.get("IMGPROC_SR_BIG", "1") != "0"
ESPCN_SCALE = 4  # the bar: superres fast faster than OpenCV's ESPCN at x4


def session(scale: int, size: str) -> ort.InferenceSession:
    """Return a CPU ONNX Runtime session of a shipped model on THREADS threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / f"{model_name(scale, size)}.onnx"), options,
                                providers=["CPUExecutionProvider"])


def eager_model(scale: int, size: str) -> torch.nn.Module:
    """Return the x`scale` PyTorch module: the run's checkpoint when present, else a fresh net
    of the same architecture (the same speed: the weights do not change the work)."""
    checkpoint = RUNS / f"superres-{size}" / "best.pt"
    net = load_trained(checkpoint, torch.device("cpu")) if checkpoint.exists() \
        else build_model(size)
    return single_scale(net, scale)


def speed_input() -> tuple[np.ndarray, Image.Image]:
    """Return the speed test image as the models' float NCHW input and as the same 8-bit RGB."""
    x = np.random.default_rng(0).random((1, 3, SPEED_INPUT, SPEED_INPUT), dtype=np.float32)
    return x, Image.fromarray((x[0].transpose(1, 2, 0) * 255).astype(np.uint8))


def speed_rows() -> list[str]:
    """Return markdown rows: seconds per output megapixel for each model, scale and runtime."""
    torch.set_num_threads(THREADS)
    x, lr = speed_input()
    rows = ["| model | scale | output | ONNX Runtime s/MP | PyTorch eager s/MP | "
            "Pillow bicubic s/MP |",
            "| --- | --- | --- | ---: | ---: | ---: |"]
    for size in MODEL_SIZES:
        rows += [speed_row(size, scale, x, lr) for scale in MODEL_SCALES]
    return rows


def speed_row(size: str, scale: int, x: np.ndarray, lr: Image.Image) -> str:
    """Return the speed row of one model at one scale."""
    side = SPEED_INPUT * scale
    mp = side * side / 1e6
    sess, module, xt = session(scale, size), eager_model(scale, size), torch.from_numpy(x)

    def by_torch() -> object:
        with torch.inference_mode():
            return module(xt)

    timings = (best_time(lambda: sess.run(None, {"image": x})), best_time(by_torch),
               best_time(lambda: lr.resize((side, side), Image.Resampling.BICUBIC)))
    return (f"| {size} | x{scale} | {side}x{side} | "
            + " | ".join(f"{t / mp:.3f}" for t in timings) + " |")


def require_cv2() -> ModuleType:
    """Return the cv2 module, or stop with how to install it (no extra carries it)."""
    try:
        import cv2
    except ImportError as exc:
        raise SystemExit("the superres benchmark times OpenCV's ESPCN through OpenCV DNN: "
                         "pip install opencv-python-headless") from exc
    return cv2


def espcn_net(scale: int) -> torch.nn.Module:
    """Return ESPCN as OpenCV's dnn_superres ships it (Shi et al. 2016), with random weights:
    5x5 1->64 tanh, 3x3 64->32 tanh, 3x3 32->scale**2, depth-to-space, on Y in [0, 1]."""
    torch.manual_seed(0)  # the published weights are not reachable here; speed ignores them
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 64, 5, padding=2), torch.nn.Tanh(),
        torch.nn.Conv2d(64, 32, 3, padding=1), torch.nn.Tanh(),
        torch.nn.Conv2d(32, scale * scale, 3, padding=1), torch.nn.PixelShuffle(scale)).eval()


def espcn_onnx(net: torch.nn.Module) -> bytes:
    """Return the ONNX graph of an ESPCN net, input `y` (1x1xHxW), any height and width."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but takes 0.4 s against the dynamo one's 3 s;
        # three convolutions and a DepthToSpace carry no shape constants (tested on odd sizes).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.rand(1, 1, 32, 32),), buffer, input_names=["y"],
                          output_names=["sr"], dynamic_axes={"y": {2: "h", 3: "w"}},
                          opset_version=13, dynamo=False)
    return buffer.getvalue()


def opencv_espcn(scale: int) -> tuple[object, Callable[[np.ndarray], np.ndarray]]:
    """Return (the cv2.dnn.Net of ESPCN on THREADS threads, upsample(BGR uint8) -> BGR uint8)
    where upsample follows dnn_superres's DnnSuperResImpl::upsample for espcn step by step."""
    cv2 = require_cv2()
    cv2.setNumThreads(THREADS)
    net = cv2.dnn.readNetFromONNX(np.frombuffer(espcn_onnx(espcn_net(scale)), np.uint8))

    def upsample(bgr: np.ndarray) -> np.ndarray:
        ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb).astype(np.float32) / 255
        y, cr, cb = cv2.split(ycrcb)
        net.setInput(y.reshape(1, 1, *y.shape))
        sr = net.forward()[0, 0]
        # dnn_superres resizes chroma with cv::resize's default interpolation (bilinear)
        cr, cb = (cv2.resize(c, None, fx=scale, fy=scale) for c in (cr, cb))
        merged = np.clip(np.rint(cv2.merge([sr, cr, cb]) * 255), 0, 255).astype(np.uint8)
        return cv2.cvtColor(merged, cv2.COLOR_YCrCb2BGR)

    return net, upsample


def onnx_seconds(sess: ort.InferenceSession, x: np.ndarray) -> float:
    """Return the best time of one `session.run` of a shipped model on x."""
    return best_time(lambda: sess.run(None, {"image": x}))


def espcn_rows() -> list[str]:
    """Return markdown rows: s per output MP at x{ESPCN_SCALE} of each shipped model (ONNX
    Runtime) and of OpenCV's ESPCN (OpenCV DNN), timed back to back on the same input."""
    cv2 = require_cv2()
    x, lr = speed_input()
    bgr = np.ascontiguousarray(np.asarray(lr)[..., ::-1])
    y = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[..., 0], np.float32) / 255
    side = SPEED_INPUT * ESPCN_SCALE
    mp = side * side / 1e6
    net, upsample = opencv_espcn(ESPCN_SCALE)

    def net_only() -> object:
        net.setInput(y.reshape(1, 1, *y.shape))
        return net.forward()

    timed = [(f"superres-{size} | ONNX Runtime {ort.__version__} | the model on RGB, float in "
              "and out", onnx_seconds(session(ESPCN_SCALE, size), x)) for size in MODEL_SIZES]
    opencv = f"ESPCN (random weights) | OpenCV DNN {cv2.__version__}"
    whole = best_time(lambda: upsample(bgr))
    timed += [(f"{opencv} | dnn_superres's whole upsample: BGR uint8 in and out", whole),
              (f"{opencv} | the net on Y only, float in and out", best_time(net_only))]
    return ["| upscaler | runtime | timed | s per output MP | time / ESPCN's upsample |",
            "| --- | --- | --- | ---: | ---: |",
            *(f"| {label} | {t / mp:.3f} | {t / whole:.2f} |" for label, t in timed)]


def onnx_upscale(sess: ort.InferenceSession) -> Callable[[np.ndarray, int], np.ndarray]:
    """Return upscale(lr uint8 HxWx3, scale) -> uint8 through an ONNX Runtime session."""

    def upscale(lr: np.ndarray, scale: int) -> np.ndarray:
        x = np.ascontiguousarray(lr.transpose(2, 0, 1)[None], dtype=np.float32) / 255
        y = sess.run(None, {"image": x})[0][0].transpose(1, 2, 0)
        return np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)

    return upscale


def quality_rows(hr_dir: Path) -> list[str]:
    """Return markdown rows: mean PSNR-Y/SSIM-Y of bicubic and each shipped model per scale."""
    hrs = [load_rgb(p) for p in list_images([hr_dir])]
    if not hrs:
        return [f"_No images in {hr_dir}: quality table skipped._"]
    rows = ["| scale | bicubic PSNR-Y / SSIM-Y | "
            + " | ".join(f"superres-{size} PSNR-Y / SSIM-Y (gain dB)" for size in MODEL_SIZES)
            + " |", "| --- | ---: |" + " ---: |" * len(MODEL_SIZES)]
    for scale in MODEL_SCALES:
        upscalers = {"bicubic": bicubic_upscale,
                     **{size: onnx_upscale(session(scale, size)) for size in MODEL_SIZES}}
        scores: dict[str, list[tuple[float, float]]] = {key: [] for key in upscalers}
        for hr_full in hrs:
            lr = np.asarray(make_lr(Image.fromarray(hr_full), scale))
            hr = hr_full[: lr.shape[0] * scale, : lr.shape[1] * scale]
            for key, upscale in upscalers.items():
                sr = upscale(lr, scale)
                scores[key].append((psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)))
        means = {key: np.mean(value, axis=0) for key, value in scores.items()}
        bp, bs = means["bicubic"]
        rows.append(f"| x{scale} | {bp:.2f} / {bs:.4f} | " + " | ".join(
            f"{means[size][0]:.2f} / {means[size][1]:.4f} ({means[size][0] - bp:+.2f})"
            for size in MODEL_SIZES) + " |")
    return rows


class _Feeds:
    """An ONNX Runtime session behind the host's session.run(feeds) -> outputs call."""

    def __init__(self, sess: ort.InferenceSession) -> None:
        self.sess = sess

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(None, feeds)


def ensemble_rows(hr_dir: Path, size: str = "best") -> list[str]:
    """Return markdown rows: PSNR-Y of one model without and with `ensemble=true` (the plugin's
    own tile function, 8 flips/rotations averaged) per scale, and the time of each pass."""
    hrs = [load_rgb(p) for p in list_images([hr_dir])]
    if not hrs:
        return [f"_No images in {hr_dir}: ensemble table skipped._"]
    rows = [f"| scale | superres-{size} PSNR-Y / SSIM-Y | ensemble=true PSNR-Y / SSIM-Y (gain dB)"
            " | s per output MP, single / ensemble |", "| --- | ---: | ---: | ---: |"]
    for scale in MODEL_SCALES:
        sess = _Feeds(session(scale, size))
        scores: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        seconds, mp = {False: 0.0, True: 0.0}, 0.0
        for hr_full in hrs:
            lr = np.asarray(make_lr(Image.fromarray(hr_full), scale))
            hr = hr_full[: lr.shape[0] * scale, : lr.shape[1] * scale]
            mp += hr.shape[0] * hr.shape[1] / 1e6
            for ensemble in (False, True):
                run = upscale_fn(sess, ensemble=ensemble)
                start = time.perf_counter()
                y = run(lr.astype(np.float32) / 255)
                seconds[ensemble] += time.perf_counter() - start
                sr = np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)
                scores[ensemble].append((psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)))
        (p0, s0), (p1, s1) = (np.mean(scores[e], axis=0) for e in (False, True))
        rows.append(f"| x{scale} | {p0:.3f} / {s0:.4f} | {p1:.3f} / {s1:.4f} ({p1 - p0:+.3f}) | "
                    f"{seconds[False] / mp:.3f} / {seconds[True] / mp:.3f} |")
    return rows


def big_image_rows() -> list[str]:
    """Return markdown rows: wall time and peak resident memory of `imgproc run` upscaling one
    4000x3000 JPEG x4 (to 16000x12000), each model in its own process."""
    rows = ["| model | output | wall s | peak memory (max RSS) |", "| --- | --- | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "in" / "photo.jpg"
        photo.parent.mkdir()
        astronaut = Image.fromarray(skimage_data.astronaut())
        astronaut.resize(BIG, Image.Resampling.BICUBIC).save(photo, quality=92)
        for size in MODEL_SIZES:
            out = Path(tmp) / f"out-{size}"
            command = [sys.executable, "-c", "from imgproc.cli import cli; cli()", "run",
                       "-p", "superres", "-O", "scale=4", "-O", f"model={size}",
                       str(photo), "-o", str(out)]
            log = Path(tmp) / f"{size}.log"
            with open(log, "wb") as stderr:
                start = time.perf_counter()
                proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
                _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
                seconds = time.perf_counter() - start
            if status != 0:
                raise RuntimeError(f"imgproc run failed: {log.read_text()[-2000:]}")
            with Image.open(out / "photo.jpg") as result:
                shape = f"{result.width}x{result.height}"
            rows.append(f"| {size} | {shape} | {seconds:.0f} | "
                        f"{usage.ru_maxrss * 1024 / 2**30:.2f} GiB |")
    return rows


def run() -> str:
    """Return the markdown section: the speed tables, quality, ensemble and the big photo."""
    require_cv2()  # fail now, not after minutes of the other tables
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
        f"x{ESPCN_SCALE} side by side with OpenCV's ESPCN (Shi et al. 2016, the architecture of "
        "opencv_contrib's dnn_superres ESPCN_x4: 5x5 conv 1->64 tanh, 3x3 conv 64->32 tanh, 3x3 "
        f"conv 32->16, depth-to-space, on Y), timed back to back in this run on the same "
        f"{SPEED_INPUT}x{SPEED_INPUT} image, {THREADS} threads each, best of {REPEATS} after a "
        "warm-up. The published weights cannot be downloaded here, so the net has random "
        "weights, built in PyTorch, exported to ONNX and run by OpenCV's own DNN engine "
        "(`cv2.dnn.readNetFromONNX`, what dnn_superres uses): the time does not depend on the "
        "weights, but this compares runtime cost only, and ESPCN has no quality row. The "
        "upsample row follows `DnnSuperResImpl::upsample` (BGR to YCrCb, the net on Y in [0, 1], "
        "Cr and Cb resized with `cv::resize`'s default bilinear, merged, back to 8-bit BGR); "
        "the superres rows time `session.run` alone, so the net-only row is the like-for-like "
        "one. Needs `pip install opencv-python-headless` (no extra installs it; CI runs no "
        "benchmarks).",
        "",
        *espcn_rows(),
        "",
        f"Quality on {hr_name} ({len(list_images([HR_DIR]))} HR images; `python "
        "benchmarks/superres.py DIR...` prints this table for other folders of HR images; "
        "protocol of ../shared/data/README.md), shipped ONNX models, untiled:",
        "",
        *quality_rows(HR_DIR),
        "",
        f"Geometric self-ensemble (`-O ensemble=true`: the model on the 8 flips/rotations of "
        f"each tile, turned back and averaged) on {hr_name}, best model through the plugin's "
        f"tile function and ONNX Runtime ({THREADS} threads), untiled; times include the flips:",
        "",
        *ensemble_rows(HR_DIR),
        "",
        *(["A 4000x3000 photo (skimage's astronaut resized, JPEG) upscaled x4 to 16000x12000 "
           "with `imgproc run -p superres -O scale=4` in a fresh process (host defaults: tiles "
           "of 512 px, JPEG output); peak memory is the process's max RSS:", "",
           *big_image_rows(), ""] if RUN_BIG else []),
    ])


def main() -> None:
    """Print the quality table for each folder of HR images on the command line."""
    parser = argparse.ArgumentParser(
        description="PSNR-Y/SSIM-Y of the shipped superres models and bicubic on folders of HR "
                    "images (protocol of ../shared/data/README.md)")
    parser.add_argument("hr_dirs", nargs="*", type=Path, default=[HR_DIR], metavar="HR_DIR",
                        help=f"folders of HR images (default: {HR_DIR.name})")
    for hr_dir in parser.parse_args().hr_dirs:
        if not hr_dir.is_dir():
            parser.error(f"{hr_dir}: not a folder")
        print(f"{hr_dir} ({len(list_images([hr_dir]))} images)\n")
        print("\n".join(quality_rows(hr_dir)) + "\n")


if __name__ == "__main__":
    main()
