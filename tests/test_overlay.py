"""Mesh overlay drawing, checked against a sphere's analytic outline and shading; the shading at
capped resolution against the full-resolution one on the ICT head; the sparse vertex normals
against a direct sum."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.meshes import icosphere
from tracker.head_models import load_head_model
from tracker.overlay import SHADE_RESOLUTION, MeshTopology, draw_overlay, mesh_window, project_vertices, shade_face
from tracker.render.maps import vertex_normals
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
    shade, coverage = shade_face(result.faces[0], faces, FOCAL, PRINCIPAL, window, resolution=None)
    covered = coverage > 0.5
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


def test_the_mesh_is_drawn_whole_beyond_the_crop_box() -> None:
    result, faces = sphere_result()
    face = result.faces[0]
    small = dataclasses.replace(face, crop_box=face.crop_box * np.array([1.0, 1.0, 0.0]) + np.array([0.0, 0.0, 10.0]))  # a 10 px crop
    image = draw_overlay(result.frame.image, dataclasses.replace(result, faces=[small]), faces, "shaded", landmarks=False)
    expected_cover, _ = analytic_sphere_view()
    assert image.any(-1)[expected_cover].mean() > 0.98


def test_a_window_within_the_resolution_is_shaded_at_full_resolution() -> None:
    result, faces = sphere_result()
    window = mesh_window(project_vertices(result.faces[0], FOCAL, PRINCIPAL), WIDTH, HEIGHT)
    assert max(window[2] - window[0], window[3] - window[1]) <= SHADE_RESOLUTION
    capped = shade_face(result.faces[0], faces, FOCAL, PRINCIPAL, window)
    full = shade_face(result.faces[0], faces, FOCAL, PRINCIPAL, window, resolution=None)
    assert all(np.array_equal(a, b) for a, b in zip(capped, full))


@pytest.fixture(scope="module")
def ict_head(ict_npz_path: Path):
    return load_head_model("ict", ict_npz_path)


def ict_result(head, yaw_degrees: float, distance: float = 0.45) -> TrackingResult:
    """The neutral ICT head turned by ``yaw_degrees`` about the vertical, ``distance`` metres in
    front of a 640 x 360 camera (focal 640): the frame's height, its neck cut by the bottom edge,
    like a tracked face."""
    yaw = np.radians(yaw_degrees)
    rotation = torch.tensor([[np.cos(yaw), 0.0, np.sin(yaw)], [0.0, 1.0, 0.0], [-np.sin(yaw), 0.0, np.cos(yaw)]], dtype=torch.float32)
    translation = torch.tensor([0.01, 0.03, distance])
    vertices = head.neutral @ rotation.T * torch.tensor([1.0, -1.0, -1.0]) + translation
    focal, principal = np.array([640.0, 640.0]), np.array([320.0, 180.0])
    centre = translation[:2].numpy() / distance * focal + principal
    face = FaceResult(
        params={}, rotation_6d=torch.zeros(6), rotation=rotation, translation=translation, mesh=vertices,
        landmarks68=np.tile(centre, (68, 1)), mesh_landmarks68=np.tile(centre, (68, 1)),
        crop_box=np.array([centre[0] - 100, centre[1] - 100, 200.0]), track_id=0, crop=None, cue=None,
    )
    return TrackingResult(Frame(np.full((360, 640, 3), 90, np.uint8), 0, 0.0, None), [face], focal, principal, {})


@pytest.mark.parametrize("yaw", [0.0, 35.0])
def test_capped_shading_agrees_with_full_resolution_on_the_ict_head(ict_head, yaw: float) -> None:
    result = ict_result(ict_head, yaw)
    face = result.faces[0]
    window = mesh_window(project_vertices(face, result.focal, result.principal), 640, 360)
    assert max(window[2] - window[0], window[3] - window[1]) > 1.5 * SHADE_RESOLUTION, "the window is shaded smaller"
    full_shade, full_cover = shade_face(face, ict_head.render_faces, result.focal, result.principal, window, resolution=None)
    shade, coverage = shade_face(face, ict_head.render_faces, result.focal, result.principal, window)
    full, capped = full_cover > 0.5, coverage > 0.5
    assert (full & capped).sum() / (full | capped).sum() > 0.95
    assert np.abs(shade - full_shade)[full & capped].mean() < 0.02
    assert ((coverage > 0) & (coverage < 1)).any(), "soft edges where the upscaled coverage is partial"
    image = draw_overlay(result.frame.image, result, ict_head.render_faces, "shaded", landmarks=False)
    x0, y0, x1, y1 = window
    drawn = (image[y0:y1, x0:x1] != 90).any(-1)
    assert (drawn == (coverage > 0)).mean() > 0.99, "drawn exactly where the mesh covers its window"


def test_sparse_vertex_normals_equal_the_direct_sum(ict_head) -> None:
    faces = ict_head.render_faces.numpy()
    topology = MeshTopology(faces, ict_head.num_vertices)
    for yaw in (0.0, 35.0):
        vertices = ict_result(ict_head, yaw).faces[0].vertices.numpy()  # float32, as the views give them
        normals = topology.vertex_normals(vertices)
        assert normals.dtype == np.float32 and normals.shape == vertices.shape
        reference = vertex_normals(torch.from_numpy(vertices)[None], torch.from_numpy(faces))[0].numpy()  # the renderer's (index_add)
        np.testing.assert_allclose(normals, reference, rtol=0, atol=1e-6)
    unused = np.setdiff1d(np.arange(ict_head.num_vertices), faces)
    assert unused.size and not normals[unused].any(), "vertices of no rendered triangle (the see-through layers) get zero"


def test_topology_edges_are_each_undirected_edge_once() -> None:
    _, faces = icosphere(2)
    topology = MeshTopology(faces.numpy(), int(faces.max()) + 1)
    assert len(topology.edges) == 3 * len(faces) // 2, "a closed mesh: every edge shared by two triangles"
    assert (topology.edges[:, 0] < topology.edges[:, 1]).all()
    ends = np.sort(faces.numpy()[:, [1, 2]], 1)  # the edge opposite corner 0
    assert np.array_equal(topology.edges[topology.edge_index[0]], ends)
