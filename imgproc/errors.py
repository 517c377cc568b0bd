"""Typed errors of the imgproc library; only the CLI turns them into messages and exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Fault = Literal["input", "output", "environment"]


class ImgprocError(Exception):
    """Base class of every error the library raises on purpose."""


class UsageError(ImgprocError):
    """A request that cannot run as given (bad option, unknown plugin): exit code 2."""


class ConfigError(UsageError):
    """config.toml is unreadable, has an unknown key or a value of the wrong type."""

    def __init__(self, key: str, reason: str, *, source: Path | None = None) -> None:
        where = f" in {source}" if source else ""
        super().__init__(f"config key {key!r}{where}: {reason}")
        self.key = key
        self.reason = reason
        self.source = source


class OptionError(UsageError):
    """An option value for a processor is unknown, mistyped or out of range."""

    def __init__(self, processor: str, option: str | None, reason: str) -> None:
        where = f"option {option!r}" if option else "options"
        super().__init__(f"{processor}: {where}: {reason}")
        self.processor = processor
        self.option = option


class PluginNotFound(UsageError):
    """No registered processor has the requested name."""


class RuntimeMissing(UsageError):
    """No ONNX Runtime is importable: imgproc was installed without its [cpu] or [gpu] extra."""


class EngineError(UsageError):
    """An engine cannot run this batch: its scheduler is unreachable, or a worker lacks a
    plugin, has other versions or does not see the input and output folders."""


class ProviderError(ImgprocError):
    """The requested ONNX Runtime execution provider cannot be used."""


class ModelError(ImgprocError):
    """A model file is missing, corrupt or does not match its recorded sha256."""


class ImageError(ImgprocError):
    """One image could not be read, processed or written; the batch goes on.

    `fault` says whose fault it is (docs/faults.md): this class is an *input* fault (the file is
    bad, or a plugin failed on it); the subclasses below are output and environment faults.
    """

    fault: Fault = "input"

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class OutputError(ImageError):
    """The output could not be written where it goes (a folder in the way, permission denied)."""

    fault: Fault = "output"


class TransientError(ImageError):
    """The environment failed (disk full, I/O error, read-only file system, a model session
    that raised): not the input's fault, worth retrying later."""

    fault: Fault = "environment"


class SessionError(ImgprocError):
    """A model session raised while running; the host names the image and retries it later."""
