"""structlog set-up: readable lines on a terminal, JSON lines otherwise or on request."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(*, level: str = "info", fmt: str = "auto",
                      stream: TextIO | None = None) -> None:
    """Send structlog events to `stream` (stderr) as console lines or JSON lines."""
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = structlog.processors.JSONRenderer()
    if not as_json:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if stream.isatty():
            renderer = _above_progress_bar(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _above_progress_bar(render: Any) -> Any:
    """Return a renderer that first erases the terminal line, where a progress bar may be."""

    def erase_then_render(logger: Any, name: str, event: Any) -> str:
        return "\r\x1b[K" + render(logger, name, event)

    return erase_then_render
