"""Pinhole camera: head frame -> camera frame -> image, as pure batched functions.

Frames:
    head frame    the head model's: +x viewer's right, +y up, +z out of the face.
    camera frame  OpenCV's: +x right, +y down, +z forward (into the scene). The head is placed by
                  ``X_cam = R @ FLIP @ X_head + t`` with FLIP = diag(1, -1, -1), so R = I, t = (0, 0, d)
                  is a frontal head d metres in front of the camera (the paper's t_z ~ N(1, 0.2^2)).
    view frame    camera axes with +y up and +z towards the camera (OpenGL's eye frame):
                  ``n_view = FLIP @ n_cam``. Camera-frame normal maps are stored in this frame, so
                  a frontal face is blue-ish and the view and head frames agree when R = I.
    avatar frame  the view frame as an avatar's world (ARKit's face-anchor convention, glTF's,
                  the streams'): the head sits at ``X_avatar = FLIP R FLIP X_head + FLIP t``
                  (``head_pose``).

FLIP = diag(1, -1, -1) is its own inverse and the one axis flip between all of them: ``FLIP``
(its diagonal, for element-wise products), ``flip_matrix`` (torch) and ``FLIP_MATRIX`` (NumPy).

Image coordinates (pixel convention): continuous, origin at the top-left *corner* of the image,
x right, y down; pixel (row i, column j) covers [j, j+1) x [i, i+1) and its centre is
(j + 0.5, i + 0.5). (OpenCV puts pixel centres at integers: subtract 0.5 to convert.) Focal
lengths ``focal`` (B, 2) = (fx, fy) and principal point ``principal`` (B, 2) = (cx, cy) are in
pixels: ``u = fx * X / Z + cx``, ``v = fy * Y / Z + cy``.

Normalised convention: divide by the image size, ``focal_n = focal / size``,
``principal_n = principal / size`` (size = (width, height)); a crop changes the normalised
focal by the zoom factor and moves the principal point (see ``tracker.geometry.crop``).
"""

from __future__ import annotations

import numpy as np
import torch

from tracker.geometry.rotations import matrix_to_yaw_pitch_roll

FLIP = (1.0, -1.0, -1.0)  # the diagonal of diag(1, -1, -1)
# (3, 3) diag(1, -1, -1) in NumPy; float32 and exact, so a product keeps the other operand's float32 or float64
FLIP_MATRIX = np.diag(np.float32(FLIP))


def flip_matrix(device=None, dtype=torch.float32) -> torch.Tensor:
    """(3, 3) diag(1, -1, -1): head/view axes <-> OpenCV camera axes (its own inverse)."""
    return torch.diag(torch.tensor(FLIP, device=device, dtype=dtype))


def head_to_camera(points: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) head-frame points, (B, 3, 3) R, (B, 3) t -> (B, N, 3) camera-frame points."""
    flipped = points * points.new_tensor(FLIP)
    return flipped @ rotation.transpose(-1, -2) + translation[:, None, :]


def camera_to_view(vectors: torch.Tensor) -> torch.Tensor:
    """(..., 3) camera-frame vectors -> view frame (+y up, +z towards the camera)."""
    return vectors * vectors.new_tensor(FLIP)


def project(points_cam: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, N, 3) camera-frame points -> (B, N, 2) pixel coordinates.

    ``focal`` (B, 2) or (B, 1) or (B,), ``principal`` (B, 2), both in pixels.
    """
    focal = focal_xy(focal)
    z = points_cam[..., 2:3]
    z = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    return points_cam[..., :2] / z * focal[:, None, :] + principal[:, None, :]


def project_head(
    points_head: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor
) -> torch.Tensor:
    """(B, N, 3) head-frame points posed by (B, 3, 3) R, (B, 3) t -> (B, N, 2) pixel coordinates
    (``project`` of ``head_to_camera``; focal and principal as there)."""
    return project(head_to_camera(points_head, rotation, translation), focal, principal)


def focal_xy(focal: torch.Tensor) -> torch.Tensor:
    """Focal lengths (B,), (B, 1) or (B, 2) -> (B, 2) = (fx, fy)."""
    if focal.dim() == 1:
        focal = focal[:, None]
    return focal.expand(focal.shape[0], 2)


def head_pose(rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head pose (3, 3) R, (3,) t (``X_cam = R FLIP X_head + t``) in the avatar frame -> (avatar
    rotation (3, 3) = FLIP R FLIP, its (3,) yaw, pitch, roll (``matrix_to_yaw_pitch_roll``: ARKit's
    head angles), position (3,) FLIP t), float32."""
    avatar = FLIP_MATRIX @ np.asarray(rotation, np.float32) @ FLIP_MATRIX
    return avatar, matrix_to_yaw_pitch_roll(avatar), FLIP_MATRIX @ np.asarray(translation, np.float32)
