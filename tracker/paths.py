"""Where the tracker finds data it does not ship: the shared material and the ICT model.

Settings (environment variables; CLIs offer matching flags):
    N2F_SHARED_DIR   folder holding ``ict-facekit/``, ``flame-aux/``, ``real-faces/``
                     (default: ``../shared`` beside the project checkout, if present)
    N2F_ICT_MODEL    the packed ICT-FaceKit npz (default: ``$N2F_SHARED_DIR/ict-facekit/ict_face_model.npz``)
    N2F_CACHE_DIR    where derived data is cached (default: ``$XDG_CACHE_HOME/n2f-tracker``,
                     i.e. ``~/.cache/n2f-tracker``)
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    """The folder for derived data (converted models, landmark embeddings); not created here."""
    configured = os.environ.get("N2F_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "n2f-tracker"
