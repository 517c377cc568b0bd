"""The one training loop the trainers share: cadence, resume, stop requests, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from exporters.training import Cadence, TrainingRun  # noqa: E402


class ToyRun(TrainingRun):
    """A linear model on random inputs; can request a stop after a unit or cut one short."""

    def __init__(self, out: Path, cadence: Cadence, *, stop_after: int | None = None,
                 cut_at: int | None = None, sigterm_after: int | None = None,
                 ema: float = 0.0) -> None:
        self.stop_after, self.cut_at, self.sigterm_after = stop_after, cut_at, sigterm_after
        self.modes: list[bool] = []
        torch.manual_seed(0)
        super().__init__(torch.nn.Linear(2, 1), out=out, lr=0.1, schedule_steps=cadence.total,
                         cadence=cadence, device=torch.device("cpu"),
                         rng=np.random.default_rng(0), config={"total": cadence.total},
                         ema=ema)

    def train_unit(self) -> float | None:
        if self.done == self.cut_at:
            self.stop_requested = True
            return None
        x = torch.from_numpy(self.rng.random((4, 2), dtype=np.float32))
        loss = self.optimise((self.model(x) - 1.0).square().mean())
        if self.done + 1 == self.stop_after:
            self.stop_requested = True
        if self.done + 1 == self.sigterm_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    def validate(self, loss: float) -> dict[str, Any]:
        self.modes.append(self.model.training)
        return {"twice": 2 * loss}


def _last(out: Path) -> dict[str, Any]:
    return torch.load(out / "last.pt", weights_only=False)


def test_rows_and_checkpoints_follow_the_cadence(tmp_path: Path) -> None:
    run = ToyRun(tmp_path, Cadence(total=5, val_every=2, ckpt_every=3))
    run.run()
    assert [row["step"] for row in run.history] == [2, 4, 5]  # the last unit always records
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert rows == run.history and rows[0]["twice"] == pytest.approx(2 * rows[0]["loss"])
    assert run.modes == [False, False, False] and run.model.training  # eval for validation only
    checkpoint = _last(tmp_path)
    assert checkpoint["step"] == 5 and checkpoint["config"] == {"total": 5}
    assert set(checkpoint) == {"model", "optimizer", "scheduler", "step", "seconds", "history",
                               "rng", "config"}


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path,
                                                            ema: float) -> None:
    ToyRun(tmp_path / "a", Cadence(total=4, val_every=1), stop_after=2, ema=ema).run()
    resumed = ToyRun(tmp_path / "a", Cadence(total=4, val_every=1), ema=ema)
    assert resumed.start == 2
    resumed.run()
    straight = ToyRun(tmp_path / "b", Cadence(total=4, val_every=1), ema=ema)
    straight.run()
    assert [row["step"] for row in resumed.history] == [1, 2, 3, 4]
    assert [row["loss"] for row in resumed.history] == [row["loss"] for row in straight.history]
    for net in ("model", "evaluated"):  # weights (and their average), data order, schedule
        for name, tensor in getattr(straight, net).state_dict().items():
            torch.testing.assert_close(getattr(resumed, net).state_dict()[name], tensor,
                                       rtol=0, atol=0)


def test_ema_averages_the_weights_after_each_step(tmp_path: Path) -> None:
    plain = ToyRun(tmp_path / "plain", Cadence(total=3, val_every=3))
    weights = [plain.model.weight.detach().clone()]
    for _ in range(3):
        plain.done += plain.train_unit() is not None
        weights.append(plain.model.weight.detach().clone())
    run = ToyRun(tmp_path / "ema", Cadence(total=3, val_every=3), ema=0.75)
    run.run()
    expected = weights[0]
    for w in weights[1:]:
        expected = 0.75 * expected + 0.25 * w
    torch.testing.assert_close(run.model.weight, weights[-1], rtol=0, atol=0)  # same training
    torch.testing.assert_close(run.evaluated.weight, expected)
    assert not run.evaluated.training and not run.evaluated.weight.requires_grad
    torch.testing.assert_close(_last(tmp_path / "ema")["ema"]["weight"], expected)
    assert plain.evaluated is plain.model


def test_a_run_resumed_with_ema_starts_its_average_at_the_weights(tmp_path: Path) -> None:
    ToyRun(tmp_path, Cadence(total=4, val_every=2), stop_after=2).run()
    resumed = ToyRun(tmp_path, Cadence(total=4, val_every=2), ema=0.9)
    assert "ema" not in _last(tmp_path)
    before = resumed.model.weight.detach().clone()
    torch.testing.assert_close(resumed.evaluated.weight, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="ema is a decay"):
        ToyRun(tmp_path / "bad", Cadence(total=1, val_every=1), ema=1.0)


def test_a_stop_between_checkpoints_keeps_the_completed_units(tmp_path: Path) -> None:
    run = ToyRun(tmp_path, Cadence(total=10, val_every=5, ckpt_every=2), stop_after=3)
    run.run()
    assert run.done == 3 and _last(tmp_path)["step"] == 3


def test_a_unit_cut_short_is_dropped(tmp_path: Path) -> None:
    run = ToyRun(tmp_path, Cadence(total=10, val_every=5, ckpt_every=2), cut_at=3)
    run.run()
    assert run.done == 3 and _last(tmp_path)["step"] == 2  # unit 4 never counted, 3 unsaved
    assert ToyRun(tmp_path, Cadence(total=10, val_every=5)).start == 2


def test_sigterm_stops_the_run_and_the_old_handler_returns(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    run = ToyRun(tmp_path, Cadence(total=10, val_every=5, ckpt_every=5), sigterm_after=2)
    run.run()
    assert run.done == 2 and _last(tmp_path)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before


class AmpRun(TrainingRun):
    """Three optimiser steps per unit on one fixed input, each forward under autocast."""

    def __init__(self, out: Path, *, amp: bool) -> None:
        torch.manual_seed(0)
        self.x = torch.tensor([[0.5, -0.25]])
        self.losses: list[float] = []
        super().__init__(torch.nn.Linear(2, 1), out=out, lr=0.05, schedule_steps=100,
                         cadence=Cadence(total=2, val_every=1, ckpt_every=2),
                         device=torch.device("cpu"), rng=np.random.default_rng(0),
                         config={}, amp=amp)

    def train_unit(self) -> float:
        for _ in range(3):
            with self.autocast():
                out = self.model(self.x)
                loss = (out.float() - 4.0).square().mean()
            self.losses.append(self.optimise(loss))
        return self.losses[-1]

    def validate(self, loss: float) -> dict[str, Any]:
        with torch.no_grad():
            return {"out": float(self.model(self.x).float())}


@pytest.mark.parametrize("amp", [True, False])
def test_every_forward_pass_sees_the_last_optimiser_step(tmp_path: Path, amp: bool) -> None:
    # autocast keeps bf16 copies of the weights until its outermost context exits: a context
    # around the whole run (once the GPU launcher's) froze every forward at the first weights
    run = AmpRun(tmp_path, amp=amp)
    run.run()
    assert all(b < a for a, b in zip(run.losses, run.losses[1:], strict=False)), run.losses
    first, second = (row["out"] for row in run.history)
    assert first != second
    if amp:
        assert run.autocast().fast_dtype == torch.bfloat16
