"""Where the tracker finds data it does not ship: the shared material and the ICT model.

Settings (environment variables; CLIs offer matching flags):
    N2F_SHARED_DIR   folder holding ``ict-facekit/``, ``flame-aux/``, ``real-faces/``
                     (default: ``../shared`` beside the project checkout, if present)
    N2F_ICT_MODEL    the packed ICT-FaceKit npz (default: ``$N2F_SHARED_DIR/ict-facekit/ict_face_model.npz``)
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
