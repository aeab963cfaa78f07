"""Head models behind one interface (``HeadModel``): FLAME (user-supplied files) and ICT-FaceKit."""

from __future__ import annotations

from pathlib import Path

from tracker.head_models.base import (
    REQUIRED_REGIONS,
    GaussianPrior,
    HeadModel,
    ParamGroup,
    RotationPrior,
    SparseUniformPrior,
    UniformPrior,
)

HEAD_MODELS = ("flame", "ict")


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
