"""The GPU run, prepared so that a lent GPU machine is used within minutes (docs/gpu.md).

    python benchmarks/device.py pack                # here: .device/ parts to carry, and the plan
    python3 benchmarks/device.py stash              # there, in each call: keep the carried part
    python3 benchmarks/device.py run --minutes 8    # there: check, throughput, training -> $OUT
    python3 benchmarks/device.py train --minutes 8  # there: the training alone -> $OUT
    python benchmarks/device.py publish DIR         # here: DIR's throughput table into the docs
    python benchmarks/device.py smoke --out DIR     # anywhere: the whole run on the CPU, seconds

`run` (1) runs `imgproc doctor --check` and a batch on the GPU, (2) measures every shipped
model's output megapixels per second on CUDA and on the CPU of the same machine, (3) spends the
rest training the shipped superres and colorize models further from their shipped weights
(`--init`) with large batches and bf16 autocast, all three trainers at once, and writes small
checkpoints (no optimiser state) into the output folder to bring back and export here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # `python benchmarks/device.py` from anywhere

from device_bundle import STASH, pack, stash, subprocess_env  # noqa: E402
from device_train import TrainJob, train_jobs  # noqa: E402

SECTION = "device"


def main() -> None:
    """Dispatch the sub-commands above."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: bundle ORT-GPU, wheels and data into .device/")
    p.add_argument("--part-mb", type=int, default=44, help="MiB per carried part")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--minutes", type=float, default=7.5, help="for the printed plan")
    p.add_argument("--skip", choices=["ort", "data"], action="append", default=[],
                   help="leave out onnxruntime-gpu or the training data (fewer parts)")
    sub.add_parser("stash", help="there: keep the carried part; unpack once all arrived")
    for name in ("run", "smoke"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-out")))
        p.add_argument("--minutes", type=float, default=7.5 if name == "run" else 5.0,
                       help="deadline for the whole run (the smoke run's work is fixed)")
        p.add_argument("--no-train", action="store_true", help="check and measure only")
    p = sub.add_parser("train", help="there: the training part of `run` alone (a second call)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-out")))
    p.add_argument("--minutes", type=float, default=7.5, help="deadline for the training")
    p = sub.add_parser("throughput", help="one process: every model on every usable provider")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--seconds", type=float, default=2.0, help="timed runs per model, about")
    p = sub.add_parser("publish", help="here: write a run's table into docs/benchmarks.md")
    p.add_argument("folder", type=Path)
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.command == "pack":
        print(pack(args.data, ROOT / ".device", part_mb=args.part_mb, minutes=args.minutes,
                   skip=frozenset(args.skip)))
    elif args.command == "stash":
        print(stash(ROOT / ".device"))
    elif args.command in ("run", "smoke"):
        summary = device_run(args.out, minutes=args.minutes, smoke=args.command == "smoke",
                             train=not args.no_train)
        print(json.dumps(summary, indent=2))
    elif args.command == "train":
        args.out.mkdir(parents=True, exist_ok=True)
        (STASH / "work").mkdir(parents=True, exist_ok=True)
        trained = train_jobs(jobs(STASH / "work", smoke=False), work=STASH / "work",
                             out=args.out, deadline=time.monotonic() + args.minutes * 60,
                             env=subprocess_env())
        write_json(args.out / "training.json", trained)
    elif args.command == "throughput":
        write_json(args.out, throughput(side=args.side, seconds=args.seconds))
    else:
        publish(args.folder, args.doc)


def device_run(out: Path, *, minutes: float, smoke: bool, train: bool = True
               ) -> dict[str, Any]:
    """Return the run's summary after checking, measuring and training; what comes back
    (summary.json, doctor-check.json, train.log, one .pt per model) is written into `out`."""
    deadline = time.monotonic() + minutes * 60
    work = out / "work" if smoke else STASH / "work"
    for folder in (out, work):
        folder.mkdir(parents=True, exist_ok=True)
    env = subprocess_env()
    imgproc = [sys.executable, "-m", "imgproc.cli", "--log-level", "warning"]
    check = run_json([*imgproc, "doctor", "--check", "--json"], env, out / "doctor-check.json")
    gpu = bool(check.get("cuda", {}).get("usable"))
    batch = run_json([*imgproc, "run", "-p", "superres", "-O", "scale=2", "-O",
                      f"model={'fast' if smoke else 'best'}", "--provider",
                      "cuda" if gpu else "cpu", str(ROOT / "examples" / "images"), "-o",
                      str(work / "batch"), "--json"], env, work / "batch.json")
    side, seconds = (32, 0.05) if smoke else (512, 1.0)
    subprocess.run([sys.executable, __file__, "throughput", "--out", str(work / "speed.json"),
                    "--side", str(side), "--seconds", str(seconds)], env=env, check=True)
    train = train and (smoke or (STASH / "data").is_dir())  # packed with --skip data: none
    trained = train_jobs(jobs(work, smoke=smoke), work=work, out=out, deadline=deadline,
                         env=env, smoke=smoke) if train else []
    summary = {"gpu": gpu, "device": device_name(), "check_ok": check.get("ok"),
               "cuda": check.get("cuda"),
               "batch": {"exit_ok": not batch.get("error"), "done": batch.get("done"),
                         "seconds": batch.get("seconds"),
                         "ms": [o.get("ms") for o in batch.get("outcomes", [])],
                         "providers": sorted({o.get("provider", "") for o in
                                              batch.get("outcomes", [])})},
               "throughput": json.loads((work / "speed.json").read_text()),
               "training": trained}
    write_json(out / "summary.json", summary)
    return summary


def jobs(work: Path, *, smoke: bool) -> list[TrainJob]:
    """Return the trainers to run: the shipped superres models from their weights, and colorize
    afresh with the classification loss and a wide layer before its logits; big batches on
    the GPU (torch's: it may be usable where ONNX Runtime's is not), or a few steps on tiny
    generated data in the smoke run."""
    data = make_smoke_data(work / "smoke-data") if smoke else STASH / "data"
    device = "cpu" if smoke else "auto"
    models = ROOT / "plugins" / "models"
    common = ["--device", device, "--data", str(data), "--threads", "1" if smoke else "2",
              "--amp"]  # bf16 autocast per forward pass (on the CPU too in the smoke run)
    sr = (["--patch", "8", "--batch", "2"] if smoke
          else ["--patch", "48", "--batch", "64", "--lr", "1e-4", "--data-threads", "3"])
    presets = ["fast"] if smoke else ["best", "fast"]
    superres = [TrainJob(
        name=f"superres-{name}", unit="step", first=1 if smoke else 60,
        command=[sys.executable, "-m", "exporters.superres", "train",
                 "--preset", name, "--init", str(models), "--val-every",
                 "500", "--ckpt-every", "100", "--ema", "0.999", *sr, *common])
        for name in presets]
    col = (["--size", "16", "--batch", "2", "--train-limit", "4", "--class-hidden", "8"]
           if smoke else ["--size", "64", "--batch", "128", "--class-hidden", "128"])
    colorize = TrainJob(
        name="colorize-class", unit="epoch", first=1,
        command=[sys.executable, "-m", "exporters.colorize", "train", "--variant", "FR",
                 "--loss", "class", "--width", "0.5", "--eval-every", "10", *col, *common])
    return [*superres, colorize]


def make_smoke_data(root: Path) -> Path:
    """Return a data folder laid out like ../shared/data with a few tiny random images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, count, size, suffix in [("sr-train/tiny", 3, (64, 80), "png"),
                                        ("sr-val/McMaster18", 2, (48, 48), "png"),
                                        ("color-train", 6, (40, 48), "jpg"),
                                        ("color-val", 2, (40, 48), "jpg")]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i}.{suffix}")
    return root


def throughput(*, side: int, seconds: float) -> dict[str, Any]:
    """Return each shipped model's output megapixels per second on each usable provider: CUDA
    as configured (fp32), with TF32, and with IO binding; then the CPU; on a side x (side + 16)
    input."""
    from imgproc.config import RuntimeSettings
    from imgproc.cuda import cuda_status
    from imgproc.doctor import sample_feeds, shipped_models
    from imgproc.logs import configure_logging
    from imgproc.registry import load_registry
    from imgproc.session import SessionPool, load_onnxruntime

    configure_logging(level="warning")
    usable = cuda_status(load_onnxruntime()).usable
    pools = {p: SessionPool.from_settings(RuntimeSettings(), provider=p)
             for p in (["cuda", "cpu"] if usable else ["cpu"])}
    if usable:
        pools["cuda_tf32"] = SessionPool.from_settings(RuntimeSettings(cuda_tf32=True),
                                                       provider="cuda")
    rows = []
    for processor, model in shipped_models(load_registry()):
        row: dict[str, Any] = {"processor": processor, "model": model.name}
        for name, pool in pools.items():
            session = pool.get(model)
            feeds = sample_feeds(session.inner.get_inputs(), side=side)
            row["input"] = list(next(iter(feeds.values())).shape)
            row[name] = megapixels_per_second(session, feeds, seconds)
            if name == "cuda":  # outputs kept on the GPU, copied back once per run
                row["cuda_iobinding"] = megapixels_per_second(session, feeds, seconds,
                                                              binding="cuda")
        rows.append(row)
    return {"side": side, "providers": list(pools), "rows": rows}


def megapixels_per_second(session: Any, feeds: dict[str, Any], seconds: float, *,
                          binding: str | None = None) -> float:
    """Return output megapixels per second over repeated runs after two warm-up runs; with
    `binding`, outputs stay on that device (IO binding) and are copied back once per run."""
    inner = session.inner
    if binding is None:
        def once() -> Any:
            return inner.run(None, feeds)[0]
    else:
        bound = inner.io_binding()
        for name, value in feeds.items():
            bound.bind_cpu_input(name, value)
        for output in inner.get_outputs():
            bound.bind_output(output.name, binding)

        def once() -> Any:
            inner.run_with_iobinding(bound)
            return bound.copy_outputs_to_cpu()[0]
    first = once()
    once()
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        once()
        runs += 1
    pixels = first.shape[-2] * first.shape[-1]
    return round(pixels * runs / (time.perf_counter() - start) / 1e6, 3)


def publish(folder: Path, doc: Path) -> None:
    """Write the throughput table of the run in `folder` (its summary.json) into `doc`."""
    import run as benchmarks_run  # benchmarks/run.py: one place that rewrites a section

    summary = json.loads((folder / "summary.json").read_text())
    text = doc.read_text() if doc.exists() else benchmarks_run.HEADER
    doc.write_text(benchmarks_run._replace(text, SECTION, section(summary)))


def section(summary: dict[str, Any]) -> str:
    """Return the markdown section for one device run."""
    data = summary["throughput"]
    gpu = "cuda" in data["providers"]
    head = "| model | input | CPU MP/s |" + (" CUDA MP/s | CUDA TF32 | CUDA + IO binding | "
                                             "CUDA / CPU |" if gpu else "")
    lines = ["## CUDA vs CPU (device run)", "",
             "Output megapixels per second of each network on its own (height x width of its "
             "output; colorize's is the chroma map at half its input's size), on the input "
             "size shown (`python benchmarks/device.py run` on the GPU machine, then "
             "`publish`).", "", head,
             "| --- | --- | ---: |" + (" ---: | ---: | ---: | ---: |" if gpu else "")]
    for r in data["rows"]:
        size = "x".join(str(d) for d in r["input"][-2:])
        cells = f"| {r['model']} | {size} | {r['cpu']} |"
        if gpu:
            cells += (f" {r['cuda']} | {r['cuda_tf32']} | {r['cuda_iobinding']} | "
                      + (f"{r['cuda'] / r['cpu']:.1f}x |" if r["cpu"] else "- |"))
        lines.append(cells)
    why = "" if gpu else f" CUDA was not usable: {summary.get('cuda', {}).get('reason', '?')}"
    lines += ["", f"_Device: {summary.get('device')}; `imgproc doctor --check`: "
              f"{'ok' if summary.get('check_ok') else 'FAILED'}.{why}_", ""]
    return "\n".join(lines)


def device_name() -> str:
    """Return the GPU's name and the CPU count, as the device machine reports them."""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,"
                              "noheader"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        gpu = ""
    return f"{gpu.strip() or 'no GPU'}, {os.cpu_count()} CPU cores"


def run_json(command: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    """Return the JSON a command prints (kept in `out`), whatever its exit code."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    out.write_text(done.stdout)
    print(f"$ {' '.join(command[2:])} -> exit {done.returncode}", file=sys.stderr)
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        print(done.stderr[-2000:], file=sys.stderr)
        return {"error": re.sub(r"\s+", " ", done.stderr[-500:])}


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON."""
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
