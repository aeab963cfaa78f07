"""Pinhole projection and the crop camera (N2FNet eqs. 6-9) against analytic references."""

import math

import torch

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


def test_intrinsics_normalisation_round_trip():
    focal, principal = torch.tensor([[900.0, 950.0]]), torch.tensor([[320.0, 180.0]])
    fn, cn = camera.normalise_intrinsics(focal, principal, (640, 360))
    assert torch.allclose(cn, torch.tensor([[0.5, 0.5]]))
    f2, c2 = camera.pixel_intrinsics(fn, cn, (640, 360))
    assert torch.allclose(f2, focal) and torch.allclose(c2, principal)


def test_square_box_follows_deca_rule():
    lmk = torch.tensor([[[10.0, 20.0], [50.0, 100.0], [30.0, 60.0]]])
    box = crop.square_box_from_landmarks(lmk, alpha=1.25)
    side = 80 * 1.25
    assert torch.allclose(box, torch.tensor([[30 - side / 2, 60 - side / 2, side]]))


def test_crop_camera_equals_original_projection_then_crop_affine():
    """Eqs. 6-9: projecting with the crop camera == projecting with the original, then cropping."""
    head, rotation, t, focal, principal = _random_scene()
    points_cam = camera.head_to_camera(head, rotation, t)
    uv_orig = camera.project(points_cam, focal, principal)
    box = crop.square_box_from_landmarks(uv_orig, alpha=1.3)
    focal_c, principal_c = crop.crop_intrinsics(focal, principal, box, out_size=256)
    uv_crop = camera.project(points_cam, focal_c, principal_c)
    uv_affine = crop.apply_affine(uv_orig, crop.crop_affine(box, 256))
    max_px = (uv_crop - uv_affine).abs().max().item()
    print(f"crop camera vs original projection + crop affine: max difference {max_px:.3e} px")
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


def test_crop_affine_maps_box_corner_to_origin_and_scales():
    box = torch.tensor([[100.0, 50.0, 200.0]])
    pts = torch.tensor([[[150.0, 75.0]]])
    mapped = crop.apply_affine(pts, crop.crop_affine(box, 256))
    assert torch.allclose(mapped, torch.tensor([[[64.0, 32.0]]]))
    assert math.isclose(256 / 200, crop.crop_affine(box, 256)[0, 0, 0].item(), rel_tol=1e-6)
