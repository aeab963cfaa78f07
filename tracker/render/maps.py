"""Per-pixel maps of head meshes: normals, coverage / region masks, depth; uint8 normal encoding.
Vertex normals: ``vertex_normals`` (torch, batched, differentiable) and ``NumpyVertexNormals``
(NumPy, one fixed triangle list, for the overlay, the viewer and the glb export).

Every map comes from one non-differentiable ``rasterize`` (which triangle, which barycentrics)
followed by differentiable ``interpolate`` of per-vertex quantities, so losses on the maps reach
the vertices (and through them the head-model parameters and the pose) with the visibility fixed.

Frames (see ``tracker.geometry.camera``): head points go to the camera by
``X_cam = R @ FLIP @ X_head + t``; a rotation acts on normals the same way, so
``n_cam = R @ FLIP @ n_head`` and the view frame (+y up, +z towards the camera) that camera-frame
normal maps are stored in is ``n_view = FLIP @ n_cam = FLIP @ R @ FLIP @ n_head``. With R = I the
view and head frames agree, and a frontal face is blue-ish (+z), its right side (viewer's right)
red (+x), its top green (+y). ``frame="head"`` keeps the head model's own frame (Pixel3DMM predicts
normals in FLAME space).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from tracker.geometry.camera import flip_matrix, head_to_camera
from tracker.render.rasterizer import (
    Fragments,
    covered_to_image,
    interpolate_covered,
    rasterize,
)

Frame = Literal["camera", "head"]
Rasterizer = Callable[..., Fragments]


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals.

    Args:
        vertices: (B, V, 3).
        faces: (F, 3) long; for a mesh wound counter-clockwise seen from outside (ICT-FaceKit,
            checked; the meshes of this project) the normals point outwards.

    Returns:
        (B, V, 3) unit normals (zero for vertices of no or only degenerate triangles);
        differentiable.
    """
    batch, num_vertices, _ = vertices.shape
    corners = vertices.index_select(1, faces.reshape(-1)).view(batch, -1, 3, 3)  # (B, F, corner, xyz)
    face_normal = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
    face_normal = face_normal.transpose(1, 2).contiguous()  # (B, 3, F): index_add is fastest along the last dim
    summed = vertices.new_zeros(batch, 3, num_vertices)
    for corner in range(3):
        summed = summed.index_add(2, faces[:, corner], face_normal)
    return F.normalize(summed.transpose(1, 2), dim=-1, eps=1e-20)


class NumpyVertexNormals:
    """``vertex_normals`` of one triangle list in NumPy, as one sparse product, for callers
    without torch tensors: ``normals(vertices)`` with (V, 3) float32 or float64 vertices -> (V, 3)
    unit area-weighted normals of their dtype, zero where no triangle has area. The sums run in
    another order than ``vertex_normals``' (about 1e-7 apart in float32).

    faces      (F, 3) int64, indices below ``num_vertices`` (V)
    corners    (3, F) int64: the faces transposed (corner k of every face, contiguous)
    incidence  (V, F) scipy.sparse CSR float32: 1 where vertex v is a corner of face f
    """

    def __init__(self, faces: np.ndarray, num_vertices: int) -> None:
        import scipy.sparse

        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        self.num_vertices = int(num_vertices)
        self.corners = np.ascontiguousarray(self.faces.T)
        count = len(self.faces)
        ones = np.ones(3 * count, np.float32)
        face_of = np.tile(np.arange(count), 3)
        self.incidence = scipy.sparse.csr_matrix((ones, (self.corners.reshape(-1), face_of)), shape=(self.num_vertices, count))

    def face_normals(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) -> (F, 3) ``(v1 - v0) x (v2 - v0)``: twice the area times the unit normal."""
        x, y, z = np.take(np.ascontiguousarray(vertices.T), self.corners, axis=1)  # each (3 corners, F)
        ax, ay, az = x[1] - x[0], y[1] - y[0], z[1] - z[0]
        bx, by, bz = x[2] - x[0], y[2] - y[0], z[2] - z[0]
        return np.stack((ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx), 1)

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) -> (V, 3) unit vertex normals: the incidence matrix times the face normals."""
        normals = self.incidence @ self.face_normals(vertices)
        length = np.sqrt(np.einsum("ij,ij->i", normals, normals))
        normals /= np.maximum(length, 1e-12)[:, None]
        return normals


def view_rotation(rotation: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) head rotation R -> (B, 3, 3) ``FLIP @ R @ FLIP``, mapping head-frame directions to
    the view frame."""
    flip = flip_matrix(device=rotation.device, dtype=rotation.dtype)
    return flip @ rotation @ flip


@dataclass
class RenderedMaps:
    """Maps of one rasterisation of B meshes into H x W images.

    normals      (B, H, W, 3) unit normals in the requested frame, zeros in the background
    mask         (B, H, W) float, 1 where a triangle covers the pixel
    depth        (B, H, W) camera-frame z in metres, 0 in the background
    region_mask  (B, H, W) float coverage by the region's triangles, or None when no region given
    fragments    the rasterisation, for further ``interpolate`` calls
    """

    normals: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    region_mask: torch.Tensor | None
    fragments: Fragments


def render_maps(
    vertices_head: torch.Tensor,
    faces: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    focal: torch.Tensor,
    principal: torch.Tensor,
    size: tuple[int, int],
    frame: Frame = "camera",
    region: torch.Tensor | None = None,
    near: float = 1e-3,
    cull_backfaces: bool = False,
    rasterizer: Rasterizer = rasterize,
) -> RenderedMaps:
    """Normal map, coverage mask, depth (and a region mask) from one rasterisation.

    Args:
        vertices_head: (B, V, 3) head-frame vertices in metres.
        faces: (F, 3) long.
        rotation: (B, 3, 3) R; translation: (B, 3) t (``X_cam = R @ FLIP @ X_head + t``).
        focal: (B, 2) pixels; principal: (B, 2) pixels; size: (H, W).
        frame: "camera" (the view frame, see the module docstring) or "head".
        region: optional (V,) bool vertex mask, e.g. ``head_model.region_masks["face"]``.
        near, cull_backfaces: passed to the rasteriser.
        rasterizer: ``rasterize`` or another backend from ``tracker.render.get_rasterizer``.

    Returns:
        ``RenderedMaps``; normals and depth are differentiable w.r.t. the vertices and the pose.
    """
    points = head_to_camera(vertices_head, rotation, translation)
    fragments = rasterizer(points, faces, focal, principal, size, near=near, cull_backfaces=cull_backfaces)
    normals = _normals(vertices_head, faces, rotation, frame)
    # one gather for normals and depth: (N, 4) values at the covered pixels
    values = interpolate_covered(torch.cat((normals, points[..., 2:]), -1), faces, fragments)
    normal_map = covered_to_image(_unit(values[:, :3]), fragments)
    depth = covered_to_image(values[:, 3:], fragments)[..., 0]
    mask = fragments.mask.to(vertices_head.dtype)
    region_mask = None if region is None else render_region_mask(fragments, faces, region)
    return RenderedMaps(normals=normal_map, mask=mask, depth=depth, region_mask=region_mask, fragments=fragments)


def render_normal_map(
    vertices_head: torch.Tensor,
    faces: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    focal: torch.Tensor,
    principal: torch.Tensor,
    size: tuple[int, int],
    frame: Frame = "camera",
    near: float = 1e-3,
    cull_backfaces: bool = False,
    rasterizer: Rasterizer = rasterize,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit normal map and coverage mask of head meshes (arguments as ``render_maps``).

    Returns:
        normals (B, H, W, 3) unit in ``frame``, zeros in the background; mask (B, H, W) float.
    """
    points = head_to_camera(vertices_head, rotation, translation)
    fragments = rasterizer(points, faces, focal, principal, size, near=near, cull_backfaces=cull_backfaces)
    values = interpolate_covered(_normals(vertices_head, faces, rotation, frame), faces, fragments)
    normal_map = covered_to_image(_unit(values), fragments)
    return normal_map, fragments.mask.to(vertices_head.dtype)


def render_region_mask(fragments: Fragments, faces: torch.Tensor, vertex_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float: 1 where the visible triangle has all three vertices in the region.

    ``faces`` (F, 3) as rasterised, ``vertex_mask`` (V,) bool (e.g. a head model's region mask).
    """
    inside = vertex_mask.to(torch.bool)[faces].all(1)  # (F,)
    return (inside[fragments.triangle.clamp_min(0)] & fragments.mask).to(fragments.bary.dtype)


def normals_to_rgb(normals: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(..., 3) normals in [-1, 1] -> (..., 3) uint8 ``round((n + 1) / 2 * 255)``; 0 where ``mask``
    (...,) is false."""
    rgb = ((normals + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if mask is not None:
        rgb = rgb * mask.to(torch.bool)[..., None]
    return rgb


def rgb_to_normals(rgb: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(..., 3) uint8 -> (..., 3) float32 ``rgb / 255 * 2 - 1``, rescaled to unit length if
    ``normalize`` (the inverse of ``normals_to_rgb`` up to quantisation, about 0.4 degrees)."""
    normals = rgb.to(torch.float32) / 127.5 - 1.0
    return F.normalize(normals, dim=-1, eps=1e-20) if normalize else normals


def _normals(vertices_head: torch.Tensor, faces: torch.Tensor, rotation: torch.Tensor, frame: Frame) -> torch.Tensor:
    """(B, V, 3) vertex normals in the view frame ("camera") or the head frame ("head")."""
    normals = vertex_normals(vertices_head, faces)
    if frame == "head":
        return normals
    if frame == "camera":
        return normals @ view_rotation(rotation).transpose(-1, -2)
    raise ValueError(f"frame must be 'camera' or 'head', got {frame!r}")


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> unit length (zero stays zero); ``F.normalize`` at half the cost for tiny rows."""
    squared = vectors[:, 0:1] * vectors[:, 0:1]
    squared = squared.addcmul(vectors[:, 1:2], vectors[:, 1:2]).addcmul(vectors[:, 2:3], vectors[:, 2:3])
    return vectors * squared.clamp_min(1e-30).rsqrt()
