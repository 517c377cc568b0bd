"""What a plugin registers: a Processor with typed Options and the ModelFiles it runs."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from imgproc.errors import OptionError

if TYPE_CHECKING:
    from imgproc.runtime import Context

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Option:
    """One typed, validated processor option. `default=None` means "not set" (optional)."""

    name: str
    type: type[int] | type[float] | type[bool] | type[str]
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    image: bool = False  # a path to an image the host reads once and adds to the inputs

    def parse(self, raw: object, *, processor: str) -> Any:
        """Return `raw` (a CLI string or a TOML value) converted and checked against this option."""
        value = self._convert(raw, processor)
        self._check(value, processor)
        return value

    def describe(self) -> dict[str, Any]:
        """Return a JSON-ready description for `imgproc plugins`."""
        info: dict[str, Any] = {"name": self.name, "type": self.type.__name__,
                                "default": self.default, "help": self.help}
        for key in ("choices", "min", "max"):
            if getattr(self, key) is not None:
                info[key] = getattr(self, key)
        if self.image:
            info["image"] = True
        return info

    def _convert(self, raw: object, processor: str) -> Any:
        if isinstance(raw, str):
            return self._from_string(raw, processor)
        if self.type is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, self.type) and not (self.type is not bool and isinstance(raw, bool)):
            return raw
        raise OptionError(processor, self.name,
                          f"expected {self.type.__name__}, got {type(raw).__name__} {raw!r}")

    def _from_string(self, raw: str, processor: str) -> Any:
        if self.type is str:
            return raw
        if self.type is bool:
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise OptionError(processor, self.name, f"expected true or false, got {raw!r}")
        try:
            return self.type(raw)
        except ValueError:
            raise OptionError(processor, self.name,
                              f"expected {self.type.__name__}, got {raw!r}") from None

    def _check(self, value: Any, processor: str) -> None:
        if self.type is float and not math.isfinite(value):
            raise OptionError(processor, self.name, f"must be a finite number, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise OptionError(processor, self.name,
                              f"{value!r} is not one of {', '.join(self.choices)}")
        if self.min is not None and value < self.min:
            raise OptionError(processor, self.name, f"{value!r} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise OptionError(processor, self.name, f"{value!r} is above the maximum {self.max}")


@dataclass(frozen=True)
class ModelFile:
    """An ONNX model a processor runs, checked against its sha256 when a session loads it."""

    name: str
    path: Path
    sha256: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_facts(cls, facts_path: Path) -> ModelFile:
        """Return the ModelFile described by an exporter's JSON sidecar (see exporters/)."""
        data = json.loads(Path(facts_path).read_text())
        return cls(
            name=data["name"],
            path=Path(facts_path).with_name(data["file"]),
            sha256=data["sha256"],
            inputs=tuple(i["name"] for i in data["inputs"]),
            outputs=tuple(o["name"] for o in data["outputs"]),
            facts=data.get("facts", {}),
        )

    def describe(self) -> dict[str, Any]:
        """Return a JSON-ready description for `imgproc plugins`."""
        return {"name": self.name, "file": str(self.path), "sha256": self.sha256,
                "inputs": list(self.inputs), "outputs": list(self.outputs)}


class ProcessFn(Protocol):
    """A processor's pixels: float32 RGB images in [0, 1] (H x W x 3) in, one H' x W' x 1|3 out."""

    def __call__(self, images: list[np.ndarray], *, options: dict[str, Any],
                 context: Context) -> np.ndarray: ...


@dataclass(frozen=True)
class Processor:
    """A named image operation registered by a plugin through the `imgproc_processors` hook.

    The host reads, converts, splits alpha, tiles (through `context.tiled`), writes and logs;
    `process` only maps pixels. `validate` may check options together and raise ValueError.
    """

    name: str
    summary: str
    process: ProcessFn
    inputs: int = 1
    options: tuple[Option, ...] = ()
    models: tuple[ModelFile, ...] = ()
    validate: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"processor name {self.name!r}: use lower-case a-z, 0-9, _ and -")
        if not self.summary or "\n" in self.summary:
            raise ValueError(f"processor {self.name}: summary must be one non-empty line")
        if self.inputs < 1:
            raise ValueError(f"processor {self.name}: inputs must be at least 1")
        if any(o.image and o.type is not str for o in self.options):
            raise ValueError(f"processor {self.name}: image options must have type str")
        names = [o.name for o in self.options]
        if len(names) != len(set(names)):
            raise ValueError(f"processor {self.name}: duplicate option names {names}")

    def resolve_options(self, *layers: Mapping[str, object]) -> dict[str, Any]:
        """Return every option's value: defaults, overridden by each layer in turn (config, CLI)."""
        known = {o.name: o for o in self.options}
        values = {o.name: o.default for o in self.options}
        for layer in layers:
            for key, raw in layer.items():
                if key not in known:
                    raise OptionError(self.name, key, "unknown option; known: "
                                      + (", ".join(sorted(known)) or "none"))
                values[key] = known[key].parse(raw, processor=self.name)
        if self.validate is not None:
            try:
                self.validate(values)
            except ValueError as exc:
                raise OptionError(self.name, None, str(exc)) from None
            except Exception as exc:  # a bug in validate is still reported before any image
                raise OptionError(self.name, None, f"validate() raised {type(exc).__name__}: "
                                  f"{exc}") from exc
        return values

    def image_options(self, options: Mapping[str, Any]) -> list[Path]:
        """Return the fixed images named by image options (added after the batch's inputs)."""
        return [Path(options[o.name]) for o in self.options if o.image and options.get(o.name)]

    def arity(self, options: Mapping[str, Any]) -> int:
        """Return how many images each job supplies, once image options are set."""
        return self.inputs - len(self.image_options(options))

    def model(self, name: str) -> ModelFile:
        """Return the declared model called `name`."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"{self.name} declares no model {name!r}")


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Return {key: value} from CLI `KEY=VALUE` strings; raise ValueError on a malformed one."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out
