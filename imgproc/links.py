"""One rule for symbolic links met while scanning or watching a folder (`run` and `watch`).

A link found inside a scanned or watched folder is not followed unless the user opts in
(`--follow-symlinks`, `follow_symlinks = true` in a watch rule), and even then only to a file
inside the same folder tree: a link is a way to copy out any image the process can read, so a
shared hot folder must not honour one that points elsewhere. Links to folders are never
descended. A link is resolved when its file is read, not when it is found, so a link that
changes target after it was detected is judged by its target at that moment.
"""

from __future__ import annotations

from pathlib import Path

from imgproc.errors import ImageError

NOT_FOLLOWED = "symlink not followed in a folder scan (name it directly, or --follow-symlinks)"


def has_link(path: Path, root: Path) -> bool:
    """Return True if `path` or any folder between `root` and it is a symbolic link."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return path.is_symlink()
    current = root
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            return True
    return False


def readable_path(path: Path, root: Path, *, follow: bool) -> Path:
    """Return the path to read for `path`, found under `root`: itself, or for a link that may be
    followed, its target inside the tree. Raise ImageError naming why a link is refused."""
    if not has_link(path, root):
        return path
    if not follow:
        raise ImageError(path, NOT_FOLLOWED)
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a link loop on older Pythons
        raise ImageError(path, "broken symlink") from None
    tree = root.resolve()
    if target != tree and tree not in target.parents:
        raise ImageError(path, f"symlink points outside {root} (to {target}): not followed")
    if target.is_dir():
        raise ImageError(path, "symlink to a folder: folders behind links are never descended")
    return target
