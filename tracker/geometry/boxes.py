"""Axis-aligned boxes in pixels: corner boxes (x0, y0, x1, y1), square boxes (x0, y0, side)."""

from __future__ import annotations

import numpy as np


def box_iou(a, b) -> float:
    """Intersection over union of two corner boxes (x0, y0, x1, y1); 0 where the union is empty.
    Computed in the boxes' own precision (float32 boxes: float32 arithmetic)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def square_corners(box) -> np.ndarray:
    """Square box (x0, y0, side) -> (4,) corner box (x0, y0, x0 + side, y0 + side)."""
    x0, y0, side = box
    return np.array([x0, y0, x0 + side, y0 + side])
