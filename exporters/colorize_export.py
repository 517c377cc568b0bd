"""Export a colorize checkpoint as colorize.onnx with its card, measured with the protocol."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from exporters.colorize_metrics import evaluate, load_val_rgb, torch_predictor
from exporters.colorize_nets import (
    BIN_STEP,
    DECODER,
    ENCODER,
    Colorizer,
    NetConfig,
    load_trained,
)
from exporters.datadir import list_images

log = logging.getLogger(__name__)

# what the folders of ../shared/data are (its README), for the card; terms: research use
KNOWN_DATA = {"color-train": "ImageNet photographs",
              "BSDS400": "Berkeley BSDS500 train and test photographs",
              "T91": "the T91 super-resolution images (Yang et al.)"}


def describe_data(config: dict[str, Any]) -> str:
    """Return the model card's training data: each folder a run trained on, its image count
    (where it can still be read) and what it is."""
    parts = []
    for name in config["train_dirs"]:
        folder = Path(name)
        count = f"{len(list_images([folder])):,} images" if folder.is_dir() else "images"
        what = KNOWN_DATA.get(folder.name)
        parts.append(f"{folder.name} ({folder}): {count}" + (f", {what}" if what else ""))
    return "; ".join(parts) + "; research use"


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


def export_checkpoint(ckpt: Path, *, out_dir: Path, val_dir: Path, name: str = "colorize",
                      temperature: float | None = None, chroma_gain: float = 1.0,
                      gain_note: str = "", note: str = "") -> Any:
    """Return the ExportResult of a checkpoint exported as <name>.onnx with its card, after
    measuring it on val_dir (color-val) with the protocol."""
    from exporters.onnx_export import ModelCard  # onnx only needed to export

    model, ck = load_trained(ckpt, torch.device("cpu"), temperature)
    cfg, config = model.cfg, ck["config"]
    if cfg.variant == "FC":
        raise click.UsageError("the fully connected SIREN is a study row, not a shippable "
                               "model (fixed 48 x 48 input, RGB output)")
    render = config["size"] * 9 // 8
    val = load_val_rgb(val_dir)
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
        training_data=describe_data(config),
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
