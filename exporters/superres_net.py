"""The multi-scale super-resolution network: one shared body, a tail per scale (x2, x3, x4),
its presets, and the single-scale form each exported model holds."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exporters.training import count_parameters

SCALES: tuple[int, ...] = (2, 3, 4)


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
    # 16 blocks since 2026-12-01: grown 10 -> 13 (2026-11-30) -> 16 with --blocks, each time
    # from the shipped weights; x4 on 2 cores, untrained nets timed side by side: 13 blocks
    # 0.37-0.38 s per output MP, 16 0.41-0.43, 18 0.43-0.44, 20 0.46 (the bar is 0.5)
    "best": Preset(channels=48, blocks=16, up_channels=32, dilated=(3, 7)),
    # x4, ORT, 2 threads, untrained nets timed side by side with OpenCV DNN running ESPCN's
    # architecture (what the bar compares with): 24 channels x 3 blocks took 1.61-1.67x
    # ESPCN's time, 16 x 3 0.93-0.95x, 12 x 3 0.96-0.97x, 20 x 2 1.28x, 16 x 2 0.78-0.81x.
    # One conv to 3*scale^2 channels and a depth-to-space keeps every conv at input resolution.
    "fast": Preset(channels=16, blocks=2, up_channels=None),
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
        self.preset = preset
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


def checkpoint_arch(ck: dict[str, Any]) -> Preset:
    """Return the architecture a checkpoint's weights are for (its `arch`: a grown net's body
    is deeper than its preset's).

    Raises ValueError for a checkpoint without one: it predates `arch` (2026-11-30), and its
    preset's depth has changed since, so a guess could build the wrong net.
    """
    if "arch" not in ck:
        raise ValueError(f"a {ck.get('preset', 'superres')!r} checkpoint from before "
                         "architectures were stored: its depth is unknown")
    arch = dict(ck["arch"])
    return Preset(**{**arch, "dilated": tuple(arch["dilated"])})


def trained_model(ck: dict[str, Any], device: torch.device) -> MultiScaleSR:
    """Return the network a loaded last.pt or best.pt keeps, in eval mode: a last.pt's weight
    average when its run kept one (`--ema`, what the run validated), else its weights."""
    model = build_model(checkpoint_arch(ck)).to(device)
    model.load_state_dict(ck.get("ema", ck["model"]))
    return model.eval()


def load_trained(ckpt: Path, device: torch.device) -> MultiScaleSR:
    """Return the network the checkpoint file keeps (see trained_model), in eval mode."""
    return trained_model(torch.load(ckpt, map_location=device, weights_only=False), device)


def grown(model: MultiScaleSR, blocks: int) -> MultiScaleSR:
    """Return a copy of model with `blocks` residual blocks: its own, then new plain ones before
    the body conv, each starting as the identity (its second conv zeroed), so the grown net
    computes exactly what model does until training moves the new blocks."""
    old = model.preset
    if blocks < old.blocks:
        raise ValueError(f"cannot grow a {old.blocks}-block net to {blocks} blocks")
    net = MultiScaleSR(replace(old, blocks=blocks)).to(next(model.parameters()).device)
    state = {name: value for name, value in model.state_dict().items()
             if not name.startswith(f"body.{old.blocks}.")}
    for suffix in ("weight", "bias"):  # the body conv moves from index old.blocks to blocks
        state[f"body.{blocks}.{suffix}"] = model.state_dict()[f"body.{old.blocks}.{suffix}"]
    for i in range(old.blocks, blocks):
        block = net.body[i]
        assert isinstance(block, ResBlock)
        nn.init.zeros_(block.conv2.weight)
        nn.init.zeros_(block.conv2.bias)
        state.update({f"body.{i}.{k}": v for k, v in block.state_dict().items()})
    net.load_state_dict(state)
    return net


def single_scale(model: MultiScaleSR, scale: int) -> FixedScale:
    """Return FixedScale over a copy of model holding only the x`scale` tail.

    The other tails are not in the exported graph, so they must not count in its parameters.
    """
    net = copy.deepcopy(model)
    net.tails = nn.ModuleDict({str(scale): net.tails[str(scale)]})
    return FixedScale(net, scale).eval()


def per_scale_counts(model: MultiScaleSR) -> str:
    """Return 'x2 N, x3 N, x4 N': parameters of the single-scale nets export will produce."""
    shared = count_parameters(model.head) + count_parameters(model.body)
    return ", ".join(f"x{s} {shared + count_parameters(model.tails[str(s)])}" for s in SCALES)
