"""Where the tracker finds data it does not ship: the shared material and the ICT model.

Settings (environment variables; CLIs offer matching flags):
    N2F_SHARED_DIR   folder holding ``ict-facekit/``, ``flame-aux/``, ``real-faces/``
                     (default: ``../shared`` beside the project checkout, if present)
    N2F_ICT_MODEL    the packed ICT-FaceKit npz (default: ``$N2F_SHARED_DIR/ict-facekit/ict_face_model.npz``)
    N2F_CACHE_DIR    where derived data is cached (default: ``$XDG_CACHE_HOME/n2f-tracker``,
                     i.e. ``~/.cache/n2f-tracker``)

A cache only saves time: ``write_cached`` reports a cache folder that cannot take a file (read-only,
full, a file in its place) once, as a warning, and the caller goes on with what it computed.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from tracker.files.atomic_write import staged

PROJECT_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)
_unwritable: set[Path] = set()  # cache folders already reported


def shared_dir() -> Path | None:
    """The shared-material folder, or None when it is not configured and not beside the checkout."""
    configured = os.environ.get("N2F_SHARED_DIR")
    if configured:
        return Path(configured).expanduser()
    beside = PROJECT_ROOT.parent / "shared"
    return beside if beside.is_dir() else None


def default_ict_model_path() -> Path | None:
    """The ICT-FaceKit npz location from the settings (it may not exist)."""
    configured = os.environ.get("N2F_ICT_MODEL")
    if configured:
        return Path(configured).expanduser()
    shared = shared_dir()
    return shared / "ict-facekit" / "ict_face_model.npz" if shared else None


def cache_dir() -> Path:
    """The folder for derived data (converted models, landmark embeddings); not created here.

    XDG_CACHE_HOME counts only when it is an absolute path (the XDG rule). Without a home folder
    (no HOME and no passwd entry) the cache is a private temporary folder for this run."""
    configured = os.environ.get("N2F_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.path.expanduser(os.environ.get("XDG_CACHE_HOME", ""))
    if os.path.isabs(base):
        return Path(base) / "n2f-tracker"
    try:
        return Path.home() / ".cache" / "n2f-tracker"
    except RuntimeError:  # no home folder to be found
        return _run_cache()


@functools.cache
def _run_cache() -> Path:
    """A private folder caching this run's derived data, said once."""
    folder = Path(tempfile.mkdtemp(prefix="n2f-tracker-cache-"))
    log.warning("no home folder and no N2F_CACHE_DIR: derived data is cached in %s for this run only; set N2F_CACHE_DIR to keep it", folder)
    return folder


def write_cached(path: Path, write: Callable[[Path], None], what: str) -> bool:
    """Cache a file: ``write(temporary)`` staged beside ``path`` (``tracker.files.atomic_write.staged``), so
    readers and other processes never see half a file -> whether it was cached. A folder that
    cannot take it is warned about once (naming it and N2F_CACHE_DIR); the temporary file never stays."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with staged(path) as temporary:
            write(temporary)
    except OSError as error:
        if folder not in _unwritable:
            _unwritable.add(folder)
            log.warning(
                "could not cache %s in %s (%s): it is computed again on every run; set N2F_CACHE_DIR to a folder you can write to",
                what, folder, error.strerror or error,
            )
        return False
    return True
