"""Jobs handed to an engine: `imgproc serve --engine dask` runs a job's images as Dask tasks
on worker processes that see --data-dir, and records each outcome as it arrives."""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgproc.config import parse_config
from imgproc.errors import UsageError
from imgproc.registry import Registry
from imgproc.serve.app import create_app

from .conftest import LOCAL_PLUGINS
from .test_serve_app import png


def test_an_unknown_engine_is_refused_at_start(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no engine 'ray'"):
        create_app(parse_config({"engine": {"kind": "ray"}}), registry=registry,
                   data_dir=tmp_path)


@pytest.mark.slow
def test_a_job_runs_on_a_local_dask_cluster(registry: Registry, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    before = _children()
    config = parse_config({"engine": {"kind": "dask", "workers": 2}})
    app = create_app(config, registry=registry, data_dir=tmp_path / "data",
                     plugins_dir=LOCAL_PLUGINS)
    with TestClient(app) as client:
        files = [("files", (f"{i}.png", png(seed=i))) for i in range(3)]
        files.insert(1, ("files", ("bad.png", b"not an image")))
        job = client.post("/v1/jobs", files=files,
                          data={"plugin": "identity", "options": '{"scale": 2}'}).json()
        assert client.get("/healthz").json()["queue"]["pending"] == 3
        deadline = time.monotonic() + 120
        while (status := client.get(job["url"]).json())["status"] != "done":
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert [i["status"] for i in status["images"]] == ["done", "failed", "done", "done"]
        out = client.get(status["images"][0]["url"])
        assert Image.open(io.BytesIO(out.content)).size == (48, 32)
        while client.get("/healthz").json()["queue"]["pending"]:  # until the cluster closed
            assert time.monotonic() < deadline
            time.sleep(0.1)
    left = {p: Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:120]
            for p in _children() - before}
    # multiprocessing's resource tracker lives as long as this interpreter, by design.
    left = {p: c for p, c in left.items() if "multiprocessing.resource_tracker" not in c}
    assert not left, f"a Dask process was left running: {left}"


def _children() -> set[int]:
    result = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
    return {int(p) for p in result.stdout.split()}
