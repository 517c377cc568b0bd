"""GET /v1/plugins: every processor with its options, types, ranges, defaults and models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from imgproc.registry import describe
from imgproc.serve.state import State

router = APIRouter(prefix="/v1", tags=["plugins"])


@router.get("/plugins")
def plugins(state: State) -> dict[str, Any]:
    """Return what `imgproc plugins --json` prints; `http` says whether the API can run it."""
    data = describe(state.registry)
    for entry in data["processors"]:
        entry["http"] = entry["inputs"] == 1
    return data
