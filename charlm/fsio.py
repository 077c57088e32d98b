"""Durable, atomic file writes: the one helper every writer in the project uses.

A file written here is either absent, the old version, or the complete new version, also
after a crash or power loss: the data goes to a temporary name beside the target, is
fsync'd, renamed over the target, and the directory is fsync'd so the rename itself lasts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: str | Path) -> None:
    """Make the directory entries of ``directory`` (a rename, a new file) durable."""
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str | Path, flags: int = os.O_RDONLY) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_write(path: str | Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` when the block exits normally.

    The temporary file starts with '.' and ends with '.tmp' (readers skip such names). If
    the block raises, the temporary file is removed and ``path`` is left as it was.
    ``mode`` is the new file's permission bits (mkstemp's 0600 would hide shared caches).
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "w+b") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_write(path) as file:
        file.write(data)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (and ``root``): for a directory built
    under a temporary name and then renamed into place whole (a report)."""
    root = Path(root)
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and not path.is_symlink():
            _fsync(path)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(root)
