"""Multi-scale super-resolution net (x2, x3, x4), its resumable trainer and its quality protocol.

    python -m exporters.superres train --preset best --out runs/superres-best --steps 13000
    python -m exporters.superres validate --ckpt runs/superres-best/best.pt
    python -m exporters.superres export --ckpt runs/superres-best/best.pt --preset best

Protocol (../shared/data/README.md): the HR image is cropped to a multiple of the scale, the LR
image is Pillow's antialiased bicubic downscale, PSNR and SSIM are measured on BT.601 Y (16-235)
with `scale` border pixels shaved.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from exporters.training import cosine_factor, pick_device, restore_rng, rng_states, save_atomic

log = logging.getLogger(__name__)

SCALES: tuple[int, ...] = (2, 3, 4)
DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TRAIN_DIRS = (DATA_ROOT / "sr-train",)
VAL_DIR = DATA_ROOT / "sr-val" / "McMaster18"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
ValSet = dict[int, list[tuple[np.ndarray, np.ndarray]]]  # scale -> [(HR, LR)] uint8 pairs


@dataclass(frozen=True)
class Preset:
    """Width and depth of a MultiScaleSR network."""

    channels: int
    blocks: int
    # features per pixel-shuffle stage in the tails; None: one depth-to-space straight to RGB
    # (ESPCN-style), which keeps every conv at the input resolution
    up_channels: int | None
    dilated: tuple[int, ...] = ()  # blocks whose first conv has dilation 2 (wider receptive field)
    res_scale: float = 0.1


PRESETS: dict[str, Preset] = {
    "best": Preset(channels=48, blocks=10, up_channels=32, dilated=(3, 7)),
    # x4, ORT, 2 threads, untrained nets timed side by side: 0.071 s per output MP with the
    # one-step tail, 0.122 s with staged tails of 8 features (their convs run at 2x and 4x
    # resolution); 28 or 32 channels took 0.094-0.105 s
    "fast": Preset(channels=24, blocks=3, up_channels=None),
}


class ResBlock(nn.Module):
    """conv-ReLU-conv block whose output is added back to its input, scaled by res_scale."""

    def __init__(self, channels: int, *, dilation: int = 1, res_scale: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x plus the scaled residual."""
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


def make_tail(scale: int, *, channels: int, up_channels: int | None) -> nn.Sequential:
    """Return the depth-to-space upsampler for one scale, ending in RGB: x4 is two x2 stages of
    up_channels features then a 3x3 conv, or, when up_channels is None, one conv to 3*scale^2
    channels and one depth-to-space."""
    if up_channels is None:
        return nn.Sequential(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1),
                             nn.PixelShuffle(scale))
    layers: list[nn.Module] = []
    cin = channels
    for r in (2, 2) if scale == 4 else (scale,):
        layers += [nn.Conv2d(cin, up_channels * r * r, 3, padding=1), nn.PixelShuffle(r)]
        cin = up_channels
    layers.append(nn.Conv2d(cin, 3, 3, padding=1))
    return nn.Sequential(*layers)


def last_conv(tail: nn.Module) -> nn.Conv2d:
    """Return the last convolution of a tail (the one that makes RGB)."""
    return [m for m in tail.modules() if isinstance(m, nn.Conv2d)][-1]


class MultiScaleSR(nn.Module):
    """EDSR/MDSR-style net: shared head and body, one tail per scale, bilinear input skip."""

    def __init__(self, preset: Preset) -> None:
        super().__init__()
        c = preset.channels
        self.head = nn.Conv2d(3, c, 3, padding=1)
        blocks = [
            ResBlock(c, dilation=2 if i in preset.dilated else 1, res_scale=preset.res_scale)
            for i in range(preset.blocks)
        ]
        self.body = nn.Sequential(*blocks, nn.Conv2d(c, c, 3, padding=1))
        tails = {str(s): make_tail(s, channels=c, up_channels=preset.up_channels) for s in SCALES}
        for tail in tails.values():  # start as plain bilinear, not bilinear plus noise
            nn.init.zeros_(last_conv(tail).weight)
            nn.init.zeros_(last_conv(tail).bias)
        self.tails = nn.ModuleDict(tails)

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        """Return the x`scale` upscale (about [0, 1], unclamped) of an NCHW RGB batch in [0, 1]."""
        feat = self.head(x - 0.5)
        feat = feat + self.body(feat)
        # bilinear, not bicubic: ONNX Runtime's cubic Resize costs ~0.23 s per output MP on one
        # core (as much as the whole fast net), its linear one ~0.005 s; the net learns the rest
        skip = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        return skip + self.tails[str(scale)](feat)


class FixedScale(nn.Module):
    """One-input wrapper for export: the shared net with the tail of one scale, output clamped."""

    def __init__(self, net: MultiScaleSR, scale: int) -> None:
        super().__init__()
        self.net = net
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the x`scale` RGB image in [0, 1]."""
        return self.net(x, self.scale).clamp(0.0, 1.0)


def exported_name(preset: str, scale: int) -> str:
    """Return the file stem a preset's x`scale` model is exported under (the plugin's name)."""
    return f"superres-{preset}-x{scale}"


def build_model(preset: str | Preset) -> MultiScaleSR:
    """Return a freshly initialised MultiScaleSR for a preset name ("best", "fast") or Preset."""
    return MultiScaleSR(PRESETS[preset] if isinstance(preset, str) else preset)


def count_parameters(module: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Return the top-left crop of an HxWxC array whose sides are multiples of scale."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def make_lr(hr_pil: Image.Image, scale: int) -> Image.Image:
    """Return the protocol's LR image: HR cropped to a multiple of scale, Pillow bicubic down."""
    w, h = hr_pil.size
    w, h = w - w % scale, h - h % scale
    return hr_pil.crop((0, 0, w, h)).resize((w // scale, h // scale), Image.BICUBIC)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Return BT.601 luma in [16, 235] (float64) of HxWx3 RGB (uint8, or float in [0, 1])."""
    x = img.astype(np.float64)
    if img.dtype == np.uint8:
        x /= 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def _shaved_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the Y channels of sr and hr with `scale` border pixels removed."""
    if sr.shape != hr.shape:
        raise ValueError(f"shape mismatch: sr {sr.shape} vs hr {hr.shape}")
    s = slice(scale, -scale) if scale > 0 else slice(None)
    return rgb_to_y(sr)[s, s], rgb_to_y(hr)[s, s]


def psnr_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """Return the Y-channel PSNR in dB (inf when equal) of sr against hr, border shaved."""
    a, b = _shaved_y(sr, hr, scale)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim_y(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """Return the Y-channel SSIM (Wang et al.: 11x11 Gaussian, sigma 1.5) of sr against hr."""
    a, b = (torch.from_numpy(y / 255.0)[None, None] for y in _shaved_y(sr, hr, scale))
    return float(ssim_torch(a, b)[0])


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """Return the Pillow-bicubic x`scale` upscale of a uint8 RGB array (the baseline)."""
    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * scale, h * scale), Image.BICUBIC))


def list_images(dirs: Iterable[Path]) -> list[Path]:
    """Return the image files under dirs (recursive), sorted."""
    return sorted(p for d in dirs for p in Path(d).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: Path) -> np.ndarray:
    """Return an image file as an HxWx3 uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def augment(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return patch under one of the 8 flips/90-degree rotations, chosen by rng."""
    k = int(rng.integers(0, 8))
    if k & 4:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(np.rot90(patch, k & 3))


def make_pair(img: np.ndarray, *, scale: int, patch: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Return a random (LR patch x patch, HR) uint8 training pair cut from img."""
    size = patch * scale
    top = int(rng.integers(0, img.shape[0] - size + 1))
    left = int(rng.integers(0, img.shape[1] - size + 1))
    hr = augment(img[top : top + size, left : left + size], rng)
    return np.asarray(make_lr(Image.fromarray(hr), scale)), hr


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """Return an NHWC uint8 array as an NCHW float tensor in [0, 1]."""
    return torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2).float().div_(255.0)


def sample_batch(images: Sequence[np.ndarray], *, scale: int, patch: int, batch: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (LR, HR) tensors of `batch` random pairs from the images big enough for scale."""
    pool = [i for i, im in enumerate(images) if min(im.shape[:2]) >= patch * scale]
    if not pool:
        raise ValueError(f"no training image has a side of {patch * scale} px for x{scale}")
    picks = rng.choice(pool, batch)
    pairs = [make_pair(images[i], scale=scale, patch=patch, rng=rng) for i in picks]
    return to_tensor(np.stack([p[0] for p in pairs])), to_tensor(np.stack([p[1] for p in pairs]))


def load_val(val_dir: Path, scales: Sequence[int] = SCALES) -> ValSet:
    """Return {scale: [(HR cropped to a multiple of scale, LR)]} for the images in val_dir."""
    hrs = [load_rgb(p) for p in list_images([val_dir])]
    if not hrs:
        raise FileNotFoundError(f"no validation images in {val_dir}")
    return {s: [(crop_to_multiple(h, s), np.asarray(make_lr(Image.fromarray(h), s))) for h in hrs]
            for s in scales}


def y_torch(x: torch.Tensor) -> torch.Tensor:
    """Return BT.601 luma of an NCHW RGB batch in [0, 1], scaled to [16/255, 235/255]."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (16.0 + (x * w).sum(1, keepdim=True)) / 255.0


def ssim_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return per-sample SSIM of N1HW batches in [0, 1] (11x11 Gaussian window, valid region)."""
    g = torch.exp(-((torch.arange(11, dtype=a.dtype, device=a.device) - 5.0) ** 2) / 4.5)
    g = g / g.sum()

    def win(x: torch.Tensor) -> torch.Tensor:  # separable: 11x faster than an 11x11 kernel
        return F.conv2d(F.conv2d(x, g.view(1, 1, 11, 1)), g.view(1, 1, 1, 11))

    mu_a, mu_b = win(a), win(b)
    var_a = win(a * a) - mu_a**2
    var_b = win(b * b) - mu_b**2
    cov = win(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def loss_value(name: str, sr: torch.Tensor, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Return the training loss: "l1" or "l2" (RGB), or "psnr_ssim" = -PSNR_Y / (1 - SSIM_Y),
    shaved."""
    if name == "l1":
        return F.l1_loss(sr, hr)
    if name == "l2":  # the fine-tune after L1: what PSNR measures
        return F.mse_loss(sr, hr)
    if name != "psnr_ssim":
        raise ValueError(f"unknown loss {name!r}")
    a, b = (y_torch(t)[..., scale:-scale, scale:-scale] for t in (sr, hr))
    psnr = -10.0 * torch.log10(((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10))
    return (-psnr / (1.0 - ssim_torch(a, b)).clamp_min(1e-4)).mean()


@torch.no_grad()
def super_resolve(model: MultiScaleSR, lr: np.ndarray, scale: int, device: torch.device
                  ) -> np.ndarray:
    """Return the model's x`scale` upscale of a uint8 RGB array, as uint8."""
    x = to_tensor(lr[None]).to(device)
    y = model(x, scale).clamp(0, 1).mul(255).round().byte()
    return y[0].permute(1, 2, 0).cpu().numpy()


def evaluate(val: ValSet, upscale: Callable[[np.ndarray, int], np.ndarray]) -> dict[str, float]:
    """Return mean psnr_x{s} and ssim_x{s} of upscale(lr, scale) over the validation pairs."""
    out: dict[str, float] = {}
    for s, pairs in val.items():
        srs = [(upscale(lr, s), hr) for hr, lr in pairs]
        out[f"psnr_x{s}"] = float(np.mean([psnr_y(sr, hr, s) for sr, hr in srs]))
        out[f"ssim_x{s}"] = float(np.mean([ssim_y(sr, hr, s) for sr, hr in srs]))
    return out


def format_metrics(m: dict[str, float]) -> str:
    """Return 'x2 33.64/0.9300 x3 ...' for the scales present in m."""
    return " ".join(f"x{s} {m[f'psnr_x{s}']:.2f}/{m[f'ssim_x{s}']:.4f}" for s in SCALES
                    if f"psnr_x{s}" in m)


@dataclass
class TrainConfig:
    """Everything a training run needs; stored in its checkpoints."""

    out: Path
    preset: str = "best"
    steps: int = 13000
    batch: int = 16
    patch: int = 48  # LR patch side; HR side is patch * scale
    lr: float = 2e-4
    loss: str = "l1"
    val_every: int = 500
    ckpt_every: int = 100
    log_every: int = 25
    threads: int = 1
    device: str = "auto"
    seed: int = 0
    train_dirs: list[Path] = field(default_factory=lambda: list(TRAIN_DIRS))
    val_dir: Path = VAL_DIR
    init: Path | None = None  # a folder of exported superres-<preset>-x<s>.onnx to start from


class Trainer:
    """Resumable training run: model, optimiser, schedule, data and history in cfg.out."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg, self.device = cfg, pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.model = build_model(cfg.preset).to(self.device)
        self.last_path = cfg.out / "last.pt"
        if cfg.init is not None and not self.last_path.exists():  # else resume() loads
            from exporters.onnx_export import load_exported_weights  # onnx: only for --init

            load_exported_weights(self.model, [cfg.init / f"{exported_name(cfg.preset, s)}.onnx"
                                               for s in SCALES], prefix="net.")
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: cosine_factor(step, cfg.steps))
        self.step, self.seconds, self.best = 0, 0.0, -math.inf
        self.history: list[dict[str, float]] = []
        self.stop_requested = False
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.start_step = self.resume()

    def resume(self) -> int:
        """Return the step restored from cfg.out/last.pt (0 when there is none)."""
        if not self.last_path.exists():
            return 0
        ck = torch.load(self.last_path, map_location=self.device, weights_only=False)
        if ck["config"]["preset"] != self.cfg.preset:
            raise ValueError(f"{self.last_path} is a {ck['config']['preset']!r} run")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step, self.seconds, self.best = ck["step"], ck["seconds"], ck["best"]
        self.history = ck["history"]
        restore_rng(ck["rng"], self.rng)
        return self.step

    def checkpoint(self) -> None:
        """Write cfg.out/last.pt atomically."""
        save_atomic({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                     "scheduler": self.sched.state_dict(), "step": self.step,
                     "seconds": self.seconds, "best": self.best, "history": self.history,
                     "rng": rng_states(self.rng), "preset": self.cfg.preset,
                     "config": json.loads(json.dumps(asdict(self.cfg), default=str))},
                    self.last_path)

    def train_step(self, images: Sequence[np.ndarray]) -> float:
        """Return the loss of one optimiser step on a batch of this step's scale."""
        scale = SCALES[self.step % len(SCALES)]
        lr, hr = sample_batch(images, scale=scale, patch=self.cfg.patch, batch=self.cfg.batch,
                              rng=self.rng)
        lr, hr = lr.to(self.device, non_blocking=True), hr.to(self.device, non_blocking=True)
        loss = loss_value(self.cfg.loss, self.model(lr, scale), hr, scale)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(loss.detach())

    def validate(self, val: ValSet, loss: float) -> None:
        """Record validation metrics in history and history.jsonl; write best.pt if improved."""
        self.model.eval()
        m = evaluate(val, lambda lr, s: super_resolve(self.model, lr, s, self.device))
        self.model.train()
        row = {"step": self.step, "seconds": round(self.seconds, 1), "loss": loss, **m}
        self.history.append(row)
        with open(self.cfg.out / "history.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        score = float(np.mean([m[f"psnr_x{s}"] for s in SCALES]))
        log.info("val step %d: %s (PSNR-Y/SSIM-Y)", self.step, format_metrics(m))
        if score > self.best:
            self.best = score
            save_atomic({"model": self.model.state_dict(), "preset": self.cfg.preset,
                         "step": self.step, "metrics": m}, self.cfg.out / "best.pt")

    def run(self, images: Sequence[np.ndarray], val: ValSet) -> None:
        """Train until cfg.steps or a stop request, validating and checkpointing on schedule."""
        cfg, losses, t0, s0 = self.cfg, [], time.monotonic(), self.seconds
        while self.step < cfg.steps and not self.stop_requested:
            losses.append(self.train_step(images))
            self.seconds += time.monotonic() - t0
            t0 = time.monotonic()
            if self.step % cfg.log_every == 0:
                log.info("step %d loss %.5f lr %.2e %.2f s/step", self.step,
                         np.mean(losses[-cfg.log_every:]), self.sched.get_last_lr()[0],
                         (self.seconds - s0) / (self.step - self.start_step))
            if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                self.validate(val, float(np.mean(losses[-cfg.val_every:])))
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.checkpoint()
        if self.stop_requested:
            self.checkpoint()


def train(cfg: TrainConfig) -> Trainer:
    """Return the Trainer after training per cfg, resuming from cfg.out/last.pt when present."""
    torch.set_num_threads(cfg.threads)
    trainer = Trainer(cfg)
    log.info("preset %s: %d parameters (%s); device %s; resuming at step %d of %d", cfg.preset,
             count_parameters(trainer.model), per_scale_counts(trainer.model), trainer.device,
             trainer.start_step, cfg.steps)
    images = [load_rgb(p) for p in list_images(cfg.train_dirs)]
    val = load_val(cfg.val_dir)
    log.info("%d training images; bicubic on %s: %s", len(images), cfg.val_dir.name,
             format_metrics(evaluate(val, bicubic_upscale)))

    def request_stop(signum: int, _frame: Any) -> None:
        trainer.stop_requested = True

    old = signal.signal(signal.SIGTERM, request_stop)
    try:
        trainer.run(images, val)
    finally:
        signal.signal(signal.SIGTERM, old)
    return trainer


def per_scale_counts(model: MultiScaleSR) -> str:
    """Return 'x2 N, x3 N, x4 N': parameters of the single-scale nets export will produce."""
    shared = count_parameters(model.head) + count_parameters(model.body)
    return ", ".join(f"x{s} {shared + count_parameters(model.tails[str(s)])}" for s in SCALES)


def load_trained(ckpt: Path, device: torch.device) -> MultiScaleSR:
    """Return the model stored in a last.pt or best.pt checkpoint, in eval mode."""
    ck = torch.load(ckpt, map_location=device, weights_only=False)
    model = build_model(ck["preset"]).to(device)
    model.load_state_dict(ck["model"])
    return model.eval()


EXISTING = click.Path(path_type=Path, exists=True)


@click.group(context_settings={"show_default": True})
def cli() -> None:
    """Train and validate the imgproc super-resolution network."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)


@cli.command("train")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="best")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--steps", type=int, default=13000, help="Cosine schedule length.")
@click.option("--batch", type=int, default=16)
@click.option("--patch", type=int, default=48, help="LR patch side (px).")
@click.option("--lr", type=float, default=2e-4)
@click.option("--loss", type=click.Choice(["l1", "l2", "psnr_ssim"]), default="l1")
@click.option("--val-every", type=int, default=500)
@click.option("--ckpt-every", type=int, default=100)
@click.option("--log-every", type=int, default=25)
@click.option("--threads", type=int, default=1)
@click.option("--device", default="auto", help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=0)
@click.option("--train-dir", "train_dirs", type=EXISTING, multiple=True, default=TRAIN_DIRS)
@click.option("--val-dir", type=EXISTING, default=VAL_DIR)
@click.option("--init", type=EXISTING, help="Start from the weights of the exported models of "
              "this preset in a folder (e.g. plugins/models): continue a shipped model.")
def train_command(**kwargs: Any) -> None:
    """Train (or resume) a run in --out."""
    kwargs["train_dirs"] = [Path(p) for p in kwargs["train_dirs"]]
    trainer = train(TrainConfig(**kwargs))
    click.echo(f"stopped at step {trainer.step}; best mean PSNR-Y {trainer.best:.3f}")


@cli.command("validate")
@click.option("--ckpt", type=EXISTING, required=True)
@click.option("--val-dir", type=EXISTING, default=VAL_DIR)
@click.option("--threads", type=int, default=2)
@click.option("--device", default="auto")
def validate_command(ckpt: Path, val_dir: Path, threads: int, device: str) -> None:
    """Print the bicubic and model PSNR-Y/SSIM-Y of a checkpoint on the validation images."""
    torch.set_num_threads(threads)
    dev = pick_device(device)
    val = load_val(val_dir)
    click.echo(f"bicubic: {format_metrics(evaluate(val, bicubic_upscale))}")
    model = load_trained(ckpt, dev)
    m = evaluate(val, lambda lr, s: super_resolve(model, lr, s, dev))
    click.echo(f"{ckpt}: {format_metrics(m)}")


# --- export: one single-scale ONNX model per scale, through the shared exporter -------------

EXPORT_EXAMPLE = (32, 40)  # example LR size (H, W); parity also runs on the sizes below
EXPORT_PARITY_SIZES = ((1, 1), (7, 5), (33, 47))  # odd and degenerate sizes, none the example
TRAINING_DATA = "T91 + BSDS400 (../shared/data/sr-train)"


def describe_architecture(preset: Preset, scale: int) -> str:
    """Return a one-paragraph description of the single-scale network exported for scale."""
    if preset.up_channels is None:
        tail = f"a 3x3 conv to {3 * scale * scale} channels and one x{scale} pixel shuffle to RGB"
    else:
        stages = ("two x2 pixel-shuffle stages" if scale == 4
                  else f"one x{scale} pixel-shuffle stage")
        tail = f"{stages} ({preset.up_channels} features) and a 3x3 conv to RGB"
    dilated = (f"blocks {', '.join(str(i) for i in preset.dilated)} with dilation 2"
               if preset.dilated else "no dilation")
    return (f"MultiScaleSR (EDSR/MDSR-style), x{scale} tail: 3x3 head conv to {preset.channels} "
            f"channels, {preset.blocks} residual blocks (conv-ReLU-conv, res_scale "
            f"{preset.res_scale}; {dilated}) and a body conv with a "
            f"global skip, then {tail}, "
            f"added to a bilinear x{scale} upscale of the input; output clamped to [0, 1]. "
            f"Fully convolutional: any input size.")


def checkpoint_facts(ckpt: Path) -> tuple[MultiScaleSR, str, int]:
    """Return (model in eval mode on the CPU, preset name, training step) of a checkpoint."""
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build_model(ck["preset"])
    model.load_state_dict(ck["model"])
    return model.eval(), ck["preset"], int(ck["step"])


def scale_metrics(model_m: dict[str, float], bicubic_m: dict[str, float], scale: int,
                  val_name: str) -> dict[str, float | str]:
    """Return the model-card metrics of one scale: model and bicubic PSNR-Y/SSIM-Y."""
    out: dict[str, float | str] = {
        "protocol": "../shared/data/README.md: HR cropped to a multiple of the scale, LR by "
                    "Pillow bicubic, Y (BT.601, 16-235), scale px shaved",
    }
    for who, m in (("model", model_m), ("bicubic", bicubic_m)):
        out[f"{val_name} x{scale} PSNR-Y dB ({who})"] = round(m[f"psnr_x{scale}"], 3)
        out[f"{val_name} x{scale} SSIM-Y ({who})"] = round(m[f"ssim_x{scale}"], 4)
    return out


def single_scale(model: MultiScaleSR, scale: int) -> FixedScale:
    """Return FixedScale over a copy of model holding only the x`scale` tail.

    The other tails are not in the exported graph, so they must not count in its parameters.
    """
    net = copy.deepcopy(model)
    net.tails = nn.ModuleDict({str(scale): net.tails[str(scale)]})
    return FixedScale(net, scale).eval()


def run_config(ckpt: Path) -> dict[str, Any] | None:
    """Return the TrainConfig (as stored) of the run a checkpoint belongs to, read from the
    last.pt beside it, or None when there is no last.pt."""
    last = ckpt.with_name("last.pt")
    if not last.exists():
        return None
    return dict(torch.load(last, map_location="cpu", weights_only=False)["config"])


def describe_training(step: int, config: dict[str, Any] | None, note: str = "") -> str:
    """Return the model card's training line for a checkpoint at `step` of a run's config."""
    line = f"{step:,} steps"
    if config is not None:
        planned = int(config["steps"])
        where = "the end" if step >= planned else "a checkpoint"
        line += (f" (batch {config['batch']}, {config['patch']} px LR patches, "
                 f"{config['loss']} loss, Adam {config['lr']:g} with a cosine schedule; x2/x3/x4 "
                 f"in turn), {where} of a {planned:,}-step run")
        if config.get("init"):
            line += f" that started from the exported models in {config['init']}"
    return line + (f". {note}" if note else "")


def export_scale(model: MultiScaleSR, *, preset: str, scale: int, step: int,
                 metrics: dict[str, float | str], out_dir: Path,
                 training_steps: str = "") -> Any:
    """Return the ExportResult of the x`scale` model written as superres-<preset>-x<scale>."""
    from exporters.onnx_export import ModelCard, export_model  # onnx only needed to export

    def image(h: int, w: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))}

    card = ModelCard(
        name=exported_name(preset, scale),
        summary=f"x{scale} single-image super-resolution (RGB in [0, 1], any size).",
        architecture=describe_architecture(PRESETS[preset], scale),
        training_data=TRAINING_DATA,
        training_steps=training_steps or describe_training(step, None),
        metrics=metrics,
        facts={"scale": scale, "preset": preset, "step": step, "colour": "sRGB",
               "range": [0, 1]},
    )
    return export_model(
        single_scale(model, scale), card=card, example_inputs=image(*EXPORT_EXAMPLE),
        output_names=["output"],
        dynamic_axes={"image": {2: "height", 3: "width"}, "output": {2: "out_height",
                                                                    3: "out_width"}},
        out_dir=out_dir, parity_inputs=[image(h, w) for h, w in EXPORT_PARITY_SIZES])


@cli.command("export")
@click.option("--ckpt", type=EXISTING, required=True)
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="best",
              help="Must match the checkpoint's preset; names the files.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("plugins/models"))
@click.option("--val-dir", type=EXISTING, default=VAL_DIR)
@click.option("--threads", type=int, default=2)
@click.option("--note", default="", help="Added to the card's training line (e.g. a schedule "
              "change).")
def export_command(ckpt: Path, preset: str, out: Path, val_dir: Path, threads: int,
                   note: str) -> None:
    """Measure a checkpoint on --val-dir and export it as superres-<preset>-x2/x3/x4."""
    torch.set_num_threads(threads)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)  # per-pass notes, not results
    model, ck_preset, step = checkpoint_facts(ckpt)
    if ck_preset != preset:
        raise click.UsageError(f"{ckpt} holds a {ck_preset!r} model, not {preset!r}")
    val = load_val(val_dir)
    cpu = torch.device("cpu")
    bicubic = evaluate(val, bicubic_upscale)
    measured = evaluate(val, lambda lr, s: super_resolve(model, lr, s, cpu))
    click.echo(f"step {step}; bicubic: {format_metrics(bicubic)}; model: "
               f"{format_metrics(measured)}")
    training = describe_training(step, run_config(ckpt), note)
    for scale in SCALES:
        result = export_scale(model, preset=preset, scale=scale, step=step,
                              metrics=scale_metrics(measured, bicubic, scale, val_dir.name),
                              out_dir=out, training_steps=training)
        click.echo(f"{result.onnx_path}: {result.parameters:,} parameters, parity max abs "
                   f"error {result.max_abs_error:.2e}")


if __name__ == "__main__":
    cli()
