"""Pinhole projection, the avatar-frame head pose and the crop camera (N2FNet eqs. 6-9) against
analytic references."""

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from tracker.geometry import camera, crop
from tracker.geometry.rotations import euler_to_matrix


def _random_scene(batch=8, points=68, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = (torch.rand(batch, points, 3, generator=g, dtype=torch.float64) - 0.5) * 0.2
    euler = torch.randn(batch, 3, generator=g, dtype=torch.float64) * torch.tensor([0.26, 0.35, 0.17], dtype=torch.float64)
    t = torch.randn(batch, 3, generator=g, dtype=torch.float64) * torch.tensor([0.02, 0.02, 0.2], dtype=torch.float64)
    t[:, 2] += 1.0
    focal = 1000 + 400 * torch.rand(batch, generator=g, dtype=torch.float64)
    principal = torch.tensor([320.0, 240.0], dtype=torch.float64) + 10 * torch.randn(batch, 2, generator=g, dtype=torch.float64)
    return head, euler_to_matrix(euler), t, focal, principal


def test_projection_is_the_pinhole_formula():
    points = torch.tensor([[[0.1, -0.05, 2.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    uv = camera.project(points, torch.tensor([[800.0, 900.0]], dtype=torch.float64), torch.tensor([[320.0, 240.0]], dtype=torch.float64))
    expected = torch.tensor([[[800 * 0.05 + 320, 900 * -0.025 + 240], [320, 240]]], dtype=torch.float64)
    assert torch.allclose(uv, expected)


def test_frontal_head_faces_the_camera():
    nose = torch.tensor([[[0.0, 0.0, 0.1]]])  # head frame: +z out of the face
    top = torch.tensor([[[0.0, 0.1, 0.0]]])  # +y up
    rotation, t = torch.eye(3)[None], torch.tensor([[0.0, 0.0, 1.0]])
    assert camera.head_to_camera(nose, rotation, t)[0, 0, 2] < 1.0  # the nose is nearer than the origin
    assert camera.head_to_camera(top, rotation, t)[0, 0, 1] < 0.0  # up is -y in OpenCV's frame
    assert torch.allclose(camera.camera_to_view(camera.head_to_camera(nose, rotation, torch.zeros(1, 3))), nose)


def test_project_head_is_the_pinhole_of_the_posed_points():
    head, rotation, t, focal, principal = _random_scene()
    uv = camera.project_head(head, rotation, t, focal, principal)
    flipped = head * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)  # X_cam = R diag(1, -1, -1) X_head + t
    cam = torch.einsum("bij,bnj->bni", rotation, flipped) + t[:, None]
    expected = cam[..., :2] / cam[..., 2:] * focal[:, None, None] + principal[:, None]
    assert torch.allclose(uv, expected, atol=1e-9)


def test_flip_forms_agree():
    assert np.array_equal(camera.flip_matrix(dtype=torch.float64).numpy(), camera.FLIP_MATRIX)
    assert np.array_equal(np.diag(camera.FLIP_MATRIX), camera.FLIP) and camera.FLIP_MATRIX.dtype == np.float32
    vectors = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(camera.camera_to_view(vectors), vectors @ camera.flip_matrix())


def _yaw_pitch_roll_matrix(angles) -> np.ndarray:
    return Rotation.from_euler("YXZ", angles).as_matrix()  # intrinsic Y, X', Z'': Ry(yaw) Rx(pitch) Rz(roll)


def test_head_pose_angles_mean_what_they_say():
    # the tracker's frontal pose (R = I) is the identity; a head turned to its own left moves its nose to the image right
    rotation, head_angles, position = camera.head_pose(np.eye(3), np.array([0.0, 0.0, 1.0]))
    assert np.allclose(rotation, np.eye(3)) and np.allclose(head_angles, 0) and np.allclose(position, [0, 0, -1])
    assert rotation.dtype == head_angles.dtype == position.dtype == np.float32
    tracker_rotation = camera.FLIP_MATRIX @ _yaw_pitch_roll_matrix([0.3, 0.0, 0.0]) @ camera.FLIP_MATRIX  # yaw > 0
    nose = camera.head_to_camera(torch.tensor([[[0.0, 0.0, 0.1]]]), torch.from_numpy(tracker_rotation).float()[None], torch.tensor([[0.0, 0.0, 1.0]]))
    assert nose[0, 0, 0] > 0.02
    assert np.allclose(camera.head_pose(tracker_rotation, np.zeros(3))[1], [0.3, 0, 0], atol=1e-6)
    down = camera.FLIP_MATRIX @ _yaw_pitch_roll_matrix([0.0, 0.3, 0.0]) @ camera.FLIP_MATRIX  # pitch > 0: the nose goes down in the image (+y in OpenCV)
    nose = camera.head_to_camera(torch.tensor([[[0.0, 0.0, 0.1]]]), torch.from_numpy(down).float()[None], torch.tensor([[0.0, 0.0, 1.0]]))
    assert nose[0, 0, 1] > 0.02
    angles = np.random.default_rng(0).uniform(-1.2, 1.2, size=(20, 3))
    for a in angles:
        avatar, recovered, _ = camera.head_pose(camera.FLIP_MATRIX @ _yaw_pitch_roll_matrix(a) @ camera.FLIP_MATRIX, np.zeros(3))
        assert np.allclose(avatar, _yaw_pitch_roll_matrix(a), atol=1e-6) and np.allclose(recovered, a, atol=1e-5)


def test_square_box_follows_deca_rule():
    lmk = torch.tensor([[[10.0, 20.0], [50.0, 100.0], [30.0, 60.0]]])
    box = crop.square_box_from_landmarks(lmk, alpha=1.25)
    side = 80 * 1.25
    assert torch.allclose(box, torch.tensor([[30 - side / 2, 60 - side / 2, side]]))


def test_crop_camera_equals_original_projection_then_crop():
    """Eqs. 6-9: projecting with the crop camera == projecting with the original, then cropping
    (``u' = (u - x0) * out_size / side``)."""
    head, rotation, t, focal, principal = _random_scene()
    points_cam = camera.head_to_camera(head, rotation, t)
    uv_orig = camera.project(points_cam, focal, principal)
    box = crop.square_box_from_landmarks(uv_orig, alpha=1.3)
    focal_c, principal_c = crop.crop_intrinsics(focal, principal, box, out_size=256)
    uv_crop = camera.project(points_cam, focal_c, principal_c)
    uv_cropped = (uv_orig - box[:, None, :2]) * (256 / box[:, None, 2:])
    max_px = (uv_crop - uv_cropped).abs().max().item()
    print(f"crop camera vs original projection + crop: max difference {max_px:.3e} px")
    assert max_px < 1e-9
    # the landmarks' box fills the crop as the padding factor says
    extent = uv_crop.amax(1) - uv_crop.amin(1)
    assert torch.allclose(extent.max(-1).values, torch.full((8,), 256 / 1.3, dtype=torch.float64))
    # the paper's normalised form: f* = f_orig_n * S_orig / side
    s_orig = 640.0
    assert torch.allclose(focal_c[:, 0] / 256, (focal / s_orig) * s_orig / box[:, 2])


def test_crop_images_samples_the_box_at_pixel_centres():
    height, width = 60, 80
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    image = torch.stack((xs[None].expand(height, width), ys[:, None].expand(height, width)))[None]  # channels: x, y
    box = torch.tensor([[12.5, 7.0, 40.0]], dtype=torch.float64)
    out = crop.crop_images(image, box, out_size=32)
    centres = (torch.arange(32, dtype=torch.float64) + 0.5) * 40 / 32
    assert torch.allclose(out[0, 0, 5], 12.5 + centres, atol=1e-9)  # bilinear is exact on a ramp
    assert torch.allclose(out[0, 1, :, 5], 7.0 + centres, atol=1e-9)
    outside = crop.crop_images(image, torch.tensor([[-100.0, -100.0, 50.0]], dtype=torch.float64), 8)
    assert outside.abs().max() == 0


def test_crop_intrinsics_move_the_box_corner_to_the_origin_and_scale():
    box = torch.tensor([[100.0, 50.0, 200.0]])
    focal, principal = crop.crop_intrinsics(torch.tensor([800.0]), torch.tensor([[150.0, 75.0]]), box, 256)
    assert torch.allclose(principal, torch.tensor([[64.0, 32.0]]))  # (150 - 100, 75 - 50) * 256 / 200
    assert torch.allclose(focal, torch.tensor([[1024.0, 1024.0]]))
