"""Train, validate and export the multi-scale super-resolution network (x2, x3, x4).

    python -m exporters.superres train --preset best --out runs/superres-best --steps 13000
    python -m exporters.superres validate --ckpt runs/superres-best/best.pt
    python -m exporters.superres export --ckpt runs/superres-best/best.pt --preset best

The network is in `superres_net`, the data and the quality protocol (../shared/data/README.md)
in `superres_data` and `superres_metrics`, the export in `superres_export`; the loop (resume,
checkpoints, schedule, validation cadence, `--init`) is the shared one of `training`. One unit
of training is one optimiser step, on x2, x3 and x4 batches in turn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from torch import nn

from exporters.datadir import DEFAULT_DATA, data_option, data_path
from exporters.superres_data import (
    ValSet,
    list_images,
    load_rgb,
    load_val,
    sample_batch,
    unit_range,
)
from exporters.superres_export import (
    checkpoint_facts,
    describe_training,
    export_scale,
    run_config,
    scale_metrics,
)
from exporters.superres_metrics import (
    bicubic_upscale,
    evaluate,
    format_metrics,
    loss_value,
    super_resolve,
)
from exporters.superres_net import (
    PRESETS,
    SCALES,
    MultiScaleSR,
    build_model,
    checkpoint_arch,
    exported_name,
    grown,
    load_trained,
    per_scale_counts,
)
from exporters.training import Cadence, TrainingRun, count_parameters, pick_device, save_atomic

log = logging.getLogger(__name__)

TRAIN_DATA = ("sr-train",)  # under --data
VAL_DATA = ("sr-val", "McMaster18")
LOSSES = ("l1", "l2", "psnr_ssim")


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
    data_threads: int = 1  # threads making the LR patches of a batch (a GPU outruns one)
    amp: bool = False  # bf16 autocast for each forward pass (a GPU's tensor cores)
    ema: float = 0.0  # decay of the weight average validated and kept (0: the weights)
    device: str = "auto"
    seed: int = 0
    train_dirs: list[Path] = field(default_factory=lambda: [DEFAULT_DATA.joinpath(*TRAIN_DATA)])
    val_dir: Path = DEFAULT_DATA.joinpath(*VAL_DATA)
    init: Path | None = None  # a folder of exported superres-<preset>-x<s>.onnx to start from
    blocks: int | None = None  # grow the preset's body to this many residual blocks


class Trainer(TrainingRun):
    """A resumable superres run: one unit is one optimiser step; validation writes best.pt
    when the mean PSNR-Y over the scales improves."""

    unit = "step"

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        device = pick_device(cfg.device)
        init = [] if cfg.init is None else [cfg.init / f"{exported_name(cfg.preset, s)}.onnx"
                                            for s in SCALES]
        self.best = -math.inf
        self.images: Sequence[np.ndarray] = ()
        self.val: ValSet = {}
        self.pool = ThreadPoolExecutor(cfg.data_threads) if cfg.data_threads > 1 else None
        super().__init__(build_model(cfg.preset).to(device), out=cfg.out, lr=cfg.lr,
                         schedule_steps=cfg.steps, device=device,
                         rng=np.random.default_rng(cfg.seed), config=asdict(cfg), init=init,
                         adapt=self.grow, amp=cfg.amp, ema=cfg.ema,
                         cadence=Cadence(total=cfg.steps, val_every=cfg.val_every,
                                         ckpt_every=cfg.ckpt_every, log_every=cfg.log_every))

    def grow(self, model: nn.Module) -> nn.Module:
        """Return model with its body grown to --blocks (the new blocks start as identities,
        so the grown net computes what --init's model did), or model itself without --blocks."""
        assert isinstance(model, MultiScaleSR)
        if self.cfg.blocks is None or self.cfg.blocks == model.preset.blocks:
            return model
        return grown(model, self.cfg.blocks)

    @property
    def step(self) -> int:
        """Return the optimiser steps done."""
        return self.done

    @property
    def start_step(self) -> int:
        """Return the step this session started (resumed) at."""
        return self.start

    def check_resumable(self, checkpoint: dict[str, Any]) -> None:
        """Raise ValueError when last.pt holds another preset or depth."""
        if checkpoint_arch(checkpoint) != self.model.preset:
            raise ValueError(f"{self.last_path} is a {checkpoint['config']['preset']!r} run of "
                             f"{checkpoint_arch(checkpoint).blocks} blocks")

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Restore the best score so far."""
        self.best = checkpoint["best"]

    def extra_state(self) -> dict[str, Any]:
        """Return the best score, the preset and the architecture (a grown body differs)."""
        return {"best": self.best, "preset": self.cfg.preset, "arch": asdict(self.model.preset)}

    def train_unit(self) -> float:
        """Return the loss of one optimiser step on a batch of this step's scale."""
        scale = SCALES[self.done % len(SCALES)]
        lr, hr = sample_batch(self.images, scale=scale, patch=self.cfg.patch,
                              batch=self.cfg.batch, rng=self.rng, pool=self.pool)
        lr, hr = (unit_range(t.to(self.device, non_blocking=True)) for t in (lr, hr))
        with self.autocast():
            loss = loss_value(self.cfg.loss, self.model(lr, scale), hr, scale)
        return self.optimise(loss)

    def validate(self, loss: float) -> dict[str, Any]:
        """Return PSNR-Y/SSIM-Y per scale on the validation set; write best.pt if improved."""
        net = self.evaluated
        m = evaluate(self.val, lambda lr, s: super_resolve(net, lr, s, self.device))
        score = float(np.mean([m[f"psnr_x{s}"] for s in SCALES]))
        if score > self.best:
            self.best = score
            save_atomic({"model": net.state_dict(), "preset": self.cfg.preset,
                         "arch": asdict(self.model.preset), "step": self.done, "metrics": m},
                        self.out / "best.pt")
        return m

    def describe(self, row: dict[str, Any]) -> str:
        """Return the validation log line."""
        return f"val step {row['step']}: {format_metrics(row)} (PSNR-Y/SSIM-Y)"


def train(cfg: TrainConfig) -> Trainer:
    """Return the Trainer after training per cfg, resuming from cfg.out/last.pt when present."""
    torch.set_num_threads(cfg.threads)
    trainer = Trainer(cfg)
    log.info("preset %s: %d parameters (%s); device %s; resuming at step %d of %d", cfg.preset,
             count_parameters(trainer.model), per_scale_counts(trainer.model), trainer.device,
             trainer.start_step, cfg.steps)
    trainer.images = [load_rgb(p) for p in list_images(cfg.train_dirs)]
    trainer.val = load_val(cfg.val_dir)
    log.info("%d training images; bicubic on %s: %s", len(trainer.images), cfg.val_dir.name,
             format_metrics(evaluate(trainer.val, bicubic_upscale)))
    try:
        trainer.run()
    finally:
        if trainer.pool is not None:
            trainer.pool.shutdown()
    return trainer


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
@click.option("--loss", type=click.Choice(LOSSES), default="l1")
@click.option("--val-every", type=int, default=500)
@click.option("--ckpt-every", type=int, default=100)
@click.option("--log-every", type=int, default=25)
@click.option("--threads", type=int, default=1)
@click.option("--data-threads", type=click.IntRange(min=1), default=1,
              help="Threads making each batch's LR patches (the batch is the same for any).")
@click.option("--device", default="auto", help="auto, cpu or cuda.")
@click.option("--amp/--no-amp", default=False, help="bf16 autocast for each forward pass.")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Validate, keep and export an exponential moving average of the weights "
              "with this decay (e.g. 0.999); 0: the weights themselves.")
@click.option("--seed", type=int, default=0)
@data_option
@click.option("--train-dir", "train_dirs", type=EXISTING, multiple=True,
              help="Training image folders (default: DATA/sr-train).")
@click.option("--val-dir", type=EXISTING, help="Validation images (default: "
              "DATA/sr-val/McMaster18).")
@click.option("--init", type=EXISTING, help="Start from the weights of the exported models of "
              "this preset in a folder (e.g. plugins/models): continue a shipped model.")
@click.option("--blocks", type=click.IntRange(min=1), help="Grow the body to this many residual "
              "blocks (new ones start as identities, so --init's model is where it starts).")
def train_command(data: Path, train_dirs: tuple[Path, ...], val_dir: Path | None,
                  **kwargs: Any) -> None:
    """Train (or resume) a run in --out."""
    dirs = list(train_dirs) or [data_path(None, data, *TRAIN_DATA)]
    trainer = train(TrainConfig(train_dirs=dirs, val_dir=data_path(val_dir, data, *VAL_DATA),
                                **kwargs))
    click.echo(f"stopped at step {trainer.step}; best mean PSNR-Y {trainer.best:.3f}")


@cli.command("validate")
@click.option("--ckpt", type=EXISTING, required=True)
@data_option
@click.option("--val-dir", type=EXISTING, help="Default: DATA/sr-val/McMaster18.")
@click.option("--threads", type=int, default=2)
@click.option("--device", default="auto")
def validate_command(ckpt: Path, data: Path, val_dir: Path | None, threads: int,
                     device: str) -> None:
    """Print the bicubic and model PSNR-Y/SSIM-Y of a checkpoint on the validation images."""
    torch.set_num_threads(threads)
    dev = pick_device(device)
    val = load_val(data_path(val_dir, data, *VAL_DATA))
    click.echo(f"bicubic: {format_metrics(evaluate(val, bicubic_upscale))}")
    model = load_trained(ckpt, dev)
    m = evaluate(val, lambda lr, s: super_resolve(model, lr, s, dev))
    click.echo(f"{ckpt}: {format_metrics(m)}")


@cli.command("export")
@click.option("--ckpt", type=EXISTING, required=True)
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="best",
              help="Must match the checkpoint's preset; names the files.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("plugins/models"))
@data_option
@click.option("--val-dir", type=EXISTING, help="Default: DATA/sr-val/McMaster18.")
@click.option("--threads", type=int, default=2)
@click.option("--note", default="", help="Added to the card's training line (e.g. a schedule "
              "change).")
def export_command(ckpt: Path, preset: str, out: Path, data: Path, val_dir: Path | None,
                   threads: int, note: str) -> None:
    """Measure a checkpoint on --val-dir and export it as superres-<preset>-x2/x3/x4."""
    torch.set_num_threads(threads)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)  # per-pass notes, not results
    model, ck_preset, step = checkpoint_facts(ckpt)
    if ck_preset != preset:
        raise click.UsageError(f"{ckpt} holds a {ck_preset!r} model, not {preset!r}")
    val_dir = data_path(val_dir, data, *VAL_DATA)
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
