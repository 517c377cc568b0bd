"""What one server process owns: settings, plugins, the runtime, the job store and the workers."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from imgproc.batch import Step
from imgproc.config import FORMATS, Config, OutputSettings
from imgproc.errors import UsageError
from imgproc.registry import Registry
from imgproc.runtime import Runtime
from imgproc.serve.errors import ApiError
from imgproc.serve.metrics import Metrics
from imgproc.serve.store import JobStore
from imgproc.serve.uploads import Form, receive_form
from imgproc.serve.workers import WorkerPool

JOB_ID_LENGTH = 32  # uuid4 hex: unguessable, and safe as a folder name


@dataclass
class ServerState:
    """Built once per app by `create_app`; routes reach it through the `get_state` dependency."""

    config: Config
    registry: Registry
    data_dir: Path
    plugins_dir: Path | None = None  # --plugins-dir, handed to engine workers
    runtime: Runtime = field(init=False)
    store: JobStore = field(init=False)
    pool: WorkerPool = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        serve = self.config.serve
        (self.data_dir / "jobs").mkdir(parents=True, exist_ok=True)
        self._hold = _hold(self.data_dir / "server.lock")
        self.runtime = Runtime(self.config.runtime)
        self.store = JobStore(self.data_dir / "jobs.sqlite")
        self.pool = WorkerPool(workers=serve.workers, capacity=serve.queue_size)

    @property
    def local(self) -> bool:
        """Return True when jobs run on this process's threads (engine `local`)."""
        return self.config.engine.kind == "local"

    @property
    def token(self) -> str:
        """Return the Bearer token every /v1 route requires ("" = none)."""
        return self.config.serve.token

    @property
    def max_file_bytes(self) -> int:
        """Return the largest upload accepted, in bytes."""
        return self.config.serve.max_upload_mb * 2**20

    def step(self, plugin: str | None, given: Mapping[str, Any]) -> Step:
        """Return the processor step for `plugin` with the client's options `given` over the
        configured defaults; raise a 4xx naming what is wrong."""
        if not plugin:
            raise ApiError("form field 'plugin' is required (see GET /v1/plugins)", status=422)
        processor = self.registry.get(plugin).processor  # PluginNotFound: 422
        for option in processor.options:
            if option.image and option.name in given:
                raise ApiError(f"{plugin}: option {option.name!r} names a file on the server "
                               "and is not accepted over HTTP", status=422)
        values = processor.resolve_options(self.config.plugins.get(plugin, {}), given)
        if processor.arity(values) != 1:
            raise ApiError(f"{plugin} takes {processor.arity(values)} images per output; the "
                           "HTTP API runs processors that take one", status=422)
        return Step(processor, values)

    def output_settings(self, fmt: str | None) -> OutputSettings:
        """Return the output settings for form field `format` (default: the configured one)."""
        fmt = fmt or self.config.output.format
        if fmt not in FORMATS:
            raise ApiError(f"format {fmt!r} is not one of {', '.join(FORMATS)}", status=422)
        return OutputSettings(format=fmt, jpeg_quality=self.config.output.jpeg_quality,
                              webp_quality=self.config.output.webp_quality)

    async def form(self, request: Request, folder: Path, *, max_files: int) -> Form:
        """Return the request's multipart form, its files streamed into `folder`."""
        declared = request.headers.get("content-length")
        return await receive_form(request.headers.get("content-type"), request.stream(), folder,
                                  max_file_bytes=self.max_file_bytes, max_files=max_files,
                                  length=int(declared) if declared and declared.isdigit()
                                  else None)

    def scratch(self) -> Path:
        """Return a new empty folder for one synchronous request's files."""
        folder = self.data_dir / "scratch" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def job_dir(self, job_id: str) -> Path:
        """Return the folder of job `job_id` (its inputs in in/, its outputs in out/)."""
        if len(job_id) != JOB_ID_LENGTH or not all(c in "0123456789abcdef" for c in job_id):
            raise ApiError(f"no job {job_id!r}", status=404)
        return self.data_dir / "jobs" / job_id

    def close(self) -> None:
        """Close the job store and let another server use the data folder."""
        self.store.close()
        os.close(self._hold)

    def sweep(self) -> None:
        """Remove scratch files and job folders that no stored job owns (a killed process's)."""
        shutil.rmtree(self.data_dir / "scratch", ignore_errors=True)
        known = self.store.ids()
        for folder in (self.data_dir / "jobs").iterdir():
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)


def _hold(path: Path) -> int:
    """Return an open lock file held exclusively by this process (the kernel drops it however
    the process ends); UsageError when another server holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"another imgproc serve is using {path.parent} (--data-dir): two "
                         "servers would run each other's jobs") from None
    return fd


def parse_options(raw: str | None) -> dict[str, Any]:
    """Return the `options` form field as a dict (empty when not given)."""
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(f"options: not valid JSON ({exc})", status=422) from None
    if not isinstance(value, Mapping):
        raise ApiError(f"options: expected a JSON object, got {type(value).__name__}",
                       status=422)
    return dict(value)


def get_state(request: Request) -> ServerState:
    """Return the app's server state (a FastAPI dependency)."""
    state: ServerState = request.app.state.imgproc
    return state


State = Annotated[ServerState, Depends(get_state)]  # a route parameter typed State gets it
