"""Where a new track's fit starts when the network does not regress the head model being fitted.

A FLAME tracker run with the shipped ICT network (no FLAME network) fits FLAME from its mean face;
only the first frame of a track needs a pose to start from (later frames start from the previous
solution). Two starts, both of the head pose alone (X_cam = R F X_head + t, F = diag(1, -1, -1)):

    "camera"  the network's head pose, carried from the network's head frame into the fitted
              head's (``HeadAlignment``: the rigid map between the two mean faces, from their 51
              inner iBUG-68 landmarks)
    "pnp"     a perspective-n-point solve (OpenCV's SQPnP) of MediaPipe's points against the
              fitted head's mean face at its embedded points
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.geometry.camera import FLIP
from tracker.head_models.base import HeadModel

INNER_68 = slice(17, 68)  # the iBUG-68 points that do not slide with the view (brows, nose, eyes, mouth)


def mean_landmarks(head: HeadModel) -> np.ndarray:
    """(51, 3) float64 inner iBUG-68 landmarks of ``head``'s mean face, head frame, metres."""
    with torch.no_grad():
        points = head.decode_landmarks(head.neutral_params(1, device="cpu"))
    return points[0, INNER_68].double().cpu().numpy()


def kabsch(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigid (R (3, 3), t (3,)) minimising |R target + t - source|^2 over (N, 3) point pairs."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((source - mu_s).T @ (target - mu_t))
    sign = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, sign]) @ vt
    return rotation, mu_s - rotation @ mu_t


class HeadAlignment:
    """The rigid map X_network = R0 X_fitted + t0 between two head models' frames (their mean
    faces' inner landmarks, Kabsch), and the network's head pose carried through it.

    ``residual_mm``: RMS distance of the aligned landmarks (how alike the two mean faces are).
    """

    def __init__(self, network_head: HeadModel, fitted_head: HeadModel) -> None:
        source, target = mean_landmarks(network_head), mean_landmarks(fitted_head)
        self.rotation, self.translation = kabsch(source, target)
        aligned = target @ self.rotation.T + self.translation
        self.residual_mm = float(np.sqrt(((aligned - source) ** 2).sum(1).mean()) * 1e3)

    def pose(self, rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network head's camera pose (R (3, 3), t (3,)) -> the fitted head's:
        R F (R0 X + t0) + t = (R F R0 F) F X + (t + R F t0)."""
        flipped = rotation * FLIP  # R @ diag(F)
        return flipped @ self.rotation * FLIP, translation + flipped @ self.translation


def pnp_pose(head_points: np.ndarray, observed: np.ndarray, focal: np.ndarray, principal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) head-frame points and their (N, 2) pixels -> camera pose (R (3, 3), t (3,)) with
    X_cam = R F X_head + t; TrackerError when the solve fails or puts the head behind the camera."""
    matrix = np.array([[focal[0], 0.0, principal[0]], [0.0, focal[1], principal[1]], [0.0, 0.0, 1.0]])
    try:
        ok, rvec, tvec = cv2.solvePnP(head_points.astype(np.float64), observed.astype(np.float64), matrix, None, flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:  # degenerate points (OpenCV asserts on their spread)
        ok = False
    if not ok or not np.isfinite(tvec).all() or float(tvec[2, 0]) <= 0:
        raise TrackerError("the perspective-n-point start failed for this face")
    opencv_rotation, _ = cv2.Rodrigues(rvec)  # X_cam = R_cv X_head + t
    return opencv_rotation * FLIP, tvec[:, 0]


__all__ = ["INNER_68", "HeadAlignment", "kabsch", "mean_landmarks", "pnp_pose"]
