"""Typed options: parsing, validation, precedence."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from imgproc import Option, OptionError, Processor
from imgproc.processor import parse_assignments


def _noop(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    return images[0]


@pytest.mark.parametrize(("option", "raw", "expected"), [
    (Option("n", int, 1), "7", 7),
    (Option("n", int, 1), 7, 7),
    (Option("x", float, 1.0), "2.5", 2.5),
    (Option("x", float, 1.0), 3, 3.0),
    (Option("b", bool, False), "true", True),
    (Option("b", bool, True), "off", False),
    (Option("b", bool, True), False, False),
    (Option("s", str, "a"), "fast", "fast"),
    (Option("m", str, "fast", choices=("fast", "best")), "best", "best"),
], ids=lambda v: repr(v) if not isinstance(v, Option) else v.name)
def test_option_parses(option: Option, raw: object, expected: object) -> None:
    assert option.parse(raw, processor="p") == expected


@pytest.mark.parametrize(("option", "raw", "message"), [
    (Option("n", int, 1), "seven", "expected int, got 'seven'"),
    (Option("n", int, 1), 2.5, "expected int, got float"),
    (Option("n", int, 1), True, "expected int, got bool"),
    (Option("b", bool, False), "maybe", "expected true or false"),
    (Option("x", float, 1.0, min=0.0, max=1.0), "1.5", "above the maximum 1.0"),
    (Option("x", float, 1.0, min=0.0, max=1.0), -1, "below the minimum 0.0"),
    (Option("m", str, "fast", choices=("fast", "best")), "huge", "not one of fast, best"),
], ids=lambda v: repr(v) if not isinstance(v, Option) else v.name)
def test_bad_option_value_names_processor_and_option(option: Option, raw: object,
                                                     message: str) -> None:
    with pytest.raises(OptionError, match=f"^p: option '{option.name}': .*{message}"):
        option.parse(raw, processor="p")


def _processor(**kwargs: Any) -> Processor:
    options = (Option("strength", float, 1.0, min=0.0, max=2.0), Option("mode", str, "a"))
    return Processor("p", "Test.", _noop, options=options, **kwargs)


def test_cli_beats_config_beats_defaults() -> None:
    processor = _processor()
    assert processor.resolve_options() == {"strength": 1.0, "mode": "a"}
    assert processor.resolve_options({"strength": 0.5}) == {"strength": 0.5, "mode": "a"}
    assert processor.resolve_options({"strength": 0.5, "mode": "b"},
                                     {"strength": "1.5"}) == {"strength": 1.5, "mode": "b"}


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(OptionError, match="'strenght': unknown option; known: mode, strength"):
        _processor().resolve_options({"strenght": 1})


def test_cross_option_validation_runs_before_any_image() -> None:
    def validate(values: dict[str, Any]) -> None:
        if values["mode"] == "b" and values["strength"] > 1:
            raise ValueError("mode b needs strength <= 1")

    with pytest.raises(OptionError, match="^p: options: mode b needs strength <= 1"):
        _processor(validate=validate).resolve_options({"mode": "b", "strength": 2})


@pytest.mark.parametrize(("pairs", "expected"), [
    (["a=1", "b=x=y"], {"a": "1", "b": "x=y"}),
    (["empty="], {"empty": ""}),
    ([], {}),
])
def test_parse_assignments(pairs: list[str], expected: dict[str, str]) -> None:
    assert parse_assignments(pairs) == expected


@pytest.mark.parametrize("bad", ["novalue", "=1"])
def test_parse_assignments_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_assignments([bad])
