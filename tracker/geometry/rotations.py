"""Rotation representations as pure batched functions.

Conventions:
    matrices    (..., 3, 3), acting on column vectors: ``x' = R @ x``.
    6D          (..., 6), the first two *rows* of the matrix (Zhou et al. 2019, the layout of
                pytorch3d's ``matrix_to_rotation_6d`` that Pixel3DMM uses); identity = [1,0,0, 0,1,0].
    axis-angle  (..., 3), axis * angle in radians.
    Euler       (..., 3) angles (x, y, z) in radians, ``R = Rz @ Ry @ Rx`` (extrinsic X, then Y,
                then Z): x is pitch, y is yaw, z is roll for a head facing +z.
"""

from __future__ import annotations

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


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) angles (x, y, z) with y in [-pi/2, pi/2]; inverse of euler_to_matrix."""
    r = matrix
    y = torch.asin((-r[..., 2, 0]).clamp(-1.0, 1.0))
    x = torch.atan2(r[..., 2, 1], r[..., 2, 2])
    z = torch.atan2(r[..., 1, 0], r[..., 0, 0])
    return torch.stack((x, y, z), -1)


def axis_angle_to_rotation_6d(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 6)."""
    return matrix_to_rotation_6d(axis_angle_to_matrix(axis_angle))


def rotation_6d_to_axis_angle(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3)."""
    return matrix_to_axis_angle(rotation_6d_to_matrix(d6))


def euler_to_rotation_6d(euler: torch.Tensor) -> torch.Tensor:
    """(..., 3) Euler (x, y, z) radians -> (..., 6)."""
    return matrix_to_rotation_6d(euler_to_matrix(euler))
