"""The FastAPI app: built by `create_app(config)`, so every test and server has its own state."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import structlog
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from imgproc.config import Config
from imgproc.errors import ImgprocError, UsageError
from imgproc.registry import Registry, load_registry
from imgproc.serve import jobs
from imgproc.serve.auth import require_token
from imgproc.serve.errors import ApiError
from imgproc.serve.routes import health, plugins, process
from imgproc.serve.routes import jobs as job_routes
from imgproc.serve.state import ServerState

log = structlog.get_logger("imgproc.serve")
STATIC = Path(str(resources.files("imgproc.serve") / "static"))


def create_app(config: Config, *, registry: Registry | None = None,
               data_dir: Path | None = None, plugins_dir: Path | None = None) -> FastAPI:
    """Return the app serving the API and the web page with `config` (its `serve` section;
    jobs run on `config.engine`); workers start and stored jobs resume when the app's
    lifespan starts. Raise UsageError for an engine no plugin provides."""
    registry = registry if registry is not None else load_registry(plugins_dir=plugins_dir)
    if config.engine.kind not in registry.engines:
        raise UsageError(f"no engine {config.engine.kind!r} (available: "
                         f"{', '.join(sorted(registry.engines)) or 'none'})")
    state = ServerState(config, registry, data_dir or config.serve.data_path(
        config.source.parent if config.source else None), plugins_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.recover(state)
        state.pool.start()
        expiry = jobs.start_expiry(state)
        log.info("serving", data_dir=str(state.data_dir), workers=state.pool.workers,
                 queue_size=state.pool.capacity, auth=bool(state.token),
                 engine=config.engine.kind)
        try:
            yield
        finally:
            state.stopped.set()
            state.pool.stop()  # each worker finishes the image in hand; the rest stay queued
            expiry.join(5)
            state.close()
            log.info("stopped")

    app = FastAPI(title="imgproc", summary="Batch image processing with plugins, over HTTP.",
                  lifespan=lifespan)
    app.state.imgproc = state
    _describe_metrics(state)
    _add_error_handlers(app)
    app.middleware("http")(_observe(state))
    if config.serve.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_methods=["*"], allow_headers=["*"],
                           allow_origins=[o.strip() for o in config.serve.cors_origins.split(",")
                                          if o.strip()])
    app.include_router(health.router)
    for router in (plugins.router, process.router, job_routes.router):
        app.include_router(router, dependencies=[Depends(require_token)])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", _index, include_in_schema=False)
    return app


def _index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON with a message: {"error": "...", "status": N}."""

    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status,
                            headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.message, exc.headers)

    @app.exception_handler(UsageError)  # unknown plugin, bad option value
    async def usage_error(request: Request, exc: UsageError) -> JSONResponse:
        return answer(422, str(exc))

    @app.exception_handler(ImgprocError)  # a model or provider that cannot load
    async def imgproc_error(request: Request, exc: ImgprocError) -> JSONResponse:
        return answer(500, f"{type(exc).__name__}: {exc}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return answer(422, problems)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed", path=request.url.path)
        return answer(500, f"internal error: {type(exc).__name__}: {exc}")


def _describe_metrics(state: ServerState) -> None:
    m, pool = state.metrics, state.pool
    m.describe("imgproc_http_requests_total", "counter", "HTTP requests by route and status")
    m.describe("imgproc_http_request_seconds", "histogram", "HTTP request latency by route")
    m.describe("imgproc_jobs_total", "counter", "jobs accepted and finished")
    m.describe("imgproc_images_total", "counter", "images processed, by outcome")
    m.describe("imgproc_image_seconds", "histogram", "processing time of one image")
    m.describe("imgproc_queue_depth", "gauge", "images accepted and not finished")
    m.describe("imgproc_queue_capacity", "gauge", "most images accepted at once")
    m.describe("imgproc_images_running", "gauge", "images being processed now")
    m.gauge("imgproc_queue_depth", lambda: pool.pending)
    m.gauge("imgproc_queue_capacity", lambda: pool.capacity)
    m.gauge("imgproc_images_running", lambda: pool.running)


def _observe(state: ServerState) -> Callable[[Request, Callable[[Request], Awaitable[Response]]],
                                              Awaitable[Response]]:
    async def middleware(request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        seconds = time.perf_counter() - start
        route = getattr(request.scope.get("route"), "path", "other")
        state.metrics.count("imgproc_http_requests_total", method=request.method, route=route,
                            status=str(response.status_code))
        state.metrics.observe("imgproc_http_request_seconds", seconds, route=route)
        if response.status_code in (429, 503):
            state.metrics.count("imgproc_rejected_total", status=str(response.status_code))
        log.debug("request", method=request.method, path=request.url.path,
                  status=response.status_code, ms=round(seconds * 1000, 1))
        return response

    return middleware
