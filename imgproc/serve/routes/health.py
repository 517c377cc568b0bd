"""GET /healthz (readiness, no auth) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from imgproc.serve.state import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(state: State) -> dict[str, Any]:
    """Return readiness: workers, queue depth and capacity, and the models loaded so far."""
    pool = state.pool
    return {
        "status": "stopping" if state.stopped.is_set() else "ok",
        "ready": not state.stopped.is_set(),
        "workers": pool.workers,
        "queue": {"pending": pool.pending, "running": pool.running, "capacity": pool.capacity},
        "models_loaded": [{"model": s.model.name, "provider": s.provider}
                          for s in state.runtime.sessions.loaded()],
        "auth": bool(state.token),
    }


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(state: State) -> PlainTextResponse:
    """Return the counters, histograms and gauges in the Prometheus text format."""
    return PlainTextResponse(state.metrics.render(),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
