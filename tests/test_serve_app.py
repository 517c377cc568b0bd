"""The HTTP API in-process (FastAPI's TestClient, real worker threads): routes, limits, names."""

from __future__ import annotations

import io
import json
import re
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgproc.config import Config, parse_config
from imgproc.errors import ConfigError, UsageError
from imgproc.registry import Registry
from imgproc.serve.app import create_app
from imgproc.serve.server import check_bind
from imgproc.serve.uploads import safe_name, unique_names

MakeClient = Callable[..., TestClient]


def png(width: int = 24, height: int = 16, seed: int = 0) -> bytes:
    """Return the bytes of a small random RGB PNG."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def decoded(data: bytes) -> Image.Image:
    """Return the image whose file bytes are `data`."""
    return Image.open(io.BytesIO(data))


@pytest.fixture
def make_client(tmp_path: Path, registry: Registry) -> Iterator[MakeClient]:
    """Return a function making a started TestClient for a [serve] config; all are closed."""
    clients: list[TestClient] = []

    def make(**sections: dict[str, Any]) -> TestClient:
        config = parse_config(sections) if sections else Config()
        app = create_app(config, registry=registry, data_dir=tmp_path / "data")
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: MakeClient) -> TestClient:
    """Return a client of a server with default settings (no token)."""
    return make_client()


def process(client: TestClient, data: bytes, *, name: str = "in.png", **fields: Any) -> Any:
    form = {k: json.dumps(v) if k == "options" else v for k, v in fields.items()}
    return client.post("/v1/process", files={"file": (name, data, "image/png")}, data=form)


def wait_done(client: TestClient, url: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := client.get(url).json())["status"] != "done":
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


@pytest.mark.parametrize(("raw", "expected"), [
    ("photo.png", "photo.png"),
    ("../../x.png", "x.png"),
    ("a/../../b", "b"),
    ("C:\\Users\\me\\y.jpg", "y.jpg"),
    ("..", "image-1"),
    (".hidden.png", "hidden.png"),
    ("", "image-1"),
    (None, "image-1"),
    ("ph oto;rm -rf.png", "ph_oto_rm_-rf.png"),
    ("фото.jpg", "_.jpg"),
    ("x" * 300 + ".webp", "x" * 95 + ".webp"),
], ids=["plain", "dotdot", "inner-dotdot", "windows", "only-dots", "hidden", "empty", "none",
        "shell", "unicode", "long"])
def test_safe_name_never_leaves_its_folder(raw: str | None, expected: str) -> None:
    assert safe_name(raw, 0) == expected


def test_unique_names_number_repeats() -> None:
    assert unique_names(["a.png", "A.png", "a.png", "b"]) == ["a.png", "A-2.png", "a-3.png", "b"]


@pytest.mark.parametrize(("host", "token", "ok"), [
    ("127.0.0.1", "", True), ("localhost", "", True), ("::1", "", True),
    ("0.0.0.0", "", False), ("192.168.1.5", "", False), ("0.0.0.0", "s3cret", True)])
def test_binding_beyond_loopback_needs_a_token(host: str, token: str, ok: bool) -> None:
    if ok:
        check_bind(host, token)
    else:
        with pytest.raises(UsageError, match="without a token"):
            check_bind(host, token)


@pytest.mark.parametrize(("data", "key"), [
    ({"serve": {"port": 70000}}, "serve.port"), ({"serve": {"workers": 0}}, "serve.workers"),
    ({"serve": {"queue_size": "8"}}, "serve.queue_size"), ({"serve": {"tokn": ""}}, "serve.tokn")])
def test_bad_serve_config_names_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_config(data)


def test_serve_cli_refuses_an_open_bind_without_a_token(run_cli: Callable[..., Any]) -> None:
    result = run_cli("serve", "--host", "0.0.0.0")
    assert result.exit_code == 2 and "without a token" in result.output


def test_serve_without_its_extra_names_the_extra(run_cli: Callable[..., Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    result = run_cli("serve", "--port", "1")
    assert result.exit_code == 2 and "pip install 'imgproc[serve]'" in result.output


def test_a_second_server_on_the_same_data_dir_is_refused(client: TestClient, tmp_path: Path,
                                                          registry: Registry) -> None:
    with pytest.raises(UsageError, match="another imgproc serve is using"):
        create_app(Config(), registry=registry, data_dir=tmp_path / "data")


def test_token_guards_v1_but_not_health(make_client: MakeClient) -> None:
    client = make_client(serve={"token": "s3cret"})
    assert client.get("/healthz").json()["auth"] is True
    assert client.get("/metrics").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        answer = client.get("/v1/plugins", headers=headers)
        assert answer.status_code == 401 and "token" in answer.json()["error"]
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/v1/jobs", files={"files": ("a.png", png())}).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/plugins", headers=good).status_code == 200


@pytest.mark.parametrize(("origins", "allowed"), [("", None),
                                                  ("https://shop.example", "https://shop.example")],
                         ids=["none-by-default", "configured"])
def test_cors_only_when_configured(make_client: MakeClient, origins: str,
                                   allowed: str | None) -> None:
    client = make_client(serve={"cors_origins": origins})
    answer = client.get("/v1/plugins", headers={"Origin": "https://shop.example"})
    assert answer.headers.get("access-control-allow-origin") == allowed


def test_plugins_lists_options_and_what_http_can_run(client: TestClient) -> None:
    found = {p["name"]: p for p in client.get("/v1/plugins").json()["processors"]}
    scale = next(o for o in found["identity"]["options"] if o["name"] == "scale")
    assert scale == {"name": "scale", "type": "int", "default": 1, "help": "integer upscale",
                     "min": 1, "max": 8}
    assert found["identity"]["http"] and not found["mean2"]["http"]


def test_process_returns_the_image_with_its_content_type(client: TestClient) -> None:
    answer = process(client, png(24, 16), plugin="identity", options={"scale": 2})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert decoded(answer.content).size == (48, 32)
    as_jpeg = process(client, png(), plugin="identity", format="jpg")
    assert as_jpeg.headers["content-type"] == "image/jpeg"
    assert decoded(as_jpeg.content).format == "JPEG"


def test_process_takes_the_format_from_the_bytes_not_the_name(client: TestClient) -> None:
    answer = process(client, png(), name="lies.jpg", plugin="identity")  # PNG bytes
    assert answer.headers["content-type"] == "image/png"
    assert 'filename="lies.png"' in answer.headers["content-disposition"]


@pytest.mark.parametrize(("fields", "data", "status", "message"), [
    ({"plugin": "nope"}, png(), 422, "no plugin provides processor 'nope'"),
    ({}, png(), 422, "'plugin' is required"),
    ({"plugin": "identity", "options": {"scale": 99}}, png(), 422, "above the maximum 8"),
    ({"plugin": "identity", "options": {"zoom": 2}}, png(), 422, "unknown option"),
    ({"plugin": "identity", "options": [1]}, png(), 422, "expected a JSON object"),
    ({"plugin": "identity", "format": "gif"}, png(), 422, "not one of"),
    ({"plugin": "identity"}, b"just some text", 415, "not an image"),
    ({"plugin": "identity"}, b"", 415, "empty file"),
    ({"plugin": "mean2"}, png(), 422, "takes 2 images"),
    ({"plugin": "merge", "options": {"with": "/etc/passwd"}}, png(), 422, "not accepted over"),
    ({"plugin": "explode"}, png(), 422, "explode failed: RuntimeError: boom"),
], ids=["unknown-plugin", "no-plugin", "out-of-range", "unknown-option", "options-not-object",
        "bad-format", "not-an-image", "empty", "two-inputs", "server-path-option",
        "plugin-raises"])
def test_process_refuses_with_the_reason(client: TestClient, fields: dict[str, Any],
                                          data: bytes, status: int, message: str) -> None:
    answer = process(client, data, **fields)
    assert answer.status_code == status
    assert message in answer.json()["error"]


def test_process_without_a_file_or_multipart_is_refused(client: TestClient) -> None:
    fields_only = client.post("/v1/process", files={"plugin": (None, "identity")})
    assert "'file'" in fields_only.json()["error"]
    answer = client.post("/v1/process", json={"plugin": "identity"})
    assert answer.status_code == 415 and "multipart" in answer.json()["error"]


@pytest.mark.parametrize(("extra", "message"), [
    (2**20 + 1, "file 'in.png' is larger than the upload limit of 1 MB"),  # found streaming
    (4 * 2**20, "request body of"),  # refused from Content-Length before reading
], ids=["streamed", "declared"])
def test_oversized_upload_is_413_and_leaves_nothing(make_client: MakeClient, tmp_path: Path,
                                                    extra: int, message: str) -> None:
    client = make_client(serve={"max_upload_mb": 1})
    answer = process(client, png() + b"\0" * extra, plugin="identity")
    assert answer.status_code == 413 and message in answer.json()["error"]
    assert not list((tmp_path / "data" / "scratch").iterdir())


def test_too_many_form_fields_is_413(client: TestClient) -> None:
    fields = {f"f{i}": (None, "x") for i in range(20)}
    answer = client.post("/v1/process", files={"file": ("a.png", png()), **fields})
    assert answer.status_code == 413 and "too many form fields" in answer.json()["error"]


def test_pixel_limit_is_422_with_the_reason(make_client: MakeClient) -> None:
    client = make_client(runtime={"max_image_pixels": 100})
    answer = process(client, png(24, 16), plugin="identity")
    assert answer.status_code == 422 and "above the pixel limit 100" in answer.json()["error"]


def test_job_with_a_bad_file_among_good_ones(client: TestClient, tmp_path: Path) -> None:
    files = [("files", ("../../evil.png", png(seed=1))), ("files", ("notes.txt", b"hello")),
             ("files", ("a/../../b.png", png(seed=2))), ("files", ("b.png", png(seed=3)))]
    answer = client.post("/v1/jobs", files=files, data={"plugin": "identity",
                                                         "options": '{"scale": 2}'})
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == answer.json()["url"]
    job = wait_done(client, answer.json()["url"])
    by_name = {i["name"]: i for i in job["images"]}
    assert list(by_name) == ["evil.png", "notes.txt", "b.png", "b-2.png"]
    assert by_name["notes.txt"]["status"] == "failed"
    assert "not an image" in by_name["notes.txt"]["reason"]
    for name in ("evil.png", "b.png", "b-2.png"):
        image = client.get(by_name[name]["url"])
        assert image.status_code == 200 and decoded(image.content).size == (48, 32)
    with zipfile.ZipFile(io.BytesIO(client.get(job["archive"]).content)) as zf:
        assert sorted(zf.namelist()) == ["b-2.png", "b.png", "evil.png"]
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert all((tmp_path / "data") in p.parents for p in written)  # nothing outside data_dir


def test_job_routes_answer_404_409_and_delete(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client()
    for bad in ("nope", "../../etc", "0" * 32):
        assert client.get(f"/v1/jobs/{bad}").status_code == 404
    files = [("files", ("a.png", png())), ("files", ("x.txt", b"x"))]
    job = client.post("/v1/jobs", files=files, data={"plugin": "slow",
                                                     "options": '{"seconds": 0.3}'}).json()
    assert client.get(f"{job['url']}/images/a.png").status_code == 409
    assert client.get(f"{job['url']}/images/zzz.png").status_code == 404
    wait_done(client, job["url"])
    assert "not an image" in client.get(f"{job['url']}/images/x.txt").json()["error"]
    assert client.delete(job["url"]).json() == {"deleted": job["id"]}
    assert client.get(job["url"]).status_code == 404
    assert client.delete(job["url"]).status_code == 404
    assert not (tmp_path / "data" / "jobs" / job["id"]).exists()


def test_full_queue_answers_429_with_retry_after(make_client: MakeClient) -> None:
    client = make_client(serve={"queue_size": 2})
    files = [("files", (f"{i}.png", png(seed=i))) for i in range(2)]
    job = client.post("/v1/jobs", files=files,
                      data={"plugin": "slow", "options": '{"seconds": 0.4}'})
    assert job.status_code == 202
    for answer in (process(client, png(), plugin="identity"),
                   client.post("/v1/jobs", files=files[:1], data={"plugin": "identity"})):
        assert answer.status_code == 429 and "queue full" in answer.json()["error"]
        assert int(answer.headers["Retry-After"]) >= 1
    wait_done(client, job.json()["url"])
    assert process(client, png(), plugin="identity").status_code == 200
    metrics = client.get("/metrics").text
    assert 'imgproc_rejected_total{status="429"} 2' in metrics


def test_a_job_larger_than_the_queue_is_413_not_429(make_client: MakeClient) -> None:
    client = make_client(serve={"queue_size": 2})
    files = [("files", (f"{i}.png", png(seed=i))) for i in range(3)]
    answer = client.post("/v1/jobs", files=files, data={"plugin": "identity"})
    assert answer.status_code == 413 and "send it in parts" in answer.json()["error"]


def test_job_events_stream_until_done(client: TestClient) -> None:
    job = client.post("/v1/jobs", files=[("files", ("a.png", png()))],
                      data={"plugin": "slow", "options": '{"seconds": 0.2}'}).json()
    with client.stream("GET", f"{job['url']}/events") as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines()
                  if line.startswith("data: ")]
    assert events[-1]["status"] == "done" and len(events) >= 2


def test_finished_jobs_expire(make_client: MakeClient) -> None:
    client = make_client(serve={"job_ttl_seconds": 1})
    job = client.post("/v1/jobs", files=[("files", ("a.png", png()))],
                      data={"plugin": "identity"}).json()
    wait_done(client, job["url"])
    deadline = time.monotonic() + 10
    while client.get(job["url"]).status_code != 404:
        assert time.monotonic() < deadline, "job did not expire"
        time.sleep(0.1)


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    process(client, png(), plugin="identity")
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? -?[0-9.e+]+$')
    for line in text.text.splitlines():
        assert line.startswith("# ") or sample.match(line), line
    assert 'imgproc_images_total{status="done"} 1' in text.text
    assert "imgproc_queue_depth 0" in text.text


def test_health_page_and_docs(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["ready"] and health["queue"] == {"pending": 0, "running": 0, "capacity": 32}
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]
    assert client.get("/nothing-here").json() == {"error": "Not Found", "status": 404}
