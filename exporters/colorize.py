"""Train, measure and export the colorize networks (see exporters/colorize_nets.py).

    python -m exporters.colorize train --variant FR --loss mse --out runs/colorize/FR-mse
    python -m exporters.colorize evaluate --ckpt runs/colorize/FR-mse/last.pt --strength 1.5
    python -m exporters.colorize export --ckpt runs/colorize/FR-mse/last.pt

Training is resumable (last.pt every epoch, SIGTERM stops at the next step) and uses the same
data order, crops and initial weights for every run with one seed. Protocol
(../shared/data/README.md): the input is the ground truth's L channel as a grey image; PSNR on
8-bit RGB against the ground truth and Hasler-Suesstrunk colourfulness of the output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from exporters.colorize_nets import (
    AB_SCALE,
    BIN_STEP,
    DECODER,
    ENCODER,
    FC_SIZE,
    Bins,
    Colorizer,
    NetConfig,
    build_net,
)
from exporters.training import cosine_factor, pick_device, restore_rng, rng_states, save_atomic
from imgproc_plugins.lab import colorize_lab, grey_of, lab_to_rgb, rgb_to_lab

log = logging.getLogger(__name__)

DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
TRAIN_DIR = DATA_ROOT / "color-train"
VAL_DIR = DATA_ROOT / "color-val"
TRAINING_DATA = ("color-train (../shared/data/color-train): 1,741 ImageNet photographs, "
                 "research use")
VARIANTS = ("FR", "SRS", "S130", "FC")
LOSSES = ("mse", "rebalanced", "class")
# ---------------------------------------------------------------------------------- data

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
    paths = sorted(folder.glob("*.jpg"))
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


# ---------------------------------------------------------------------------------- loss

def loss_value(cfg: NetConfig, net: nn.Module, lab: torch.Tensor, bins: Bins) -> torch.Tensor:
    """Return the training loss of net on a batch of Lab crops."""
    if cfg.variant == "FC":
        lightness, rgb = fc_inputs(lab.cpu())
        device = next(net.parameters()).device
        return F.mse_loss(net(lightness.to(device)), rgb.to(device))
    out = net(lab[:, :1])
    ab = F.adaptive_avg_pool2d(lab[:, 1:], out.shape[2:])
    if cfg.loss == "mse":
        return F.mse_loss(out, ab / AB_SCALE)
    if cfg.loss == "rebalanced":  # Zhang et al.'s class rebalancing, applied to regression
        return (bins.pixel_weights(ab)[:, None] * (out - ab / AB_SCALE).square()).mean()
    target, weight = bins.soft_targets(ab)
    ce = -(target * torch.log_softmax(out, dim=1)).sum(dim=1)
    return (weight * ce).mean()


# ---------------------------------------------------------------------------------- protocol

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
        return model(x.to(device))[0].permute(1, 2, 0).cpu().numpy()

    return predict


def fc_predict(net: nn.Module, lightness: torch.Tensor) -> np.ndarray:
    """Return the ab of the fully connected SIREN's RGB output (48 x 48 x 2)."""
    small = F.interpolate(lightness, size=(FC_SIZE, FC_SIZE), mode="area")
    rgb = net(small)[0].permute(1, 2, 0).cpu().numpy()
    return rgb_to_lab(rgb)[..., 1:]


# ---------------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    """Everything a run needs; stored in its checkpoints."""

    out: Path
    variant: str = "SRS"
    loss: str = "mse"
    width: float = 0.5
    first_w0: float = 1 / 30
    size: int = 64  # training crop side; images are resized to a short side of size * 9/8
    batch: int = 32
    epochs: int = 30
    lr: float = 3e-4
    temperature: float = 0.38
    rebalance: float = 0.5  # Zhang et al.'s lambda: 1 = no rebalancing, 0 = weights 1/p
    init: Path | None = None  # start from the weights of a shipped colorize.onnx
    eval_every: int = 5
    threads: int = 1
    device: str = "auto"
    seed: int = 0
    train_limit: int | None = None  # a fixed random subset of this many training images
    train_dir: Path = TRAIN_DIR
    val_dir: Path = VAL_DIR
    cache: Path = Path("runs/colorize-cache")

    @property
    def net(self) -> NetConfig:
        return NetConfig(variant=self.variant, loss=self.loss, width=self.width,
                         first_w0=self.first_w0)

    @property
    def short_side(self) -> int:
        return self.size * 9 // 8


class Trainer:
    """Resumable run: same data order and initial weights for every variant with one seed."""

    def __init__(self, cfg: TrainConfig, train: list[np.ndarray]) -> None:
        self.cfg, self.device = cfg, pick_device(cfg.device)
        self.bins = Bins.fit(np.concatenate([im[::4, ::4, 1:].reshape(-1, 2).astype(np.float32)
                                             for im in train]), lam=cfg.rebalance)
        torch.manual_seed(cfg.seed)
        self.net = build_net(cfg.net, len(self.bins)).to(self.device)
        if cfg.init is not None and not self.last_path.exists():  # else resume() loads
            from exporters.onnx_export import load_exported_weights  # onnx: only for --init

            load_exported_weights(self.net, [cfg.init], prefix="net.")
        self.rng = np.random.default_rng(cfg.seed)
        self.steps_per_epoch = len(train) // cfg.batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train)} training images make no batch of {cfg.batch}")
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: cosine_factor(s, cfg.epochs * self.steps_per_epoch))
        self.epoch, self.seconds = 0, 0.0
        self.history: list[dict[str, float]] = []
        self.stop_requested = False
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.resume()

    @property
    def last_path(self) -> Path:
        return self.cfg.out / "last.pt"

    def resume(self) -> None:
        """Restore model, optimiser, schedule, history and random states from last.pt."""
        if not self.last_path.exists():
            return
        ck = torch.load(self.last_path, map_location=self.device, weights_only=False)
        if ck["net"] != asdict(self.cfg.net):
            raise ValueError(f"{self.last_path} is a {ck['net']} run")
        self.net.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.epoch, self.seconds, self.history = ck["epoch"], ck["seconds"], ck["history"]
        restore_rng(ck["rng"], self.rng)

    def checkpoint(self) -> None:
        """Write last.pt atomically (everything resume() needs, plus what export needs)."""
        save_atomic({"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                     "scheduler": self.sched.state_dict(), "epoch": self.epoch,
                     "seconds": self.seconds, "history": self.history,
                     "rng": rng_states(self.rng), "net": asdict(self.cfg.net),
                     "bins": {"centres": self.bins.centres.numpy(),
                              "weights": self.bins.weights.numpy()},
                     "config": json.loads(json.dumps(asdict(self.cfg), default=str))},
                    self.last_path)

    def train_epoch(self, train: Sequence[np.ndarray]) -> float:
        """Return the mean loss of one pass over a fresh permutation of train."""
        order = self.rng.permutation(len(train))
        losses = []
        for k in range(self.steps_per_epoch):
            if self.stop_requested:
                break
            batch = crop_batch(train, order[k * self.cfg.batch:(k + 1) * self.cfg.batch],
                               self.cfg.size, self.rng).to(self.device)
            loss = loss_value(self.cfg.net, self.net, batch, self.bins)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    @torch.no_grad()
    def val_loss(self, val_crops: torch.Tensor) -> float:
        """Return the training loss on the centred validation crops."""
        self.net.eval()
        loss = float(np.mean([float(loss_value(self.cfg.net, self.net, chunk.to(self.device),
                                                self.bins)) for chunk in val_crops.split(50)]))
        self.net.train()
        return loss

    def colorizer(self) -> Colorizer:
        return Colorizer(self.net, self.cfg.net, self.bins, self.cfg.temperature)

    def run(self, train: Sequence[np.ndarray], val_crops: torch.Tensor,
            val: Sequence[tuple[str, np.ndarray]]) -> None:
        """Train to cfg.epochs (or a stop request), recording losses each epoch."""
        while self.epoch < self.cfg.epochs and not self.stop_requested:
            t0 = time.monotonic()
            loss = self.train_epoch(train)
            if self.stop_requested:
                break
            self.seconds += time.monotonic() - t0
            self.epoch += 1
            row = {"epoch": self.epoch, "seconds": round(self.seconds, 1), "loss": loss,
                   "val_loss": self.val_loss(val_crops)}
            if self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs:
                self.net.eval()
                row.update(evaluate(val, torch_predictor(self.colorizer(), self.device),
                                    render_size=self.cfg.short_side))
                self.net.train()
            self.history.append(row)
            log.info("%s", json.dumps(row))
            with open(self.cfg.out / "history.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            self.checkpoint()


def train(cfg: TrainConfig) -> Trainer:
    """Return the Trainer after training per cfg, resuming from cfg.out/last.pt when present."""
    torch.set_num_threads(cfg.threads)
    train_images = load_folder(cfg.train_dir, cfg.short_side, cfg.cache)
    if cfg.train_limit is not None:  # the same subset for every run, whatever its seed
        keep = np.random.default_rng(1234).permutation(len(train_images))[:cfg.train_limit]
        train_images = [train_images[i] for i in sorted(keep)]
    val_images = load_folder(cfg.val_dir, cfg.short_side, cfg.cache)
    val_crops = crop_batch(val_images, np.arange(len(val_images)), cfg.size, None)
    trainer = Trainer(cfg, train_images)
    log.info("%s/%s width %.2f: %d parameters, %d ab bins, %d steps/epoch; device %s; "
             "resuming at epoch %d of %d", cfg.variant, cfg.loss, cfg.width,
             sum(p.numel() for p in trainer.net.parameters()), len(trainer.bins),
             trainer.steps_per_epoch, trainer.device, trainer.epoch, cfg.epochs)

    def request_stop(signum: int, _frame: Any) -> None:
        trainer.stop_requested = True

    old = signal.signal(signal.SIGTERM, request_stop)
    try:
        trainer.run(train_images, val_crops, load_val_rgb(cfg.val_dir))
    finally:
        signal.signal(signal.SIGTERM, old)
    return trainer


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


# ---------------------------------------------------------------------------------- CLI

EXISTING = click.Path(exists=True, path_type=Path)


@click.group()
def cli() -> None:
    """Train, evaluate and export the colorize networks."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")


@cli.command("train")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--variant", type=click.Choice(VARIANTS), default="SRS")
@click.option("--loss", type=click.Choice(LOSSES), default="mse")
@click.option("--width", type=float, default=0.5)
@click.option("--first-w0", type=float, default=1 / 30,
              help="1/30: the notes' first layer; 30: SIREN's.")
@click.option("--size", type=int, default=64)
@click.option("--batch", type=int, default=32)
@click.option("--epochs", type=int, default=30)
@click.option("--lr", type=float, default=3e-4)
@click.option("--eval-every", type=int, default=5)
@click.option("--threads", type=int, default=1)
@click.option("--device", default="auto")
@click.option("--seed", type=int, default=0)
@click.option("--train-limit", type=int, help="Train on a fixed random subset of N images.")
@click.option("--rebalance", type=float, default=0.5,
              help="Rebalancing lambda of the class and rebalanced losses (1 = none).")
@click.option("--init", type=EXISTING, help="Start from the weights of an exported colorize.onnx "
              "of the same network (fine-tuning).")
def train_command(**kwargs: Any) -> None:
    """Train (or resume) one variant."""
    train(TrainConfig(**kwargs))


@cli.command("evaluate")
@click.option("--ckpt", type=EXISTING, required=True)
@click.option("--temperature", type=float, multiple=True)
@click.option("--strength", type=float, multiple=True)
@click.option("--render-size", type=int)
@click.option("--images", type=EXISTING, default=VAL_DIR,
              help="Folder of colour JPEGs (default color-val).")
@click.option("--limit", type=int, help="Only N images, spread over the sorted names.")
@click.option("--threads", type=int, default=2)
def evaluate_command(ckpt: Path, temperature: tuple[float, ...], strength: tuple[float, ...],
                     render_size: int | None, images: Path, limit: int | None,
                     threads: int) -> None:
    """Print the protocol's PSNR and colourfulness on a folder (and the greyscale floor)."""
    torch.set_num_threads(threads)
    val = load_val_rgb(images, limit)
    floor = evaluate(val, lambda lt: np.zeros((*lt.shape, 2), np.float32), render_size=64)
    click.echo(f"{images.name} ({len(val)} images), greyscale input: {floor['psnr']:.2f} dB, "
               f"colourfulness {floor['colourfulness']:.1f}")
    for t in temperature or (None,):
        model, ck = load_trained(ckpt, torch.device("cpu"), t)
        size = render_size or ck["config"]["size"] * 9 // 8
        for s in strength or (1.0,):
            m = evaluate(val, torch_predictor(model, torch.device("cpu")), render_size=size,
                         strength=s)
            click.echo(f"T={model.temperature} strength={s} render={size}: "
                       f"{m['psnr']:.2f} dB, colourfulness {m['colourfulness']:.1f}")


def describe_architecture(cfg: NetConfig, n_bins: int) -> str:
    """Return the model card's architecture paragraph."""
    acts = {"FR": "ReLU everywhere, tanh output",
            "SRS": "sine on the first and last layers, ReLU between",
            "S130": "sine on every layer"}[cfg.variant]
    if cfg.variant != "FR":
        acts += (f"; first sine layer U(-1, 1) weights on the input x w0 = {cfg.first_w0:.4g}"
                 if cfg.first_w0 < 1 else f"; SIREN's first layer, w0 = {cfg.first_w0:g}")
        acts += ", other sine layers he_uniform"
    head = (f"1x1 convolution to logits over {n_bins} ab bins (grid {BIN_STEP:g}), decoded "
            f"inside the graph by the annealed mean (softmax(logits / T) . bin centres)"
            if cfg.loss == "class" else "3x3 convolution to ab / 110")
    return (f"Variant {cfg.variant} ({acts}). Encoder of strided 3x3 convolutions "
            f"{[max(8, round(c * cfg.width)) for c, _ in ENCODER]} (the notes' Keras colorizer "
            f"at width {cfg.width:g}); a global-context branch learned from scratch (global "
            f"average pool, two dense layers, broadcast and fused by a 1x1 convolution) in "
            f"place of the pretrained classifier; decoder "
            f"{[c if c == 'up' else max(4, round(c * cfg.width)) for c in DECODER]} with "
            f"nearest 2x upsampling; head: {head}. Input `lightness` N x 1 x H x W (Lab L, "
            f"0-100); output `ab` N x 2 x ceil(H/8)*4 x ceil(W/8)*4 in Lab units, resized by "
            f"the host onto the full-resolution lightness.")


def export_checkpoint(ckpt: Path, *, out_dir: Path, name: str = "colorize",
                      temperature: float | None = None, chroma_gain: float = 1.0,
                      gain_note: str = "", note: str = "") -> Any:
    """Return the ExportResult of a checkpoint exported as <name>.onnx with its card, after
    measuring it on color-val with the protocol."""
    from exporters.onnx_export import ModelCard  # onnx only needed to export

    model, ck = load_trained(ckpt, torch.device("cpu"), temperature)
    cfg, config = model.cfg, ck["config"]
    if cfg.variant == "FC":
        raise click.UsageError("the fully connected SIREN is a study row, not a shippable "
                               "model (fixed 48 x 48 input, RGB output)")
    render = config["size"] * 9 // 8
    val = load_val_rgb(VAL_DIR)
    floor = evaluate(val, lambda lt: np.zeros((*lt.shape, 2), np.float32), render_size=render)
    got = evaluate(val, torch_predictor(model, torch.device("cpu")), render_size=render,
                   strength=chroma_gain)
    log.info("color-val: greyscale %s; model %s", floor, got)

    steps = ck["scheduler"]["last_epoch"]  # one scheduler step per optimiser step
    card = ModelCard(
        name=name,
        summary="Chroma (Lab ab) of a grey photograph from its lightness at the working size.",
        architecture=describe_architecture(cfg, len(model.centres) if cfg.loss == "class"
                                           else 0),
        training_data=TRAINING_DATA,
        training_steps=(f"{ck['epoch']} epochs ({steps:,} steps of batch {config['batch']}, "
                        f"{config['size']} px random crops of images resized to a "
                        f"{render} px short side, horizontal flips), Adam {config['lr']:g} "
                        f"cosine, loss {cfg.loss}"
                        + (f" (rebalancing lambda {config['rebalance']:g})"
                           if cfg.loss != "mse" and "rebalance" in config else "")
                        + f", seed {config['seed']}; "
                        f"{ck['seconds'] / 60:.0f} min on 1 CPU thread"
                        + (f". {note}" if note else "")),
        metrics={"protocol": f"../shared/data/README.md: L of the ground truth as grey input; "
                             f"8-bit RGB PSNR; Hasler-Suesstrunk colourfulness; model at "
                             f"strength 1 (chroma gain {chroma_gain:g}), render size {render}",
                 "color-val PSNR dB (model)": round(got["psnr"], 2),
                 "color-val colourfulness (model)": round(got["colourfulness"], 1),
                 "color-val PSNR dB (greyscale input)": round(floor["psnr"], 2),
                 "color-val colourfulness (greyscale input)": round(floor["colourfulness"], 1)},
        facts={"variant": cfg.variant, "loss": cfg.loss, "width": cfg.width,
               "render_size": render, "temperature": model.temperature
               if cfg.loss == "class" else None, "bins": len(model.centres)
               if cfg.loss == "class" else 0, "epochs": ck["epoch"], "colour": "CIE Lab D65",
               "run": ckpt.parent.name, "chroma_gain": chroma_gain,
               "chroma_gain_chosen": gain_note or "not calibrated (1.0)"},
    )
    return export_colorizer(model, card=card, out_dir=out_dir)


def export_colorizer(model: Colorizer, *, card: Any, out_dir: Path) -> Any:
    """Return the ExportResult of model written as <card.name>.onnx: input `lightness` and
    output `ab` with dynamic height and width, parity checked down to 1 x 1 and at odd sizes."""
    from exporters.onnx_export import export_model  # onnx only needed to export

    def lightness(h: int, w: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(h * w)
        return {"lightness": 100 * torch.rand(1, 1, h, w, generator=g)}

    return export_model(model, card=card, example_inputs=lightness(72, 96),
                        output_names=["ab"],
                        dynamic_axes={"lightness": {2: "height", 3: "width"},
                                      "ab": {2: "out_height", 3: "out_width"}},
                        out_dir=out_dir,
                        parity_inputs=[lightness(h, w) for h, w in ((1, 1), (7, 5), (65, 47))],
                        size_oblivious=True)


@cli.command("export")
@click.option("--ckpt", type=EXISTING, required=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("plugins/models"))
@click.option("--temperature", type=float, help="Annealed-mean T (default: the run's).")
@click.option("--chroma-gain", type=float, default=1.0,
              help="Calibrated chroma scale the plugin applies at strength 1.")
@click.option("--gain-note", default="", help="How the chroma gain was chosen (for the card).")
@click.option("--note", default="", help="Appended to the card's training paragraph.")
@click.option("--threads", type=int, default=2)
def export_command(ckpt: Path, out: Path, temperature: float | None, chroma_gain: float,
                   gain_note: str, note: str, threads: int) -> None:
    """Measure a checkpoint on color-val and export it as colorize.onnx with its card."""
    torch.set_num_threads(threads)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)
    result = export_checkpoint(ckpt, out_dir=out, temperature=temperature,
                               chroma_gain=chroma_gain, gain_note=gain_note, note=note)
    click.echo(f"{result.onnx_path}: {result.parameters:,} parameters, parity max abs error "
               f"{result.max_abs_error:.2e}")


if __name__ == "__main__":
    cli()
