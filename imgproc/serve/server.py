"""Run the app under uvicorn: refuse an open bind without a token, stop gracefully on SIGTERM.

Imports nothing of the serve extra until the checks pass, so a missing extra is a clear error.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import structlog

from imgproc.config import Config
from imgproc.errors import UsageError
from imgproc.registry import Registry

GRACEFUL_SECONDS = 10  # open requests get this long after SIGTERM; images in hand then finish
log = structlog.get_logger("imgproc.serve")


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
    sock = bind(settings.host, settings.port)
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=False, server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info("listening", url=f"http://{host}:{sock.getsockname()[1]}/")
    with sock:
        server.run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """Return a TCP socket bound to host:port (port 0: any free one); UsageError if taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def is_loopback(host: str) -> bool:
    """Return True when `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str) -> None:
    """Raise UsageError when asked to listen beyond this machine without a token."""
    if not token and not is_loopback(host):
        raise UsageError(f"refusing to listen on {host} without a token: anyone who can reach "
                         "it could run jobs. Set --token (or IMGPROC_TOKEN, or serve.token), "
                         "or bind 127.0.0.1")
