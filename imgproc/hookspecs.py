"""Every hook a plugin can implement. Hook names start with `imgproc_`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

from imgproc.processor import Processor

if TYPE_CHECKING:
    import click

    from imgproc.engine import EngineKind

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


@hookspec
def imgproc_commands() -> Sequence[click.Command]:
    """Return extra `imgproc` sub-commands (click commands) this plugin provides.

    For tools that only make sense beside a processor, such as `imgproc render` for networks
    saved by `refit`. Every plugin's list is collected; a name that is already taken (by the
    host or an earlier plugin) is set aside and reported.
    """
    raise NotImplementedError  # pragma: no cover - a specification, never called


@hookspec
def imgproc_engines() -> Sequence[EngineKind]:
    """Return the engines (where a batch's images run) this plugin provides.

    An `EngineKind` has a name (`imgproc run --engine NAME`, `[engine] kind`) and an `open`
    function returning an `Engine`, whose `map(jobs)` yields one Outcome per job. The host
    registers its own `local` and `dask` engines first; every plugin's list is collected and a
    name that is already taken is set aside and reported, never silently replaced.
    """
    raise NotImplementedError  # pragma: no cover - a specification, never called
