"""The start of a fit without the network's own prediction: the rigid map between two head models'
frames, and the perspective-n-point pose, against independent references (scipy's rotation
alignment, a projection of a known pose)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tracker.errors import TrackerError
from tracker.fitting.start_pose import HeadAlignment, kabsch, pnp_pose
from tracker.geometry.camera import FLIP

FOCAL, PRINCIPAL = np.array([900.0, 910.0]), np.array([320.0, 240.0])


def _head_points(rng: np.random.Generator, count: int = 60) -> np.ndarray:
    """(count, 3) points spread like a face, head frame (+z out of the face), metres."""
    return rng.normal(size=(count, 3)) * [0.05, 0.06, 0.02] + [0.0, 0.02, 0.08]


def _camera(points: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    return points @ (rotation * FLIP).T + translation


def test_kabsch_agrees_with_scipy() -> None:
    rng = np.random.default_rng(0)
    target = _head_points(rng)
    true = Rotation.from_rotvec([0.3, -0.5, 0.2])
    source = true.apply(target) + [0.01, -0.02, 0.03] + rng.normal(scale=1e-3, size=target.shape)
    rotation, translation = kabsch(source, target)
    centred = (source - source.mean(0), target - target.mean(0))
    reference, _ = Rotation.align_vectors(*centred)
    assert np.allclose(rotation, reference.as_matrix(), atol=1e-10)
    assert np.allclose(translation, source.mean(0) - rotation @ target.mean(0))


class _Head:
    """A stand-in head model whose mean face has given landmarks (only what HeadAlignment reads)."""

    def __init__(self, name: str, landmarks: np.ndarray) -> None:
        self.name, self._landmarks = name, landmarks

    def neutral_params(self, batch, device=None):
        return {}

    def decode_landmarks(self, params, view_rotation=None):
        import torch

        full = np.zeros((68, 3))
        full[17:] = self._landmarks
        return torch.from_numpy(full)[None]


def test_alignment_carries_the_camera_pose_between_head_frames() -> None:
    """A pose of the network's head puts the fitted head's points where the network's are."""
    rng = np.random.default_rng(1)
    fitted = _head_points(rng, 51)
    to_network = Rotation.from_rotvec([0.05, 0.1, -0.02])
    network = to_network.apply(fitted) + [0.0, -0.03, 0.01]
    alignment = HeadAlignment(_Head("ict", network), _Head("flame", fitted))
    assert alignment.residual_mm < 1e-9
    rotation, translation = Rotation.from_rotvec([0.2, -0.6, 0.1]).as_matrix(), np.array([0.02, -0.01, 0.6])
    mapped = alignment.pose(rotation, translation)
    assert np.allclose(mapped[0] @ mapped[0].T, np.eye(3)) and np.isclose(np.linalg.det(mapped[0]), 1.0)
    assert np.allclose(_camera(fitted, *mapped), _camera(network, rotation, translation), atol=1e-12)


@pytest.mark.parametrize("yaw_deg", [0.0, 35.0, -60.0])
def test_pnp_recovers_a_projected_pose(yaw_deg: float) -> None:
    rng = np.random.default_rng(2)
    points = _head_points(rng)
    rotation = Rotation.from_euler("yxz", [yaw_deg, 10.0, -5.0], degrees=True).as_matrix()
    translation = np.array([0.03, -0.02, 0.55])
    camera = _camera(points, rotation, translation)
    pixels = camera[:, :2] / camera[:, 2:] * FOCAL + PRINCIPAL
    found = pnp_pose(points, pixels, FOCAL, PRINCIPAL)
    assert np.allclose(found[0], rotation, atol=1e-6) and np.allclose(found[1], translation, atol=1e-6)


def test_pnp_failure_is_a_tracker_error() -> None:
    points = np.zeros((10, 3))  # degenerate: every point the same
    with pytest.raises(TrackerError, match="perspective-n-point"):
        pnp_pose(points, np.zeros((10, 2)), FOCAL, PRINCIPAL)
