"""The one training loop every trainer in exporters/ runs (superres, colorize): Adam on a cosine
schedule, resume from `last.pt`, atomic checkpoints, a validation row on a cadence, `--init`
from exported weights, and a clean stop on SIGTERM.

A trainer subclasses `TrainingRun` and says what one unit of training is (`train_unit`: one
optimiser step for superres, one epoch for colorize), what a validation row holds
(`validate`), and what its checkpoint adds (`extra_state`, `restore`, `check_resumable`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Cadence", "TrainingRun", "cosine_factor", "count_parameters", "pick_device",
           "restore_rng", "rng_states", "save_atomic"]

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """Return the torch device for "auto" (CUDA when available), "cpu" or "cuda"."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def cosine_factor(step: int, total: int, floor: float = 0.01) -> float:
    """Return the learning-rate multiplier at step: cosine from 1 down to floor over total steps."""
    t = min(step, total) / max(total, 1)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def count_parameters(module: nn.Module) -> int:
    """Return the number of parameter elements (shared parameters counted once): what an
    exported file of the module holds."""
    return sum(p.numel() for p in module.parameters())


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
    torch.set_rng_state(states["torch"].cpu())  # a checkpoint loaded onto a GPU moved it
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


@dataclass(frozen=True)
class Cadence:
    """How long a run is and how often it validates, checkpoints and logs, in its units.

    The last unit always validates and checkpoints; `log_every=0` logs nothing per unit.
    """

    total: int
    val_every: int
    ckpt_every: int = 1
    log_every: int = 0


class TrainingRun(ABC):
    """A resumable run in `out`: model, Adam, cosine schedule, history, random states.

    `last.pt` holds model, optimizer, scheduler, `<unit>` (units done), seconds (training
    time), history, rng, config and the subclass's extra_state(); `history.jsonl` gets one row
    per validation: {<unit>, seconds, loss (mean over the units since the last row), ...}.
    `init` names exported ONNX files to start from when `out` holds no last.pt yet (their
    initializers are `net.<state-dict name>`, as the export wrappers name them). `adapt`, when
    given, turns the model into the one the run trains, after `init` and before last.pt loads
    (e.g. superres grows its body: a resumed run's last.pt has the adapted shape).

    `ema` > 0 keeps an exponential moving average of the weights (after each optimiser step,
    average = ema * average + (1 - ema) * weights), stored in last.pt as `ema`; `evaluated` is
    the network a trainer validates and keeps: the average, or the model itself without `ema`.
    A run resumed with `ema` from a last.pt without one starts its average at the weights.
    """

    unit = "step"  # what train_unit() does once; names the counter in last.pt and in rows

    def __init__(self, model: nn.Module, *, out: Path, lr: float, schedule_steps: int,
                 cadence: Cadence, device: torch.device, rng: np.random.Generator,
                 config: Any, init: Sequence[Path] = (),
                 adapt: Callable[[nn.Module], nn.Module] | None = None,
                 amp: bool = False, ema: float = 0.0) -> None:
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema is a decay in [0, 1), not {ema}")
        self.device, self.rng, self.cadence, self.ema = device, rng, cadence, ema
        self.out, self.config, self.amp = out, config, amp
        if device.type == "cuda":  # fixed patch sizes: tune each convolution once
            torch.backends.cudnn.benchmark = True
        self.last_path = out / "last.pt"
        if init and not self.last_path.exists():  # else resume() loads the run's own weights
            from exporters.onnx_weights import load_exported_weights  # onnx: only for --init

            load_exported_weights(model, init, prefix="net.")
        self.model = adapt(model) if adapt is not None else model
        self.average = (copy.deepcopy(self.model).eval().requires_grad_(False) if ema
                        else None)
        # the (average, model) tensors, paired once (loading a state dict copies in place):
        # floating-point ones are averaged, the others (integer buffers) copied
        pairs = ([] if self.average is None else
                 list(zip(self.average.state_dict().values(),
                          self.model.state_dict().values(), strict=True)))
        self._averaged = [[a for a, _ in pairs if a.is_floating_point()],
                          [w for a, w in pairs if a.is_floating_point()]]
        self._copied = [(a, w) for a, w in pairs if not a.is_floating_point()]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: cosine_factor(step, schedule_steps))
        self.done, self.seconds = 0, 0.0
        self.history: list[dict[str, Any]] = []
        self.stop_requested = False
        self._losses: list[float] = []  # this session's, one per unit
        self._since = (0, 0.0)  # (units, seconds) when this session's loop started
        out.mkdir(parents=True, exist_ok=True)
        self.start = self.resume()

    # --- what a trainer provides ------------------------------------------------------------

    @abstractmethod
    def train_unit(self) -> float | None:
        """Return the loss of one unit of training, or None when a stop request cut it short
        (the unit is then not counted and the run stops without checkpointing it)."""

    @abstractmethod
    def validate(self, loss: float) -> dict[str, Any]:
        """Return the measurements of this validation row (after `<unit>`, seconds, loss)."""

    def extra_state(self) -> dict[str, Any]:
        """Return what this trainer adds to last.pt."""
        return {}

    def check_resumable(self, checkpoint: dict[str, Any]) -> None:
        """Raise ValueError when last.pt belongs to a run this configuration cannot continue."""
        return None  # by default any last.pt in `out` is this run's

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Restore this trainer's own state from last.pt (beyond what the loop restores)."""
        return None  # by default the loop restores everything

    def describe(self, row: dict[str, Any]) -> str:
        """Return the log line of a validation row."""
        return json.dumps(row)

    # --- the loop ----------------------------------------------------------------------------

    def resume(self) -> int:
        """Return the units restored from last.pt (0 when there is none)."""
        if not self.last_path.exists():
            return 0
        # onto the CPU: load_state_dict moves each tensor to its parameter's device and keeps
        # Adam's step counts on the CPU, where the non-capturable Adam expects them
        ck = torch.load(self.last_path, map_location="cpu", weights_only=False)
        self.check_resumable(ck)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.done, self.seconds, self.history = ck[self.unit], ck["seconds"], ck["history"]
        restore_rng(ck["rng"], self.rng)
        if self.average is not None:  # a run that just turned --ema on: at the weights
            self.average.load_state_dict(ck.get("ema", ck["model"]))
        self.restore(ck)
        return self.done

    @property
    def evaluated(self) -> nn.Module:
        """Return the network to validate and keep: the weight average with `ema`, else the
        model."""
        return self.model if self.average is None else self.average

    def checkpoint(self) -> None:
        """Write last.pt atomically."""
        save_atomic({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                     "scheduler": self.sched.state_dict(), self.unit: self.done,
                     "seconds": self.seconds, "history": self.history,
                     "rng": rng_states(self.rng), **self.extra_state(),
                     **({} if self.average is None else {"ema": self.average.state_dict()}),
                     "config": json.loads(json.dumps(self.config, default=str))},
                    self.last_path)

    def autocast(self) -> torch.autocast:
        """Return the context one forward pass (and its loss) runs in: bf16 autocast on the
        run's device with `amp`, else a disabled one. Never wrap more than one optimiser step:
        autocast keeps its bf16 copies of the weights until its outermost context exits, so
        forward passes inside one context never see the weights an optimiser step changed."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def optimise(self, loss: torch.Tensor) -> float:
        """Return the loss as a float after one optimiser and schedule step on it."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.average is not None:
            with torch.no_grad():
                torch._foreach_lerp_(*self._averaged, 1.0 - self.ema)  # as torch.optim does
                for average, weight in self._copied:
                    average.copy_(weight)
        return float(loss.detach())

    def run(self) -> None:
        """Train until cadence.total units or a stop request, validating and checkpointing on
        the cadence; SIGTERM asks for a stop."""
        old = signal.signal(signal.SIGTERM, self._request_stop)
        try:
            self._loop()
        finally:
            signal.signal(signal.SIGTERM, old)

    def _request_stop(self, signum: int, _frame: Any) -> None:
        self.stop_requested = True

    def _loop(self) -> None:
        cadence, saved = self.cadence, self.done
        self._since = (self.done, self.seconds)
        while self.done < cadence.total and not self.stop_requested:
            t0 = time.monotonic()
            loss = self.train_unit()
            if loss is None:  # cut short: its work is dropped, the last checkpoint stands
                return
            self.seconds += time.monotonic() - t0
            self.done += 1
            self._losses.append(loss)
            self._log_progress()
            last = self.done == cadence.total
            if last or self.done % cadence.val_every == 0:
                self._record(float(np.mean(self._losses[-cadence.val_every:])))
            if last or self.done % cadence.ckpt_every == 0:
                self.checkpoint()
                saved = self.done
        if self.done != saved:  # stopped between checkpoints: keep the completed units
            self.checkpoint()

    def _record(self, loss: float) -> None:
        row = {self.unit: self.done, "seconds": round(self.seconds, 1), "loss": loss}
        self.model.eval()
        try:
            with self.autocast():
                row.update(self.validate(loss))
        finally:
            self.model.train()
        self.history.append(row)
        with open(self.out / "history.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("%s", self.describe(row))

    def _log_progress(self) -> None:
        every = self.cadence.log_every
        if every and self.done % every == 0:
            done, seconds = self._since
            log.info("%s %d loss %.5f lr %.2e %.2f s/%s", self.unit, self.done,
                     np.mean(self._losses[-every:]), self.sched.get_last_lr()[0],
                     (self.seconds - seconds) / (self.done - done), self.unit)
