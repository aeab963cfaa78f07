"""Stored cue maps: the 8- or 16-bit PNG normal maps and masks of a fine-tuning folder
(``train/real_data.py``'s format), read by the fine-tuning data and by the int8 calibration."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tracker.errors import TrackerError


def read_map(path: Path, size: int, colour: bool) -> tuple[np.ndarray, float]:
    """A square 8- or 16-bit PNG -> (size, size, 3) RGB or (size, size) grey float image in [0, 1],
    and the factor size / stored width (colour maps resized linearly, masks by nearest)."""
    if not path.is_file():
        raise TrackerError(f"missing {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise TrackerError(f"cannot read {path}")
    if image.dtype not in (np.uint8, np.uint16):
        raise TrackerError(f"{path}: maps must be 8- or 16-bit, got {image.dtype}")
    depth = float(np.iinfo(image.dtype).max)
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2RGB) if colour else image[..., 0]
    elif colour:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[0] != image.shape[1]:
        raise TrackerError(f"{path}: maps must be square crops, got {image.shape[1]}x{image.shape[0]}")
    scale = size / image.shape[1]
    image = image.astype(np.float32) / depth
    if scale != 1:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR if colour else cv2.INTER_NEAREST)
    return image, scale


def read_cue_maps(folder: Path, stem: str, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Sample ``stem`` of a fine-tuning folder as the network gets it: normals (3, size, size)
    float32 unit vectors, zero off the face; mask (size, size) float32 in {0, 1}; and the factor
    size / stored width (for its landmarks and intrinsics)."""
    grey, _ = read_map(folder / "masks" / f"{stem}.png", size, colour=False)
    rgb, scale = read_map(folder / "normals" / f"{stem}.png", size, colour=True)
    mask = (grey > 0).astype(np.float32)
    normals = rgb * 2 - 1
    normals = normals / np.maximum(np.linalg.norm(normals, axis=2, keepdims=True), 1e-12) * mask[..., None]
    return np.ascontiguousarray(normals.transpose(2, 0, 1)), mask, scale
