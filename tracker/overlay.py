"""Drawing tracking results over frames: the shaded or wireframe head mesh and the 68 landmarks.

The mesh is rasterised with the project's rasteriser in the frame camera the tracker assumed
(``TrackingResult.focal``/``principal``), only inside a window around the face, and shaded by
the angle between its normal and the viewing ray (a headlight), so it lines up with the face
exactly as the tracker sees it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from tracker.render.maps import vertex_normals
from tracker.render.rasterize import covered_to_image, interpolate_covered, rasterize
from tracker.tracking import FaceResult, TrackingResult

MESH_STYLES = ("shaded", "wireframe", "none")
MESH_COLOUR = np.array([235, 206, 135], np.float32)  # BGR, light blue-grey
LANDMARK_COLOUR = (0, 255, 255)  # BGR yellow
MODEL_LANDMARK_COLOUR = (255, 0, 255)


def face_window(face: FaceResult, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixel window around a face: its crop box grown by 25 %, clipped to the frame."""
    x0, y0, side = face.crop_box
    grow = 0.25 * side
    left, top = int(max(0, np.floor(x0 - grow))), int(max(0, np.floor(y0 - grow)))
    right, bottom = int(min(width, np.ceil(x0 + side + grow))), int(min(height, np.ceil(y0 + side + grow)))
    return left, top, max(left, right), max(top, bottom)


@torch.no_grad()
def shade_mesh(points: torch.Tensor, faces_tri: torch.Tensor, focal, principal, size: tuple[int, int]):
    """Headlight shading of a camera-frame mesh -> (shade (H, W) float32 in [0, 1], coverage (H, W) bool).

    points (V, 3) metres, OpenCV camera frame; faces_tri (F, 3); focal, principal (2,) pixels;
    size (H, W). The shade is |cos| between the surface normal and the viewing ray.
    """
    points = points[None].float()
    focal_t = torch.as_tensor(np.asarray(focal, np.float32))[None]
    principal_t = torch.as_tensor(np.asarray(principal, np.float32))[None]
    fragments = rasterize(points, faces_tri, focal_t, principal_t, size)
    normals = vertex_normals(points, faces_tri)
    values = interpolate_covered(torch.cat((normals, points), -1), faces_tri, fragments)
    normal, position = values[:, :3], values[:, 3:]
    cosine = (torch.nn.functional.normalize(normal, dim=-1) * torch.nn.functional.normalize(position, dim=-1)).sum(-1)
    shade = covered_to_image(cosine.abs()[:, None], fragments)[0, ..., 0]
    return shade.clamp(0, 1).numpy(), fragments.mask[0].numpy().astype(bool)


def shade_face(face: FaceResult, faces_tri: torch.Tensor, focal: np.ndarray, principal: np.ndarray, window: tuple[int, int, int, int]):
    """``shade_mesh`` of a tracked face inside the frame pixel ``window`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = window
    shifted = np.asarray(principal, np.float64) - (x0, y0)
    return shade_mesh(face.vertices, faces_tri, focal, shifted, (y1 - y0, x1 - x0))


def draw_mesh(image: np.ndarray, result: TrackingResult, faces_tri: torch.Tensor, style: str = "shaded", opacity: float = 0.6) -> None:
    """Draw every tracked face's mesh into ``image`` (H, W, 3) uint8 BGR, in place."""
    if style not in MESH_STYLES:
        raise ValueError(f"mesh style must be one of {MESH_STYLES}, got {style!r}")
    height, width = image.shape[:2]
    for face in result.faces:
        if style == "shaded":
            x0, y0, x1, y1 = window = face_window(face, width, height)
            if x1 <= x0 or y1 <= y0:
                continue
            shade, covered = shade_face(face, faces_tri, result.focal, result.principal, window)
            patch = image[y0:y1, x0:x1].astype(np.float32)
            colour = (0.25 + 0.75 * shade[..., None]) * MESH_COLOUR
            blended = np.where(covered[..., None], (1 - opacity) * patch + opacity * colour, patch)
            image[y0:y1, x0:x1] = blended.clip(0, 255).astype(np.uint8)
        elif style == "wireframe":
            pixels = project_vertices(face, result.focal, result.principal)
            polygons = np.round(pixels[faces_tri.numpy()] * 4).astype(np.int32)  # 2 fractional bits
            lines = image.copy()
            cv2.polylines(lines, list(polygons), True, tuple(int(c) for c in MESH_COLOUR), 1, cv2.LINE_AA, shift=2)
            cv2.addWeighted(lines, opacity * 0.6, image, 1 - opacity * 0.6, 0, dst=image)


def project_vertices(face: FaceResult, focal: np.ndarray, principal: np.ndarray) -> np.ndarray:
    """(V, 2) frame pixels of the face's camera-frame vertices."""
    points = face.vertices.numpy().astype(np.float64)
    return points[:, :2] / np.maximum(points[:, 2:], 1e-6) * focal + principal


def draw_points(image: np.ndarray, points: np.ndarray, colour, radius: float = 2.0) -> None:
    """Draw (N, 2) pixel points as filled dots of ``radius`` pixels (quarter-pixel precise), in place."""
    for x, y in np.round(points * 4).astype(np.int64):
        cv2.circle(image, (int(x), int(y)), int(round(radius * 4)), colour, -1, cv2.LINE_AA, shift=2)


def draw_landmarks(image: np.ndarray, result: TrackingResult, model: bool = True, detector: bool = False) -> None:
    """Draw the head model's projected 68 landmarks (and MediaPipe's, optionally), in place."""
    for face in result.faces:
        sets = ([(face.landmarks68, MODEL_LANDMARK_COLOUR)] if model else []) + ([(face.mesh_landmarks68, LANDMARK_COLOUR)] if detector else [])
        for points, colour in sets:
            draw_points(image, points, colour)


def draw_overlay(
    image_bgr: np.ndarray,
    result: TrackingResult,
    faces_tri: torch.Tensor,
    style: str = "shaded",
    landmarks: bool = True,
    detector_landmarks: bool = False,
) -> np.ndarray:
    """A copy of the frame with the mesh (``style``) and landmarks drawn over it."""
    image = np.ascontiguousarray(image_bgr).copy()
    if style != "none":
        draw_mesh(image, result, faces_tri, style)
    if landmarks or detector_landmarks:
        draw_landmarks(image, result, model=landmarks, detector=detector_landmarks)
    return image
