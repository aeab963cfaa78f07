"""Head models behind one interface (``HeadModel``): FLAME (user-supplied files) and ICT-FaceKit.

The interface's names (``HeadModel``, the priors, ...) come from ``tracker.head_models.base`` on
first use (PEP 562), so that the package's light modules (``ict_convert``, ``ict_source``,
``safe_pickle``) import without torch: their command lines answer --help at once.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracker.head_models.base import HeadModel

HEAD_MODELS = ("flame", "ict")
_FROM_BASE = ("REQUIRED_REGIONS", "GaussianPrior", "HeadModel", "ParamGroup", "RotationPrior", "SparseUniformPrior", "UniformPrior")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        return getattr(importlib.import_module("tracker.head_models.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_head_model(name: str, path: str | Path | None = None, **options) -> HeadModel:
    """Load a head model by name.

    ``flame``: ``path`` is the folder with the FLAME files (see ``FlameFiles.from_dir``).
    ``ict``: ``path`` is the packed ICT-FaceKit npz or an upstream checkout; it and the default
    locations are resolved by ``tracker.head_models.ict_source.locate_ict_model`` (which may
    convert or download the model into the cache).
    """
    if name == "flame":
        from tracker.head_models.flame import FLAME

        if path is None:
            from tracker.errors import TrackerError

            raise TrackerError("FLAME needs the folder with its files (--flame-dir): see README 'Data you bring'")
        return FLAME.from_dir(path, **options)
    if name == "ict":
        from tracker.head_models.ict import ICT
        from tracker.head_models.ict_source import locate_ict_model

        return ICT.from_npz(locate_ict_model(path), **options)
    raise ValueError(f"unknown head model {name!r}; choose one of {HEAD_MODELS}")


__all__ = [
    "HEAD_MODELS",
    "REQUIRED_REGIONS",
    "GaussianPrior",
    "HeadModel",
    "ParamGroup",
    "RotationPrior",
    "SparseUniformPrior",
    "UniformPrior",
    "load_head_model",
]
