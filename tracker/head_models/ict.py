"""ICT-FaceKit "Light" head model (USC ICT Vision and Graphics Lab, MIT licence).

A linear model on one fixed mesh (26,719 vertices: face, head and neck, mouth interior, teeth,
eyeballs, eyelashes, ...):

    vertices = neutral + identity @ identity_deltas + expression @ expression_deltas     (metres)

with 100 identity PCA weights (prior N(0, 1)) and 53 ARKit-named expression blendshape weights
in [0, 1] (prior: each shape on with probability 0.2, then U(0, 1); neutral 0). Data: the packed
npz of ``ict-facekit/README.md`` in the shared folder, made from an upstream checkout by
``python -m tracker.head_models ict-convert``.

Head frame (upstream's, scaled from centimetres to metres): +x to the subject's left (ICT's
"_L" shapes act on +x), +y up, +z out of the face. The origin lies on the mid-sagittal plane at
about ear height (the auricles' centroid is at y +0.8 cm, z +0.4 cm): 0.4 cm below the nose
tip's height, 13.1 cm behind the nose tip, 8.7 cm in front of the back of the head. The neutral
head above the chin spans x +-9.2 cm, y -7.6..+14.5 cm, z -8.7..+13.1 cm (box centre
(0, 3.5, 2.2) cm, 4.1 cm from the origin); the whole mesh, shoulders included, spans
x +-12.4 cm, y -19.3..+14.5 cm, z -9.2..+13.1 cm.

Landmarks: the 68 iBUG / Multi-PIE vertices of the npz. ``contour="jawline"`` swaps points 0-7
and 9-16 for upstream's jawline substitutes, which lie on the mandible's edge: in a frontal view
of the neutral they sit 0-0.5 mm from the jaw's occluding outline for points 1-4 and 12-15
(Multi-PIE's: 0.3-2.9 mm, on the cheek in front of it). ``contour="multipie"`` keeps upstream's
68 list unchanged. ``contour="calibrated"`` (default) is ``CALIBRATED_68``: the jawline set with
the points that 2D annotators place elsewhere moved to where they put them (below).

Calibrated landmarks (``python -m train.landmark_calibration``): the heads fitted to MediaPipe's
landmarks on the 18 faces of dlib's training XML (shared real-faces/dlib-faces), each iBUG point
and its mirror image moved together to the skin vertex (within 15 mm) whose projection is closest
to dlib's 68-point annotations, where that gains at least 0.5 % of the inter-ocular distance
(midline points stay on the midline).
Upstream's brows sit 6-7 mm high (on the brow ridge's top, where annotators put the brow's lower
edge: error 10-13 % -> 3-4 %), its eye corners and lids lie on the lid crease (3-7 % -> 2-3 %),
and its jaw, nose tip and lip points shift by a few mm. On the 24 faces of the testing XML (other
people and photos) NME-68 drops from 6.42 to 4.26 % and NME-51 from 5.71 to 3.65 %, so it
generalises across faces; it is still one annotation convention (dlib's model, trained on
iBUG-300W), checked on mostly frontal, small faces.

Regions (``region_masks``, (V,) bool):
    every npz range region (upstream's geometry groups, names in snake_case): head_and_neck,
        mouth_socket, eye_socket_*, gums_and_tongue, teeth, eyeball_*, lacrimal_fluid_*,
        eye_blend_*, eye_occlusion_*, eyelashes_*, narrow_face, and upstream's "face" renamed
        ``upstream_face``: all skin in front of the hairline, forehead, ears and the front of
        the neck included.
    face   narrow_face + both eyeballs: the face proper, as FaRL's face classes (skin, brows,
           eyes, nose, lips) and the MediaPipe face mesh cover it. It is N2FNet's face mask and
           the "face" region of the metrics.
    derived on the neutral mesh (mutually disjoint; s = inner-eye-corner distance |L39 - L42|,
    3.7 cm; polygons in the frontal x-y projection):
        eyes   eyeball_left + eyeball_right + face vertices inside, or within 0.3 s of, the eye
               outline polygons L36-41 and L42-47 (eyelids up to the brow, lid-cheek junction)
        nose   face vertices inside or within 0.2 s of the polygon L27, L31..L35 (bridge from the
               nasion, sides, alar wings, nostrils), minus eyes
        mouth  face vertices inside or within 0.1 s of the outer lip polygon L48-59, minus eyes
               and nose (lips only; the mouth interior is mouth_socket, teeth, gums_and_tongue)
        ears   the auricles: the outer face area (face minus narrow_face) is a band around the
               face proper plus the two auricles, which are thicker than the band. Erode that
               area ring by ring on the quad-mesh graph until exactly two pieces remain (7 rings
               on ICT), then grow them back as many rings inside the area (morphological
               opening). On ICT this recovers upstream's (undocumented) auricle vertex blocks
               6706-7432 and 7433-8159 with IoU 0.97, symmetric, 734 vertices a side.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from tracker.errors import TrackerError
from tracker.files.paths import default_ict_model_path
from tracker.head_models.base import (
    GaussianPrior,
    HeadModel,
    ParamGroup,
    SparseUniformPrior,
)

# Upstream README, "Right/Left jawline (substitutes 0-7 / 9-16 in Multi PIE)".
RIGHT_JAWLINE = (1278, 1272, 12, 1834, 243, 781, 2199, 1447)
LEFT_JAWLINE = (3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496)
# ``contour="calibrated"``: see the module docstring (python -m train.landmark_calibration)
CALIBRATED_68 = (
    1885, 1890, 1895, 370, 1719, 781, 2199, 1445, 965, 3659, 4390, 3022, 3924, 2611, 4095, 4090, 4085,  # jaw
    59, 78, 1033, 102, 2003, 4203, 2343, 3253, 2319, 2300,  # brows
    971, 1348, 4840, 4841, 1140, 2075, 1178, 4269, 3360,  # nose
    545, 1575, 1535, 596, 1518, 6594, 2837, 3749, 3789, 2786, 6552, 3732,  # eyes
    5708, 5631, 6042, 5523, 6546, 6136, 6213, 6357, 6508, 5518, 6004, 5852,  # outer lips
    5702, 6038, 5533, 6542, 6207, 6512, 5517, 6008,  # inner lips
)
CONTOURS = ("calibrated", "jawline", "multipie")

UNIT_SCALE = {"centimeters": 0.01, "millimeters": 0.001, "meters": 1.0}
# array -> (number of dimensions, kind of values)
NPZ_ARRAYS = {
    "neutral": (2, "float"),
    "polygons": (2, "integer"),
    "triangles": (2, "integer"),
    "identity_deltas": (3, "float"),
    "expression_deltas": (3, "float"),
    "expression_names": (1, "string"),
    "landmarks68": (1, "integer"),
    "region_names": (1, "string"),
    "region_ranges": (2, "integer"),
    "units": (0, "string"),
}
DTYPE_KINDS = {"float": "f", "integer": "iu", "string": "U"}
# range regions the derived regions are built from
BASE_REGIONS = ("face", "narrow_face", "eyeball_left", "eyeball_right")
# Unreal-style overlay meshes (alpha-blended in a game engine) and alpha-textured eyelash strips:
# left out of ``render_faces`` so normal maps show the eyes and lids, not these layers
SEE_THROUGH = tuple(f"{part}_{side}" for part in ("lacrimal_fluid", "eye_blend", "eye_occlusion", "eyelashes") for side in ("left", "right"))
# sampling prior of the expression weights: each shape is on with this probability (about 10 of 53)
EXPRESSION_ACTIVE = 0.2
EYE_MARGIN, NOSE_MARGIN, MOUTH_MARGIN = 0.3, 0.2, 0.1  # times the inner-eye-corner distance

HOW_TO_GET = (
    "Set N2F_ICT_MODEL to the npz (or N2F_SHARED_DIR to the folder holding ict-facekit/ict_face_model.npz). "
    "To make it, clone the public ICT-FaceKit repository github.com/ICT-VGL/ICT-FaceKit (MIT licence) and run "
    "`python -m tracker.head_models ict-convert ICT-FaceKit/ ict_face_model.npz`, or fetch and convert it into the "
    "cache with `python -m tracker.head_models ict-source --download`."
)


class ICT(HeadModel):
    """ICT-FaceKit Light: groups ``identity`` (K=100) and ``expression`` (E=53, names in
    ``expression_names``); every buffer is non-persistent (not part of any state_dict)."""

    name = "ict"

    def __init__(self, arrays: Mapping[str, np.ndarray], contour: str = "calibrated") -> None:
        """``arrays``: the npz content (format of ict-facekit/README.md, checked by ``from_npz``)."""
        super().__init__()
        if contour not in CONTOURS:
            raise ValueError(f"contour must be one of {CONTOURS}, got {contour!r}")
        scale = UNIT_SCALE[str(arrays["units"])]
        neutral = arrays["neutral"].astype(np.float64) * scale
        num_identity, num_expression = len(arrays["identity_deltas"]), len(arrays["expression_deltas"])
        self.contour = contour
        self.expression_names: tuple[str, ...] = tuple(str(n) for n in arrays["expression_names"])
        self.param_groups = {
            "identity": ParamGroup(num_identity, GaussianPrior(std=1.0), "identity PCA weights"),
            "expression": ParamGroup(num_expression, SparseUniformPrior(EXPRESSION_ACTIVE), "ARKit-style blendshape weights"),
        }
        self.register_buffer("neutral", torch.from_numpy(neutral.astype(np.float32)), persistent=False)
        for group in ("identity", "expression"):
            deltas = arrays[f"{group}_deltas"].astype(np.float32) * np.float32(scale)
            self.register_buffer(f"{group}_basis", torch.from_numpy(deltas.reshape(len(deltas), -1)), persistent=False)
        triangles = arrays["triangles"].astype(np.int64)
        self.register_buffer("faces", torch.from_numpy(triangles), persistent=False)
        landmarks = arrays["landmarks68"].astype(np.int64)
        self.multipie_indices = landmarks.copy()  # (68,) upstream's list, before the contour swap
        self.register_buffer("landmark_indices", torch.from_numpy(contour_landmarks(landmarks, contour)), persistent=False)
        ranges = {
            _snake_case(str(n)): (int(a), int(b)) for n, (a, b) in zip(arrays["region_names"], arrays["region_ranges"])
        }
        masks = derive_regions(neutral, arrays["polygons"].astype(np.int64), landmarks, ranges)
        self.register_regions({region: torch.from_numpy(mask) for region, mask in masks.items()})
        see_through = np.zeros(len(neutral), dtype=bool)
        for region in SEE_THROUGH:
            if region in masks:
                see_through |= masks[region]
        solid = ~see_through[triangles].any(axis=1)
        self.register_buffer("solid_faces", torch.from_numpy(triangles[solid]), persistent=False)

    @classmethod
    def from_npz(cls, path: str | Path | None = None, contour: str = "calibrated") -> ICT:
        """Load the packed npz; ``path`` None -> ``tracker.files.paths.default_ict_model_path()``.

        Raises TrackerError when the file is missing or malformed, saying where it is expected
        and how to make it.
        """
        if path is None:
            path = default_ict_model_path()
            if path is None:
                raise TrackerError(f"ICT-FaceKit model not configured (no N2F_ICT_MODEL, no shared folder). {HOW_TO_GET}")
        return cls(_load_npz(Path(path)), contour=contour)

    @property
    def num_vertices(self) -> int:
        return self.neutral.shape[0]

    @property
    def render_faces(self) -> torch.Tensor:
        """(F', 3) the triangles without the see-through layers (lacrimal fluid, eye blend and
        occlusion meshes, eyelashes): 48,836 of ICT's 52,220."""
        return self.solid_faces

    def decode(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """{identity: (B, K), expression: (B, E)} (either may be left out) -> vertices (B, V, 3) in
        metres, in the buffers' dtype; differentiable in the parameters."""
        params = self.complete_params(params)
        dtype = self.neutral.dtype
        identity = params["identity"].to(dtype)
        expression = params["expression"].to(dtype)
        offsets = torch.addmm(identity @ self.identity_basis, expression, self.expression_basis)
        return self.neutral + offsets.view(identity.shape[0], self.num_vertices, 3)

    def landmarks(
        self,
        vertices: torch.Tensor,
        params: dict[str, torch.Tensor] | None = None,
        view_rotation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, V, 3) -> (B, 68, 3) iBUG-68 landmark vertices; ICT's contour is static, so
        ``params`` and ``view_rotation`` are not used."""
        return vertices[:, self.landmark_indices]

    def decode_vertices(self, params: dict[str, torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
        """Only the (N,) ``indices`` vertices, (B, N, 3): ICT is linear, so only their rows of the bases
        are used (cached per index set)."""
        params = self.complete_params(params)
        neutral, identity_basis, expression_basis = self._subset_bases(indices)
        identity = params["identity"].to(neutral.dtype)
        offsets = torch.addmm(identity @ identity_basis, params["expression"].to(neutral.dtype), expression_basis)
        return neutral + offsets.view(identity.shape[0], len(neutral), 3)

    def decode_landmarks(self, params: dict[str, torch.Tensor], view_rotation: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 68, 3) the landmark vertices alone (``decode_vertices``)."""
        return self.decode_vertices(params, self.landmark_indices)

    def _subset_bases(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3) neutral rows, (K, 3N) identity and (E, 3N) expression basis columns of ``indices``."""
        key = (indices.device, tuple(indices.tolist()))
        cache = self.__dict__.setdefault("_subset_cache", {})
        if key not in cache:
            columns = (indices[:, None] * 3 + torch.arange(3, device=indices.device)).reshape(-1)
            cache[key] = (self.neutral[indices], self.identity_basis[:, columns], self.expression_basis[:, columns])
        return cache[key]


# -- loading ---------------------------------------------------------------------------------
def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The npz's arrays, checked for presence, shapes, dtypes and index ranges."""
    if not path.is_file():
        raise TrackerError(f"ICT-FaceKit model not found: {path}. {HOW_TO_GET}")
    try:
        with path.open("rb") as stream:
            npz = np.load(stream, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an npz archive")
            with npz:
                arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        raise TrackerError(f"ICT-FaceKit model {path} is not a readable npz ({err}). {HOW_TO_GET}") from err
    problem = _npz_problem(arrays)
    if problem:
        raise TrackerError(f"ICT-FaceKit model {path} is malformed: {problem}. {HOW_TO_GET}")
    return arrays


def _npz_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with the npz content, or None."""
    missing = [key for key in NPZ_ARRAYS if key not in arrays]
    if missing:
        return f"missing arrays {missing}"
    for key, (ndim, kind) in NPZ_ARRAYS.items():
        value = arrays[key]
        if value.ndim != ndim or value.dtype.kind not in DTYPE_KINDS[kind]:
            return f"'{key}' must be a {ndim}-d {kind} array, got {value.dtype} {value.shape}"
    neutral, triangles = arrays["neutral"], arrays["triangles"]
    num_vertices = len(neutral)
    if neutral.shape[1] != 3 or triangles.shape[1] != 3:
        return f"neutral must be (V, 3) and triangles (F, 3), got {neutral.shape} and {triangles.shape}"
    for key in ("identity_deltas", "expression_deltas"):
        if arrays[key].shape[1:] != neutral.shape:
            return f"'{key}' must be (K, {num_vertices}, 3), got {arrays[key].shape}"
    if len(arrays["expression_names"]) != len(arrays["expression_deltas"]):
        return "expression_names and expression_deltas differ in length"
    landmarks, ranges = arrays["landmarks68"], arrays["region_ranges"]
    if landmarks.shape != (68,):
        return f"landmarks68 must be (68,), got {landmarks.shape}"
    polygons = arrays["polygons"]
    if polygons.shape[1] < 3 or (polygons[:, :3] < 0).any():
        return f"polygons must be (F, K>=3) with at least 3 corners each (padding -1), got {polygons.shape}"
    for key, index in (("triangles", triangles), ("landmarks68", landmarks), ("polygons", polygons)):
        if index.size and (index.min() < (-1 if key == "polygons" else 0) or index.max() >= num_vertices):
            return f"'{key}' holds vertex indices outside [0, {num_vertices})"
    if ranges.shape != (len(arrays["region_names"]), 2) or not (
        (ranges >= 0).all() and (ranges <= num_vertices).all() and (ranges[:, 0] <= ranges[:, 1]).all()
    ):
        return f"region_ranges must be one [start, stop) within [0, {num_vertices}] per region name"
    names = {_snake_case(str(n)) for n in arrays["region_names"]}
    if not names.issuperset(BASE_REGIONS):
        return f"regions {sorted(set(BASE_REGIONS) - names)} are missing"
    if str(arrays["units"]) not in UNIT_SCALE:
        return f"units must be one of {sorted(UNIT_SCALE)}, got {str(arrays['units'])!r}"
    return None


def contour_landmarks(landmarks: np.ndarray, contour: str) -> np.ndarray:
    """(68,) Multi-PIE indices -> (68,) landmarks of ``contour``: unchanged ("multipie"), points
    0-7 / 9-16 replaced ("jawline"), or ``CALIBRATED_68`` ("calibrated").

    Both upstream jawline lists start (left) or end (right) with two Multi-PIE points; the npz's
    landmarks must agree there, otherwise the substitutes belong to another mesh topology.
    """
    if contour == "multipie":
        return landmarks.copy()
    if tuple(landmarks[6:8]) != RIGHT_JAWLINE[6:] or tuple(landmarks[9:11]) != LEFT_JAWLINE[:2]:
        raise TrackerError(
            f"contour={contour!r} uses upstream ICT-FaceKit's vertex indices, which do not fit this model's "
            "mesh (its landmarks68 differ from upstream's); load it with contour='multipie'"
        )
    if contour == "calibrated":
        return np.array(CALIBRATED_68, dtype=np.int64)
    out = landmarks.copy()
    out[0:8] = RIGHT_JAWLINE
    out[9:17] = LEFT_JAWLINE
    return out


# -- regions ---------------------------------------------------------------------------------
def derive_regions(
    vertices: np.ndarray, polygons: np.ndarray, landmarks: np.ndarray, ranges: Mapping[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """(V, 3) neutral vertices in metres, (F, K) polygons padded with -1, (68,) landmark indices
    and {region: [start, stop)} -> {region: (V,) bool}: the ranges plus eyes, nose, mouth, ears
    (rules in the module docstring)."""
    num_vertices = len(vertices)
    masks = {}
    for region, (start, stop) in ranges.items():
        masks[region] = np.zeros(num_vertices, dtype=bool)
        masks[region][start:stop] = True
    face, points = masks["face"], vertices[:, :2]
    lm = vertices[landmarks, :2]
    scale = float(np.linalg.norm(lm[42] - lm[39]))

    def near(polygon: np.ndarray, margin: float) -> np.ndarray:
        out = np.zeros(num_vertices, dtype=bool)
        out[face] = _near_polygon(points[face], polygon, margin * scale)
        return out

    eyes = masks["eyeball_left"] | masks["eyeball_right"] | near(lm[36:42], EYE_MARGIN) | near(lm[42:48], EYE_MARGIN)
    nose = near(lm[[27, 31, 32, 33, 34, 35]], NOSE_MARGIN) & ~eyes
    mouth = near(lm[48:60], MOUTH_MARGIN) & ~(eyes | nose)
    outer = face & ~masks["narrow_face"]
    ears = _auricles(_adjacency(polygons, num_vertices), outer) & ~(eyes | nose | mouth)
    masks.update(eyes=eyes, nose=nose, mouth=mouth, ears=ears)
    masks["upstream_face"] = masks.pop("face")
    masks["face"] = masks["narrow_face"] | masks["eyeball_left"] | masks["eyeball_right"]
    return masks


def _near_polygon(points: np.ndarray, polygon: np.ndarray, margin: float) -> np.ndarray:
    """(N, 2) points, (K, 2) closed polygon -> (N,) inside it (even-odd rule) or within ``margin``
    of its outline."""
    start, end = polygon, np.roll(polygon, -1, axis=0)
    p = points[:, None, :]
    edge = end - start
    straddles = (start[:, 1] > p[..., 1]) != (end[:, 1] > p[..., 1])
    dy = np.where(edge[:, 1] == 0, 1.0, edge[:, 1])
    crossing_x = start[:, 0] + edge[:, 0] * (p[..., 1] - start[:, 1]) / dy
    inside = (straddles & (p[..., 0] < crossing_x)).sum(axis=1) % 2 == 1
    along = ((p - start) * edge).sum(-1) / np.maximum((edge * edge).sum(-1), 1e-12)
    closest = start + np.clip(along, 0.0, 1.0)[..., None] * edge
    distance = np.linalg.norm(p - closest, axis=-1).min(axis=1)
    return inside | (distance <= margin)


def _adjacency(polygons: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """(V, V) symmetric vertex adjacency along the polygon edges (float32 ones). Upstream's quads,
    not their triangulation: the quad mesh is mirror-symmetric, the diagonals are not."""
    closed = np.where(polygons < 0, polygons[:, :1], polygons)  # padding repeats the first corner
    edges = np.stack([closed, np.roll(closed, -1, axis=1)], axis=-1).reshape(-1, 2)
    ones = np.ones(2 * len(edges), dtype=np.float32)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    adjacency = sp.csr_matrix((ones, (rows, cols)), shape=(num_vertices, num_vertices))
    adjacency.data[:] = 1.0
    return adjacency


def _auricles(adjacency: sp.csr_matrix, outer: np.ndarray) -> np.ndarray:
    """(V,) outer face area -> (V,) its two thickest pieces: erode ring by ring until exactly two
    pieces remain, then dilate as many rings inside ``outer`` (empty if it never splits in two)."""
    core, rings = outer.copy(), 0
    while core.any() and _pieces(adjacency, core) != 2:
        core &= ~_dilate(adjacency, ~core)
        rings += 1
    for _ in range(rings):
        core = _dilate(adjacency, core) & outer
    return core


def _dilate(adjacency: sp.csr_matrix, mask: np.ndarray) -> np.ndarray:
    """(V,) mask plus its one-ring neighbours."""
    return mask | (adjacency @ mask.astype(np.float32) > 0)


def _pieces(adjacency: sp.csr_matrix, mask: np.ndarray) -> int:
    """Number of connected pieces of the mesh graph restricted to ``mask``."""
    index = np.flatnonzero(mask)
    return connected_components(adjacency[index][:, index], directed=False)[0]


def _snake_case(name: str) -> str:
    """'Eye socket left' -> 'eye_socket_left'."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
