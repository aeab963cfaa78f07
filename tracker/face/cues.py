"""Geometry cues: a face crop -> per-pixel surface normals + face mask, N2FNet's input.

    GeometryCue        the interface: ``cue(crop_bgr, landmarks_crop) -> CueOutput``
    CueOutput          normals (S, S, 3) unit vectors, zero outside the mask; mask (S, S) in {0, 1};
                       the frame the normals are expressed in
    MediaPipeMeshCue   embedded default: the MediaPipe face mesh rasterised in the crop (CPU, ms)
    FaRLMaskCue        the mesh's normals under FaRL's face-parsing mask (optional ``facer``)
    Pixel3DMMCue       Pixel3DMM's normal network (+ FaRL's mask), the paper's cues (optional)
    create_cue         factory by name: "mediapipe", "mediapipe+farl", "pixel3dmm", "pixel3dmm+farl"
    mediapipe_triangles   the MediaPipe face-mesh triangles rebuilt from mediapipe's tessellation

Frames of the normals:
    "camera"  the view frame of ``tracker.geometry.camera``: +x right, +y up, +z towards the
              camera (a frontal face is blue-ish in ``normals_to_rgb``), the frame the synthetic
              training data renders with ``normal_frame="camera"``.
    "head"    the head model's frame (FLAME: +x the subject's left, +y up, +z out of the face);
              Pixel3DMM predicts normals in FLAME's frame.

The embedded cue (``MediaPipeMeshCue``):
    Triangles: mediapipe 0.10.21's wheel ships no face-model triangle list (no
    canonical_face_model.obj nor geometry-pipeline metadata; only the tflite models), so the
    triangles are rebuilt from ``FACEMESH_TESSELATION``, a set of 2556 directed edges: the
    3-cliques of its edge graph (854) minus the two that are not faces (three vertices whose
    three edges are each shared by three cliques, around vertices 49-64-129 and its mirror
    279-294-358) leave 852 triangles on the 468 vertices, an orientable disc with four boundary
    loops (the face outline, 36 vertices; the inner lips, 20; each eye opening, 16). Its
    directed edges are half-edges of consistently wound triangles (interior edges appear in both
    directions, the 88 boundary edges once), which fixes the winding: counter-clockwise seen from
    in front of the face (checked on real faces in the tests). (MediaPipe's canonical face model has
    898 triangles: these 852 plus 46 that close the eyes, 2 x 14, and the mouth, 18.)
    Mask: the 852 triangles plus 28 that close the two eye openings (zig-zag strips between the
    lids), so the mask matches FaRL's "face" classes {skin, brows, eyes, nose, lips} and leaves
    out the inner mouth (FaRL's class 11) as N2FNet's S_face does. It covers the face up to
    MediaPipe's outline: forehead to about the hairline, cheeks and jaw; no ears, no neck.
    Surface: the landmarks in crop pixels with MediaPipe's relative depth z (same scale as x,
    weak perspective), i.e. the view-frame surface (x, -y, -z); area-weighted vertex normals,
    interpolated per pixel and renormalised. The rasteriser's pinhole camera reproduces the
    landmark pixels exactly: a vertex at crop pixel (x, y) with depth z is placed at
    Z = D + z / f', X = (x - c) Z / f, Y = (y - c) Z / f (f = 1000 S, D = 1000), so the
    projection is x, y and the z-test keeps the surface nearest the camera.
    Rendering: per crop on the CPU, ``tracker.render.rasterize_numpy.NumpyRasterizer`` with this
    camera, which gives the general PyTorch rasteriser's fragments for this one mesh in a quarter
    of its time (``render_mediapipe_mesh`` is the batched, differentiable PyTorch version that the
    synthetic training data renders with).
    The weak-perspective normals ignore the viewing-ray angle of off-centre pixels (a few
    degrees for typical crops) and MediaPipe's depth is only "roughly" in x units, so they
    are a coarse cue next to Pixel3DMM's, but cheap and always available.
"""

from __future__ import annotations

import collections
import functools
import importlib
import itertools
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.files.safe_load import load_torch_file
from tracker.geometry.camera import FLIP, camera_to_view
from tracker.render import interpolate, rasterize, vertex_normals
from tracker.render.rasterize_numpy import NumpyRasterizer, fma32
from tracker.render.rasterize_numpy import interpolate as interpolate_np

__all__ = [
    "CueOutput",
    "GeometryCue",
    "MediaPipeMeshCue",
    "FaRLMaskCue",
    "Pixel3DMMCue",
    "FaRLFaceParser",
    "FARL_FACE_CLASSES",
    "CUE_NAMES",
    "create_cue",
    "mediapipe_triangles",
    "mediapipe_boundary_loops",
    "render_mediapipe_mesh",
]

Frame = Literal["camera", "head"]

# facer's `farl/celebm/448` labels: 0 background, 1 neck, 2 face, 3 cloth, 4 r-ear, 5 l-ear,
# 6 r-brow, 7 l-brow, 8 r-eye, 9 l-eye, 10 nose, 11 inner mouth, 12 lower lip, 13 upper lip,
# 14 hair, 15 glasses, 16 hat, 17 earring, 18 necklace. Pixel3DMM's / N2FNet's "face":
FARL_FACE_CLASSES = (2, 6, 7, 8, 9, 10, 12, 13)
# the mask Pixel3DMM's own inference script feeds its normal network (adds the ears 4, 5)
PIXEL3DMM_INPUT_CLASSES = (2, 4, 5, 6, 7, 8, 9, 10, 12, 13)


@dataclass
class CueOutput:
    """Geometry cue of one S x S crop.

    normals  (S, S, 3) float32 unit vectors in ``frame``, zero where ``mask`` is 0
    mask     (S, S) float32 in {0, 1}: the face pixels
    frame    "camera" (view frame: +x right, +y up, +z towards the camera) or "head"
    """

    normals: np.ndarray
    mask: np.ndarray
    frame: Frame


class GeometryCue(ABC):
    """Crop -> normals + mask. Subclasses set ``name`` and ``frame`` (the frame of their normals).

    ``cue(crop_bgr, landmarks_crop)``: ``crop_bgr`` (S, S, 3) uint8 BGR (a ``FaceCrop.image``),
    ``landmarks_crop`` (478, 3) MediaPipe points in crop pixels (``FaceCrop.landmarks``) or None
    (cues that need landmarks then run their own MediaPipe detector on the crop).
    """

    name: str = ""
    frame: Frame = "camera"

    @abstractmethod
    def __call__(self, crop_bgr: np.ndarray, landmarks_crop: np.ndarray | None = None) -> CueOutput: ...

    def close(self) -> None:
        """Release models and detectors (the cue may not be used afterwards)."""

    def __enter__(self) -> GeometryCue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- MediaPipe mesh

_EYE_CORNERS = ((33, 133), (362, 263))  # (one corner, the opposite corner) of each eye opening
_MOUTH_VERTEX = 13  # a vertex of the inner-lip loop


@functools.lru_cache(maxsize=None)
def _tessellation() -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    """(852, 3) triangles wound like mediapipe's half-edges, and the boundary loops."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    half_edges = {(int(a), int(b)) for a, b in FACEMESH_TESSELATION}
    neighbours = collections.defaultdict(set)
    for a, b in half_edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    cliques = sorted({tuple(sorted((a, b, c))) for a, b in half_edges for c in neighbours[a] & neighbours[b]})
    # a 3-clique that is not a face has each of its edges shared by two real faces besides itself
    uses = collections.Counter(edge for tri in cliques for edge in itertools.combinations(tri, 2))
    faces = [tri for tri in cliques if not all(uses[edge] >= 3 for edge in itertools.combinations(tri, 2))]
    uses = collections.Counter(edge for tri in faces for edge in itertools.combinations(tri, 2))
    if max(uses.values()) > 2:
        raise RuntimeError("mediapipe's face-mesh tessellation is not a manifold; cannot rebuild its triangles")

    # winding: a face on the boundary contains its boundary half-edge; propagate across shared
    # edges (neighbours traverse them in opposite directions) and check every half-edge agrees
    boundary = {(a, b) for a, b in half_edges if (b, a) not in half_edges}
    by_edge = collections.defaultdict(list)
    for index, tri in enumerate(faces):
        for edge in itertools.combinations(tri, 2):
            by_edge[edge].append(index)
    oriented: dict[int, tuple[int, int, int]] = {}
    queue = collections.deque()
    for index, (a, b, c) in enumerate(faces):
        for tri in ((a, b, c), (a, c, b)):
            if any(edge in boundary for edge in _edges(tri)):
                oriented[index] = tri
                queue.append(index)
                break
    while queue:
        index = queue.popleft()
        for u, v in _edges(oriented[index]):
            for other in by_edge[tuple(sorted((u, v)))]:
                if other == index:
                    continue
                a, b, c = faces[other]
                tri = next(t for t in ((a, b, c), (a, c, b)) if (v, u) in _edges(t))
                if other not in oriented:
                    oriented[other] = tri
                    queue.append(other)
                elif oriented[other] != tri:
                    raise RuntimeError("mediapipe's face-mesh tessellation is not consistently oriented")
    if len(oriented) != len(faces) or any(edge not in half_edges for tri in oriented.values() for edge in _edges(tri)):
        raise RuntimeError("mediapipe's face-mesh tessellation does not match its triangles")
    triangles = np.array([oriented[i] for i in range(len(faces))], dtype=np.int64)

    following = dict(boundary)
    loops, seen = [], set()
    for start in sorted(following):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        while following[loop[-1]] != start:
            loop.append(following[loop[-1]])
            seen.add(loop[-1])
        loops.append(tuple(loop))
    return triangles, tuple(sorted(loops, key=len, reverse=True))


def _edges(tri: tuple[int, int, int]) -> tuple[tuple[int, int], ...]:
    a, b, c = tri
    return ((a, b), (b, c), (c, a))


def mediapipe_boundary_loops() -> dict[str, tuple[int, ...]]:
    """The four boundary loops of the tessellation, in its half-edge direction:
    {"outline", "mouth", "right_eye", "left_eye"} (eyes: the subject's right = image left)."""
    _, loops = _tessellation()
    named = {}
    for loop in loops:
        if _MOUTH_VERTEX in loop:
            named["mouth"] = loop
        elif _EYE_CORNERS[0][0] in loop:
            named["right_eye"] = loop
        elif _EYE_CORNERS[1][0] in loop:
            named["left_eye"] = loop
        else:
            named["outline"] = loop
    if len(named) != 4:
        raise RuntimeError(f"unexpected boundary loops of mediapipe's tessellation: {[len(loop) for loop in loops]}")
    return named


def _fill_loop(loop: tuple[int, ...], corner: int, opposite: int) -> list[tuple[int, int, int]]:
    """Zig-zag triangles closing a hole bounded by ``loop`` (a boundary in half-edge direction),
    from ``corner`` to ``opposite``, wound like the mesh."""
    start = loop.index(corner)
    ring = [loop[(start - k) % len(loop)] for k in range(len(loop))]  # reversed: the fill's winding
    if ring.index(opposite) != len(ring) // 2:
        raise RuntimeError(f"eye loop corners {corner}, {opposite} are not opposite")
    triangles, left, right, forward = [], 0, len(ring) - 1, True
    while right - left >= 2:
        if forward:
            triangles.append((ring[left], ring[left + 1], ring[right]))
            left += 1
        else:
            triangles.append((ring[left], ring[right - 1], ring[right]))
            right -= 1
        forward = not forward
    return triangles


@functools.lru_cache(maxsize=None)
def _triangles(fill_eyes: bool, fill_mouth: bool) -> np.ndarray:
    triangles, _ = _tessellation()
    loops = mediapipe_boundary_loops()
    extra = []
    if fill_eyes:
        for name, (corner, opposite) in zip(("right_eye", "left_eye"), _EYE_CORNERS):
            extra += _fill_loop(loops[name], corner, opposite)
    if fill_mouth:
        mouth = loops["mouth"]
        extra += _fill_loop(mouth, 78, 308)
    if extra:
        triangles = np.concatenate((triangles, np.array(extra, dtype=np.int64)))
    triangles.setflags(write=False)
    return triangles


def mediapipe_triangles(fill_eyes: bool = True, fill_mouth: bool = False) -> np.ndarray:
    """(F, 3) int64 triangles of the 468-vertex MediaPipe face mesh, wound counter-clockwise seen
    from in front of the face: 852 from the tessellation, + 28 closing the eyes, + 18 the mouth
    (read-only array)."""
    return _triangles(bool(fill_eyes), bool(fill_mouth))


def render_mediapipe_mesh(points: torch.Tensor, faces: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded cue's rendering (module docstring, "Surface"), batched.

    points (B, 468, 3): MediaPipe-topology points in crop pixels, x right, y down, z relative
    depth in pixel units (smaller = nearer); faces (F, 3) long, e.g. ``mediapipe_triangles()``.
    Returns view-frame unit normals (B, S, S, 3), zero outside the mesh, and the mask (B, S, S)
    float in {0, 1}. The normals are differentiable w.r.t. ``points``; the mask is not.
    """
    surface = camera_to_view(points)  # view frame: +y up, +z towards the camera
    normals = vertex_normals(surface, faces)
    focal, depth = 1000.0 * size, 1000.0
    batch = points.shape[0]
    with torch.no_grad():
        z = depth + points[..., 2] * (depth / focal)
        centre = size / 2.0
        camera = torch.stack(((points[..., 0] - centre) * z / focal, (points[..., 1] - centre) * z / focal, z), -1)
        focal_t = points.new_full((batch, 2), focal)
        principal = points.new_full((batch, 2), centre)
        fragments = rasterize(camera, faces, focal_t, principal, (size, size))
    image = interpolate(normals, faces, fragments)
    image = image * image.square().sum(-1, keepdim=True).clamp_min(1e-30).rsqrt()
    mask = fragments.mask.to(points.dtype)
    return image * mask[..., None], mask


def _mesh_camera(points: np.ndarray, size: int) -> np.ndarray:
    """``render_mediapipe_mesh``'s camera-frame vertices in NumPy, in its float32 operation order
    (the same values bit for bit): (V, 3) float32 crop-pixel points -> (V, 3) float32, seen by
    focal 1000 S and principal point (S / 2, S / 2)."""
    focal, centre = np.float32(1000.0 * size), np.float32(size / 2.0)
    z = np.float32(1000.0) + points[:, 2] * np.float32(1000.0 / (1000.0 * size))
    return np.stack(((points[:, 0] - centre) * z / focal, (points[:, 1] - centre) * z / focal, z), -1)


def _incidence(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(D, V) face indices: column v lists the faces at vertex v in the order torch's
    ``index_add`` visits them in ``vertex_normals`` (corner 0 of every face, then corner 1, then
    corner 2), padded with F (a zero normal)."""
    vertex = faces.T.reshape(-1)  # the vertex of corner k of face f, at k F + f
    order = np.argsort(vertex, kind="stable")  # by vertex, then in visiting order
    degree = np.bincount(vertex, minlength=num_vertices)
    slot = np.arange(vertex.size) - np.repeat(np.cumsum(degree) - degree, degree)
    table = np.full((max(int(degree.max()), 1), num_vertices), len(faces), np.int64)
    table[slot, vertex[order]] = order % len(faces)
    return table


class _MeshNormals:
    """``tracker.render.vertex_normals`` of the cue's view-frame surface (x, -y, -z) of (V, 3)
    float32 crop points, component-major (3, V), in torch's float32 operation order, so the same
    values bit for bit: its cross product is fused, and its ``index_add`` adds the face normals to
    zeros one by one, in the order of ``_incidence``."""

    def __init__(self, faces: np.ndarray, num_vertices: int) -> None:
        self.num_faces, self.num_vertices = len(faces), num_vertices
        component = np.arange(3)[:, None, None]
        self._corners = component * num_vertices + faces.T[None]  # (3, 3, F) into the flat (3, V)
        self._incidence = component * (len(faces) + 1) + _incidence(faces, num_vertices)[None]  # (3, D, V)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        surface = points.T * np.float32(FLIP)[:, None]  # (3, V) view frame
        corners = np.take(surface, self._corners)  # (xyz, corner, F)
        u, v = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
        normal = np.zeros((3, self.num_faces + 1), np.float32)  # + a zero column for the padding
        normal[:, :-1] = fma32(u[[1, 2, 0]], v[[2, 0, 1]], -(u[[2, 0, 1]] * v[[1, 2, 0]]))  # u x v
        # n1 + n2 + ... in order (NumPy sums along a non-innermost axis one slice after another;
        # torch's 0 + n1 + ... is the same), the padding adding nothing
        summed = np.take(normal, self._incidence).sum(axis=1)  # (3, D, V) -> (3, V)
        norm = np.sqrt(summed[0] * summed[0] + summed[1] * summed[1] + summed[2] * summed[2])
        return summed / np.maximum(norm, np.float32(1e-20))


class MediaPipeMeshCue(GeometryCue):
    """The embedded cue: the MediaPipe face mesh rasterised in the crop (see the module docstring).

    Args:
        fill_eyes: close the eye openings (mask like FaRL's "face", which includes the eyes).
        fill_mouth: close the inner mouth too (FaRL's and N2FNet's face mask leave it out).
        device: where ``render_mediapipe_mesh`` runs with the "torch" renderer.
        renderer: "numpy" (the default on the CPU): ``tracker.render.rasterize_numpy``, which
            reproduces ``render_mediapipe_mesh`` (the general PyTorch rasteriser) for this one
            mesh in 1.1-1.8 ms per 128 x 128 crop on one core of this project's 2-core machine
            instead of 5-8 ms; "torch" (the default on other devices): ``render_mediapipe_mesh`` itself,
            the reference. With "torch" on a CPU busy with other work (training, capture),
            torch's intra-op thread pool stalls such small ops badly (median 20-500 ms measured
            with 2 threads here); ``torch.set_num_threads(1)`` in the live process avoids that.

    The two renderers give the same maps: the same float32 arithmetic decides the z-test and the
    barycentrics, the vertex normals, interpolation and normalisation are torch's float32
    operations in torch's order, so the normals come out bit for bit alike; the masks could differ
    only at a pixel centre within float32 rounding (~1e-6 px) of the mesh outline, where the
    coverage tests round differently (``tracker.render.rasterize_numpy``). tests/face/test_cues.py
    compares them on real crops and finds neither kind of difference.

    Landmarks: ``FaceCrop.landmarks`` (crop pixels, MediaPipe's z scaled like x). Without them
    the cue runs its own static-image MediaPipe detector on the crop; no face -> empty mask.
    """

    name = "mediapipe"
    frame: Frame = "camera"

    def __init__(
        self,
        fill_eyes: bool = True,
        fill_mouth: bool = False,
        device: str | torch.device = "cpu",
        renderer: Literal["numpy", "torch"] | None = None,
    ) -> None:
        self.device = torch.device(device)
        if renderer is None:
            renderer = "numpy" if self.device.type == "cpu" else "torch"
        if renderer not in ("numpy", "torch"):
            raise TrackerError(f"MediaPipeMeshCue renderer must be 'numpy' or 'torch', got {renderer!r}")
        self.renderer = renderer
        triangles = np.array(mediapipe_triangles(fill_eyes, fill_mouth))
        self.faces = torch.from_numpy(triangles).to(self.device)
        self._faces_np = triangles
        self._rasterizer = NumpyRasterizer(triangles)
        self._normals = _MeshNormals(triangles, 468)
        self._detector = None

    def __call__(self, crop_bgr: np.ndarray, landmarks_crop: np.ndarray | None = None) -> CueOutput:
        size = _check_crop(crop_bgr)
        if landmarks_crop is None:
            landmarks_crop = self._detect(crop_bgr)
            if landmarks_crop is None:
                return _empty(size, self.frame)
        normals, mask = self.render(np.asarray(landmarks_crop), size)
        return CueOutput(normals=normals, mask=mask, frame=self.frame)

    def render(self, landmarks_crop: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(N >= 468, 3) crop-pixel landmarks -> view-frame normals (S, S, 3), mask (S, S), float32."""
        if landmarks_crop.ndim != 2 or landmarks_crop.shape[0] < 468 or landmarks_crop.shape[1] != 3:
            raise TrackerError(f"the MediaPipe mesh cue needs (468 or 478, 3) landmarks, got {landmarks_crop.shape}")
        if self.renderer == "torch":
            return self._render_torch(landmarks_crop, size)
        points = np.asarray(landmarks_crop[:468], dtype=np.float32)
        vertex_normal = self._normals(points)  # (3, V)
        centre = size / 2.0
        fragments = self._rasterizer(_mesh_camera(points, size), 1000.0 * size, (centre, centre), (size, size))
        values = interpolate_np(vertex_normal.T, self._faces_np, fragments)  # (3, N)
        # unit length as render_mediapipe_mesh: v * rsqrt(max(|v|^2, 1e-30)), in float32
        squared = values[0] * values[0] + values[1] * values[1] + values[2] * values[2]
        values *= np.float32(1.0) / np.sqrt(np.maximum(squared, np.float32(1e-30)))
        mask = np.zeros(size * size, np.float32)
        mask[fragments.pixels] = 1.0
        return fragments.to_image(values), mask.reshape(size, size)

    @torch.no_grad()
    def _render_torch(self, landmarks_crop: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        points = torch.as_tensor(landmarks_crop[:468], dtype=torch.float32, device=self.device)
        normals, mask = render_mediapipe_mesh(points[None], self.faces, size)
        return normals[0].cpu().numpy(), mask[0].cpu().numpy()

    def _detect(self, crop_bgr: np.ndarray) -> np.ndarray | None:
        if self._detector is None:
            from tracker.face.detection import FaceMeshDetector

            self._detector = FaceMeshDetector(max_faces=1, static_images=True)
        faces = self._detector.detect(crop_bgr)
        return faces[0].points if faces else None

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None


# --------------------------------------------------------------------------- optional adapters


def _require_file(path: str | os.PathLike | None, what: str, how: str) -> Path:
    if path is None:
        raise TrackerError(f"{what} needs a local weights file, and nothing is downloaded: {how}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrackerError(f"{what}: weights file {path} not found. {how}")
    return path


def _require_module(module: str, what: str, how: str):
    try:
        return importlib.import_module(module)
    except Exception as error:  # ImportError, or a package whose own import fails (config, deps)
        raise TrackerError(f"{what} needs the `{module}` package, which cannot be imported ({error}). {how}") from error


_FARL_HOW = (
    "Install facer (pip install pyfacer, or pip install git+https://github.com/FacePerceiver/facer.git) "
    "and download the FaRL CelebM parsing model face_parsing.farl.celebm.main_ema_181500_jit.pt from "
    "facer's GitHub release models-v1, then pass its path (create_cue(..., farl_weights=PATH))."
)
_PIXEL3DMM_HOW = (
    "Install Pixel3DMM as its README says (git clone https://github.com/SimonGiebenhain/pixel3dmm; "
    "pip install -e . in it; set PIXEL3DMM_CODE_BASE etc. in ~/.config/pixel3dmm/.env), download its "
    "normal-prediction checkpoint (pretrained_weights/normals.ckpt, CC BY-NC 4.0) and pass its path "
    "(create_cue('pixel3dmm', pixel3dmm_weights=PATH))."
)


def _omegaconf_classes() -> list:
    """OmegaConf's config containers and the plain types inside them: what a Lightning checkpoint's
    hyper-parameters hold when they are an OmegaConf config (Pixel3DMM's ``cfg``); data only."""
    try:
        from omegaconf import DictConfig, ListConfig, base, nodes
    except ImportError:
        return []
    node_types = (nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode)
    return [DictConfig, ListConfig, base.ContainerMetadata, base.Metadata, *node_types, Any, collections.defaultdict, dict, list, int, float, str, bool]


def _load_pixel3dmm_network(system: type, path: Path) -> torch.nn.Module:
    """Pixel3DMM's normal network from its Lightning checkpoint, without running anything in the file.

    The file is read with ``torch.load(weights_only=True)`` (OmegaConf configs allowed); the system is
    built from the file's "hyper_parameters" (``system(**hyper_parameters)``, as Lightning does) and
    gets its "state_dict" (keys "net.*"; non-strict like Pixel3DMM's own loading). Returns ``system.net``.
    """
    fix = f"Use Pixel3DMM's published checkpoint. {_PIXEL3DMM_HOW}"
    state = load_torch_file(path, "Pixel3DMM checkpoint", fix, allowed=_omegaconf_classes())
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not any(key.startswith("net.") for key in weights):
        raise TrackerError(f"Pixel3DMM checkpoint {path} holds no network weights (no 'state_dict' with 'net.' entries). {fix}")
    try:
        model = system(**state.get("hyper_parameters", {}))
        model.load_state_dict(weights, strict=False)
    except Exception as error:  # hyper-parameters or weights that do not fit this pixel3dmm version
        raise TrackerError(f"Pixel3DMM checkpoint {path} does not fit the installed pixel3dmm ({error}). {fix}") from error
    return model.net


def five_points(landmarks_crop: np.ndarray) -> np.ndarray:
    """(478 or 468, 3) MediaPipe points -> (5, 2) RetinaFace-style points in image order: eye
    centre on the image left, eye centre on the image right, nose tip, mouth corner on the image
    left, mouth corner on the image right (what facer's alignment expects)."""
    p = np.asarray(landmarks_crop)[:, :2]
    if len(p) >= 478:  # iris centres
        eyes = (p[468], p[473])
    else:
        eyes = ((p[33] + p[133]) / 2, (p[362] + p[263]) / 2)
    return np.stack((eyes[0], eyes[1], p[1], p[61], p[291])).astype(np.float32)


class FaRLFaceParser:
    """facer's FaRL face parser (`farl/celebm/448`) from a local TorchScript file (no download).

    ``parse(crop_bgr, landmarks_crop)`` -> (S, S) int64 class map (labels in FARL_FACE_CLASSES'
    comment). facer aligns the face from five points; they come from the MediaPipe landmarks.
    """

    def __init__(self, weights: str | os.PathLike | None, device: str | torch.device = "cpu") -> None:
        path = _require_file(weights, "FaRL face parsing", _FARL_HOW)
        facer = _require_module("facer", "FaRL face parsing", _FARL_HOW)
        self.device = torch.device(device)
        try:  # facer >= 0.0.4: face_parser(name, device, model_path=...) loads a local file as is
            self.parser = facer.face_parser("farl/celebm/448", device=self.device, model_path=str(path))
        except TypeError as error:
            raise TrackerError(f"this facer version cannot load a local model file ({error}); install a newer facer. {_FARL_HOW}") from error
        except Exception as error:
            raise TrackerError(f"FaRL weights {path} could not be loaded ({error}). {_FARL_HOW}") from error
        self.parser.eval()

    @torch.no_grad()
    def parse(self, crop_bgr: np.ndarray, landmarks_crop: np.ndarray) -> np.ndarray:
        rgb = np.ascontiguousarray(crop_bgr[..., ::-1])
        image = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self.device)  # 1 x 3 x H x W uint8
        points = torch.from_numpy(five_points(landmarks_crop))[None].to(self.device)
        data = {
            "points": points,
            "image_ids": torch.zeros(1, dtype=torch.long, device=self.device),
            "rects": torch.zeros(1, 4, device=self.device),
            "scores": torch.ones(1, device=self.device),
        }
        logits = self.parser(image, data)["seg"]["logits"]  # 1 x 19 x H x W
        return logits.argmax(1)[0].cpu().numpy()

    def face_mask(self, classes: np.ndarray, labels: tuple[int, ...] = FARL_FACE_CLASSES) -> np.ndarray:
        return np.isin(classes, labels).astype(np.float32)


class FaRLMaskCue(GeometryCue):
    """The MediaPipe mesh's normals under FaRL's face mask (classes FARL_FACE_CLASSES).

    mask = FaRL face ∩ mesh coverage (normals exist only on the mesh); frame "camera".
    Needs facer and a local FaRL CelebM TorchScript file (``farl_weights``).
    """

    name = "mediapipe+farl"
    frame: Frame = "camera"

    def __init__(self, farl_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        self.parser = FaRLFaceParser(farl_weights, device)
        self.mesh = MediaPipeMeshCue(fill_eyes=True, device="cpu")

    def __call__(self, crop_bgr: np.ndarray, landmarks_crop: np.ndarray | None = None) -> CueOutput:
        size = _check_crop(crop_bgr)
        if landmarks_crop is None:
            landmarks_crop = self.mesh._detect(crop_bgr)
            if landmarks_crop is None:
                return _empty(size, self.frame)
        normals, mesh_mask = self.mesh.render(np.asarray(landmarks_crop), size)
        mask = self.parser.face_mask(self.parser.parse(crop_bgr, landmarks_crop)) * mesh_mask
        return CueOutput(normals=normals * mask[..., None], mask=mask, frame=self.frame)

    def close(self) -> None:
        self.mesh.close()


class Pixel3DMMCue(GeometryCue):
    """Pixel3DMM's normal network: normals in FLAME's frame ("head"), the paper's N.

    Inference as Pixel3DMM's scripts/network_inference.py: the crop resized to 512 x 512 RGB in
    [0, 1], batch {"tar_rgb": (1, 1, 512, 512, 3), "tar_msk": (1, 1, 512, 512)}, run once as is and
    once mirrored (the mirrored prediction flipped back with its x component negated), averaged,
    normalised, then its stored-normal convention (x, -z, -y) of the raw channels, which is
    FLAME's frame. Resized to the crop size and renormalised.
    Mask: FaRL's face classes when ``farl_weights`` is given (the paper's S_face; the network's
    input mask then uses Pixel3DMM's own class set, which adds the ears); otherwise the MediaPipe
    mesh's mask (and an all-ones input mask).
    Pixel3DMM is trained on its own crops (a face-tracker crop, not DECA's box); the DECA crop
    with alpha = 1.4 is close but not identical. Its checkpoint is read without running anything
    in it (``_load_pixel3dmm_network``).
    """

    name = "pixel3dmm"
    frame: Frame = "head"
    input_size = 512

    def __init__(
        self,
        pixel3dmm_weights: str | os.PathLike | None = None,
        farl_weights: str | os.PathLike | None = None,
        device: str | torch.device = "cuda" if torch.cuda.is_available() else "cpu",
        require_farl: bool = False,
    ) -> None:
        path = _require_file(pixel3dmm_weights, "Pixel3DMM normals", _PIXEL3DMM_HOW)
        if require_farl and farl_weights is None:
            _require_file(None, "FaRL face parsing (pixel3dmm+farl)", _FARL_HOW)
        self.device = torch.device(device)
        self.parser = FaRLFaceParser(farl_weights, self.device) if farl_weights is not None else None
        system = _require_module("pixel3dmm.lightning.p3dmm_system", "Pixel3DMM normals", _PIXEL3DMM_HOW).system
        self.net = _load_pixel3dmm_network(system, path).to(self.device).eval()
        self.mesh = MediaPipeMeshCue(fill_eyes=True, device="cpu")

    @torch.no_grad()
    def __call__(self, crop_bgr: np.ndarray, landmarks_crop: np.ndarray | None = None) -> CueOutput:
        size = _check_crop(crop_bgr)
        if landmarks_crop is None:
            landmarks_crop = self.mesh._detect(crop_bgr)
            if landmarks_crop is None:
                return _empty(size, self.frame)
        landmarks_crop = np.asarray(landmarks_crop)
        n = self.input_size
        rgb = cv2.resize(np.ascontiguousarray(crop_bgr[..., ::-1]), (n, n), interpolation=cv2.INTER_CUBIC)
        image = torch.from_numpy(rgb).to(self.device, torch.float32).div_(255)[None, None]  # 1, 1, n, n, 3
        if self.parser is not None:
            classes = self.parser.parse(crop_bgr, landmarks_crop)
            mask = self.parser.face_mask(classes)
            net_mask = self.parser.face_mask(classes, PIXEL3DMM_INPUT_CLASSES)
            net_mask = cv2.resize(net_mask, (n, n), interpolation=cv2.INTER_NEAREST)
        else:
            mask = self.mesh.render(landmarks_crop, size)[1]
            net_mask = np.ones((n, n), np.float32)
        net_mask = torch.from_numpy(net_mask).to(self.device).long()[None, None]
        batch = {"tar_rgb": image, "tar_msk": net_mask}
        mirrored = {"tar_rgb": torch.flip(image, dims=[3]), "tar_msk": torch.flip(net_mask, dims=[3])}
        raw = self.net(batch)[0]["normals"]  # (1, 1, 3, n, n)
        raw_mirrored = torch.flip(self.net(mirrored)[0]["normals"], dims=[4])
        raw_mirrored[:, :, 0] *= -1
        raw = ((raw + raw_mirrored) / 2)[0, 0]  # (3, n, n)
        raw = raw / raw.norm(dim=0, keepdim=True).clamp_min(1e-12)
        head = torch.stack((raw[0], -raw[2], -raw[1]), dim=-1).float().cpu().numpy()  # (n, n, 3) FLAME frame
        head = cv2.resize(head, (size, size), interpolation=cv2.INTER_AREA)
        head /= np.maximum(np.linalg.norm(head, axis=-1, keepdims=True), 1e-12)
        return CueOutput(normals=(head * mask[..., None]).astype(np.float32), mask=mask.astype(np.float32), frame=self.frame)

    def close(self) -> None:
        self.mesh.close()


# --------------------------------------------------------------------------- factory

CUE_NAMES = ("mediapipe", "mediapipe+farl", "pixel3dmm", "pixel3dmm+farl")


def create_cue(
    name: str = "mediapipe",
    *,
    pixel3dmm_weights: str | os.PathLike | None = None,
    farl_weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    **options,
) -> GeometryCue:
    """A geometry cue by name.

    "mediapipe"        the embedded MediaPipe mesh (``options``: fill_eyes, fill_mouth)
    "mediapipe+farl"   mesh normals under FaRL's face mask (needs ``farl_weights``)
    "pixel3dmm"        Pixel3DMM normals, mesh mask (needs ``pixel3dmm_weights``)
    "pixel3dmm+farl"   Pixel3DMM normals + FaRL mask: the paper's cues (needs both)
    Missing packages or weight files raise a ``TrackerError`` that says how to provide them.
    """
    key = name.lower().replace(" ", "")
    if key == "mediapipe":
        return MediaPipeMeshCue(device=device or "cpu", **options)
    if key == "mediapipe+farl":
        return FaRLMaskCue(farl_weights, device=device or "cpu")
    if key in ("pixel3dmm", "pixel3dmm+farl"):
        extra = {} if device is None else {"device": device}
        return Pixel3DMMCue(pixel3dmm_weights, farl_weights, require_farl=key == "pixel3dmm+farl", **extra, **options)
    raise TrackerError(f"unknown geometry cue {name!r}; choose one of {', '.join(CUE_NAMES)}")


def _check_crop(crop_bgr: np.ndarray) -> int:
    crop = np.asarray(crop_bgr)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise TrackerError(f"a geometry cue needs a square (S, S, 3) BGR crop, got {crop.shape}")
    return int(crop.shape[0])


def _empty(size: int, frame: Frame) -> CueOutput:
    return CueOutput(np.zeros((size, size, 3), np.float32), np.zeros((size, size), np.float32), frame)
