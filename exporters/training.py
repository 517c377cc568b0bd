"""Pieces every resumable trainer in exporters/ shares: device, schedule, atomic checkpoints,
random states."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["cosine_factor", "pick_device", "restore_rng", "rng_states", "save_atomic"]


def pick_device(name: str) -> torch.device:
    """Return the torch device for "auto" (CUDA when available), "cpu" or "cuda"."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def cosine_factor(step: int, total: int, floor: float = 0.01) -> float:
    """Return the learning-rate multiplier at step: cosine from 1 down to floor over total steps."""
    t = min(step, total) / max(total, 1)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def save_atomic(obj: Any, path: Path) -> None:
    """Write obj with torch.save to a temporary file, then rename it over path."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_states(rng: np.random.Generator) -> dict[str, Any]:
    """Return every random generator state a resumed run needs."""
    states = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any], rng: np.random.Generator) -> None:
    """Restore the states saved by rng_states into rng and torch."""
    rng.bit_generator.state = states["numpy"]
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
