"""config.toml: find it, parse it, and check every key and type against the schema below."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgproc.errors import ConfigError

CONFIG_ENV = "IMGPROC_CONFIG"
CONFIG_NAME = "config.toml"
PROVIDERS = ("auto", "cuda", "cpu", "tensorrt")
CONV_ALGO_SEARCH = ("exhaustive", "heuristic", "default")
FORMATS = ("same", "png", "jpg", "webp", "tiff")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")


@dataclass(frozen=True)
class RuntimeSettings:
    """How images are run: execution provider, threads, tiling, limits."""

    provider: str = "auto"
    intra_op_threads: int = 0  # 0 lets ONNX Runtime pick (one per core)
    inter_op_threads: int = 0
    workers: int = 1
    tile_size: int = 512
    tile_overlap: int = 32
    max_image_pixels: int = 200_000_000  # decompression-bomb guard
    cuda_device_id: int = 0  # which GPU the CUDA provider runs on
    cudnn_conv_algo_search: str = "exhaustive"  # per new input shape; heuristic: no search
    cuda_memory_limit_mb: int = 0  # cap on the CUDA memory arena; 0 = none
    cuda_tf32: bool = False  # TF32 on tensor cores: faster, outputs ~1e-3 from the CPU's

    def __post_init__(self) -> None:
        _choice("runtime.provider", self.provider, PROVIDERS)
        _choice("runtime.cudnn_conv_algo_search", self.cudnn_conv_algo_search, CONV_ALGO_SEARCH)
        for name in ("cuda_device_id", "cuda_memory_limit_mb"):
            _at_least(f"runtime.{name}", getattr(self, name), 0)
        for name in ("intra_op_threads", "inter_op_threads"):
            _at_least(f"runtime.{name}", getattr(self, name), 0)
        for name in ("workers", "tile_size", "max_image_pixels"):
            _at_least(f"runtime.{name}", getattr(self, name), 1)
        _at_least("runtime.tile_overlap", self.tile_overlap, 0)
        if 2 * self.tile_overlap >= self.tile_size:
            raise ConfigError("runtime.tile_overlap", "must be less than half of tile_size")


@dataclass(frozen=True)
class OutputSettings:
    """How outputs are written."""

    format: str = "same"
    jpeg_quality: int = 95
    webp_quality: int = 95

    def __post_init__(self) -> None:
        _choice("output.format", self.format, FORMATS)
        for name in ("jpeg_quality", "webp_quality"):
            value = getattr(self, name)
            if not 1 <= value <= 100:
                raise ConfigError(f"output.{name}", f"must be 1-100, got {value}")


@dataclass(frozen=True)
class LoggingSettings:
    """Log level and format (auto: readable on a terminal, JSON lines otherwise)."""

    level: str = "info"
    format: str = "auto"

    def __post_init__(self) -> None:
        _choice("logging.level", self.level, LOG_LEVELS)
        _choice("logging.format", self.format, LOG_FORMATS)


@dataclass(frozen=True)
class DaemonSettings:
    """The watch daemon: journal location, retries, back-pressure, stability."""

    journal: str = ""  # "" = $XDG_STATE_HOME/imgproc/journal.sqlite
    max_attempts: int = 3
    retry_backoff: float = 2.0  # seconds before the first retry, doubled for each next one
    max_backoff: float = 300.0  # longest wait between retries of an output or environment fault
    queue_size: int = 64  # complete files waiting for a worker: bounds memory under a burst
    settle_seconds: float = 0.5  # size and mtime unchanged this long = complete (no close event)

    def __post_init__(self) -> None:
        _at_least("daemon.max_attempts", self.max_attempts, 1)
        _at_least("daemon.queue_size", self.queue_size, 1)
        for name in ("retry_backoff", "settle_seconds", "max_backoff"):
            _finite(f"daemon.{name}", getattr(self, name))
            if getattr(self, name) < 0:
                raise ConfigError(f"daemon.{name}", "must not be negative")

    def journal_path(self, base: Path | None = None) -> Path:
        """Return the journal file to use (a relative path is taken from `base`)."""
        return _state_path(self.journal, base, "journal.sqlite")


@dataclass(frozen=True)
class ServeSettings:
    """`imgproc serve`: where it listens, who may call it, and how much it takes at once."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str = ""  # "" = no auth, loopback only; $IMGPROC_TOKEN also sets it
    data_dir: str = ""  # "" = $XDG_STATE_HOME/imgproc/serve
    max_upload_mb: int = 50  # per uploaded file
    max_files: int = 100  # per job
    workers: int = 1  # images processed at once
    queue_size: int = 32  # images accepted and not yet finished (jobs and /v1/process)
    job_ttl_seconds: int = 86400  # finished jobs and their files are deleted after this
    cors_origins: str = ""  # comma-separated origins a browser may call the API from

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("serve.port", f"must be 0-65535, got {self.port}")
        for name in ("max_upload_mb", "max_files", "workers", "queue_size", "job_ttl_seconds"):
            _at_least(f"serve.{name}", getattr(self, name), 1)

    def data_path(self, base: Path | None = None) -> Path:
        """Return the folder for jobs and uploads (a relative path is taken from `base`)."""
        return _state_path(self.data_dir, base, "serve")


def _state_path(value: str, base: Path | None, default: str) -> Path:
    """Return `value` as a path (relative to `base`), or $XDG_STATE_HOME/imgproc/`default`."""
    if value:
        given = Path(value).expanduser()
        return given if given.is_absolute() or base is None else base / given
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "imgproc" / default


@dataclass(frozen=True)
class EngineSettings:
    """Where a batch's images run: `local` (threads here) or an engine such as `dask`."""

    kind: str = "local"  # an engine registered through the imgproc_engines hook
    address: str = ""  # dask: scheduler; "" = $DASK_SCHEDULER_ADDRESS, else a local cluster
    workers: int = 0  # a local cluster started for the run: worker processes (0 = one per core)
    threads_per_worker: int = 1
    dashboard: str = ""  # a local cluster's dashboard address such as ":8787" ("" = none)
    timeout: float = 60.0  # seconds to reach the scheduler and see a first worker

    def __post_init__(self) -> None:
        if not self.kind:
            raise ConfigError("engine.kind", "must name an engine (local, dask, ...)")
        _at_least("engine.workers", self.workers, 0)
        _at_least("engine.threads_per_worker", self.threads_per_worker, 1)
        if self.timeout <= 0:
            raise ConfigError("engine.timeout", "must be positive")


AFTER = ("keep", "move", "delete")
IMAGE_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.tif", "*.tiff", "*.bmp")


@dataclass(frozen=True)
class WatchRule:
    """One watched folder: where from, which processors (a pipeline), where to, and after."""

    input: Path
    output: Path
    plugins: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    recursive: bool = False
    patterns: tuple[str, ...] = IMAGE_PATTERNS
    after: str = "keep"
    done_folder: Path | None = None
    quarantine: Path | None = None
    format: str = "same"
    poll: bool = False
    poll_interval: float = 1.0
    follow_symlinks: bool = False  # links inside the folder, to files inside it (imgproc.links)
    engine: str = ""  # where its images run: local, dask, ...; "" = the [engine] kind

    def __post_init__(self) -> None:
        _choice("watch.after", self.after, AFTER)
        _choice("watch.format", self.format, FORMATS)
        if not self.plugins:
            raise ConfigError("watch.plugins", "name a plugin (plugin = ...) or a pipeline "
                              "(plugins = [...])")
        _finite("watch.poll_interval", self.poll_interval)
        if self.poll_interval <= 0:
            raise ConfigError("watch.poll_interval", "must be positive")

    @property
    def name(self) -> str:
        """Return the rule's name in logs and the journal: its input folder."""
        return str(self.input)

    def done_dir(self) -> Path:
        """Return where `after = "move"` puts processed inputs (hidden inside the input)."""
        return self.done_folder or self.input / ".imgproc-done"

    def quarantine_dir(self) -> Path:
        """Return where inputs that keep failing go, with a .reason.txt beside each."""
        return self.quarantine or self.input / ".imgproc-quarantine"


_RULE_TYPES: dict[str, type | tuple[type, ...]] = {
    "input": str, "output": str, "plugin": str, "plugins": list, "options": dict,
    "recursive": bool, "patterns": list, "after": str, "done_folder": str, "quarantine": str,
    "format": str, "poll": bool, "poll_interval": (int, float), "follow_symlinks": bool,
    "engine": str,
}


def parse_watch_rule(data: Mapping[str, Any], *, base: Path | None = None,
                     index: int = 0) -> WatchRule:
    """Return a WatchRule from a `[[watch]]` table; relative paths are taken from `base`."""
    key = f"watch[{index}]"
    for name, value in data.items():
        if name not in _RULE_TYPES:
            raise ConfigError(f"{key}.{name}", "unknown key; known: " + ", ".join(_RULE_TYPES))
        expected = _RULE_TYPES[name]
        if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
            raise ConfigError(f"{key}.{name}", f"wrong type {type(value).__name__}")
    for name in ("input", "output"):
        if name not in data:
            raise ConfigError(f"{key}.{name}", "is required")
    if "plugin" in data and "plugins" in data:
        raise ConfigError(f"{key}.plugins", "give plugin or plugins, not both")
    plugins = [data["plugin"]] if "plugin" in data else list(data.get("plugins", []))

    def path(name: str) -> Path | None:
        if not data.get(name):
            return None
        given = Path(data[name]).expanduser()
        return given if given.is_absolute() or base is None else base / given

    try:
        return WatchRule(
            input=path("input"), output=path("output"),  # type: ignore[arg-type]
            plugins=tuple(_strings(f"{key}.plugins", plugins)),
            options={n: dict(_table(f"{key}.options.{n}", o, None))
                     for n, o in _table(f"{key}.options", data.get("options", {}), None).items()},
            recursive=data.get("recursive", False),
            patterns=tuple(_strings(f"{key}.patterns", data.get("patterns", IMAGE_PATTERNS))),
            after=data.get("after", "keep"), done_folder=path("done_folder"),
            quarantine=path("quarantine"), format=data.get("format", "same"),
            poll=data.get("poll", False), poll_interval=float(data.get("poll_interval", 1.0)),
            follow_symlinks=data.get("follow_symlinks", False), engine=data.get("engine", ""))
    except ConfigError as exc:
        raise ConfigError(exc.key.replace("watch.", f"{key}."), exc.reason) from None


def _strings(key: str, values: Any) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(key, "expected a list of strings")
    return list(values)


@dataclass(frozen=True)
class Config:
    """The whole configuration; `plugins` maps a processor name to its option defaults."""

    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    watch: tuple[WatchRule, ...] = ()
    source: Path | None = None

    def journal_path(self) -> Path:
        """Return the watch journal: daemon.journal, relative to this config file's folder."""
        return self.daemon.journal_path(self.source.parent if self.source else None)

    def replace(self, section: str, **changes: Any) -> Config:
        """Return a copy with some keys of one section changed (CLI beats config)."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        updated = _build(type(getattr(self, section)), section, given, self.source,
                         base=getattr(self, section))
        return dataclasses.replace(self, **{section: updated})


_SECTIONS: dict[str, type] = {"runtime": RuntimeSettings, "output": OutputSettings,
                              "logging": LoggingSettings, "daemon": DaemonSettings,
                              "serve": ServeSettings, "engine": EngineSettings}


def find_config(explicit: Path | None = None) -> Path | None:
    """Return the config file to use: --config, then $IMGPROC_CONFIG, then ./config.toml."""
    if explicit is not None:
        return explicit
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path.cwd() / CONFIG_NAME
    return local if local.is_file() else None


def load_config(path: Path | None) -> Config:
    """Return the Config read from `path` (built-in defaults when None)."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read: {exc.strerror or exc}", source=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"not valid TOML: {exc}", source=path) from None
    return parse_config(data, source=path)


def parse_config(data: Mapping[str, Any], *, source: Path | None = None) -> Config:
    """Return the Config for already-parsed TOML data, rejecting unknown keys and wrong types."""
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key == "plugins":
            sections[key] = _plugins(value, source)
        elif key == "watch":
            if not isinstance(value, list):
                raise ConfigError("watch", "expected [[watch]] tables", source=source)
            base = source.parent if source else None
            sections[key] = tuple(parse_watch_rule(_table(f"watch[{i}]", rule, source),
                                                   base=base, index=i)
                                  for i, rule in enumerate(value))
        elif key in _SECTIONS:
            sections[key] = _build(_SECTIONS[key], key, _table(key, value, source), source)
        else:
            raise ConfigError(key, "unknown section; known: "
                              + ", ".join([*_SECTIONS, "plugins", "watch"]), source=source)
    return Config(**sections, source=source)


def _build(cls: type, section: str, values: Mapping[str, Any], source: Path | None,
           base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{section}.{key}", "unknown key; known: " + ", ".join(hints),
                              source=source)
        _check_type(f"{section}.{key}", value, hints[key], source)
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.reason, source=source) from None


def _check_type(key: str, value: Any, expected: type, source: Path | None) -> None:
    if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
        raise ConfigError(key, f"expected {expected.__name__}, got {type(value).__name__} "
                          f"{value!r}", source=source)


def _plugins(value: Any, source: Path | None) -> dict[str, dict[str, Any]]:
    table = _table("plugins", value, source)
    return {name: dict(_table(f"plugins.{name}", options, source))
            for name, options in table.items()}


def _table(key: str, value: Any, source: Path | None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a table, got {type(value).__name__}", source=source)
    return value


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(choices)}")


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(key, f"must be at least {low}, got {value}")
