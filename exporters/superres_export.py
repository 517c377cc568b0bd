"""Export a super-resolution checkpoint: one single-scale ONNX model per scale, measured and
carded (model cards take the run's recipe from the last.pt beside the checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from exporters.superres_net import (
    MultiScaleSR,
    Preset,
    exported_name,
    single_scale,
    trained_model,
)

EXPORT_EXAMPLE = (32, 40)  # example LR size (H, W); parity also runs on the sizes below
EXPORT_PARITY_SIZES = ((1, 1), (7, 5), (33, 47))  # odd and degenerate sizes, none the example
TRAINING_DATA = "T91 + BSDS400 (../shared/data/sr-train)"


def describe_architecture(preset: Preset, scale: int) -> str:
    """Return a one-paragraph description of the single-scale network exported for scale."""
    if preset.up_channels is None:
        tail = f"a 3x3 conv to {3 * scale * scale} channels and one x{scale} pixel shuffle to RGB"
    else:
        stages = ("two x2 pixel-shuffle stages" if scale == 4
                  else f"one x{scale} pixel-shuffle stage")
        tail = f"{stages} ({preset.up_channels} features) and a 3x3 conv to RGB"
    dilated = (f"blocks {', '.join(str(i) for i in preset.dilated)} with dilation 2"
               if preset.dilated else "no dilation")
    return (f"MultiScaleSR (EDSR/MDSR-style), x{scale} tail: 3x3 head conv to {preset.channels} "
            f"channels, {preset.blocks} residual blocks (conv-ReLU-conv, res_scale "
            f"{preset.res_scale}; {dilated}) and a body conv with a "
            f"global skip, then {tail}, "
            f"added to a bilinear x{scale} upscale of the input; output clamped to [0, 1]. "
            f"Fully convolutional: any input size.")


def checkpoint_facts(ckpt: Path) -> tuple[MultiScaleSR, str, int]:
    """Return (model in eval mode on the CPU, preset name, training step) of a checkpoint."""
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    return trained_model(ck, torch.device("cpu")), ck["preset"], int(ck["step"])


def scale_metrics(model_m: dict[str, float], bicubic_m: dict[str, float], scale: int,
                  val_name: str) -> dict[str, float | str]:
    """Return the model-card metrics of one scale: model and bicubic PSNR-Y/SSIM-Y."""
    out: dict[str, float | str] = {
        "protocol": "../shared/data/README.md: HR cropped to a multiple of the scale, LR by "
                    "Pillow bicubic, Y (BT.601, 16-235), scale px shaved",
    }
    for who, m in (("model", model_m), ("bicubic", bicubic_m)):
        out[f"{val_name} x{scale} PSNR-Y dB ({who})"] = round(m[f"psnr_x{scale}"], 3)
        out[f"{val_name} x{scale} SSIM-Y ({who})"] = round(m[f"ssim_x{scale}"], 4)
    return out


def run_config(ckpt: Path) -> dict[str, Any] | None:
    """Return the TrainConfig (as stored) of the run a checkpoint belongs to, read from the
    last.pt beside it, or None when there is no last.pt."""
    last = ckpt.with_name("last.pt")
    if not last.exists():
        return None
    return dict(torch.load(last, map_location="cpu", weights_only=False)["config"])


def describe_training(step: int, config: dict[str, Any] | None, note: str = "") -> str:
    """Return the model card's training line for a checkpoint at `step` of a run's config."""
    line = f"{step:,} steps"
    if config is not None:
        planned = int(config["steps"])
        where = "the end" if step >= planned else "a checkpoint"
        line += (f" (batch {config['batch']}, {config['patch']} px LR patches, "
                 f"{config['loss']} loss, Adam {config['lr']:g} with a cosine schedule; x2/x3/x4 "
                 f"in turn), {where} of a {planned:,}-step run")
        if config.get("init"):
            line += f" that started from the exported models in {config['init']}"
            if config.get("blocks"):
                line += f", the body grown to {config['blocks']} blocks (new ones as identities)"
        if config.get("ema"):
            line += (f"; the weights exported are their exponential moving average (decay "
                     f"{config['ema']:g})")
    return line + (f". {note}" if note else "")


def export_scale(model: MultiScaleSR, *, preset: str, scale: int, step: int,
                 metrics: dict[str, float | str], out_dir: Path,
                 training_steps: str = "") -> Any:
    """Return the ExportResult of the x`scale` model written as superres-<preset>-x<scale>."""
    from exporters.onnx_export import ModelCard, export_model  # onnx only needed to export

    def image(h: int, w: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))}

    card = ModelCard(
        name=exported_name(preset, scale),
        summary=f"x{scale} single-image super-resolution (RGB in [0, 1], any size).",
        architecture=describe_architecture(model.preset, scale),
        training_data=TRAINING_DATA,
        training_steps=training_steps or describe_training(step, None),
        metrics=metrics,
        facts={"scale": scale, "preset": preset, "step": step, "colour": "sRGB",
               "range": [0, 1]},
    )
    return export_model(
        single_scale(model, scale), card=card, example_inputs=image(*EXPORT_EXAMPLE),
        output_names=["output"],
        dynamic_axes={"image": {2: "height", 3: "width"}, "output": {2: "out_height",
                                                                    3: "out_width"}},
        out_dir=out_dir, parity_inputs=[image(h, w) for h, w in EXPORT_PARITY_SIZES])
