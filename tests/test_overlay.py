"""Mesh overlay drawing, checked against a sphere's analytic outline and shading."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from tests.meshes import icosphere
from tracker.overlay import draw_overlay, shade_face
from tracker.sources import Frame
from tracker.tracking import FaceResult, TrackingResult

WIDTH, HEIGHT = 320, 240
FOCAL = np.array([300.0, 300.0])
PRINCIPAL = np.array([150.0, 130.0])
CENTRE = np.array([0.02, -0.01, 0.5])  # metres, camera frame
RADIUS = 0.05


def sphere_result() -> tuple[TrackingResult, torch.Tensor]:
    vertices, faces = icosphere(4, dtype=torch.float32)
    vertices = vertices * RADIUS + torch.tensor(CENTRE, dtype=torch.float32)
    centre_px = CENTRE[:2] / CENTRE[2] * FOCAL + PRINCIPAL
    side = 2 * RADIUS / CENTRE[2] * FOCAL[0] * 1.2
    face = FaceResult(
        params={}, rotation_6d=torch.zeros(6), rotation=torch.eye(3), translation=torch.tensor(CENTRE, dtype=torch.float32),
        mesh=vertices, landmarks68=np.tile(centre_px, (68, 1)), mesh_landmarks68=np.tile(centre_px, (68, 1)),
        crop_box=np.array([centre_px[0] - side / 2, centre_px[1] - side / 2, side]), track_id=0, crop=None, cue=None,
    )
    frame = Frame(np.zeros((HEIGHT, WIDTH, 3), np.uint8), 0, 0.0, None)
    return TrackingResult(frame, [face], FOCAL, PRINCIPAL, {}), faces


def analytic_sphere_view():
    """(covered (H, W) bool, cosine between the surface normal and the viewing ray (H, W)) of the
    sphere by ray casting at pixel centres."""
    x, y = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    rays = np.stack([(x - PRINCIPAL[0]) / FOCAL[0], (y - PRINCIPAL[1]) / FOCAL[1], np.ones_like(x)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    along = rays @ CENTRE
    miss = along**2 - (CENTRE @ CENTRE - RADIUS**2)
    covered = miss > 0
    hit = rays * (along - np.sqrt(np.maximum(miss, 0)))[..., None]
    normal = (hit - CENTRE) / RADIUS
    return covered, np.where(covered, -(normal * rays).sum(-1), 0.0)


def test_shaded_sphere_matches_ray_casting() -> None:
    result, faces = sphere_result()
    window = (0, 0, WIDTH, HEIGHT)
    shade, covered = shade_face(result.faces[0], faces, FOCAL, PRINCIPAL, window)
    expected_cover, expected_shade = analytic_sphere_view()
    disagree = covered != expected_cover
    assert disagree.sum() < 0.02 * expected_cover.sum(), "outline within the tessellation's error"
    both = covered & expected_cover
    assert np.abs(shade[both] - expected_shade[both]).mean() < 0.01
    assert shade[both].max() > 0.99  # the sphere's centre faces the camera


def test_overlay_draws_only_on_the_mesh_and_windowed_equals_full_frame() -> None:
    result, faces = sphere_result()
    image = draw_overlay(result.frame.image, result, faces, "shaded", landmarks=False)
    expected_cover, _ = analytic_sphere_view()
    drawn = image.any(-1)
    assert (drawn & ~expected_cover).sum() < 0.02 * expected_cover.sum()
    assert drawn[expected_cover].mean() > 0.98
    assert result.frame.image.max() == 0, "the input frame is not modified"


def test_wireframe_and_landmarks_draw_something_near_the_face() -> None:
    result, faces = sphere_result()
    wire = draw_overlay(result.frame.image, result, faces, "wireframe", landmarks=False)
    expected_cover, _ = analytic_sphere_view()
    drawn = wire.any(-1)
    near = cv2.dilate(expected_cover.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # anti-aliasing: 2 px
    assert drawn[expected_cover].mean() > 0.5 and not (drawn & ~near).any()
    dots = draw_overlay(result.frame.image, result, faces, "none", landmarks=True)
    centre = np.round(result.faces[0].landmarks68[0]).astype(int)
    assert dots[centre[1], centre[0]].any() and dots.any(-1).sum() < 100
