"""Processors used only by the tests, loaded with `--plugins-dir` like any local plugin."""

from __future__ import annotations

import time
from typing import Any

import click
import numpy as np
from PIL import Image

from imgproc import Option, Processor, hookimpl


def identity(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Return the image unchanged (scaled when `scale` > 1, nearest neighbour)."""
    scale = options["scale"]
    return np.repeat(np.repeat(images[0], scale, axis=0), scale, axis=1)


def mean2(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Return the mean of two images, the second resized to the first."""
    height, width = images[0].shape[:2]
    second = Image.fromarray((images[1] * 255).astype(np.uint8)).resize((width, height))
    return (images[0] + np.asarray(second, dtype=np.float32) / 255) / 2


def explode(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Raise, as a buggy plugin would."""
    raise RuntimeError("boom")


_FAULTS: dict[str, type[BaseException]] = {"runtime": RuntimeError, "memory": MemoryError,
                                           "exit": SystemExit}


def fault(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Raise the exception named by `kind`, as a plugin with a bug (or a sys.exit) would."""
    raise _FAULTS[options["kind"]]("injected fault")


def slow(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Return the image after sleeping, so a test can kill a daemon in the middle of one."""
    time.sleep(options["seconds"])
    return images[0]


def annotate(images: list[np.ndarray], *, options: dict[str, Any],
             context: Any) -> np.ndarray:
    """Return the image, and ask the host to write a mask image and a text file beside it."""
    context.add_output("mask.png", images[0].mean(axis=2, keepdims=True))
    context.add_output("info.txt", f"{images[0].shape[1]}x{images[0].shape[0]}".encode())
    return images[0]


def grey(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Return one channel: the mean of R, G, B."""
    return images[0].mean(axis=2, keepdims=True)


@hookimpl
def imgproc_processors() -> list[Processor]:
    """Return the test processors."""
    return [
        Processor("identity", "Return the image unchanged.", identity,
                  options=(Option("scale", int, 1, "integer upscale", min=1, max=8),)),
        Processor("mean2", "Average two images.", mean2, inputs=2,
                  options=(Option("with", str, None, "one fixed second image", image=True),)),
        Processor("explode", "Always raise.", explode),
        Processor("fault", "Always raise the exception named by kind.", fault,
                  options=(Option("kind", str, "runtime", "exception to raise",
                                  choices=tuple(_FAULTS)),)),
        Processor("grey", "Return a one-channel grey image.", grey),
        Processor("annotate", "Return the image; write a mask and a note beside it.", annotate),
        Processor("slow", "Sleep, then return the image.", slow,
                  options=(Option("seconds", float, 0.0, "how long to sleep", min=0.0),)),
    ]


@hookimpl
def imgproc_commands() -> list[click.Command]:
    """Return a command added to `imgproc` by this plugin."""

    @click.command()
    @click.argument("name")
    def hello(name: str) -> None:
        """Greet NAME (a plugin-provided command)."""
        click.echo(f"hello {name}")

    return [hello]
