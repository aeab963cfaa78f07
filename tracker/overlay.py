"""Drawing tracking results over frames: the shaded or wireframe head mesh and the 68 landmarks.

The mesh is rasterised with the project's rasteriser in the frame camera the tracker assumed
(``TrackingResult.focal``/``principal``), only inside the mesh's bounding box in the frame, and
shaded by the angle between its normal and the viewing ray (a headlight), so it lines up with
the face exactly as the tracker sees it.

Cost: drawing runs on the viewer's GUI thread (and the virtual camera's sender thread), beside
the tracker, so it is kept cheap. The window is shaded at most SHADE_RESOLUTION pixels on its
longer side, and the shade and coverage are upscaled to it bilinearly (soft edges), so a face
close to the camera costs no more than a small one (``resolution=None``: full resolution). Only
front-facing triangles whose bounding box holds a pixel centre reach the rasteriser (on real
tracked frames the coverage is the same as with every triangle), and the vertex normals are one
sparse product (``MeshTopology``). The wireframe draws each edge of the front-facing triangles
once.
"""

from __future__ import annotations

import functools
import threading

import cv2
import numpy as np
import scipy.sparse
import torch

from tracker.render.rasterize import covered_to_image, interpolate_covered, rasterize
from tracker.tracking import FaceResult, TrackingResult

MESH_STYLES = ("shaded", "wireframe", "none")
MESH_COLOUR = np.array([235, 206, 135], np.float32)  # BGR, light blue-grey
LANDMARK_COLOUR = (0, 255, 255)  # BGR yellow
MODEL_LANDMARK_COLOUR = (255, 0, 255)
SHADE_RESOLUTION = 192  # longest side (pixels) a face window is shaded at, then upscaled to the window
# (256, 1, 3) uint8 BGR: the mesh's colour at shade k / 255 (an OpenCV colour map; ambient 0.25)
SHADE_COLOURS = np.round((0.25 + 0.75 * np.linspace(0, 1, 256)[:, None]) * MESH_COLOUR).astype(np.uint8)[:, None]


class MeshTopology:
    """Tables of one triangle list, built once and reused for every frame.

    faces      (F, 3) int64, indices below ``num_vertices`` (V)
    corners    (3, F) int64: the faces transposed (corner k of every face, contiguous)
    incidence  (V, F) scipy.sparse CSR float32: 1 where vertex v is a corner of face f
    edges, edge_index  (the wireframe's; made on first use) (E, 2) int64: every undirected edge
               once; (3, F) int64: the edge (row of ``edges``) opposite corner k of face f
    """

    def __init__(self, faces: np.ndarray, num_vertices: int) -> None:
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        self.num_vertices = int(num_vertices)
        self.corners = np.ascontiguousarray(self.faces.T)
        count = len(self.faces)
        ones = np.ones(3 * count, np.float32)
        face_of = np.tile(np.arange(count), 3)
        self.incidence = scipy.sparse.csr_matrix((ones, (self.corners.reshape(-1), face_of)), shape=(self.num_vertices, count))

    @functools.cached_property
    def _edge_tables(self) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.corners[[1, 2, 0]], self.corners[[2, 0, 1]]  # edge k: corner k+1 -> corner k+2
        keys = np.minimum(start, end) * self.num_vertices + np.maximum(start, end)
        unique, inverse = np.unique(keys.reshape(-1), return_inverse=True)
        return np.stack(np.divmod(unique, self.num_vertices), 1), inverse.reshape(self.corners.shape)

    @property
    def edges(self) -> np.ndarray:
        return self._edge_tables[0]

    @property
    def edge_index(self) -> np.ndarray:
        return self._edge_tables[1]

    def face_normals(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) -> (F, 3) ``(v1 - v0) x (v2 - v0)``: twice the area times the unit normal."""
        x, y, z = np.take(np.ascontiguousarray(vertices.T), self.corners, axis=1)  # each (3 corners, F)
        ax, ay, az = x[1] - x[0], y[1] - y[0], z[1] - z[0]
        bx, by, bz = x[2] - x[0], y[2] - y[0], z[2] - z[0]
        return np.stack((ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx), 1)

    def vertex_normals(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) -> (V, 3) unit area-weighted vertex normals (zero where no triangle has area):
        the incidence matrix times the face normals."""
        normals = self.incidence @ self.face_normals(vertices)
        length = np.sqrt(np.einsum("ij,ij->i", normals, normals))
        normals /= np.maximum(length, 1e-12)[:, None]
        return normals

    def projected_corners(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V, 2) projected vertices -> (x, y) of every face's corners, (3, F) each."""
        x, y = np.take(np.ascontiguousarray(pixels.T), self.corners, axis=1)
        return x, y


def front_facing(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(3, F) projected corners (y down) -> (F,) bool: wound counter-clockwise for the viewer
    (``rasterize``'s ``cull_backfaces`` rule: the outside of a mesh wound counter-clockwise)."""
    return (x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0]) < 0


_TOPOLOGIES: dict[tuple[int, int], tuple[object, MeshTopology]] = {}
_TOPOLOGIES_LOCK = threading.Lock()


def mesh_topology(faces_tri: torch.Tensor | np.ndarray, num_vertices: int) -> MeshTopology:
    """The ``MeshTopology`` of ``faces_tri`` (F, 3), cached per faces object (kept alive by the
    cache, so its id is not reused) and vertex count; the last 8 are kept."""
    key = (id(faces_tri), int(num_vertices))
    with _TOPOLOGIES_LOCK:
        entry = _TOPOLOGIES.get(key)
    if entry is not None:
        return entry[1]
    faces = faces_tri.cpu().numpy() if isinstance(faces_tri, torch.Tensor) else np.asarray(faces_tri)
    topology = MeshTopology(faces, num_vertices)
    with _TOPOLOGIES_LOCK:
        while len(_TOPOLOGIES) >= 8:
            del _TOPOLOGIES[next(iter(_TOPOLOGIES))]
        _TOPOLOGIES[key] = (faces_tri, topology)
    return topology


def face_window(face: FaceResult, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixel window around a face: its crop box grown by 25 %, clipped to the frame."""
    x0, y0, side = face.crop_box
    grow = 0.25 * side
    left, top = int(max(0, np.floor(x0 - grow))), int(max(0, np.floor(y0 - grow)))
    right, bottom = int(min(width, np.ceil(x0 + side + grow))), int(min(height, np.ceil(y0 + side + grow)))
    return left, top, max(left, right), max(top, bottom)


@torch.no_grad()
def shade_mesh(points: torch.Tensor, faces_tri: torch.Tensor | np.ndarray, focal, principal, size: tuple[int, int]):
    """Headlight shading of a camera-frame mesh -> (shade (H, W) float32 in [0, 1], coverage (H, W) bool).

    points (V, 3) metres, OpenCV camera frame; faces_tri (F, 3); focal, principal (2,) pixels;
    size (H, W). The shade is |cos| between the surface normal and the viewing ray. Back faces
    are not drawn (nor are triangles whose bounding box holds no pixel centre: they cover none).
    """
    height, width = int(size[0]), int(size[1])
    vertices = points.detach().cpu().numpy().astype(np.float32)
    topology = mesh_topology(faces_tri, len(vertices))
    focal, principal = np.asarray(focal, np.float32), np.asarray(principal, np.float32)
    pixels = vertices[:, :2] / np.maximum(vertices[:, 2:], 1e-3) * focal + principal - 0.5  # pixel centres at integers
    x, y = topology.projected_corners(pixels)
    keep = front_facing(x, y)  # and a pixel centre in the bounding box:
    keep &= np.ceil(np.maximum(x.min(0), 0)) <= np.floor(np.minimum(x.max(0), width - 1))
    keep &= np.ceil(np.maximum(y.min(0), 0)) <= np.floor(np.minimum(y.max(0), height - 1))
    faces = torch.from_numpy(topology.faces[keep])
    points_t = torch.from_numpy(vertices)[None]
    fragments = rasterize(points_t, faces, torch.from_numpy(focal)[None], torch.from_numpy(principal)[None], (height, width))
    normals = torch.from_numpy(topology.vertex_normals(vertices))
    values = interpolate_covered(torch.cat((normals, points_t[0]), -1), faces, fragments)
    normal, position = values[:, :3], values[:, 3:]
    cosine = (torch.nn.functional.normalize(normal, dim=-1) * torch.nn.functional.normalize(position, dim=-1)).sum(-1)
    shade = covered_to_image(cosine.abs()[:, None], fragments)[0, ..., 0]
    return shade.clamp(0, 1).numpy(), fragments.mask[0].numpy()


def shade_face(
    face: FaceResult, faces_tri: torch.Tensor, focal: np.ndarray, principal: np.ndarray, window: tuple[int, int, int, int],
    resolution: int | None = SHADE_RESOLUTION,
) -> tuple[np.ndarray, np.ndarray]:
    """``shade_mesh`` of a tracked face inside the frame pixel ``window`` (x0, y0, x1, y1) ->
    (shade (H, W) float32 in [0, 1], coverage (H, W) float32 in [0, 1]) at the window's size.

    A window longer than ``resolution`` pixels is shaded at that size (None: never) and upscaled
    bilinearly: coverage then has soft edges, the shade is the coverage-weighted mean."""
    x0, y0, x1, y1 = window
    width, height = x1 - x0, y1 - y0
    shifted = np.asarray(principal, np.float64) - (x0, y0)
    scale = 1.0 if resolution is None else min(1.0, resolution / max(width, height))
    if scale == 1.0:
        shade, covered = shade_mesh(face.vertices, faces_tri, focal, shifted, (height, width))
        return shade, covered.astype(np.float32)
    small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
    factor = np.array([small_w / width, small_h / height])  # exact per axis: the resize maps pixel edges onto pixel edges
    shade, covered = shade_mesh(face.vertices, faces_tri, np.asarray(focal) * factor, shifted * factor, (small_h, small_w))
    coverage = cv2.resize(covered.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    shade = cv2.resize(shade, (width, height), interpolation=cv2.INTER_LINEAR)  # shade is 0 off the mesh
    return np.divide(shade, coverage, out=np.zeros_like(shade), where=coverage > 1e-6), coverage


def draw_mesh(
    image: np.ndarray, result: TrackingResult, faces_tri: torch.Tensor, style: str = "shaded", opacity: float = 0.6,
    resolution: int | None = SHADE_RESOLUTION,
) -> None:
    """Draw every tracked face's mesh into ``image`` (H, W, 3) uint8 BGR, in place, inside the
    mesh's bounding box (``mesh_window``); ``resolution`` as ``shade_face``'s."""
    if style not in MESH_STYLES:
        raise ValueError(f"mesh style must be one of {MESH_STYLES}, got {style!r}")
    height, width = image.shape[:2]
    for face in result.faces:
        pixels = project_vertices(face, result.focal, result.principal)
        x0, y0, x1, y1 = window = mesh_window(pixels, width, height)
        if x1 <= x0 or y1 <= y0:
            continue
        region = image[y0:y1, x0:x1]
        if style == "shaded":
            shade, coverage = shade_face(face, faces_tri, result.focal, result.principal, window, resolution)
            rows, cols = np.flatnonzero(coverage.any(1)), np.flatnonzero(coverage.any(0))
            if rows.size == 0:
                continue
            box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # the covered part of the window
            colour = cv2.applyColorMap(cv2.convertScaleAbs(shade[box], alpha=255), SHADE_COLOURS)
            alpha = np.ascontiguousarray(opacity * coverage[box])
            region[box] = cv2.blendLinear(colour, region[box], alpha, 1 - alpha)
        elif style == "wireframe":
            topology = mesh_topology(faces_tri, len(pixels))
            front = np.zeros(len(topology.edges), bool)  # the edges of the front-facing triangles
            front[topology.edge_index[:, front_facing(*topology.projected_corners(pixels))]] = True
            segments = np.round((pixels[topology.edges[front]] - (x0, y0)) * 4).astype(np.int32)  # (E', 2 ends, 2), 2 fractional bits
            lines = region.copy()
            cv2.polylines(lines, segments, False, tuple(int(c) for c in MESH_COLOUR), 1, cv2.LINE_AA, shift=2)
            cv2.addWeighted(lines, opacity * 0.6, region, 1 - opacity * 0.6, 0, dst=region)


def mesh_window(pixels: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) frame pixel window around (V, 2) projected vertices, 2 pixels wider on
    every side (anti-aliased lines), clipped to the frame."""
    low = np.clip(np.floor(pixels.min(0)) - 2, 0, (width, height)).astype(int)
    high = np.clip(np.ceil(pixels.max(0)) + 2, 0, (width, height)).astype(int)
    return int(low[0]), int(low[1]), int(max(low[0], high[0])), int(max(low[1], high[1]))


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
    resolution: int | None = SHADE_RESOLUTION,
) -> np.ndarray:
    """A copy of the frame with the mesh (``style``; ``resolution`` as ``shade_face``'s) and
    landmarks drawn over it."""
    image = np.ascontiguousarray(image_bgr).copy()
    if style != "none":
        draw_mesh(image, result, faces_tri, style, resolution=resolution)
    if landmarks or detector_landmarks:
        draw_landmarks(image, result, model=landmarks, detector=detector_landmarks)
    return image
