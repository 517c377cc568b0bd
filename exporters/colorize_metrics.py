"""The colorize quality protocol (../shared/data/README.md): the ground truth's lightness as a
grey input, PSNR on 8-bit RGB and Hasler-Suesstrunk colourfulness of the output, through the
plugin's own `colorize_lab`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from exporters.colorize_nets import FC_SIZE, Colorizer
from imgproc_plugins.lab import colorize_lab, grey_of, rgb_to_lab


def colourfulness(rgb8: np.ndarray) -> float:
    """Return Hasler and Suesstrunk's colourfulness of an 8-bit RGB image."""
    r, g, b = (rgb8[..., c].astype(np.float64) for c in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def psnr_rgb(out8: np.ndarray, truth8: np.ndarray) -> float:
    """Return the PSNR in dB of two 8-bit RGB images."""
    mse = np.mean((out8.astype(np.float64) - truth8.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def to8(rgb: np.ndarray) -> np.ndarray:
    """Return float RGB in [0, 1] as uint8, rounded."""
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def load_val_rgb(folder: Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Return (name, 8-bit RGB ground truth) for the images in folder (with limit, that many
    spread evenly over the sorted names)."""
    paths = sorted(folder.glob("*.jpg"))
    if limit is not None:
        paths = paths[::max(1, len(paths) // limit)][:limit]
    return [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in paths]


def evaluate(val: Sequence[tuple[str, np.ndarray]], predict_ab: Callable[[np.ndarray],
             np.ndarray], *, render_size: int, strength: float = 1.0) -> dict[str, float]:
    """Return mean PSNR and colourfulness of the protocol over val (predict_ab maps an
    h x w L array at the working size to an h' x w' x 2 ab array)."""
    psnrs, colours = [], []
    for _, truth in val:
        grey = grey_of(truth.astype(np.float32) / 255.0)
        out = to8(colorize_lab(grey, predict_ab, render_size=render_size, strength=strength))
        psnrs.append(psnr_rgb(out, truth))
        colours.append(colourfulness(out))
    return {"psnr": float(np.mean(psnrs)), "colourfulness": float(np.mean(colours))}


def torch_predictor(model: Colorizer, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """Return predict_ab for evaluate() running the PyTorch model."""

    @torch.no_grad()
    def predict(lightness: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(lightness, dtype=np.float32))[None, None]
        if model.cfg.variant == "FC":
            return fc_predict(model.net, x.to(device))
        return model(x.to(device))[0].permute(1, 2, 0).float().cpu().numpy()  # bf16 under autocast

    return predict


def fc_predict(net: nn.Module, lightness: torch.Tensor) -> np.ndarray:
    """Return the ab of the fully connected SIREN's RGB output (48 x 48 x 2)."""
    small = F.interpolate(lightness, size=(FC_SIZE, FC_SIZE), mode="area")
    rgb = net(small)[0].permute(1, 2, 0).float().cpu().numpy()
    return rgb_to_lab(rgb)[..., 1:]
