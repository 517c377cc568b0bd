"""Run the app under uvicorn: refuse an open bind without a token, stop gracefully on SIGTERM."""

from __future__ import annotations

from pathlib import Path

from imgproc.config import Config
from imgproc.errors import UsageError
from imgproc.registry import Registry
from imgproc.serve.auth import check_bind

GRACEFUL_SECONDS = 10  # open requests get this long after SIGTERM; images in hand then finish


def run_server(config: Config, *, registry: Registry, data_dir: Path | None = None,
               plugins_dir: Path | None = None) -> None:
    """Serve the API on config.serve.host:port until SIGINT or SIGTERM."""
    settings = config.serve
    check_bind(settings.host, settings.token)
    try:
        import uvicorn

        from imgproc.serve.app import create_app
    except ImportError as exc:
        raise UsageError(f"imgproc serve needs its extra: pip install 'imgproc[serve]' "
                         f"({exc.name} is missing)") from None
    app = create_app(config, registry=registry, data_dir=data_dir, plugins_dir=plugins_dir)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=GRACEFUL_SECONDS,
                server_header=False)
