"""Train, measure and export the colorize networks (see exporters/colorize_nets.py).

    python -m exporters.colorize train --variant FR --loss mse --out runs/colorize/FR-mse
    python -m exporters.colorize evaluate --ckpt runs/colorize/FR-mse/last.pt --strength 1.5
    python -m exporters.colorize export --ckpt runs/colorize/FR-mse/last.pt

Training runs the shared loop of `training` with one epoch as its unit: last.pt every epoch, a
history row every epoch (the protocol's figures every `--eval-every`), SIGTERM stops at the next
step and drops the unfinished epoch. Every run with one seed sees the same data order, crops and
initial weights. Data (`colorize_data`), protocol (`colorize_metrics`: PSNR on 8-bit RGB and
Hasler-Suesstrunk colourfulness, ../shared/data/README.md) and export (`colorize_export`) have
their own modules.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exporters.colorize_data import crop_batch, fc_inputs, load_folder
from exporters.colorize_export import export_checkpoint
from exporters.colorize_metrics import evaluate, load_val_rgb, torch_predictor
from exporters.colorize_nets import AB_SCALE, Bins, Colorizer, NetConfig, build_net, load_trained
from exporters.datadir import DEFAULT_DATA, data_option, data_path
from exporters.training import Cadence, TrainingRun, count_parameters, pick_device

log = logging.getLogger(__name__)

VARIANTS = ("FR", "SRS", "S130", "FC")
LOSSES = ("mse", "rebalanced", "class")


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


@dataclass
class TrainConfig:
    """Everything a run needs; stored in its checkpoints."""

    out: Path
    variant: str = "SRS"
    loss: str = "mse"
    width: float = 0.5
    class_hidden: int = 0  # class loss: features before the logits (0: the width's 8)
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
    amp: bool = False  # bf16 autocast for each forward pass (a GPU's tensor cores)
    seed: int = 0
    train_limit: int | None = None  # a fixed random subset of this many training images
    train_dirs: list[Path] = field(default_factory=lambda: [DEFAULT_DATA / "color-train"])
    val_dir: Path = DEFAULT_DATA / "color-val"
    cache: Path = Path("runs/colorize-cache")

    @property
    def net(self) -> NetConfig:
        """Return the network part of the configuration (what a resumed run must match)."""
        return NetConfig(variant=self.variant, loss=self.loss, width=self.width,
                         first_w0=self.first_w0, class_hidden=self.class_hidden)

    @property
    def short_side(self) -> int:
        """Return the short side images are resized to before cropping."""
        return self.size * 9 // 8


class Trainer(TrainingRun):
    """A resumable colorize run: one unit is one epoch over a fresh permutation."""

    unit = "epoch"

    def __init__(self, cfg: TrainConfig, train: list[np.ndarray]) -> None:
        self.cfg, self.train = cfg, train
        self.bins = Bins.fit(np.concatenate([im[::4, ::4, 1:].reshape(-1, 2).astype(np.float32)
                                             for im in train]), lam=cfg.rebalance)
        self.steps_per_epoch = len(train) // cfg.batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train)} training images make no batch of {cfg.batch}")
        self.val_crops = torch.empty(0)
        self.val: Sequence[tuple[str, np.ndarray]] = ()
        torch.manual_seed(cfg.seed)
        device = pick_device(cfg.device)
        super().__init__(build_net(cfg.net, len(self.bins)).to(device), out=cfg.out,
                         lr=cfg.lr, schedule_steps=cfg.epochs * self.steps_per_epoch,
                         device=device, rng=np.random.default_rng(cfg.seed), config=asdict(cfg),
                         init=[cfg.init] if cfg.init is not None else [], amp=cfg.amp,
                         cadence=Cadence(total=cfg.epochs, val_every=1, ckpt_every=1))

    @property
    def net(self) -> nn.Module:
        """Return the network being trained."""
        return self.model

    @property
    def epoch(self) -> int:
        """Return the epochs done."""
        return self.done

    def check_resumable(self, checkpoint: dict[str, Any]) -> None:
        """Raise ValueError when last.pt holds another network."""
        if checkpoint["net"] != asdict(self.cfg.net):
            raise ValueError(f"{self.last_path} is a {checkpoint['net']} run")

    def extra_state(self) -> dict[str, Any]:
        """Return the network configuration and the ab bins (what export needs)."""
        return {"net": asdict(self.cfg.net),
                "bins": {"centres": self.bins.centres.numpy(),
                         "weights": self.bins.weights.numpy()}}

    def train_unit(self) -> float | None:
        """Return the mean loss of one pass over a fresh permutation of the training images,
        or None when a stop request cut the epoch short."""
        order = self.rng.permutation(len(self.train))
        losses = []
        for k in range(self.steps_per_epoch):
            if self.stop_requested:
                return None
            batch = crop_batch(self.train, order[k * self.cfg.batch:(k + 1) * self.cfg.batch],
                               self.cfg.size, self.rng).to(self.device)
            with self.autocast():
                loss = loss_value(self.cfg.net, self.net, batch, self.bins)
            losses.append(self.optimise(loss))
        return float(np.mean(losses))

    @torch.no_grad()
    def validate(self, loss: float) -> dict[str, Any]:
        """Return the loss on the centred validation crops and, every eval_every epochs and at
        the end, the protocol's PSNR and colourfulness."""
        row: dict[str, Any] = {"val_loss": float(np.mean([
            float(loss_value(self.cfg.net, self.net, chunk.to(self.device), self.bins))
            for chunk in self.val_crops.split(50)]))}
        if self.done % self.cfg.eval_every == 0 or self.done == self.cfg.epochs:
            row.update(evaluate(self.val, torch_predictor(self.colorizer(), self.device),
                                render_size=self.cfg.short_side))
        return row

    def colorizer(self) -> Colorizer:
        """Return the network in its shipped form (ab decoding included)."""
        return Colorizer(self.net, self.cfg.net, self.bins, self.cfg.temperature).to(self.device)


def train(cfg: TrainConfig) -> Trainer:
    """Return the Trainer after training per cfg, resuming from cfg.out/last.pt when present."""
    torch.set_num_threads(cfg.threads)
    train_images = [im for folder in cfg.train_dirs
                    for im in load_folder(folder, cfg.short_side, cfg.cache)]
    if cfg.train_limit is not None:  # the same subset for every run, whatever its seed
        keep = np.random.default_rng(1234).permutation(len(train_images))[:cfg.train_limit]
        train_images = [train_images[i] for i in sorted(keep)]
    val_images = load_folder(cfg.val_dir, cfg.short_side, cfg.cache)
    trainer = Trainer(cfg, train_images)
    trainer.val_crops = crop_batch(val_images, np.arange(len(val_images)), cfg.size, None)
    trainer.val = load_val_rgb(cfg.val_dir)
    log.info("%s/%s width %.2f: %d parameters, %d ab bins, %d steps/epoch; device %s; "
             "resuming at epoch %d of %d", cfg.variant, cfg.loss, cfg.width,
             count_parameters(trainer.net), len(trainer.bins), trainer.steps_per_epoch,
             trainer.device, trainer.epoch, cfg.epochs)
    trainer.run()
    return trainer


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
@click.option("--class-hidden", type=click.IntRange(min=0), default=0,
              help="Class loss: features of the last decoder layer, before the logits "
              "(0: as --width gives, 8 at 0.5).")
@click.option("--first-w0", type=float, default=1 / 30,
              help="1/30: the notes' first layer; 30: SIREN's.")
@click.option("--size", type=int, default=64)
@click.option("--batch", type=int, default=32)
@click.option("--epochs", type=int, default=30)
@click.option("--lr", type=float, default=3e-4)
@click.option("--eval-every", type=int, default=5)
@click.option("--threads", type=int, default=1)
@click.option("--device", default="auto")
@click.option("--amp/--no-amp", default=False, help="bf16 autocast for each forward pass.")
@click.option("--seed", type=int, default=0)
@click.option("--train-limit", type=int, help="Train on a fixed random subset of N images.")
@click.option("--rebalance", type=float, default=0.5,
              help="Rebalancing lambda of the class and rebalanced losses (1 = none).")
@click.option("--init", type=EXISTING, help="Start from the weights of an exported colorize.onnx "
              "of the same network (fine-tuning).")
@data_option
@click.option("--train-dir", "train_dirs", type=EXISTING, multiple=True,
              help="Training image folders, JPEG or PNG (default: DATA/color-train); e.g. "
              "DATA/color-train, DATA/sr-train/BSDS400 and DATA/sr-train/T91 for all colour data.")
def train_command(data: Path, train_dirs: tuple[Path, ...], **kwargs: Any) -> None:
    """Train (or resume) one variant on DATA/color-train, validating on DATA/color-val."""
    train(TrainConfig(train_dirs=list(train_dirs) or [data_path(None, data, "color-train")],
                      val_dir=data_path(None, data, "color-val"), **kwargs))


@cli.command("evaluate")
@click.option("--ckpt", type=EXISTING, required=True)
@click.option("--temperature", type=float, multiple=True)
@click.option("--strength", type=float, multiple=True)
@click.option("--render-size", type=int)
@data_option
@click.option("--images", type=EXISTING, help="Folder of colour JPEGs (default DATA/color-val).")
@click.option("--limit", type=int, help="Only N images, spread over the sorted names.")
@click.option("--threads", type=int, default=2)
def evaluate_command(ckpt: Path, temperature: tuple[float, ...], strength: tuple[float, ...],
                     render_size: int | None, data: Path, images: Path | None,
                     limit: int | None, threads: int) -> None:
    """Print the protocol's PSNR and colourfulness on a folder (and the greyscale floor)."""
    torch.set_num_threads(threads)
    images = data_path(images, data, "color-val")
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


@cli.command("export")
@click.option("--ckpt", type=EXISTING, required=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("plugins/models"))
@data_option
@click.option("--temperature", type=float, help="Annealed-mean T (default: the run's).")
@click.option("--chroma-gain", type=float, default=1.0,
              help="Calibrated chroma scale the plugin applies at strength 1.")
@click.option("--gain-note", default="", help="How the chroma gain was chosen (for the card).")
@click.option("--note", default="", help="Appended to the card's training paragraph.")
@click.option("--threads", type=int, default=2)
def export_command(ckpt: Path, out: Path, data: Path, temperature: float | None,
                   chroma_gain: float, gain_note: str, note: str, threads: int) -> None:
    """Measure a checkpoint on DATA/color-val and export it as colorize.onnx with its card."""
    torch.set_num_threads(threads)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)
    result = export_checkpoint(ckpt, out_dir=out, val_dir=data_path(None, data, "color-val"),
                               temperature=temperature, chroma_gain=chroma_gain,
                               gain_note=gain_note, note=note)
    click.echo(f"{result.onnx_path}: {result.parameters:,} parameters, parity max abs error "
               f"{result.max_abs_error:.2e}")


if __name__ == "__main__":
    cli()
