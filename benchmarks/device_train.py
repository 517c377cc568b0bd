"""Training on the GPU machine within a deadline, through the trainers' own command lines.

Every trainer runs at once (small networks leave the GPU room for three). A short first phase
measures each one's seconds per step (or epoch); the second phase resumes it with a cosine
schedule sized to end at the deadline; SIGTERM at the deadline makes a trainer checkpoint and
stop. Checkpoints come back without optimiser state (export does not need it), small enough to
carry. The trainers' own `--amp` runs each forward pass under bf16 autocast.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARGIN_S = 20.0  # kept free before the deadline for the last validation and checkpoint
GRACE_S = 60.0  # after SIGTERM, before a trainer is killed


@dataclass(frozen=True)
class TrainJob:
    """One trainer: its command line without --out and the length option."""

    name: str
    unit: str  # "step": --steps (superres); "epoch": --epochs (colorize)
    first: int  # units in the measuring phase
    command: list[str]

    def argv(self, run: Path, total: int) -> list[str]:
        """Return the command training `run` to `total` units."""
        length = ["--steps" if self.unit == "step" else "--epochs", str(total)]
        return [*self.command, "--out", str(run), *length]


def train_jobs(jobs: list[TrainJob], *, work: Path, out: Path, deadline: float,
               env: dict[str, str], smoke: bool = False) -> list[dict[str, Any]]:
    """Return what each job reached; slim checkpoints land in out/<name>.pt, logs in
    out/train.log."""
    started = time.monotonic()
    run([(j, j.first) for j in jobs], work=work, deadline=deadline, env=env)
    first_wall = time.monotonic() - started
    totals = []
    for job in jobs:
        done, seconds = progress(work / job.name / "last.pt", job.unit)
        budget = deadline - time.monotonic() - MARGIN_S - max(0.0, first_wall - seconds)
        totals.append((job, done, done + 1 if smoke else planned_total(done, seconds, budget)))
    run([(j, t) for j, done, t in totals if t > done], work=work, deadline=deadline, env=env)
    with open(out / "train.log", "w") as log:
        for job in jobs:
            log.write(f"==> {job.name}\n{(work / f'{job.name}.log').read_text()[-20000:]}\n")
    return [finish(job, total, work, out) for job, _, total in totals]


def planned_total(done: int, seconds: float, budget: float) -> int:
    """Return the units to train to: `done` (in `seconds`) plus what 90% of `budget` seconds
    holds at the same pace (the rest absorbs validation and checkpoint pauses)."""
    if done <= 0 or budget <= 0:
        return max(done, 0)
    return done + int(0.9 * budget * done / max(seconds, 1e-6))


def run(plan: list[tuple[TrainJob, int]], *, work: Path, deadline: float,
        env: dict[str, str]) -> None:
    """Run the jobs side by side to their totals; SIGTERM whatever still runs at the deadline."""
    procs = []
    for job, total in plan:
        with open(work / f"{job.name}.log", "a") as log:
            procs.append(subprocess.Popen(job.argv(work / job.name, total), cwd=ROOT, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the trainers checkpoint and stop on SIGTERM
    for proc in procs:
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def progress(checkpoint: Path, unit: str) -> tuple[int, float]:
    """Return (steps or epochs done, training seconds) recorded in a trainer's last.pt, or
    (0, 0.0) when it wrote none (it failed, or was stopped before its first checkpoint)."""
    if not checkpoint.exists():
        return 0, 0.0
    ck = load(checkpoint)
    return int(ck[unit]), float(ck["seconds"])


def finish(job: TrainJob, total: int, work: Path, out: Path) -> dict[str, Any]:
    """Return the job's figures and write its checkpoint, less the optimiser, to out."""
    import torch

    if not (work / job.name / "last.pt").exists():
        return {"name": job.name, "planned": total, "reached": 0, "unit": job.unit,
                "error": "no checkpoint: the trainer failed or was stopped first (train.log)"}
    ck = load(work / job.name / "last.pt")
    ck.pop("optimizer", None)
    torch.save(ck, out / f"{job.name}.pt")
    history = ck.get("history") or [{}]
    return {"name": job.name, "planned": total, "reached": int(ck[job.unit]), "unit": job.unit,
            "seconds": round(float(ck["seconds"]), 1), "last": history[-1],
            "checkpoint": f"{job.name}.pt", "bytes": (out / f"{job.name}.pt").stat().st_size}


def load(checkpoint: Path) -> dict[str, Any]:
    """Return a trainer's checkpoint dictionary (on the CPU)."""
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=False)
