"""Every hook a plugin can implement. Hook names start with `imgproc_`."""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from imgproc.processor import Processor

PROJECT = "imgproc"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def imgproc_processors() -> Sequence[Processor]:
    """Return the processors this plugin provides.

    Called once when the registry loads. Every plugin's list is collected; processor names
    must be unique across plugins: the first found (entry points in sys.path order) wins and
    a later duplicate is set aside and reported, never silently replaced.
    """
    raise NotImplementedError  # pragma: no cover - a specification, never called
