"""`imgproc serve` as a real uvicorn process on a free loopback port: routes over HTTP, auth,
kill -9 and restart with a job in flight, a full queue, graceful SIGTERM."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from .serve_process import ServerProcess, wait_for


def png(seed: int = 0, size: tuple[int, int] = (32, 24)) -> bytes:
    """Return the bytes of a small random RGB PNG."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _children() -> set[int]:
    result = subprocess.run(["pgrep", "-P", str(__import__("os").getpid())],
                            capture_output=True, text=True)
    return {int(p) for p in result.stdout.split()}


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """Return the server's data folder; fail the test if a server process is left running."""
    before = _children()
    yield tmp_path / "data"
    assert _children() == before, "a server process was left running"


def post_job(client: httpx.Client, files: list[tuple[str, bytes]], plugin: str,
             **options: Any) -> dict[str, Any]:
    answer = client.post("/v1/jobs", files=[("files", f) for f in files],
                         data={"plugin": plugin, "options": json.dumps(options)})
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def job_status(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    return dict(client.get(job["url"]).json())


def test_every_route_over_http_with_a_token(data_dir: Path) -> None:
    with ServerProcess(data_dir, "--max-upload-mb", "1", token="s3cret") as server:
        anonymous, client = server.client(auth=False), server.client()
        assert anonymous.get("/healthz").json()["auth"] is True
        assert anonymous.get("/v1/plugins").status_code == 401
        assert "identity" in {p["name"] for p in client.get("/v1/plugins").json()["processors"]}
        single = client.post("/v1/process", files={"file": ("../x.png", png())},
                             data={"plugin": "identity", "options": '{"scale": 3}',
                                   "format": "webp"})
        assert single.status_code == 200 and single.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(single.content)).size == (96, 72)
        for fields, data, status in [({"plugin": "nope"}, png(), 422),
                                     ({"plugin": "identity", "options": '{"scale": 0}'}, png(),
                                      422),
                                     ({"plugin": "identity"}, b"%PDF-1.4 not an image", 415)]:
            refused = client.post("/v1/process", files={"file": ("x.png", data)}, data=fields)
            assert refused.status_code == status and refused.json()["error"]
        too_big = client.post("/v1/process", files={"file": ("x.png", b"\0" * (2**20 + 10))},
                              data={"plugin": "identity"})
        assert too_big.status_code == 413
        job = post_job(client, [("../../a.png", png(1)), ("bad.png", b"GIF89a nope"),
                                ("a/../../b.png", png(2))], "identity", scale=2)
        done = wait_for(lambda: (s := job_status(client, job))["status"] == "done" and s,
                        timeout=30, what="job")
        assert [(i["name"], i["status"]) for i in done["images"]] == [
            ("a.png", "done"), ("bad.png", "failed"), ("b.png", "done")]
        image = client.get(done["images"][0]["url"])
        assert Image.open(io.BytesIO(image.content)).size == (64, 48)
        with zipfile.ZipFile(io.BytesIO(client.get(done["archive"]).content)) as zf:
            assert sorted(zf.namelist()) == ["a.png", "b.png"]
        assert client.delete(job["url"]).status_code == 200
        assert client.get(job["url"]).status_code == 404
        assert "imgproc_jobs_total" in anonymous.get("/metrics").text
        assert server.terminate()
    outside = [p for p in data_dir.parent.rglob("*") if p.is_file()
               and data_dir not in p.parents and not p.name.endswith("-server.log")]
    assert outside == []


@pytest.mark.slow
def test_kill_9_with_a_job_in_flight_then_restart_finishes_it(data_dir: Path) -> None:
    server = ServerProcess(data_dir)
    with server:
        client = server.client()
        job = post_job(client, [(f"{i}.png", png(i)) for i in range(3)], "slow", seconds=1.0)
        wait_for(lambda: job_status(client, job)["status"] == "running", what="running")
        server.kill()  # SIGKILL: one image in hand, two queued
    with ServerProcess(data_dir, log=server.log) as again:
        client = again.client()
        done = wait_for(lambda: (s := job_status(client, job))["status"] == "done" and s,
                        timeout=30, what="job after restart")
        assert [i["status"] for i in done["images"]] == ["done"] * 3
        for image in done["images"]:
            assert client.get(image["url"]).status_code == 200
        assert again.terminate()


@pytest.mark.slow
def test_full_queue_answers_429_with_retry_after(data_dir: Path) -> None:
    with ServerProcess(data_dir, "--queue-size", "2") as server:
        client = server.client()
        job = post_job(client, [("a.png", png(1)), ("b.png", png(2))], "slow", seconds=0.5)
        refused = client.post("/v1/process", files={"file": ("x.png", png())},
                              data={"plugin": "identity"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "queue full" in refused.json()["error"]
        wait_for(lambda: job_status(client, job)["status"] == "done", what="job")
        assert client.post("/v1/process", files={"file": ("x.png", png())},
                           data={"plugin": "identity"}).status_code == 200
        assert server.terminate()


@pytest.mark.slow
def test_sigterm_finishes_the_image_in_hand_and_exits_within_seconds(data_dir: Path) -> None:
    server = ServerProcess(data_dir)
    with server:
        client = server.client()
        job = post_job(client, [("a.png", png(1)), ("b.png", png(2))], "slow", seconds=1.5)
        wait_for(lambda: job_status(client, job)["status"] == "running", what="running")
        start = time.monotonic()
        assert server.terminate(timeout=20)
        took = time.monotonic() - start
    assert took < 5, f"SIGTERM took {took:.1f} s"
    events = [json.loads(line)["event"] + " " + json.loads(line).get("path", "")
              for line in server.log.read_text().splitlines() if line.startswith("{")]
    done_first = [e for e in events[:events.index("stopped ")] if e.startswith("image done")]
    assert len(done_first) == 1 and "00000.png" in done_first[0], events
    with ServerProcess(data_dir, log=server.log) as again:
        client = again.client()
        done = wait_for(lambda: (s := job_status(client, job))["status"] == "done" and s,
                        what="the rest after restart")
        assert [i["status"] for i in done["images"]] == ["done", "done"]
        assert again.terminate()


@pytest.mark.slow
def test_eight_concurrent_clients_get_no_5xx_and_every_429_says_when(data_dir: Path) -> None:
    statuses: list[int] = []
    missing_retry_after: list[int] = []
    slow_options = '{"seconds": 0.05}'  # 8 clients outpace one worker: the queue of 3 fills

    def client_loop(server: ServerProcess, seed: int) -> None:
        with server.client() as client:
            for n in range(5):
                while True:
                    answer = client.post("/v1/process", files={"file": ("x.png", png(seed + n))},
                                         data={"plugin": "slow", "options": slow_options})
                    statuses.append(answer.status_code)
                    if answer.status_code != 429:
                        break
                    if "retry-after" not in answer.headers:
                        missing_retry_after.append(seed + n)
                        break
                    time.sleep(float(answer.headers["retry-after"]) / 4)  # impatient clients

    with ServerProcess(data_dir, "--queue-size", "3") as server:
        threads = [threading.Thread(target=client_loop, args=(server, 10 * i)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        peak_mib = _status_kib(server.pid, "VmHWM") / 1024
        assert server.terminate()
    assert statuses.count(200) == 40 and set(statuses) <= {200, 429}, sorted(set(statuses))
    assert statuses.count(429) > 0 and missing_retry_after == []
    assert peak_mib < 400, f"server peak RSS {peak_mib:.0f} MiB"


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} not in /proc/{pid}/status")
