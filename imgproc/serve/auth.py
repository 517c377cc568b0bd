"""Who may call the API: a Bearer token compared in constant time, and where it may listen."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from imgproc.errors import UsageError
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
