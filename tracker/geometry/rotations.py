"""Rotation representations as pure batched functions.

Conventions:
    matrices    (..., 3, 3), acting on column vectors: ``x' = R @ x``.
    6D          (..., 6), the first two *rows* of the matrix (Zhou et al. 2019, the layout of
                pytorch3d's ``matrix_to_rotation_6d`` that Pixel3DMM uses); identity = [1,0,0, 0,1,0].
    axis-angle  (..., 3), axis * angle in radians.
    Euler       (..., 3) angles (x, y, z) in radians, ``R = Rz @ Ry @ Rx`` (extrinsic X, then Y,
                then Z): x is pitch, y is yaw, z is roll for a head facing +z. Draws poses (training
                samples, the head priors, the viewer's orbit).
    yaw, pitch, roll
                (..., 3) radians, ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)``: ARKit's head angles
                (``tracker.geometry.camera.head_pose``), another order than the Euler angles
                above: the same rotation for the same angles without roll, different ones with it.
    quaternion  (..., 4) unit (w, x, y, z), w >= 0; the NumPy helpers for file formats and
                streams take and give (x, y, z, w) (glTF's, Unity's and scipy's order: ``_xyzw``).

The torch functions are batched and differentiable; the NumPy ones (last section), in the same
conventions, serve the float64 solver of ``tracker.fitting.refinement``, the avatar outputs and
the exporters.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def identity_6d(*batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Identity rotations in 6D, shape (*batch, 6)."""
    return torch.tensor(IDENTITY_6D, device=device, dtype=dtype).expand(*batch, 6).clone()


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt on the two rows; any non-degenerate input is valid."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-2)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two rows."""
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6).clone()


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3), Rodrigues' formula with a Taylor expansion near zero angle."""
    theta2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    theta = torch.sqrt(theta2.clamp_min(1e-24))
    small = theta2 < 1e-8
    sin_over = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    one_minus_cos_over = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(skew)
    return eye + sin_over * skew + one_minus_cos_over * (skew @ skew)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3), angle in [0, pi]; exact also near 0 and near pi (via a quaternion)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack(
        (
            torch.stack((1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]), -1),
            torch.stack((m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]), -1),
            torch.stack((m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]), -1),
            torch.stack((m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22), -1),
        ),
        dim=-2,
    )  # (..., 4 candidates, 4); candidate k is 4*q_k*q scaled, best conditioned where q_k is largest
    diag = torch.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1)
    best = diag.argmax(-1, keepdim=True)[..., None].expand(*diag.shape[:-1], 1, 4)
    quat = F.normalize(torch.gather(candidates, -2, best).squeeze(-2), dim=-1)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def quaternion_to_axis_angle(quat: torch.Tensor) -> torch.Tensor:
    """(..., 4) (w, x, y, z) -> (..., 3)."""
    quat = torch.where(quat[..., :1] < 0, -quat, quat)
    vec = quat[..., 1:]
    sin_half = vec.norm(dim=-1, keepdim=True)
    half = torch.atan2(sin_half, quat[..., :1])
    small = sin_half < 1e-6
    scale = torch.where(small, 2.0 + (half * half) / 3.0, 2.0 * half / sin_half.clamp_min(1e-12))
    return vec * scale


def euler_to_matrix(euler: torch.Tensor) -> torch.Tensor:
    """(..., 3) angles (x, y, z) in radians -> (..., 3, 3) = Rz @ Ry @ Rx."""
    x, y, z = euler.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)

    def stack(*rows):
        return torch.stack(rows, -1).reshape(*x.shape, 3, 3)

    rx = stack(one, zero, zero, zero, x.cos(), -x.sin(), zero, x.sin(), x.cos())
    ry = stack(y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos())
    rz = stack(z.cos(), -z.sin(), zero, z.sin(), z.cos(), zero, zero, zero, one)
    return rz @ ry @ rx


def axis_angle_to_rotation_6d(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 6)."""
    return matrix_to_rotation_6d(axis_angle_to_matrix(axis_angle))


def rotation_6d_to_axis_angle(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3)."""
    return matrix_to_axis_angle(rotation_6d_to_matrix(d6))


def euler_to_rotation_6d(euler: torch.Tensor) -> torch.Tensor:
    """(..., 3) Euler (x, y, z) radians -> (..., 6)."""
    return matrix_to_rotation_6d(euler_to_matrix(euler))


# -- NumPy ----------------------------------------------------------------------------------------
def exp_rotation(omega: np.ndarray) -> np.ndarray:
    """(3,) axis-angle -> (3, 3) float64 rotation (Rodrigues; ``axis_angle_to_matrix`` of one)."""
    x, y, z = (float(v) for v in omega)
    angle = math.sqrt(x * x + y * y + z * z)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    if angle < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + math.sin(angle) / angle * k + (1.0 - math.cos(angle)) / angle**2 * (k @ k)


def log_rotation(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (3,) axis-angle, angle in [0, pi] (``matrix_to_axis_angle`` of one)."""
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = rotation.tolist()  # Python floats: no NumPy call per scalar
    angle = math.acos(min(max((r00 + r11 + r22 - 1.0) / 2.0, -1.0), 1.0))
    vee = np.array([r21 - r12, r02 - r20, r10 - r01])
    if angle < 1e-6:
        return vee / 2.0
    if angle > math.pi - 1e-4:  # near pi: the axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(rotation) + 1.0) / 2.0, 0.0, None))
        axis *= np.sign(vee + (vee == 0))
        return axis / np.linalg.norm(axis) * angle
    return vee * angle / (2.0 * math.sin(angle))


def matrix_to_yaw_pitch_roll(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) R = Ry(yaw) Rx(pitch) Rz(roll) -> (..., 3) float32 (yaw, pitch, roll) radians,
    pitch in [-pi/2, pi/2]."""
    r = np.asarray(rotation, np.float64)
    pitch = np.arcsin(np.clip(-r[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(r[..., 0, 2], r[..., 2, 2])
    roll = np.arctan2(r[..., 1, 0], r[..., 1, 1])
    return np.stack([yaw, pitch, roll], axis=-1).astype(np.float32)


def matrix_to_quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 4) float64 unit quaternions (x, y, z, w), w >= 0
    (``matrix_to_quaternion`` in float64, scalar last)."""
    wxyz = matrix_to_quaternion(torch.from_numpy(np.array(rotation, np.float64))).numpy()
    return np.concatenate([wxyz[..., 1:], wxyz[..., :1]], axis=-1)


def quaternion_xyzw_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """(4,) quaternion (x, y, z, w), any length but zero -> (3, 3) float64 rotation."""
    x, y, z, w = quaternion / np.linalg.norm(quaternion)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
