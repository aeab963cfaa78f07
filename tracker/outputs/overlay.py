"""Drawing tracking results over frames: the head mesh, shaded or as a wireframe, and the 68 landmarks.

The mesh is rasterised with the project's rasteriser in the frame camera the tracker assumed
(``TrackingResult.focal``/``principal``), only inside the mesh's bounding box in the frame, so it
lines up with the face exactly as the tracker sees it. Both styles draw in the mesh colour
(``colour``, MESH_COLOUR: sky blue) at ``opacity`` (MESH_OPACITY) over the frame:

    shaded     lit by a headlight: the colour times AMBIENT + (1 - AMBIENT) cos^2 of the angle
               between the surface normal and the viewing ray, so the sides of the nose, the eye
               sockets and the cheeks turning away darken and the shape reads at a glance
    wireframe  lines on the visible surface, in the colour darkened (LINE_SHADE): a grid every
               GRID_SPACING metres of the head's own x (across) and y (up), planes fixed to the
               head so the lines follow its pose and shape (the spacing doubles until the lines
               are GRID_MIN_PIXELS apart), the mesh's outline and the contours where one part
               hides another (the lips over the mouth, the nose over a cheek). Anti-aliased, the
               grid one pixel wide and the contours CONTOUR_WIDTH on a frame REFERENCE_HEIGHT
               pixels high, wider in proportion on larger frames (``line_scale``). (Every
               triangle edge, as before, was an unreadable haze: on a 360p face the head mesh's
               edges are a pixel or two apart.)

Cost: drawing runs on the viewer's GUI thread (and the virtual camera's sender thread), beside
the tracker, so it is kept cheap. Both styles rasterise the window at most SHADE_RESOLUTION
pixels on its longer side and upscale what they need from it bilinearly (shade, coverage, the
head coordinates the grid lines are drawn from), so a face close to the camera costs no more
than a small one (``resolution=None``: full resolution). Only front-facing triangles whose
bounding box holds a pixel centre reach the rasteriser (on real tracked frames the coverage is
the same as with every triangle), and the vertex normals are one sparse product (``MeshTopology``).

torch, the rasteriser and scipy are imported on first use, so that command lines can take this
module's constants and option types without loading them.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import threading
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

    from tracker.live.results import FaceResult, TrackingResult
    from tracker.render.rasterizer import Fragments

MESH_STYLES = ("shaded", "wireframe", "none")
MESH_COLOUR = (235, 206, 135)  # BGR: sky blue, #87ceeb
MESH_OPACITY = 0.85  # the mesh's opacity over the video
AMBIENT = 0.15  # the shaded mesh's brightness where its surface is seen edge-on
LINE_SHADE = 0.45  # the wireframe's lines: the mesh colour times this
GRID_SPACING = 0.01  # metres between the wireframe's grid lines (at least; see GRID_MIN_PIXELS)
GRID_MIN_PIXELS = 7.0  # the grid spacing doubles until its lines are this many pixels apart (on a REFERENCE_HEIGHT frame)
REFERENCE_HEIGHT = 360  # frame height (pixels) up to which the wireframe's lines are 1 (grid) and CONTOUR_WIDTH (contours) pixels wide
CONTOUR_STEP = 0.01  # metres of depth between neighbouring pixels that make an occluding contour
CONTOUR_WIDTH = 2.0  # pixels: the contours are drawn wider than the grid lines
STEP_KERNEL = cv2.getGaussianKernel(3, 0.7)[:, 0].astype(np.float32)  # smooths the pixels marked as a contour inside the mesh
LANDMARK_COLOUR = (0, 255, 255)  # BGR yellow
MODEL_LANDMARK_COLOUR = (255, 0, 255)
SHADE_RESOLUTION = 192  # longest side (pixels) a face window is rasterised at, then upscaled to the window
HEX_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def parse_colour(text: str) -> tuple[int, int, int]:
    """argparse type: a CSS colour name (skyblue, orange, white, ...) or #rrggbb -> (B, G, R) 0-255."""
    from PIL import ImageColor

    text = text.strip()
    rgb: tuple = ()
    if HEX_COLOUR.fullmatch(text) or text.isalpha():
        try:
            rgb = ImageColor.getrgb(text)
        except ValueError:
            pass
    if len(rgb) != 3:
        raise argparse.ArgumentTypeError(f"must be a CSS colour name (skyblue, orange, white, ...) or #rrggbb, got {text!r}")
    return int(rgb[2]), int(rgb[1]), int(rgb[0])


def parse_opacity(text: str) -> float:
    """argparse type: a number from 0 (invisible) to 1 (opaque)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 (invisible) to 1 (opaque), got {text!r}")
    return value


def check_look(colour: tuple[int, int, int], opacity: float) -> None:
    """Raise ValueError unless ``colour`` is three 0-255 values (B, G, R) and ``opacity`` is in [0, 1]."""
    if len(colour) != 3 or not all(0 <= int(c) <= 255 for c in colour):
        raise ValueError(f"mesh colour must be three 0-255 values (B, G, R), got {colour!r}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"mesh opacity must be from 0 to 1, got {opacity!r}")


@functools.lru_cache(maxsize=8)
def shade_colours(colour: tuple[int, int, int]) -> np.ndarray:
    """(256, 1, 3) uint8 BGR, an OpenCV colour map: the shaded mesh's colour at shade k / 255."""
    cosine = np.linspace(0.0, 1.0, 256)[:, None]
    return np.round((AMBIENT + (1.0 - AMBIENT) * cosine**2) * np.asarray(colour, np.float64)).astype(np.uint8)[:, None]


class MeshTopology:
    """Tables of one triangle list, built once and reused for every frame.

    faces           (F, 3) int64, indices below ``num_vertices`` (V)
    corners         (3, F) int64: the faces transposed (corner k of every face, contiguous)
    vertex_normals  (V, 3) vertices -> (V, 3) unit area-weighted vertex normals, one sparse
                    product (``tracker.render.maps.NumpyVertexNormals``)
    """

    def __init__(self, faces: np.ndarray, num_vertices: int) -> None:
        from tracker.render.maps import NumpyVertexNormals

        self.vertex_normals = NumpyVertexNormals(faces, num_vertices)
        self.faces, self.num_vertices, self.corners = self.vertex_normals.faces, self.vertex_normals.num_vertices, self.vertex_normals.corners

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
    faces = faces_tri.cpu().numpy() if hasattr(faces_tri, "cpu") else np.asarray(faces_tri)
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


def rasterize_mesh(vertices: np.ndarray, faces_tri: torch.Tensor | np.ndarray, focal, principal, size: tuple[int, int]) -> tuple[torch.Tensor, Fragments]:
    """Rasterise a camera-frame mesh -> (the triangles drawn (F', 3), their fragments).

    vertices (V, 3) float32 metres, OpenCV camera frame; faces_tri (F, 3); focal, principal (2,)
    pixels; size (H, W). Back faces are not drawn (nor are triangles whose bounding box holds no
    pixel centre: they cover none)."""
    import torch

    from tracker.render.rasterizer import rasterize

    height, width = int(size[0]), int(size[1])
    topology = mesh_topology(faces_tri, len(vertices))
    focal, principal = np.asarray(focal, np.float32), np.asarray(principal, np.float32)
    pixels = vertices[:, :2] / np.maximum(vertices[:, 2:], 1e-3) * focal + principal - 0.5  # pixel centres at integers
    x, y = topology.projected_corners(pixels)
    keep = front_facing(x, y)  # and a pixel centre in the bounding box:
    keep &= np.ceil(np.maximum(x.min(0), 0)) <= np.floor(np.minimum(x.max(0), width - 1))
    keep &= np.ceil(np.maximum(y.min(0), 0)) <= np.floor(np.minimum(y.max(0), height - 1))
    faces = torch.from_numpy(topology.faces[keep])
    with torch.no_grad():
        fragments = rasterize(torch.from_numpy(vertices)[None], faces, torch.from_numpy(focal)[None], torch.from_numpy(principal)[None], (height, width))
    return faces, fragments


def shade_mesh(points: torch.Tensor, faces_tri: torch.Tensor | np.ndarray, focal, principal, size: tuple[int, int]):
    """Headlight shading of a camera-frame mesh -> (shade (H, W) float32 in [0, 1], coverage (H, W) bool).

    points (V, 3) metres, OpenCV camera frame; the rest as ``rasterize_mesh``'s. The shade is
    |cos| between the surface normal and the viewing ray.
    """
    import torch

    from tracker.render.rasterizer import covered_to_image, interpolate_covered

    vertices = points.detach().cpu().numpy().astype(np.float32)
    faces, fragments = rasterize_mesh(vertices, faces_tri, focal, principal, size)
    normals = mesh_topology(faces_tri, len(vertices)).vertex_normals(vertices)
    with torch.no_grad():
        values = interpolate_covered(torch.from_numpy(np.concatenate((normals, vertices), 1)), faces, fragments)
        normal, position = values[:, :3], values[:, 3:]
        cosine = (torch.nn.functional.normalize(normal, dim=-1) * torch.nn.functional.normalize(position, dim=-1)).sum(-1)
        shade = covered_to_image(cosine.abs()[:, None], fragments)[0, ..., 0]
    return shade.clamp(0, 1).numpy(), fragments.mask[0].numpy()


def window_camera(window: tuple[int, int, int, int], focal, principal, resolution: int | None) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """The camera that renders the frame pixel ``window`` (x0, y0, x1, y1) at most ``resolution``
    pixels on its longer side (None: at full resolution) -> ((H, W) rendered, focal, principal)."""
    x0, y0, x1, y1 = window
    width, height = x1 - x0, y1 - y0
    shifted = np.asarray(principal, np.float64) - (x0, y0)
    scale = 1.0 if resolution is None else min(1.0, resolution / max(width, height))
    if scale == 1.0:
        return (height, width), np.asarray(focal, np.float64), shifted
    small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
    factor = np.array([small_w / width, small_h / height])  # exact per axis: the resize maps pixel edges onto pixel edges
    return (small_h, small_w), np.asarray(focal, np.float64) * factor, shifted * factor


def extend_past_edge(covered: np.ndarray, planes: list[np.ndarray]) -> list[np.ndarray]:
    """(h, w) bool coverage and (h, w) float32 planes of values on the mesh -> the planes with each
    uncovered pixel beside the mesh set to the mean of its covered 8-neighbours, so that a
    bilinear upscale (which mixes neighbours only) gives the mesh's values up to its soft edge,
    not blends with whatever is off the mesh."""
    coverage = covered.astype(np.float32)
    count = cv2.boxFilter(coverage, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    ring = ~covered & (count > 0)
    extended = []
    for plane in planes:
        total = cv2.boxFilter(plane * coverage, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        plane = plane.copy()
        plane[ring] = total[ring] / count[ring]
        extended.append(plane)
    return extended


def upscale(planes: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """(h, w) float32 planes -> at ``size`` (H, W), bilinearly (plane by plane: OpenCV's resize is
    fastest on one channel); the planes themselves when they have that size."""
    height, width = size
    return [plane if plane.shape == (height, width) else cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in planes]


def shade_face(
    face: FaceResult, faces_tri: torch.Tensor, focal: np.ndarray, principal: np.ndarray, window: tuple[int, int, int, int],
    resolution: int | None = SHADE_RESOLUTION,
) -> tuple[np.ndarray, np.ndarray]:
    """``shade_mesh`` of a tracked face inside the frame pixel ``window`` (x0, y0, x1, y1) ->
    (shade (H, W) float32 in [0, 1], coverage (H, W) float32 in [0, 1]) at the window's size.

    A window longer than ``resolution`` pixels is shaded at that size (None: never) and upscaled
    bilinearly: coverage then has soft edges, the shade is the mesh's up to them (``extend_past_edge``)."""
    x0, y0, x1, y1 = window
    size, focal_w, principal_w = window_camera(window, focal, principal, resolution)
    shade, covered = shade_mesh(face.vertices, faces_tri, focal_w, principal_w, size)
    shade, coverage = upscale([*extend_past_edge(covered, [shade]), covered.astype(np.float32)], (y1 - y0, x1 - x0))
    return shade, coverage


def head_coordinates(face: FaceResult) -> np.ndarray:
    """(V, 3) float32 the face's posed vertices in its head's frame (+x to the viewer's right, +y
    up, +z out of the face; ``X_cam = R diag(1, -1, -1) X_head + t`` inverted), metres."""
    from tracker.geometry.camera import FLIP

    rotation, translation = face.rotation.numpy().astype(np.float32), face.translation.numpy().astype(np.float32)
    return (face.vertices.numpy().astype(np.float32) - translation) @ rotation * np.float32(FLIP)


def grid_spacing(face: FaceResult, focal: np.ndarray, scale: float = 1.0) -> float:
    """Metres between the wireframe's grid lines for a face: GRID_SPACING doubled until the lines
    are ``scale`` x GRID_MIN_PIXELS apart where the head is (its distance from the camera)."""
    pixels = GRID_SPACING * float(np.mean(focal)) / max(float(face.translation[2]), 1e-3)
    return GRID_SPACING * 2.0 ** max(0, math.ceil(math.log2(scale * GRID_MIN_PIXELS / max(pixels, 1e-6))))


def line_scale(frame_height: int) -> float:
    """How much wider the wireframe's lines are drawn on a frame of ``frame_height`` pixels than
    on REFERENCE_HEIGHT (at least 1): a window shows a frame at about the same size whatever its
    resolution, and one-pixel lines on a 1080p frame shown 500 pixels high would fade away."""
    return max(1.0, frame_height / REFERENCE_HEIGHT)


def line_alpha(distance: np.ndarray, width: float = 1.0) -> np.ndarray:
    """(H, W) float32 distance in pixels to a line's centre -> the anti-aliased coverage of a line
    ``width`` pixels wide, width / 2 + 1/2 - the distance clipped to [0, 1] (in place)."""
    np.subtract(width / 2 + 0.5, distance, out=distance)
    return np.clip(distance, 0.0, 1.0, out=distance)


def grid_lines(levels: np.ndarray, slopes: np.ndarray, width: float) -> np.ndarray:
    """(H, W) grid coordinate (a line at every whole number) and its change per pixel -> (H, W)
    float32 coverage of the anti-aliased lines ``width`` pixels wide (``line_alpha``)."""
    distance = levels - np.round(levels)
    np.abs(distance, out=distance)
    distance /= slopes
    return line_alpha(distance, width)


def wireframe_face(
    face: FaceResult, faces_tri: torch.Tensor, focal: np.ndarray, principal: np.ndarray, window: tuple[int, int, int, int],
    resolution: int | None = SHADE_RESOLUTION, scale: float = 1.0,
) -> np.ndarray:
    """The wireframe's lines of a tracked face inside the frame pixel ``window`` (x0, y0, x1, y1)
    -> (H, W) float32 in [0, 1]: how much of each pixel they cover (see the module's docstring).

    The window is rasterised at most ``resolution`` pixels across (None: at full resolution), and
    what the lines are drawn from is computed there and upscaled bilinearly, each smooth so that
    the lines keep their width (``scale`` x 1 or CONTOUR_WIDTH pixels): the head's grid coordinates and their change
    per window pixel; for the outline, the coverage box-filtered (1/2 on the outline, changing by
    1/3 per rendered pixel); for the contours inside, the pixels in front of a neighbour by more
    than CONTOUR_STEP, smoothed."""
    import torch

    from tracker.render.rasterizer import covered_to_image, interpolate_covered

    x0, y0, x1, y1 = window
    size, focal_w, principal_w = window_camera(window, focal, principal, resolution)
    vertices = face.vertices.numpy().astype(np.float32)
    faces, fragments = rasterize_mesh(vertices, faces_tri, focal_w, principal_w, size)
    grid = torch.from_numpy(head_coordinates(face)[:, :2] / np.float32(grid_spacing(face, focal, scale)))
    with torch.no_grad():
        levels = covered_to_image(interpolate_covered(grid, faces, fragments), fragments)[0].numpy()  # (h, w, 2)
    covered = fragments.mask[0].numpy()
    depth = fragments.depth[0].numpy()
    steps = np.zeros(covered.shape, bool)  # mesh pixels in front of a mesh 4-neighbour by more than CONTOUR_STEP
    for axis in (0, 1):
        pair = covered & np.roll(covered, -1, axis)  # pixels k and k + 1 both on the mesh
        pair[(slice(None),) * axis + (-1,)] = False  # not across the wrap
        step = np.where(pair, np.roll(depth, -1, axis) - depth, 0.0)  # how far pixel k + 1 lies behind pixel k
        steps |= step > CONTOUR_STEP
        steps |= np.roll(step < -CONTOUR_STEP, 1, axis)
    levels = extend_past_edge(covered, [np.ascontiguousarray(levels[..., k]) for k in (0, 1)])
    per_pixel = np.array([size[1] / (x1 - x0), size[0] / (y1 - y0)], np.float32)  # rendered pixels per window pixel, x and y
    slopes = [np.hypot(*(np.gradient(plane) * per_pixel[::-1, None, None])) for plane in levels]  # grid units per window pixel
    edge = cv2.blur(covered.astype(np.float32), (3, 3), borderType=cv2.BORDER_CONSTANT)  # 1/2 on the mesh's outline, 1/3 more per rendered pixel inwards
    steps = cv2.sepFilter2D(steps.astype(np.float32), -1, STEP_KERNEL, STEP_KERNEL)  # the staircases of marked pixels, smoothed
    across, up, across_slope, up_slope, coverage, edge, steps = upscale([*levels, *slopes, covered.astype(np.float32), edge, steps], (y1 - y0, x1 - x0))
    alpha = grid_lines(across, np.maximum(across_slope, 1e-6, out=across_slope), scale)
    np.maximum(alpha, grid_lines(up, np.maximum(up_slope, 1e-6, out=up_slope), scale), out=alpha)
    alpha *= coverage
    edge -= 0.5
    np.abs(edge, out=edge)
    edge *= 3.0 / float(per_pixel.mean())  # window pixels from the outline
    np.maximum(alpha, line_alpha(edge, CONTOUR_WIDTH * scale), out=alpha)
    np.subtract(STEP_KERNEL[1], steps, out=steps)  # across a run of marked pixels: 0 on it, the kernel's fall-off per rendered pixel beside it
    steps /= (STEP_KERNEL[1] - STEP_KERNEL[0]) * float(per_pixel.mean())  # window pixels from the contour
    return np.maximum(alpha, line_alpha(steps, CONTOUR_WIDTH * scale), out=alpha)


def draw_mesh(
    image: np.ndarray, result: TrackingResult, faces_tri: torch.Tensor, style: str = "shaded", opacity: float = MESH_OPACITY,
    resolution: int | None = SHADE_RESOLUTION, colour: tuple[int, int, int] = MESH_COLOUR,
) -> None:
    """Draw every tracked face's mesh into ``image`` (H, W, 3) uint8 BGR, in place, inside the
    mesh's bounding box (``mesh_window``); ``style`` one of MESH_STYLES ("none" draws nothing), ``colour``
    (B, G, R) 0-255, ``opacity`` 0 (invisible) to 1, ``resolution`` as ``shade_face``'s."""
    if style not in MESH_STYLES:
        raise ValueError(f"mesh style must be one of {MESH_STYLES}, got {style!r}")
    check_look(colour, opacity)
    if style == "none":
        return
    height, width = image.shape[:2]
    for face in result.faces:
        pixels = project_vertices(face, result.focal, result.principal)
        x0, y0, x1, y1 = window = mesh_window(pixels, width, height)
        if x1 <= x0 or y1 <= y0:
            continue
        region = image[y0:y1, x0:x1]
        if style == "shaded":
            shade, alpha = shade_face(face, faces_tri, result.focal, result.principal, window, resolution)
            paint = cv2.applyColorMap(cv2.convertScaleAbs(shade, alpha=255), shade_colours(tuple(int(c) for c in colour)))
        else:
            alpha = wireframe_face(face, faces_tri, result.focal, result.principal, window, resolution, line_scale(height))
            paint = np.empty(region.shape, np.uint8)
            paint[:] = np.round(np.asarray(colour, np.float64) * LINE_SHADE).astype(np.uint8)
        alpha *= opacity
        region[:] = cv2.blendLinear(paint, region, alpha, 1.0 - alpha)


def mesh_window(pixels: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) frame pixel window around (V, 2) projected vertices, 2 pixels wider on
    every side, clipped to the frame."""
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
    colour: tuple[int, int, int] = MESH_COLOUR,
    opacity: float = MESH_OPACITY,
) -> np.ndarray:
    """A copy of the frame with the mesh (``style``, ``colour``, ``opacity``; ``resolution`` as
    ``shade_face``'s) and landmarks drawn over it."""
    image = np.ascontiguousarray(image_bgr).copy()
    if style != "none":
        draw_mesh(image, result, faces_tri, style, opacity, resolution, colour)
    if landmarks or detector_landmarks:
        draw_landmarks(image, result, model=landmarks, detector=detector_landmarks)
    return image
