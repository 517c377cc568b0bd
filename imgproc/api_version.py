"""The plugin API's version and the check of what a plugin declares against it.

Semantic versioning of the names `imgproc` exports (CHANGELOG.md): MAJOR changes when a name
is removed or changes meaning (plugins may break), MINOR when names or keyword arguments are
added (old plugins keep working), PATCH for fixes. A plugin module declares the API it was
written for as `IMGPROC_API_VERSION = "MAJOR.MINOR"`; it runs on any imgproc with the same
MAJOR and at least that MINOR.
"""

from __future__ import annotations

import re

API_VERSION = "1.0.0"
DECLARATION = "IMGPROC_API_VERSION"
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def declared_api(plugin: object) -> str | None:
    """Return the API version a plugin module declares, or None when it declares none."""
    value = getattr(plugin, DECLARATION, None)
    return None if value is None else str(value)


def api_mismatch(declared: str | None, provided: str = API_VERSION) -> str | None:
    """Return why a plugin written for API `declared` may not work with API `provided`, or
    None when it is compatible (or declares nothing to check)."""
    if declared is None:
        return None
    wanted, have = _VERSION.match(declared), _VERSION.match(provided)
    if wanted is None or have is None:
        return f"declares {DECLARATION} = {declared!r}, expected 'MAJOR.MINOR' such as '1.0'"
    major, minor = int(wanted[1]), int(wanted[2])
    if major != int(have[1]):
        return (f"written for imgproc plugin API {declared}, this imgproc provides "
                f"{provided} (a different major version: names it uses may be gone)")
    if minor > int(have[2]):
        return (f"written for imgproc plugin API {declared}, this imgproc provides "
                f"{provided} (older: names it uses may be missing; upgrade imgproc)")
    return None
