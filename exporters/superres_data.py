"""Super-resolution data: the protocol's LR images, random training pairs and the validation
set (../shared/data/README.md: HR cropped to a multiple of the scale, LR by Pillow's
antialiased bicubic)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from exporters.datadir import list_images
from exporters.superres_net import SCALES

ValSet = dict[int, list[tuple[np.ndarray, np.ndarray]]]  # scale -> [(HR, LR)] uint8 pairs


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Return the top-left crop of an HxWxC array whose sides are multiples of scale."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def make_lr(hr_pil: Image.Image, scale: int) -> Image.Image:
    """Return the protocol's LR image: HR cropped to a multiple of scale, Pillow bicubic down."""
    w, h = hr_pil.size
    w, h = w - w % scale, h - h % scale
    return hr_pil.crop((0, 0, w, h)).resize((w // scale, h // scale), Image.BICUBIC)


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


def random_crop(img: np.ndarray, *, side: int, rng: np.random.Generator) -> np.ndarray:
    """Return a random side x side HR crop of img under a random flip/rotation."""
    top = int(rng.integers(0, img.shape[0] - side + 1))
    left = int(rng.integers(0, img.shape[1] - side + 1))
    return augment(img[top : top + side, left : left + side], rng)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """Return an NHWC uint8 array as an NCHW float tensor in [0, 1]."""
    return unit_range(nchw(batch))


def nchw(batch: np.ndarray) -> torch.Tensor:
    """Return an NHWC uint8 array as a contiguous NCHW uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def unit_range(batch: torch.Tensor) -> torch.Tensor:
    """Return a uint8 tensor as float in [0, 1], on its device."""
    return batch.float().div_(255.0)


def sample_batch(images: Sequence[np.ndarray], *, scale: int, patch: int, batch: int,
                 rng: np.random.Generator, pool: Executor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (LR, HR) NCHW uint8 tensors of `batch` random pairs from the images big enough
    for scale (uint8: a quarter of the bytes to copy to a GPU; `unit_range` there). The random
    draws happen here, in order; only the LR resizes (Pillow, which releases the
    GIL) go to `pool` when given, so a batch is the same with or without one."""
    fits = [i for i, im in enumerate(images) if min(im.shape[:2]) >= patch * scale]
    if not fits:
        raise ValueError(f"no training image has a side of {patch * scale} px for x{scale}")
    hrs = [random_crop(images[i], side=patch * scale, rng=rng) for i in rng.choice(fits, batch)]

    def lr_of(hr: np.ndarray) -> np.ndarray:
        return np.asarray(make_lr(Image.fromarray(hr), scale))

    lrs = list(pool.map(lr_of, hrs) if pool is not None else map(lr_of, hrs))
    return nchw(np.stack(lrs)), nchw(np.stack(hrs))


def load_val(val_dir: Path, scales: Sequence[int] = SCALES) -> ValSet:
    """Return {scale: [(HR cropped to a multiple of scale, LR)]} for the images in val_dir."""
    hrs = [load_rgb(p) for p in list_images([val_dir])]
    if not hrs:
        raise FileNotFoundError(f"no validation images in {val_dir}")
    return {s: [(crop_to_multiple(h, s), np.asarray(make_lr(Image.fromarray(h), s))) for h in hrs]
            for s in scales}
