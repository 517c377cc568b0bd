"""imgproc serve under load: 200 POST /v1/process requests from 8 concurrent clients (loopback),
superres model=fast scale=2 on the sample images, against the same images through imgproc run.

    python benchmarks/run.py serve_load

Each configuration starts a real server process (uvicorn), sends one warm-up request (model
session loaded), then the load. A 429 must carry Retry-After; the client waits that long and
sends again (its latency includes the wait). Peak memory is the server process's VmHWM.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.serve_process import ServerProcess  # noqa: E402

REQUESTS = 200
CLIENTS = 8
SAMPLES = sorted((ROOT / "examples" / "images").glob("*.[jp][pn]g"))
FORM = {"plugin": "superres", "options": json.dumps({"model": "fast", "scale": 2})}
CONFIGS = [("1 worker, queue 32", ["--workers", "1"]),
           ("2 workers, queue 32", ["--workers", "2"]),
           ("1 worker, queue 4", ["--workers", "1", "--queue-size", "4"])]


@dataclass
class Load:
    """What one load run saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    refusals_without_retry_after: int = 0
    seconds: float = 0.0
    base_kib: int = 0
    peak_kib: int = 0


def _kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _client(server: ServerProcess, jobs: list[int], load: Load, lock: threading.Lock) -> None:
    payloads = [(p.name, p.read_bytes()) for p in SAMPLES]
    with server.client(timeout=120) as client:
        for n in jobs:
            start = time.perf_counter()
            while True:
                answer = client.post("/v1/process", files={"file": payloads[n % len(payloads)]},
                                     data=FORM)
                with lock:
                    load.statuses[answer.status_code] += 1
                if answer.status_code != 429:
                    break
                if "retry-after" not in answer.headers:
                    with lock:
                        load.refusals_without_retry_after += 1
                    break
                time.sleep(int(answer.headers["retry-after"]))
            with lock:
                load.latencies.append(time.perf_counter() - start)


def _run_load(server: ServerProcess) -> Load:
    load, lock = Load(), threading.Lock()
    with server.client(timeout=120) as client:  # warm-up: the model's session is loaded
        assert client.post("/v1/process", files={"file": (SAMPLES[0].name,
                                                         SAMPLES[0].read_bytes())},
                           data=FORM).status_code == 200
    load.base_kib = _kib(server.pid, "VmRSS")
    shares = [list(range(i, REQUESTS, CLIENTS)) for i in range(CLIENTS)]
    threads = [threading.Thread(target=_client, args=(server, s, load, lock)) for s in shares]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.seconds = time.perf_counter() - start
    load.peak_kib = _kib(server.pid, "VmHWM")
    return load


def _cli_rate(folder: Path, workers: int) -> tuple[float, float]:
    """Return (images per second, wall seconds) for imgproc run on the same 200 images."""
    out = folder.parent / f"out-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imgproc.cli", "run", "-p", "superres", "-O",
                    "model=fast", "-O", "scale=2", str(folder), "-o", str(out), "--workers",
                    str(workers), "--json"], check=True, capture_output=True)
    wall = time.perf_counter() - start
    return REQUESTS / wall, wall


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values else 0.0


def run() -> str:
    """Return the markdown section with the load table and the imgproc run comparison."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for label, args in CONFIGS:
            with ServerProcess(root / f"data-{len(rows)}", *args, plugins_dir=None) as server:
                load = _run_load(server)
            fivexx = sum(n for code, n in load.statuses.items() if code >= 500)
            ms = [s * 1000 for s in load.latencies]
            rows.append(f"| {label} | {len(ms)} | {load.statuses[200]} | "
                        f"{load.statuses[429]} | {load.refusals_without_retry_after} | {fivexx} | "
                        f"{_pct(ms, 50):.0f} | {_pct(ms, 95):.0f} | "
                        f"{len(ms) / load.seconds:.1f} | {load.base_kib / 1024:.0f} -> "
                        f"{load.peak_kib / 1024:.0f} |")
        folder = root / "images"
        folder.mkdir()
        for n in range(REQUESTS):
            sample = SAMPLES[n % len(SAMPLES)]
            shutil.copyfile(sample, folder / f"{n:03d}-{sample.name}")
        cli = [(w, *_cli_rate(folder, w)) for w in (1, 2)]
    load_avg = os.getloadavg()[0]
    return "\n".join([
        "## imgproc serve under load",
        "",
        f"{REQUESTS} `POST /v1/process` requests from {CLIENTS} concurrent clients over "
        "loopback, each one of the four sample images (256 px, PNG and JPEG), `superres` "
        "`model=fast` `scale=2`; a refused request (429) waits its `Retry-After` and is sent "
        "again, its latency includes the wait. `python benchmarks/run.py serve_load`.",
        "",
        "| server | requests | 200 | 429 | 429 without Retry-After | 5xx | p50 ms | p95 ms | "
        "requests/s | server RSS MiB (warm -> peak) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
        "The same 200 images through `imgproc run` (one process, start-up included):",
        "",
        "| imgproc run | images/s | wall s |",
        "| --- | ---: | ---: |",
        *[f"| --workers {w} | {rate:.1f} | {wall:.1f} |" for w, rate, wall in cli],
        "",
        f"Load average while measuring: {load_avg:.1f} on 2 cores (other work shared them).",
    ])


if __name__ == "__main__":
    print(run())
