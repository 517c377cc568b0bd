"""Where the training and validation data live: the `--data DIR` option of every trainer.

The default, `../shared/data`, is the data folder beside the checkout (trainers run from the
repository root); it is an option, not a path worked out from `__file__`, so it still holds once
`exporters` is installed elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import click

DEFAULT_DATA = Path("../shared/data")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
F = TypeVar("F", bound=Callable[..., object])


def data_option(command: F) -> F:
    """Return `command` with the `--data DIR` option (default ../shared/data)."""
    return click.option(
        "--data", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA,
        show_default=True, help="Folder holding the data sets (see its README.md).")(command)


def data_path(given: Path | None, data: Path, *parts: str) -> Path:
    """Return `given` when set, else data/parts...; raise click.BadParameter when it is missing."""
    path = given if given is not None else data.joinpath(*parts)
    if not path.exists():
        raise click.BadParameter(f"{path} does not exist (set --data DIR, or name the folder)")
    return path


def list_images(dirs: Iterable[Path]) -> list[Path]:
    """Return the image files under dirs (recursive), sorted."""
    return sorted(p for d in dirs for p in Path(d).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
