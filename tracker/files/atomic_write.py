"""Files written whole or not at all, and never through a file or link that was in the way.

    atomic_write("mesh.obj", text.encode())           # mesh.obj is the old file or the new one, never half
    with staged("model.pt") as temporary:             # a writer that needs a path of its own
        torch.save(state, temporary)
    with staged("net.xml", companions=(".bin",)) as temporary:   # OpenVINO writes net.bin beside net.xml
        openvino.save_model(model, str(temporary))

Staging: every file is first written to a new temporary file in the target's folder, named
``.<name>.<8 random hex digits>.tmp<the target's suffix>`` (``.take.npz.1f0c9a2e.tmp.npz``: the
suffix kept for writers that add or replace one, like numpy and OpenVINO; a companion is the same
name with its own suffix) and created exclusively (``O_CREAT | O_EXCL``): never a file that was
there before, and never through a symbolic link planted at that name. On leaving the block
each staged file is fsync'ed and renamed onto its target (``os.replace``; companions first, the
main file last, so a present main file means a complete set), and the folder is fsync'ed. A failed
write (a full disk, a closed terminal, Ctrl-C, an error in the writer) removes the staged files and
leaves the targets as they were; the error is an OSError (or the writer's own) for the caller to
report. Only a killed process (SIGKILL, a power cut) can leave a staged file behind
(``temporary_files`` lists them). The files get the usual permissions (0666 less the umask).

``same_file(a, b)``: whether two paths name one file (hard and symbolic links included), for
refusing an output that would overwrite an input.
"""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"
_RANDOM_HEX = 8
_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
_EXISTING = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def atomic_write(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically and durably (module docstring)."""
    path = Path(path)
    with staged(path) as temporary:
        with open(os.open(temporary, _EXISTING), "wb") as stream:
            stream.write(data)
    return path


@contextmanager
def staged(path: str | Path, companions: Sequence[str] = ()) -> Iterator[Path]:
    """A new, exclusively created temporary file beside ``path`` for the block to write ``path``'s
    content to; ``companions``: suffixes of files the writer puts beside it (the staged name with
    that suffix, created exclusively too), each renamed onto ``path`` with that suffix. Renamed
    into place when the block ends normally, removed when it raises (module docstring)."""
    path = Path(path)
    attempted: list[Path] = []  # every staged name that may exist, listed before it is created
    try:
        main, extra = _create_staged(path, companions, attempted)
        staged_files = [*extra, main]  # renamed in this order: the main file last
        targets = [*(path.with_suffix(suffix) for suffix in companions), path]
        yield main
        for temporary in staged_files:
            _fsync_file(temporary)
        for temporary, target in zip(staged_files, targets):
            os.replace(temporary, target)
    except BaseException:  # an interrupt at any point, its creation included, leaves no staged file
        for temporary in attempted:
            temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def temporary_files(path: str | Path) -> list[Path]:
    """The staged files of ``path`` present in its folder (left only by a killed writer)."""
    path = Path(path)
    pattern = f".{glob.escape(path.name)}.{'[0-9a-f]' * _RANDOM_HEX}{TEMPORARY_SUFFIX}*"
    return sorted(path.parent.glob(pattern))


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same file system entry where both exist (hard and
    symbolic links included), else the same path once symbolic links and ``..`` are resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def fsync_dir(folder: str | Path) -> None:
    """Make a file's creation, rename or removal in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_staged(path: Path, companions: Sequence[str], attempted: list[Path]) -> tuple[Path, list[Path]]:
    """Create the staged file of ``path`` (and its companions) exclusively, under a fresh random
    name; -> (the staged file, its companions). Each name goes into ``attempted`` before its file is
    created and leaves it when the name was taken by another file, so that the caller can remove
    whatever an interrupt (which may come between any two steps) left behind."""
    while True:
        main = path.with_name(f".{path.name}.{secrets.token_hex(_RANDOM_HEX // 2)}{TEMPORARY_SUFFIX}{path.suffix}")
        created: list[Path] = []
        try:
            for candidate in (main, *(main.with_suffix(companion) for companion in companions)):
                attempted.append(candidate)
                os.close(os.open(candidate, _EXCLUSIVE, 0o666))
                created.append(candidate)
        except FileExistsError:  # a name taken (by chance, or by a planted file or link): not ours; another name
            attempted.remove(candidate)
            for ours in created:
                ours.unlink()
                attempted.remove(ours)
            continue
        return main, created[1:]


def _fsync_file(path: Path) -> None:
    fd = os.open(path, _EXISTING)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
