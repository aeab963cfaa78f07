"""Mesh overlay drawing, checked against a sphere's analytic outline and shading and the planes
of its head frame (the wireframe's grid); the shading and the wireframe at capped resolution
against the full-resolution ones on the ICT head; the sparse vertex normals against a direct sum;
the mesh colour and opacity options."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.meshes import icosphere
from tracker.head_models import load_head_model
from tracker.live.results import FaceResult, TrackingResult
from tracker.live.sources import Frame
from tracker.outputs.overlay import (
    AMBIENT,
    LINE_SHADE,
    MESH_COLOUR,
    SHADE_RESOLUTION,
    MeshTopology,
    draw_mesh,
    draw_overlay,
    grid_spacing,
    mesh_window,
    parse_colour,
    parse_opacity,
    project_vertices,
    shade_face,
    wireframe_face,
)
from tracker.render.maps import vertex_normals

WIDTH, HEIGHT = 320, 240
FOCAL = np.array([300.0, 300.0])
PRINCIPAL = np.array([150.0, 130.0])
CENTRE = np.array([0.02, -0.01, 0.5])  # metres, camera frame
RADIUS = 0.05


def sphere_result(rotation: np.ndarray | None = None, extra: tuple[np.ndarray, float] | None = None) -> tuple[TrackingResult, torch.Tensor]:
    """The sphere (RADIUS at CENTRE) as a tracked head posed by ``rotation`` (default: none) and
    placed at CENTRE, on a black frame; ``extra`` (centre, radius): a second sphere in the same mesh."""
    rotation = np.eye(3) if rotation is None else rotation
    sphere, faces = icosphere(4, dtype=torch.float64)
    head = sphere.numpy() * RADIUS  # the head frame: +y up, +z out of the face
    vertices = head * (1.0, -1.0, -1.0) @ rotation.T + CENTRE  # X_cam = R diag(1, -1, -1) X_head + t
    if extra is not None:
        vertices = np.concatenate((vertices, sphere.numpy() * extra[1] + extra[0]))
        faces = torch.cat((faces, faces + len(sphere)))
    centre_px = CENTRE[:2] / CENTRE[2] * FOCAL + PRINCIPAL
    side = 2 * RADIUS / CENTRE[2] * FOCAL[0] * 1.2
    face = FaceResult(
        params={}, rotation_6d=torch.zeros(6), rotation=torch.tensor(rotation, dtype=torch.float32), translation=torch.tensor(CENTRE, dtype=torch.float32),
        mesh=torch.tensor(vertices, dtype=torch.float32), landmarks68=np.tile(centre_px, (68, 1)), mesh_landmarks68=np.tile(centre_px, (68, 1)),
        crop_box=np.array([centre_px[0] - side / 2, centre_px[1] - side / 2, side]), track_id=0, crop=None, cue=None,
    )
    frame = Frame(np.zeros((HEIGHT, WIDTH, 3), np.uint8), 0, 0.0, None)
    return TrackingResult(frame, [face], FOCAL, PRINCIPAL, {}), faces


def ray_cast_sphere(centre: np.ndarray = CENTRE, radius: float = RADIUS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(covered (H, W) bool, hit points (H, W, 3) camera frame, unit rays (H, W, 3)) of a sphere,
    by ray casting at pixel centres."""
    x, y = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    rays = np.stack([(x - PRINCIPAL[0]) / FOCAL[0], (y - PRINCIPAL[1]) / FOCAL[1], np.ones_like(x)], -1)
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    along = rays @ centre
    miss = along**2 - (centre @ centre - radius**2)
    covered = miss > 0
    return covered, rays * (along - np.sqrt(np.maximum(miss, 0)))[..., None], rays


def analytic_sphere_view():
    """(covered (H, W) bool, cosine between the surface normal and the viewing ray (H, W)) of the
    sphere by ray casting at pixel centres."""
    covered, hit, rays = ray_cast_sphere()
    normal = (hit - CENTRE) / RADIUS
    return covered, np.where(covered, -(normal * rays).sum(-1), 0.0)


def eroded(mask: np.ndarray, pixels: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)).astype(bool)


def rim(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` with a 4-neighbour outside it."""
    return mask & ~cv2.erode(mask.astype(np.uint8), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)).astype(bool)


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


def test_shaded_mesh_has_the_colour_and_opacity_asked() -> None:
    """Over a black frame, each pixel is opacity x (AMBIENT + (1 - AMBIENT) cos^2) x colour."""
    result, faces = sphere_result()
    covered, cosine = analytic_sphere_view()
    inside = eroded(covered, 2)
    colour = (40, 90, 250)
    for opacity in (1.0, 0.5):
        image = draw_overlay(result.frame.image, result, faces, "shaded", landmarks=False, resolution=None, colour=colour, opacity=opacity)
        expected = opacity * (AMBIENT + (1 - AMBIENT) * cosine[..., None] ** 2) * np.array(colour)
        error = np.abs(image.astype(float) - expected)[inside]
        assert error.mean() < 1.5 and error.max() <= 8, (opacity, error.mean(), error.max())


def test_opacity_and_colour_are_checked() -> None:
    result, faces = sphere_result()
    for bad in (dict(opacity=1.5), dict(opacity=-0.1), dict(colour=(0, 0, 256)), dict(colour=(0, 0))):
        with pytest.raises(ValueError, match="mesh (opacity|colour)"):
            draw_mesh(result.frame.image.copy(), result, faces, "shaded", **bad)


def yaw_pitch(yaw_degrees: float, pitch_degrees: float) -> np.ndarray:
    yaw, pitch = np.radians(yaw_degrees), np.radians(pitch_degrees)
    about_y = np.array([[np.cos(yaw), 0.0, np.sin(yaw)], [0.0, 1.0, 0.0], [-np.sin(yaw), 0.0, np.cos(yaw)]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(pitch), -np.sin(pitch)], [0.0, np.sin(pitch), np.cos(pitch)]])
    return about_x @ about_y


def test_wireframe_grid_lines_are_where_the_head_planes_cut_the_surface() -> None:
    """The turned and tilted sphere's grid: a line wherever the head-frame x or y of the surface
    (ray-cast) is a multiple of the spacing, and nothing elsewhere inside the outline."""
    rotation = yaw_pitch(30.0, 20.0)
    result, faces = sphere_result(rotation)
    face = result.faces[0]
    spacing = grid_spacing(face, FOCAL)
    assert spacing == 0.02, "1 cm is 6 px at 0.5 m with focal 300: doubled to 12 px"
    alpha = wireframe_face(face, faces, FOCAL, PRINCIPAL, (0, 0, WIDTH, HEIGHT), resolution=None)
    covered, hit, _ = ray_cast_sphere()
    head = (hit - CENTRE) @ rotation * (1.0, -1.0, -1.0)  # X_head = diag(1, -1, -1) R^T (X_cam - t)
    distance = np.full(covered.shape, np.inf)  # pixels from the pixel centre to the nearest grid line
    for axis in (0, 1):
        levels = np.where(covered, head[..., axis], 0.0) / spacing
        rows, cols = np.gradient(levels)
        distance = np.minimum(distance, np.abs(levels - np.round(levels)) / np.hypot(rows, cols).clip(1e-9))
    inside = eroded(covered, 4)  # away from the outline (the contour) and the steep rim
    assert alpha[inside & (distance < 0.25)].min() > 0.7, "every line drawn"
    assert alpha[inside & (distance > 1.5)].max() == 0, "nothing between the lines"
    lines = inside & (alpha > 0.5)
    assert 0.1 < lines.sum() / inside.sum() < 0.3, "thin lines, about 2 of every 12 pixels"


def test_wireframe_draws_the_outline_and_a_part_in_front_of_another() -> None:
    small_centre, small_radius = CENTRE + np.array([0.015, 0.01, -0.09]), 0.012  # in front of the big sphere, inside its outline
    result, faces = sphere_result(extra=(small_centre, small_radius))
    alpha = wireframe_face(result.faces[0], faces, FOCAL, PRINCIPAL, (0, 0, WIDTH, HEIGHT), resolution=None)
    big, _, _ = ray_cast_sphere()
    small, _, _ = ray_cast_sphere(small_centre, small_radius)
    assert (small & ~big).sum() == 0 and small.sum() > 100
    for name, outline in (("outline", rim(big)), ("the small sphere's contour over the big one", rim(small))):
        assert (alpha[outline] > 0.5).mean() > 0.9, name


def test_wireframe_is_drawn_only_on_the_mesh() -> None:
    result, faces = sphere_result()
    image = draw_overlay(result.frame.image, result, faces, "wireframe", landmarks=False)
    covered, _ = analytic_sphere_view()
    near = cv2.dilate(covered.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # soft edges: 2 px
    assert not image.any(-1)[~near].any()
    assert result.frame.image.max() == 0, "the input frame is not modified"


def test_wireframe_lines_are_the_colour_darkened() -> None:
    result, faces = sphere_result()
    colour, opacity = (40, 90, 250), 0.8
    alpha = wireframe_face(result.faces[0], faces, FOCAL, PRINCIPAL, (0, 0, WIDTH, HEIGHT), resolution=None)
    image = draw_overlay(result.frame.image, result, faces, "wireframe", landmarks=False, resolution=None, colour=colour, opacity=opacity)
    full = alpha == 1.0
    assert full.sum() > 100
    np.testing.assert_allclose(image[full], np.broadcast_to(opacity * LINE_SHADE * np.array(colour), (full.sum(), 3)), atol=1.0)


def test_landmarks_draw_dots_at_the_landmarks() -> None:
    result, faces = sphere_result()
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


@pytest.mark.parametrize("yaw", [0.0, 35.0])
def test_capped_wireframe_agrees_with_full_resolution_on_the_ict_head(ict_head, yaw: float) -> None:
    """Rasterised at SHADE_RESOLUTION and upscaled, the lines lie within a pixel of the
    full-resolution ones, and few of those are missing."""
    result = ict_result(ict_head, yaw)
    face = result.faces[0]
    window = mesh_window(project_vertices(face, result.focal, result.principal), 640, 360)
    full = wireframe_face(face, ict_head.render_faces, result.focal, result.principal, window, resolution=None) > 0.5
    capped = wireframe_face(face, ict_head.render_faces, result.focal, result.principal, window) > 0.5
    near = np.ones((3, 3), np.uint8)
    assert (capped & ~cv2.dilate(full.astype(np.uint8), near).astype(bool)).sum() < 0.05 * capped.sum()
    assert (full & ~cv2.dilate(capped.astype(np.uint8), near).astype(bool)).sum() < 0.1 * full.sum()


def test_wireframe_looks_the_same_on_a_frame_of_twice_the_resolution(ict_head) -> None:
    """Lines twice as wide on a 1280x720 frame as on 640x360 (a window shows either at about the
    same size), so they cover the same share of the face; the grid at the same places."""
    result = ict_result(ict_head, 20.0)
    double = dataclasses.replace(result, frame=dataclasses.replace(result.frame, image=cv2.resize(result.frame.image, (1280, 720))),
                                 focal=result.focal * 2, principal=result.principal * 2)
    line = np.round(np.array(MESH_COLOUR) * LINE_SHADE)
    share = []  # of the face's window covered by the lines: their ink, the anti-aliased fringes in part
    for frame in (result, double):
        image = draw_overlay(frame.frame.image, frame, ict_head.render_faces, "wireframe", landmarks=False, opacity=1.0)
        x0, y0, x1, y1 = mesh_window(project_vertices(frame.faces[0], frame.focal, frame.principal), *image.shape[1::-1])
        share.append((np.abs(image[y0:y1, x0:x1] - 90.0).sum(-1) / np.abs(line - 90.0).sum()).mean())
    assert 0.9 < share[1] / share[0] < 1.1, share


def test_colour_and_opacity_options() -> None:
    assert parse_colour("skyblue") == MESH_COLOUR
    assert parse_colour("#FF8000") == (0, 128, 255) and parse_colour(" Orange ") == (0, 165, 255)
    for text in ("nonesuch", "#12345", "#1234567", "rgb(1, 2, 3)", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="a CSS colour name .* or #rrggbb"):
            parse_colour(text)
    assert [parse_opacity(text) for text in ("0", "0.35", "1")] == [0.0, 0.35, 1.0]
    for text in ("-0.1", "1.01", "nan", "inf", "half"):
        with pytest.raises(argparse.ArgumentTypeError, match="from 0 .invisible. to 1 .opaque."):
            parse_opacity(text)
