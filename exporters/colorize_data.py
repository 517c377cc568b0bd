"""Colorize training data: photographs as Lab at a working size (cached per folder), random
crops, and the fully connected SIREN's inputs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from exporters.colorize_nets import FC_SIZE
from exporters.datadir import list_images
from imgproc_plugins.lab import lab_to_rgb, rgb_to_lab


def load_lab(path: Path, short_side: int) -> np.ndarray:
    """Return the image at path resized so its short side is short_side, as float16 Lab."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        s = short_side / min(img.size)
        img = img.resize((max(short_side, round(img.width * s)),
                          max(short_side, round(img.height * s))), Image.Resampling.BICUBIC)
        return rgb_to_lab(np.asarray(img, dtype=np.float32) / 255.0).astype(np.float16)


def load_folder(folder: Path, short_side: int, cache: Path) -> list[np.ndarray]:
    """Return every image in folder as Lab at short_side, cached as an npz in cache (keyed by
    the files' paths, sizes and times)."""
    paths = list_images([folder])
    listing = "\n".join(f"{p.resolve()} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in paths)
    key = hashlib.sha256(listing.encode()).hexdigest()[:12]
    file = cache / f"{folder.name}-{short_side}-{key}.npz"
    if file.exists():
        with np.load(file) as z:
            return [z[k] for k in sorted(z.files, key=int)]
    images = [load_lab(p, short_side) for p in paths]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npz")  # runs may start together
    np.savez(tmp, **{str(i): im for i, im in enumerate(images)})
    tmp.replace(file)
    return images


def crop_batch(images: Sequence[np.ndarray], order: np.ndarray, size: int,
               rng: np.random.Generator | None) -> torch.Tensor:
    """Return N x 3 x size x size Lab crops (random crop + flip with rng, else centred)."""
    out = np.empty((len(order), size, size, 3), dtype=np.float32)
    for j, i in enumerate(order):
        im = images[i]
        h, w = im.shape[:2]
        if rng is None:
            y, x = (h - size) // 2, (w - size) // 2
        else:
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crop = im[y:y + size, x:x + size]
        out[j] = crop[:, ::-1] if rng is not None and rng.random() < 0.5 else crop
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def fc_inputs(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (L, RGB target) at 48x48 for the fully connected SIREN."""
    small = F.interpolate(lab, size=(FC_SIZE, FC_SIZE), mode="area")
    rgb = lab_to_rgb(small.permute(0, 2, 3, 1).numpy())
    return small[:, :1], torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
