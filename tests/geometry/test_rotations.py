"""Rotation converters against scipy's independent implementation."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tracker.geometry import rotations as rot


@pytest.fixture()
def random_rotations():
    return Rotation.random(500, random_state=0)


def test_axis_angle_to_matrix_matches_scipy(random_rotations):
    aa = random_rotations.as_rotvec()
    ours = rot.axis_angle_to_matrix(torch.from_numpy(aa)).numpy()
    np.testing.assert_allclose(ours, random_rotations.as_matrix(), atol=1e-12)


def test_matrix_to_axis_angle_matches_scipy_including_near_pi_and_zero():
    aa = np.concatenate(
        [Rotation.random(200, random_state=1).as_rotvec(), [[np.pi - 1e-7, 0, 0], [0, 0, 1e-10], [0, 0, 0]]]
    )
    matrices = Rotation.from_rotvec(aa).as_matrix()
    ours = rot.matrix_to_axis_angle(torch.from_numpy(matrices))
    back = Rotation.from_rotvec(ours.numpy()).as_matrix()
    np.testing.assert_allclose(back, matrices, atol=1e-9)
    assert (ours.norm(dim=-1) <= np.pi + 1e-9).all()


def test_euler_matches_scipy_extrinsic_xyz(random_rotations):
    euler = random_rotations.as_euler("xyz")  # extrinsic x, then y, then z: R = Rz Ry Rx
    ours = rot.euler_to_matrix(torch.from_numpy(euler)).numpy()
    np.testing.assert_allclose(ours, random_rotations.as_matrix(), atol=1e-12)


def test_yaw_pitch_roll_matches_scipy_intrinsic_yxz_and_differs_from_euler(random_rotations):
    angles = random_rotations.as_euler("YXZ")  # intrinsic Y, X', Z'': R = Ry(yaw) Rx(pitch) Rz(roll)
    np.testing.assert_allclose(rot.matrix_to_yaw_pitch_roll(random_rotations.as_matrix()), angles, atol=1e-5)
    assert rot.matrix_to_yaw_pitch_roll(random_rotations.as_matrix()).dtype == np.float32
    # Rz Ry Rx and Ry Rx Rz: the same rotation without roll, different ones with it
    no_roll = Rotation.from_euler("YXZ", [0.4, 0.3, 0.0]).as_matrix()
    np.testing.assert_allclose(rot.euler_to_matrix(torch.tensor([0.3, 0.4, 0.0], dtype=torch.float64)).numpy(), no_roll, atol=1e-12)
    rolled = Rotation.from_euler("YXZ", [0.4, 0.3, 0.2]).as_matrix()
    assert not np.allclose(rot.euler_to_matrix(torch.tensor([0.3, 0.4, 0.2], dtype=torch.float64)).numpy(), rolled, atol=1e-3)


def test_numpy_exp_and_log_are_the_torch_axis_angle_maps():
    rng = np.random.default_rng(0)
    omegas = [rng.normal(size=3) * rng.uniform(0, 3) for _ in range(40)]
    omegas = [o for o in omegas if np.linalg.norm(o) < np.pi] + [np.zeros(3), np.array([0.0, 0.0, 1e-10]), np.array([np.pi - 1e-6, 0.0, 0.0])]
    for omega in omegas:
        rotation = rot.exp_rotation(omega)
        assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rotation, rot.axis_angle_to_matrix(torch.from_numpy(omega)).numpy(), atol=1e-12)
        np.testing.assert_allclose(rot.log_rotation(rotation), omega, atol=1e-8 if np.linalg.norm(omega) < 3 else 1e-5)
        np.testing.assert_allclose(rot.log_rotation(rotation), rot.matrix_to_axis_angle(torch.from_numpy(rotation)).numpy(), atol=1e-5)


def test_quaternions_match_scipy_with_w_non_negative(random_rotations):
    matrices = random_rotations.as_matrix()
    xyzw = random_rotations.as_quat()
    xyzw = np.where(xyzw[:, 3:] < 0, -xyzw, xyzw)
    ours = rot.matrix_to_quaternion_xyzw(matrices)
    np.testing.assert_allclose(ours, xyzw, atol=1e-12)
    assert ours.dtype == np.float64 and (ours[:, 3] >= 0).all()
    np.testing.assert_allclose(ours[:, [3, 0, 1, 2]], rot.matrix_to_quaternion(torch.from_numpy(matrices)).numpy(), atol=0)
    np.testing.assert_allclose(rot.matrix_to_quaternion_xyzw(matrices[0].astype(np.float32)), ours[0], atol=1e-6)  # one (3, 3), any float
    for q, matrix in zip(ours[:50], matrices):
        np.testing.assert_allclose(rot.quaternion_xyzw_to_matrix(q), matrix, atol=1e-12)
        np.testing.assert_allclose(rot.quaternion_xyzw_to_matrix(-2.5 * q), matrix, atol=1e-12)  # any non-zero length, either sign


def test_6d_is_first_two_rows_and_round_trips(random_rotations):
    matrices = torch.from_numpy(random_rotations.as_matrix())
    d6 = rot.matrix_to_rotation_6d(matrices)
    np.testing.assert_array_equal(d6[:, :3].numpy(), matrices[:, 0].numpy())
    np.testing.assert_array_equal(d6[:, 3:].numpy(), matrices[:, 1].numpy())
    np.testing.assert_allclose(rot.rotation_6d_to_matrix(d6).numpy(), matrices.numpy(), atol=1e-12)


def test_6d_of_arbitrary_vectors_is_a_proper_rotation():
    d6 = torch.randn(300, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    matrices = rot.rotation_6d_to_matrix(d6)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(matrices @ matrices.transpose(-1, -2), eye.expand_as(matrices), atol=1e-12)
    assert torch.allclose(torch.linalg.det(matrices), torch.ones(300, dtype=torch.float64))
    first_row = d6[:, :3] / d6[:, :3].norm(dim=-1, keepdim=True)
    assert torch.allclose(matrices[:, 0], first_row, atol=1e-12)


def test_identity_and_converter_chains():
    assert torch.equal(rot.rotation_6d_to_matrix(rot.identity_6d(2)), torch.eye(3).expand(2, 3, 3))
    aa = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)
    np.testing.assert_allclose(rot.rotation_6d_to_axis_angle(rot.axis_angle_to_rotation_6d(aa)).numpy(), aa.numpy(), atol=1e-12)
    euler = torch.tensor([[0.1, 0.2, -0.3]], dtype=torch.float64)
    expected = Rotation.from_euler("xyz", euler.numpy()).as_matrix()
    np.testing.assert_allclose(rot.rotation_6d_to_matrix(rot.euler_to_rotation_6d(euler)).numpy(), expected, atol=1e-12)


def test_axis_angle_gradient_is_finite_at_zero():
    aa = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    rot.axis_angle_to_matrix(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()
    aa = torch.tensor([[0.2, -0.4, 0.3]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rot.axis_angle_to_matrix, (aa,))
