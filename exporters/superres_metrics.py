"""The super-resolution quality protocol: PSNR-Y and SSIM-Y (BT.601 Y, 16-235, `scale` border
pixels shaved), the bicubic baseline, the training losses, and a model's scores on a
validation set."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from exporters.superres_data import ValSet, to_tensor
from exporters.superres_net import SCALES, MultiScaleSR


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
