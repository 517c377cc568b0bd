"""Who may call the API: a Bearer token compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from imgproc.serve.errors import ApiError


def require_token(request: Request) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer TOKEN` (when a token is set)."""
    token: str = request.app.state.imgproc.token
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest takes the same time wherever the first difference is.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.encode()):
        raise ApiError("missing or wrong bearer token (send Authorization: Bearer TOKEN)",
                       status=401, headers={"WWW-Authenticate": "Bearer"})
