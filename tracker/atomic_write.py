"""Files written whole or not at all: a temporary file beside the target, fsync'ed, then renamed.

    atomic_write("mesh.obj", text.encode())      # mesh.obj is the old file or the new one, never half

A failed write (a full disk, a closed terminal, Ctrl-C) removes the temporary file and leaves the
target as it was; the error is an OSError for the caller to report.
"""

from __future__ import annotations

import os
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: str | Path) -> Path:
    """Where ``atomic_write`` stages ``path``: ``mesh.obj`` -> ``mesh.obj.tmp``."""
    path = Path(path)
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def atomic_write(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically and durably (the rename is fsync'ed on POSIX)."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with temporary.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | Path) -> None:
    """Make a file's creation, rename or removal in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
