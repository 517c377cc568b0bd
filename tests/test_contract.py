"""The plugin contract, run over every registered processor (a new plugin is tested at once)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from imgproc import Option, Processor
from imgproc.registry import Registry, load_registry
from imgproc.testing import check_processor

from .conftest import LOCAL_PLUGINS

CONTRACT_BREAKERS = {"explode", "fault"}  # the tests' deliberately buggy processors


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `processor_name` over every processor registered when the tests collect."""
    if "processor_name" in metafunc.fixturenames:
        names = set(load_registry(plugins_dir=LOCAL_PLUGINS).processors) - CONTRACT_BREAKERS
        metafunc.parametrize("processor_name", sorted(names))


@pytest.fixture(scope="module")
def contract_registry() -> Registry:
    """Return the installed plugins and the tests' local plugins, loaded once for this module."""
    return load_registry(plugins_dir=LOCAL_PLUGINS)


def test_every_registered_processor_keeps_the_contract(contract_registry: Registry,
                                                       processor_name: str) -> None:
    check_processor(contract_registry.processors[processor_name].processor)


def test_model_processors_keep_the_contract(halve: Processor) -> None:
    check_processor(halve)


def _returns(value: Any) -> Processor:
    return Processor("broken", "Breaks the contract.", lambda images, **kw: value(images[0]))


@pytest.mark.parametrize(("processor", "message"), [
    (_returns(lambda x: x * np.nan), "NaN or infinity"),
    (_returns(lambda x: x[:, :, 0]), "expected H x W x 1\\|3"),
    (_returns(lambda x: x.tolist()), "not ndarray"),
    (_returns(lambda x: x * 5), "outside \\[0, 1\\]"),
], ids=["nan", "2d", "list", "range"])
def test_the_contract_check_catches_breakage(processor: Processor, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_processor(processor)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "Bad Name"}, "use lower-case"),
    ({"summary": "a\nb"}, "one non-empty line"),
    ({"inputs": 0}, "at least 1"),
    ({"options": (Option("a", int, 1), Option("a", int, 2))}, "duplicate option names"),
], ids=["name", "summary", "inputs", "options"])
def test_a_bad_declaration_is_refused_at_construction(kwargs: dict, message: str) -> None:
    fields = {"name": "ok", "summary": "Fine.", "process": lambda images, **kw: images[0]}
    with pytest.raises(ValueError, match=message):
        Processor(**{**fields, **kwargs})


def test_the_contract_check_can_cut_small_tiles() -> None:
    tiles: list[tuple[int, ...]] = []

    def tiled_identity(images: list[np.ndarray], **kw: Any) -> np.ndarray:
        def fn(tile: np.ndarray) -> np.ndarray:
            tiles.append(tile.shape)
            return tile

        return kw["context"].tiled(fn, images[0])

    check_processor(Processor("tiled", "Tiles.", tiled_identity), sizes=((40, 50),),
                    tile_size=16, tile_overlap=4)
    assert len(tiles) > 4 and max(max(shape[:2]) for shape in tiles) == 16
