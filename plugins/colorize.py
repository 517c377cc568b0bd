"""colorize: grey photographs to colour with the shipped SIREN-activated CNN.

    imgproc run --plugin colorize old-photos/ -o colour/
    imgproc run -p colorize -O strength=1.3 -O render_size=96 scans/ -o colour/

Every input is first reduced to its CIE Lab lightness, so one-channel files, RGB files that are
grey, sepia-toned scans and colour photos (re-colouring) all take the same path. The network
sees that lightness at a working resolution (`render_size` pixels on the short side, like
DeOldify's render_factor) and predicts chroma (Lab a, b); the chroma is resized to the full size
and put back on the full-resolution lightness, so a 24-megapixel scan keeps every grain.
`strength` scales the chroma: 0 returns the input's lightness as a grey image, 1 the model's
colours (the network's chroma times the calibrated `chroma_gain` of its facts: MSE training
predicts washed-out chroma), above 1 more saturated. The model (`models/colorize.onnx`), its
variant, training data and measured figures are in its model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imgproc import Context, ModelFile, Option, Processor, Session, hookimpl
from imgproc_plugins.lab import PredictAb, colorize_lab

IMGPROC_API_VERSION = "1.0"
MODELS = Path(__file__).parent / "models"
MODEL = ModelFile.from_facts(MODELS / "colorize.json")
# The model's calibrated chroma scale (its card says how it was chosen): strength 1 is
# the network's ab times this gain.
CHROMA_GAIN = float(MODEL.facts.get("chroma_gain", 1.0))


def onnx_predictor(session: Session) -> PredictAb:
    """Return predict_ab running the shipped model through its session."""

    def predict(small: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(small[None, None], dtype=np.float32)
        return session.run({"lightness": x})[0][0].transpose(1, 2, 0)

    return predict


def colorize(images: list[np.ndarray], *, options: dict[str, Any],
             context: Context) -> np.ndarray:
    """Return the image in colour (same size)."""
    predict = onnx_predictor(context.session(MODEL.name))
    return colorize_lab(images[0], predict, render_size=options["render_size"],
                        strength=options["strength"] * CHROMA_GAIN)


PROCESSOR = Processor(
    name="colorize",
    summary="Colour grey photographs (chroma from a CNN, full-resolution lightness kept).",
    process=colorize,
    options=(
        Option("render_size", int, int(MODEL.facts["render_size"]),
               "working resolution: the network's short side in pixels (default: the size it "
               "was trained at)", min=16, max=1024),
        Option("strength", float, 1.0,
               "chroma scale: 0 the grey input, 1 the model's colours, >1 more saturated",
               min=0.0, max=4.0),
    ),
    models=(MODEL,),
)


@hookimpl
def imgproc_processors() -> list[Processor]:
    """Return the colorize processor."""
    return [PROCESSOR]


__all__ = ["CHROMA_GAIN", "MODEL", "PROCESSOR", "onnx_predictor"]
