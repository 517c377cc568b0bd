"""Typed errors of the imgproc library; only the CLI turns them into messages and exit codes."""

from __future__ import annotations

from pathlib import Path


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


class ProviderError(ImgprocError):
    """The requested ONNX Runtime execution provider cannot be used."""


class ModelError(ImgprocError):
    """A model file is missing, corrupt or does not match its recorded sha256."""


class ImageError(ImgprocError):
    """One image could not be read, processed or written; the batch goes on."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
