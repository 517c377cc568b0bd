"""Processors for the engine tests, loaded by the client (--plugins-dir) and by the workers
($IMGPROC_PLUGINS_DIR): one that takes its time, one that kills the process running it."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from imgproc import Option, Processor, hookimpl


def nap(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Return the image inverted after sleeping, so a test can kill a worker in the middle;
    with `note_pid`, write which process ran it beside the output (<stem>.pid.txt)."""
    time.sleep(options["seconds"])
    if options["note_pid"]:
        context.add_output("pid.txt", str(os.getpid()).encode())
    return 1.0 - images[0]


def crash(images: list[np.ndarray], *, options: dict[str, Any], context: Any) -> np.ndarray:
    """Return the image inverted, but end the whole process (as a segfault in a native library
    would) when the image is `width` pixels wide."""
    if images[0].shape[1] == options["width"]:
        os._exit(13)
    return 1.0 - images[0]


@hookimpl
def imgproc_processors() -> list[Processor]:
    """Return the engine tests' processors."""
    return [
        Processor("nap", "Sleep, then invert the image.", nap,
                  options=(Option("seconds", float, 0.0, "how long to sleep", min=0.0),
                           Option("note_pid", bool, False, "write the process id beside"))),
        Processor("crash", "Invert the image; kill the process on one width.", crash,
                  options=(Option("width", int, 0, "the width that kills", min=0),)),
    ]
