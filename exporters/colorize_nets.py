"""The colorize networks: the notes' Keras colorizer with FR / SRS / S130 activations, the
fully connected SIREN, the quantised-ab bins (Zhang et al. 2016), the shipped wrapper, and
`load_trained` (that wrapper from a checkpoint).

The CNN: strided 3x3 convolutions (64, 128, 128, 256, 256, 512, 512, 256 filters x width), a
global-context branch learned from scratch in place of the pretrained classifier (global average
pool -> two dense layers -> fused with a 1x1 convolution), and a decoder (128, up 2x, 64, up 2x,
32, 16) that predicts chroma at half the working resolution. Heads: `mse` and `rebalanced`
(MSE weighted by the rarity of the target colour) regress ab/110 through tanh (FR) or sine
(SRS, S130); `class` predicts logits over quantised ab bins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ENCODER = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 1), (256, 1))
DECODER = (128, "up", 64, "up", 32, 16)
AB_SCALE = 110.0
BIN_STEP = 10.0
FC_SIZE = 48


# ---------------------------------------------------------------------------------- layers

class Sine(nn.Module):
    """sin(w0 * x)."""

    def __init__(self, w0: float = 1.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)


def sine_init(layer: nn.Conv2d | nn.Linear, *, first: bool, first_w0: float) -> None:
    """Initialise a sine layer as the notes did: the first layer U(-1, 1) (its input scaled by
    w0 = 1/30), or SIREN's U(-1/n, 1/n) when first_w0 = 30; later ones he_uniform."""
    fan_in = layer.weight[0].numel()
    bound = math.sqrt(6.0 / fan_in)
    if first:
        bound = 1.0 if first_w0 < 1 else 1.0 / fan_in
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)


def layer_block(layer: nn.Conv2d | nn.Linear, act: str, *, first: bool,
                first_w0: float) -> nn.Sequential:
    """Return layer followed by its activation ('relu' or 'sine'), initialised for it."""
    if act == "relu":
        return nn.Sequential(layer, nn.ReLU())
    sine_init(layer, first=first, first_w0=first_w0)
    return nn.Sequential(layer, Sine(first_w0 if first else 1.0))


def activations(variant: str, n: int) -> list[str]:
    """Return the activation of each of n layers (the last is the output layer) for a variant."""
    if variant == "FR":
        return ["relu"] * n
    if variant == "SRS":
        return ["sine"] + ["relu"] * (n - 2) + ["sine"]
    return ["sine"] * n


# ---------------------------------------------------------------------------------- models

@dataclass(frozen=True)
class NetConfig:
    """What defines a colorize network; stored in checkpoints and model facts."""

    variant: str = "SRS"
    loss: str = "mse"
    width: float = 0.5
    first_w0: float = 1 / 30
    fc_hidden: int = 512
    class_hidden: int = 0  # class loss: features of the last decoder layer (0: as width gives)

    @property
    def regression(self) -> bool:
        """True for the ab-regression head (losses mse and rebalanced), False for class."""
        return self.loss != "class"


class ColorNet(nn.Module):
    """The CNN colorizer: L in [0, 100] (N x 1 x H x W) -> ab head at about H/2 x W/2."""

    def __init__(self, cfg: NetConfig, n_bins: int) -> None:
        super().__init__()
        ch = [max(8, round(c * cfg.width)) for c, _ in ENCODER]
        dec = [max(4, round(c * cfg.width)) if c != "up" else "up" for c in DECODER]
        if not cfg.regression and cfg.class_hidden:  # room for the logits of every bin
            dec[-1] = cfg.class_hidden
        n_conv = len(ENCODER) + 3 + sum(c != "up" for c in dec)  # + 2 dense, fusion
        out_dim = 2 if cfg.regression else n_bins
        acts = activations(cfg.variant, n_conv + 1)
        if cfg.loss == "class":  # logits are linear: the last hidden layer takes SRS's sine
            acts[-2] = acts[-1]
        it = iter(range(n_conv))

        def block(layer: nn.Conv2d | nn.Linear) -> nn.Sequential:
            i = next(it)
            return layer_block(layer, acts[i], first=i == 0, first_w0=cfg.first_w0)

        cin, enc = 1, []
        for c, (_, stride) in zip(ch, ENCODER, strict=True):
            enc.append(block(nn.Conv2d(cin, c, 3, stride, 1)))
            cin = c
        self.encoder = nn.Sequential(*enc)
        glob = max(8, round(256 * cfg.width))
        self.context = nn.Sequential(block(nn.Linear(cin, glob)),
                                     block(nn.Linear(glob, glob // 2)))
        self.fusion = block(nn.Conv2d(cin + glob // 2, cin, 1))
        layers: list[nn.Module] = []
        for c in dec:
            if c == "up":
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            else:
                layers.append(block(nn.Conv2d(cin, c, 3, 1, 1)))
                cin = c
        self.decoder = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, out_dim, 3 if cfg.regression else 1,
                              padding=1 if cfg.regression else 0)
        self.out_act: nn.Module = nn.Identity()
        if cfg.regression:
            self.out_act = nn.Tanh() if acts[-1] == "relu" else Sine()
            if acts[-1] == "sine":
                sine_init(self.head, first=False, first_w0=cfg.first_w0)

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        x = self.encoder(lightness / 50.0 - 1.0)
        g = self.context(x.mean(dim=(2, 3)))
        # The 1x1 fusion convolution over [x, g broadcast], split into its two halves: the
        # same numbers without expanding g to x's size (which pins sizes in an export).
        conv, act = self.fusion
        w = conv.weight[:, :, 0, 0]
        fused = F.conv2d(x, conv.weight[:, :x.shape[1]], conv.bias)
        x = act(fused + F.linear(g, w[:, x.shape[1]:])[:, :, None, None])
        return self.out_act(self.head(self.decoder(x)))


class FCSiren(nn.Module):
    """The notes' fully connected SIREN: a whole 48x48 L image -> 48x48 RGB (3 hidden layers)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        n_in, h = FC_SIZE * FC_SIZE, cfg.fc_hidden
        self.net = nn.Sequential(
            layer_block(nn.Linear(n_in, h), "sine", first=True, first_w0=cfg.first_w0),
            layer_block(nn.Linear(h, h), "sine", first=False, first_w0=1.0),
            layer_block(nn.Linear(h, h), "sine", first=False, first_w0=1.0),
            nn.Linear(h, 3 * n_in))

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        n = lightness.shape[0]
        rgb = self.net((lightness / 50.0 - 1.0).reshape(n, -1))
        return torch.sigmoid(rgb).reshape(n, 3, FC_SIZE, FC_SIZE)


# ---------------------------------------------------------------------------------- bins

class Bins:
    """Quantised ab: centres in gamut, soft encoding, rebalancing weights (Zhang et al.)."""

    def __init__(self, centres: np.ndarray, weights: np.ndarray) -> None:
        self.centres = torch.as_tensor(centres, dtype=torch.float32)
        self.weights = torch.as_tensor(weights, dtype=torch.float32)

    @classmethod
    def fit(cls, ab_pixels: np.ndarray, *, lam: float = 0.5, sigma: float = 5.0) -> Bins:
        """Return the bins seen in ab_pixels (K x 2) with weights 1/((1-lam) p + lam/Q),
        p the Gaussian-smoothed empirical distribution, normalised so E_p[w] = 1."""
        grid = np.arange(-AB_SCALE, AB_SCALE + 1, BIN_STEP)
        idx = np.clip(np.round((ab_pixels + AB_SCALE) / BIN_STEP).astype(int), 0, len(grid) - 1)
        counts = np.zeros((len(grid), len(grid)))
        np.add.at(counts, (idx[:, 0], idx[:, 1]), 1)
        keep = counts > 0
        p = _smooth(counts / counts.sum(), sigma / BIN_STEP)[keep]
        p /= p.sum()
        w = 1.0 / ((1 - lam) * p + lam / keep.sum())
        w /= (p * w).sum()
        a, b = np.meshgrid(grid, grid, indexing="ij")
        return cls(np.stack([a[keep], b[keep]], axis=1), w)

    def __len__(self) -> int:
        return len(self.centres)

    def pixel_weights(self, ab: torch.Tensor) -> torch.Tensor:
        """Return the N x h x w rebalancing weights of ab's pixels (their nearest bin's)."""
        n, _, h, w = ab.shape
        nearest = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2),
                              self.centres.to(ab.device)).argmin(1)
        return self.weights.to(ab.device)[nearest].reshape(n, h, w)

    def soft_targets(self, ab: torch.Tensor, k: int = 5,
                     sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (N x Q x h x w targets over the k nearest bins, N x h x w pixel weights)."""
        n, _, h, w = ab.shape
        flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
        dist, nearest = torch.cdist(flat, self.centres.to(ab.device)).topk(k, largest=False)
        soft = torch.softmax(-dist.square() / (2 * sigma**2), dim=1)
        target = torch.zeros(flat.shape[0], len(self), device=ab.device)
        target.scatter_(1, nearest, soft)
        weight = self.weights.to(ab.device)[nearest[:, 0]]
        return (target.reshape(n, h, w, -1).permute(0, 3, 1, 2), weight.reshape(n, h, w))



def annealed_mean(logits: torch.Tensor, centres: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Return the annealed-mean ab (N x 2 x h x w) of N x Q x h x w logits over bin centres."""
    prob = torch.softmax(logits / temperature, dim=1)
    return torch.einsum("nqhw,qc->nchw", prob, centres)


def _smooth(p: np.ndarray, sigma_cells: float) -> np.ndarray:
    radius = 2
    x = np.arange(-radius, radius + 1)
    k = np.exp(-x**2 / (2 * sigma_cells**2))
    k /= k.sum()
    p = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, p)
    return np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, p)


class Colorizer(nn.Module):
    """What ships: L (N x 1 x H x W, 0-100) -> ab (N x 2 x h x w, Lab units), decoding inside."""

    def __init__(self, net: nn.Module, cfg: NetConfig, bins: Bins | None,
                 temperature: float) -> None:
        super().__init__()
        self.net, self.cfg, self.temperature = net, cfg, temperature
        if bins is not None:
            self.register_buffer("centres", bins.centres.clone())

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        out = self.net(lightness)
        if self.cfg.regression:
            return out * AB_SCALE
        return annealed_mean(out, self.centres, self.temperature)


def build_net(cfg: NetConfig, n_bins: int) -> nn.Module:
    """Return the network for cfg (FC: the fully connected SIREN; otherwise the CNN)."""
    return FCSiren(cfg) if cfg.variant == "FC" else ColorNet(cfg, n_bins)


def load_trained(ckpt: Path, device: torch.device,
                 temperature: float | None = None) -> tuple[Colorizer, dict[str, Any]]:
    """Return the shipped-form model of a checkpoint and the checkpoint itself."""
    ck = torch.load(ckpt, map_location=device, weights_only=False)
    cfg = NetConfig(**ck["net"])
    bins = Bins(ck["bins"]["centres"], ck["bins"]["weights"])
    net = build_net(cfg, len(bins)).to(device)
    net.load_state_dict(ck["model"])
    net.eval()
    temp = temperature if temperature is not None else ck["config"]["temperature"]
    return Colorizer(net, cfg, bins, temp).to(device).eval(), ck
