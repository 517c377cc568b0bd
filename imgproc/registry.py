"""Plugin discovery: a pluggy manager fed from the `imgproc` entry-point group."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import structlog

from imgproc import hookspecs
from imgproc.api_version import API_VERSION, api_mismatch, declared_api
from imgproc.errors import PluginNotFound
from imgproc.processor import Processor

ENTRY_POINT_GROUP = "imgproc"
ONLY_ENV = "IMGPROC_PLUGINS"
BUILTIN_ENGINES = "imgproc.engine"  # the host's own local and dask engines, always registered

log = structlog.get_logger("imgproc.registry")


@dataclass(frozen=True)
class Registered:
    """A processor together with where it came from."""

    processor: Processor
    plugin: str
    distribution: str
    version: str
    api_version: str | None = None  # the plugin API its plugin declares (IMGPROC_API_VERSION)


@dataclass(frozen=True)
class Failure:
    """A plugin (or one of its processors) that was set aside, and why."""

    plugin: str
    distribution: str
    reason: str


@dataclass
class Registry:
    """Every processor found, and every plugin that failed to load."""

    processors: dict[str, Registered] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    commands: dict[str, Any] = field(default_factory=dict)  # name -> click.Command
    engines: dict[str, Any] = field(default_factory=dict)  # name -> imgproc.engine.EngineKind

    def get(self, name: str) -> Registered:
        """Return the processor called `name`, or raise PluginNotFound listing what exists."""
        try:
            return self.processors[name]
        except KeyError:
            known = ", ".join(sorted(self.processors)) or "none installed"
            raise PluginNotFound(f"no plugin provides processor {name!r} (available: {known})")\
                from None


def describe(registry: Registry) -> dict[str, Any]:
    """Return what `imgproc plugins --json` prints (and GET /v1/plugins serves): every
    processor with its options, models and plugin API, and the plugins set aside."""
    processors = [{
        "name": r.processor.name, "summary": r.processor.summary, "plugin": r.plugin,
        "distribution": r.distribution, "version": r.version, "inputs": r.processor.inputs,
        "options": [o.describe() for o in r.processor.options],
        "models": [m.describe() for m in r.processor.models],
        "api_version": r.api_version, "api_warning": api_mismatch(r.api_version),
    } for r in sorted(registry.processors.values(), key=lambda r: r.processor.name)]
    failures = [{"plugin": f.plugin, "distribution": f.distribution, "reason": f.reason}
                for f in registry.failures]
    return {"api_version": API_VERSION, "processors": processors, "failures": failures}


def make_plugin_manager() -> pluggy.PluginManager:
    """Return a fresh plugin manager that knows imgproc's hook specifications."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_registry(*, plugins_dir: Path | None = None,
                  extra_plugins: Sequence[tuple[str, object]] = (),
                  only: Iterable[str] | None = None) -> Registry:
    """Return the registry built from entry points (restricted by IMGPROC_PLUGINS), the .py
    files of `plugins_dir` (unpackaged local plugins) and in-process extras.

    A plugin that fails to import, register or answer its hook is recorded as a Failure and
    logged as a warning; it never stops the others.
    """
    if only is None and os.environ.get(ONLY_ENV):
        only = [n.strip() for n in os.environ[ONLY_ENV].split(",") if n.strip()]
    wanted = set(only) if only is not None else None
    pm = make_plugin_manager()
    registry = Registry()
    sources: dict[str, tuple[str, str]] = {BUILTIN_ENGINES: ("imgproc", host_version())}
    _register(pm, registry, BUILTIN_ENGINES, sources[BUILTIN_ENGINES],
              lambda: importlib.import_module(BUILTIN_ENGINES))
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if wanted is not None and ep.name not in wanted:
            continue
        dist = (ep.dist.name, ep.dist.version) if ep.dist else ("unknown", "unknown")
        _register(pm, registry, ep.name, dist, ep.load)
        sources[ep.name] = dist
    for path in sorted(plugins_dir.glob("*.py")) if plugins_dir else []:
        name = f"local:{path.stem}"
        _register(pm, registry, name, (str(plugins_dir), "-"), lambda p=path: _import(p))
        sources[name] = (str(plugins_dir), "-")
    for name, plugin in extra_plugins:
        _register(pm, registry, name, ("(in-process)", "-"), lambda p=plugin: p)
        sources[name] = ("(in-process)", "-")
    _collect(pm, registry, sources)
    return registry


def host_version() -> str:
    """Return the installed imgproc version ("unknown" in a never-installed source tree)."""
    try:
        return metadata.version("imgproc")
    except metadata.PackageNotFoundError:
        return "unknown"


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"imgproc_local_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _register(pm: pluggy.PluginManager, registry: Registry, name: str,
              dist: tuple[str, str], load: Any) -> None:
    try:
        pm.register(load(), name=name)
    except BaseException as exc:  # noqa: B036 - a plugin's sys.exit() or KeyboardInterrupt at
        # import must not take the host down (or end `imgproc --help`): it is set aside too
        _fail(registry, name, dist[0], f"could not load: {type(exc).__name__}: {exc}")
        return
    try:
        pm.check_pending()  # a misspelled hook (imgproc_processor) is caught here
        _check_decorated(pm, name)
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)
        _fail(registry, name, dist[0], f"invalid hook: {exc}")


def _check_decorated(pm: pluggy.PluginManager, name: str) -> None:
    # pluggy ignores an imgproc_* function without @hookimpl: the plugin would load and
    # silently provide nothing.
    plugin = pm.get_plugin(name)
    hooked = {impl.function.__name__ for caller in pm.get_hookcallers(plugin) or []
              for impl in caller.get_hookimpls() if impl.plugin is plugin}
    for attr in dir(plugin):
        if attr.startswith("imgproc_") and callable(getattr(plugin, attr)) \
                and attr not in hooked:
            raise pluggy.PluginValidationError(
                plugin, f"{attr} is not decorated with @imgproc.hookimpl")


def _collect(pm: pluggy.PluginManager, registry: Registry,
             sources: dict[str, tuple[str, str]]) -> None:
    for impl, found in _call_each(pm, registry, sources, "imgproc_processors"):
        dist, version = sources.get(impl.plugin_name, ("unknown", "unknown"))
        for processor in found:
            _add(registry, Registered(processor, impl.plugin_name, dist, version,
                                      declared_api(impl.plugin)))
    for hook, table, what in (("imgproc_commands", registry.commands, "command"),
                              ("imgproc_engines", registry.engines, "engine")):
        for impl, found in _call_each(pm, registry, sources, hook):
            for item in found:
                name = getattr(item, "name", None)
                if not name or name in table:
                    _fail(registry, impl.plugin_name, sources.get(impl.plugin_name, ("?",))[0],
                          f"{what} {name!r} is unnamed or already provided")
                else:
                    table[name] = item


def _call_each(pm: pluggy.PluginManager, registry: Registry,
               sources: dict[str, tuple[str, str]], hook: str) -> Iterator[tuple[Any, list]]:
    for impl in getattr(pm.hook, hook).get_hookimpls():
        try:
            found = list(impl.function())
        except BaseException as exc:  # noqa: B036 - same: one plugin's bug is its own
            dist = sources.get(impl.plugin_name, ("unknown",))[0]
            _fail(registry, impl.plugin_name, dist, f"{hook}() raised "
                  f"{type(exc).__name__}: {exc}")
        else:
            yield impl, found


def _add(registry: Registry, entry: Registered) -> None:
    processor = entry.processor
    if not isinstance(processor, Processor):
        _fail(registry, entry.plugin, entry.distribution,
              f"returned {type(processor).__name__}, not an imgproc Processor")
    elif processor.name in registry.processors:
        first = registry.processors[processor.name]
        _fail(registry, entry.plugin, entry.distribution, f"processor {processor.name!r} is "
              f"already provided by plugin {first.plugin!r} ({first.distribution})")
    else:
        registry.processors[processor.name] = entry


def _fail(registry: Registry, plugin: str, dist: str, reason: str) -> None:
    registry.failures.append(Failure(plugin, dist, reason))
    log.warning("plugin set aside", plugin=plugin, distribution=dist, reason=reason)
