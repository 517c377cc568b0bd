"""Is a file still open for writing by some process? The one signal that survives a paused writer.

A writer that keeps a file open and pauses (a slow network copy, a scanner) defeats any size and
mtime settle timer. On Linux, a read lease (`fcntl F_SETLEASE F_RDLCK`) is refused with EAGAIN
exactly while any process holds the file open for writing, and taking and dropping it costs one
open and two system calls. Where leases are unavailable (other systems, network file systems,
files of another user without CAP_LEASE) the answer is "unknown" and the daemon relies on
close-after-write events, settling and the truncated-read rule instead.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

try:
    import fcntl

    _SETLEASE: int | None = getattr(fcntl, "F_SETLEASE", None)
except ImportError:  # pragma: no cover - Windows
    _SETLEASE = None


def being_written(path: Path) -> bool | None:
    """Return True if a process holds `path` open for writing, False if none does, None if this
    platform or file system cannot tell."""
    if _SETLEASE is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, _SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, _SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)
