"""Builds FLAME-format model folders from random smooth data, for tests (no FLAME file needed).

The generated model has the official key layout, shapes and dtypes: a head-like surface with
exactly 5023 vertices and 9976 triangles, smooth low-frequency shape / expression / pose-corrective
fields of realistic size (mm to cm), a sparse joint regressor and skinning weights whose rows sum
to 1, and the official kintree_table. Variants:
    "2020"  generic_model.pkl, every dense array wrapped in chumpy's ``chumpy.ch.Ch`` (pickle protocol 2)
    "2023"  flame2023.pkl, plain numpy arrays + scipy sparse J_regressor
    "npz"   flame.npz, the same keys, J_regressor dense
Auxiliary files (landmark_embedding.npy, FLAME_masks.pkl, eyelids, MediaPipe embedding) are
generated in the official formats, their landmarks in a face's layout on the generated mesh (the
shared ``flame-aux`` files index real FLAME's triangles: the loader refuses them beside this mesh).
``write_ict_as_flame`` builds a FLAME-format model with a real face (ICT-FaceKit's) and its own aux files.
"""

from __future__ import annotations

import functools
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import nnls
from scipy.sparse import csgraph
from scipy.spatial import ConvexHull, cKDTree

from tracker.files.paths import shared_dir
from tracker.head_models.flame import MEDIAPIPE_ANCHORS

NUM_VERTICES, NUM_FACES = 5023, 9976
RINGS, COLUMNS = 81, 62  # 1 top pole + 81 rings x 62 columns = 5023 vertices
KINTREE_TABLE = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
MODEL_FILE = {"2020": "generic_model.pkl", "2023": "flame2023.pkl", "npz": "flame.npz"}
AUX_FILES = ("landmark_embedding.npy", "FLAME_masks.pkl", "l_eyelid.npy", "r_eyelid.npy",
             "mediapipe_landmark_embedding.npz")
MASK_KEYS = ("eye_region", "neck", "left_eyeball", "right_eyeball", "right_ear", "right_eye_region", "forehead",
             "lips", "nose", "scalp", "boundary", "face", "left_ear", "left_eye_region")


# -- geometry --------------------------------------------------------------------------------------
def surface_coords() -> tuple[np.ndarray, np.ndarray]:
    """(5023,) polar angle from the crown and (5023,) azimuth (0 = front, +pi/2 = subject's left) per vertex.

    Vertex 0 is the crown; ring r, column c is vertex 1 + r * 62 + c; the last ring is the neck opening.
    """
    polar = np.linspace(0.0, 0.85 * np.pi, RINGS + 1)[1:]
    azimuth = np.linspace(-np.pi, np.pi, COLUMNS, endpoint=False)
    t, a = np.meshgrid(polar, azimuth, indexing="ij")
    return np.concatenate([[0.0], t.ravel()]), np.concatenate([[0.0], a.ravel()])


def _bump(t: np.ndarray, a: np.ndarray, t0: float, a0: float, width: float) -> np.ndarray:
    """(V,) smooth bump on the (polar, azimuth) parametrisation, 1 at (t0, a0)."""
    return np.exp(-((t - t0) ** 2 + (a - a0) ** 2) / (2 * width**2))


def head_mesh() -> tuple[np.ndarray, np.ndarray]:
    """(5023, 3) float64 vertices in metres, (9976, 3) uint32 faces: a deformed UV sphere open at the neck.

    +y up, +z out of the face, like FLAME; a nose bump and a narrower neck.
    """
    vertices = head_mesh_points(*surface_coords())

    ring = 1 + np.arange(RINGS * COLUMNS).reshape(RINGS, COLUMNS)
    nxt = np.roll(np.arange(COLUMNS), -1)
    faces = [np.stack([np.zeros(COLUMNS, int), ring[0], ring[0, nxt]], -1)]  # crown fan
    for r in range(RINGS - 1):
        a0, a1, b0, b1 = ring[r], ring[r, nxt], ring[r + 1], ring[r + 1, nxt]
        faces += [np.stack([a0, b0, b1], -1), np.stack([a0, b1, a1], -1)]
    faces = np.concatenate(faces)[:NUM_FACES]  # 9982 triangles; leave a small notch at the neck opening
    return vertices, faces.astype(np.uint32)


def _smooth_fields(points: np.ndarray, count: int, amplitudes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(V, 3) points -> (V, 3, count) random cubic-polynomial displacement fields, field k peaking at amplitudes[k]."""
    p = (points - points.mean(0)) / np.abs(points - points.mean(0)).max(0)
    x, y, z = p.T
    basis = np.stack([np.ones_like(x), x, y, z, x * y, y * z, x * z, x * x, y * y, z * z, x * y * z,
                      x**3, y**3, z**3, x * x * y, x * x * z, y * y * x, y * y * z, z * z * x, z * z * y], -1)
    fields = np.einsum("vp,pck->vck", basis, rng.standard_normal((basis.shape[1], 3, count)))
    return fields * (amplitudes / np.abs(fields).max(axis=(0, 1)))


EYES = {"left": (0.42 * np.pi, 0.45), "right": (0.42 * np.pi, -0.45)}  # (polar, azimuth) of the eye centres


def _regions() -> dict[str, np.ndarray]:
    """(V,) bool masks with FLAME_masks.pkl's names, laid out on the generated head."""
    t, a = surface_coords()
    deg = np.pi / 180
    regions = {
        "face": (t > 0.25 * np.pi) & (t < 0.7 * np.pi) & (np.abs(a) < 65 * deg),
        "forehead": (t > 0.22 * np.pi) & (t < 0.36 * np.pi) & (np.abs(a) < 45 * deg),
        "nose": _bump(t, a, 0.5 * np.pi, 0.0, 0.1) > 0.3,
        "lips": _bump(t, a, 0.6 * np.pi, 0.0, 0.12) > 0.5,
        "left_ear": _bump(t, a, 0.47 * np.pi, 1.6, 0.15) > 0.4,
        "right_ear": _bump(t, a, 0.47 * np.pi, -1.6, 0.15) > 0.4,
        "scalp": (t < 0.22 * np.pi) | ((t < 0.4 * np.pi) & (np.abs(a) > 100 * deg)),
        "neck": t > 0.72 * np.pi,
        "boundary": t >= t.max() - 1e-9,
    }
    for side, (t0, a0) in EYES.items():
        regions[f"{side}_eye_region"] = _bump(t, a, t0, a0, 0.14) > 0.4
        regions[f"{side}_eyeball"] = _bump(t, a, t0, a0, 0.07) > 0.4
    regions["eye_region"] = regions["left_eye_region"] | regions["right_eye_region"]
    return regions


@functools.lru_cache(maxsize=4)
def flame_arrays(seed: int = 0) -> dict:
    """The official generic_model.pkl keys with random smooth content (plain numpy / scipy)."""
    rng = np.random.default_rng(seed)
    v, f = head_mesh()
    t, a = surface_coords()
    lower_face = _bump(t, a, 0.6 * np.pi, 0.0, 0.35)
    shapedirs = np.concatenate([
        _smooth_fields(v, 300, 0.012 / np.sqrt(1 + np.arange(300)), rng),
        _smooth_fields(v, 100, 0.010 / np.sqrt(1 + np.arange(100)), rng) * (0.2 + lower_face)[:, None, None],
    ], axis=2)
    posedirs = _smooth_fields(v, 36, np.full(36, 0.004), rng)

    def ring(r: int) -> np.ndarray:
        row = np.zeros(NUM_VERTICES)
        row[1 + r * COLUMNS : 1 + (r + 1) * COLUMNS] = 1.0
        return row

    eyeballs = [_bump(t, a, t0, a0, 0.07) for t0, a0 in EYES.values()]
    rows = [ring(RINGS - 1), ring(58), ring(50), *(e * (e > 1e-3) for e in eyeballs)]  # root, neck, jaw, eyes
    J_regressor = sp.csc_matrix(np.stack([r / r.sum() for r in rows]))

    raw = np.stack([
        1.0 / (1.0 + np.exp(-(t - 0.8 * np.pi) / 0.04)),  # root: the neck base
        np.full(len(v), 0.2),  # neck: the cranium
        2.0 * _bump(t, a, 0.66 * np.pi, 0.0, 0.25),  # jaw
        *(4.0 * e for e in eyeballs),
    ], -1)
    weights = raw / raw.sum(1, keepdims=True)
    # float64 arrays holding float32-exact values: smplx reads every array through float32, so a
    # float64 comparison with it is exact only for such values
    v, shapedirs, posedirs, weights = (x.astype(np.float32).astype(np.float64) for x in (v, shapedirs, posedirs, weights))
    J_regressor.data = J_regressor.data.astype(np.float32).astype(np.float64)
    return {
        "v_template": v, "f": f, "shapedirs": shapedirs, "posedirs": posedirs, "J_regressor": J_regressor,
        "J": J_regressor @ v, "weights": weights, "kintree_table": KINTREE_TABLE, "bs_style": "lbs", "bs_type": "lrotmin",
    }


# -- model files -----------------------------------------------------------------------------------
class _ChumpyStandIn:
    """Pickles like chumpy's ``Ch``: NEWOBJ of ``chumpy.ch.Ch``, state dict with the array in ``x``."""

    def __init__(self, array: np.ndarray) -> None:
        self.x = np.asarray(array, dtype=np.float64)  # Ch stores float64

    def __getstate__(self) -> dict:
        return {"x": self.x, "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {},
                "_make_dense": False, "_make_sparse": False}


def write_chumpy_pickle(data: dict, path: Path, protocol: int = 2) -> None:
    """Pickle ``data``, dense arrays as ``chumpy.ch.Ch``, through a temporary ``chumpy`` / ``chumpy.ch``
    stand-in in ``sys.modules`` (removed afterwards). Protocol 2 like the official Python 2 file."""
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    cls = type("Ch", (_ChumpyStandIn,), {"__module__": "chumpy.ch", "__qualname__": "Ch"})
    ch.Ch, chumpy.ch = cls, ch
    sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch})
    try:
        wrapped = {k: cls(v) if isinstance(v, np.ndarray) else v for k, v in data.items()}
        with open(path, "wb") as f:
            pickle.dump(wrapped, f, protocol=protocol)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def write_model(path: Path, variant: str = "2023", arrays: dict | None = None) -> Path:
    """Write ``arrays`` (default ``flame_arrays()``) as a FLAME model file of ``variant``."""
    arrays = flame_arrays() if arrays is None else arrays
    if variant == "2020":
        write_chumpy_pickle(arrays, path)
    elif variant == "2023":
        with open(path, "wb") as f:
            pickle.dump(arrays, f, protocol=4)
    elif variant == "npz":
        dense = {k: (v.toarray() if sp.issparse(v) else v) for k, v in arrays.items() if not isinstance(v, str)}
        np.savez(path, **dense)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return path


# -- auxiliary files -------------------------------------------------------------------------------
def shared_aux_dir() -> Path | None:
    """The shared flame-aux folder when every auxiliary file is in it."""
    shared = shared_dir()
    folder = shared / "flame-aux" if shared else None
    return folder if folder and all((folder / n).is_file() for n in AUX_FILES) else None


def _random_bary(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.dirichlet(np.ones(3), size=shape)


def generated_landmarks68() -> tuple[np.ndarray, np.ndarray]:
    """(68,) polar and (68,) azimuth of iBUG's 68 points on the generated head: jaw, brows, nose, eyes
    (around ``EYES``), lips (around the lips bump); azimuth > 0 is the subject's left."""
    s = np.linspace(0.0, np.pi, 17)
    jaw = (0.5 * np.pi + 0.18 * np.pi * np.sin(s), -0.75 * np.cos(s))
    brows = (np.full(10, 0.36 * np.pi), np.r_[np.linspace(-0.7, -0.15, 5), np.linspace(0.15, 0.7, 5)])
    nose = (np.r_[np.linspace(0.44, 0.5, 4), np.full(5, 0.53)] * np.pi, np.r_[np.zeros(4), np.linspace(-0.12, 0.12, 5)])
    # corner, two upper, corner, two lower: right eye from its outer corner, left eye from its inner corner
    ring = np.array([np.pi, 2 * np.pi / 3, np.pi / 3, 0.0, -np.pi / 3, -2 * np.pi / 3])
    eyes = [(t0 - 0.02 * np.pi * np.sin(ring), a0 + 0.12 * np.cos(ring)) for t0, a0 in (EYES["right"], EYES["left"])]
    outer, inner = np.arange(12) * np.pi / 6, np.arange(8) * np.pi / 4
    lips = (0.6 * np.pi - np.r_[0.03 * np.pi * np.sin(outer), 0.01 * np.pi * np.sin(inner)],
            -np.r_[0.3 * np.cos(outer), 0.2 * np.cos(inner)])
    parts = [jaw, brows, nose, *eyes, lips]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _vertex_triangles(points: np.ndarray, v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, 3) points -> (L,) a triangle at each one's nearest vertex and (L, 3) barycentrics picking that vertex."""
    nearest = cKDTree(v).query(points)[1]
    face_idx = np.array([np.flatnonzero((f == n).any(1))[0] for n in nearest])
    return face_idx, (f[face_idx] == nearest[:, None]).astype(np.float64)


def write_generated_aux(folder: Path, seed: int = 0) -> None:
    """DECA-format landmark embedding, masks, eyelids and MediaPipe embedding for the generated mesh:
    the 68 points in a face's layout (``generated_landmarks68``, at vertices), MediaPipe's anchor
    points (``MEDIAPIPE_ANCHORS``) at their iBUG places and its other points on random front
    triangles, eyelid bumps above the eyes."""
    rng = np.random.default_rng(seed + 1)
    v, f = head_mesh()
    t, a = generated_landmarks68()
    face_idx, bary = _vertex_triangles(head_mesh_points(t, a), v, f)
    np.save(folder / "landmark_embedding.npy", np.array(_deca_embedding(face_idx, bary), dtype=object), allow_pickle=True)

    regions = _regions()
    masks = {k: np.flatnonzero(regions[k]).astype(np.int64) for k in MASK_KEYS}
    with open(folder / "FLAME_masks.pkl", "wb") as file:
        pickle.dump(masks, file, protocol=2)

    ts, az = surface_coords()
    for name, (t0, a0) in zip(("l_eyelid.npy", "r_eyelid.npy"), EYES.values()):
        upper_lid = _bump(ts, az, t0 - 0.04, a0, 0.06)
        np.save(folder / name, np.array([0.0, -0.008, 0.001]) * upper_lid[:, None])

    anchors = dict(MEDIAPIPE_ANCHORS)
    others = rng.choice(np.setdiff1d(np.arange(468), list(anchors)), 105 - len(anchors), replace=False)
    indices = np.sort(np.r_[list(anchors), others]).astype(np.int64)
    front = np.flatnonzero(v[f].mean(1)[:, 2] > 0.04)
    mp_faces, mp_bary = rng.choice(front, 105, replace=False), _random_bary(rng, 105)
    for row, index in enumerate(indices):
        if index in anchors:
            mp_faces[row], mp_bary[row] = face_idx[anchors[index]], bary[anchors[index]]
    np.savez(folder / "mediapipe_landmark_embedding.npz", lmk_face_idx=mp_faces.astype(np.uint32), lmk_b_coords=mp_bary,
             landmark_indices=indices)


def head_mesh_points(t: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(L,) polar and azimuth -> (L, 3) points of ``head_mesh``'s surface there (metres)."""
    unit = np.stack([np.sin(t) * np.sin(a), np.cos(t), np.sin(t) * np.cos(a)], -1)
    neck = 1.0 - 0.4 / (1.0 + np.exp(-(t - 0.72 * np.pi) / 0.05))
    points = unit * np.array([0.078, 0.12, 0.1]) * neck[:, None]
    points[:, 2] += 0.022 * _bump(t, a, 0.5 * np.pi, 0.0, 0.1)
    return points


def write_aux(folder: Path, use_shared: bool = False, seed: int = 0) -> None:
    """Generate the aux files for the generated mesh into ``folder``; ``use_shared`` copies the shared
    flame-aux files instead (real FLAME topology: ``FLAME.from_dir`` refuses them beside the generated
    mesh, for tests of that refusal)."""
    source = shared_aux_dir() if use_shared else None
    if use_shared and source is None:
        raise FileNotFoundError("the shared flame-aux folder is not there")
    if source is None:
        write_generated_aux(folder, seed)
        return
    for name in AUX_FILES:
        shutil.copyfile(source / name, folder / name)


def make_flame_dir(tmp_path: Path, variant: str = "2023", use_shared_aux: bool = False, seed: int = 0) -> Path:
    """A complete FLAME folder (model of ``variant`` + aux files, ``write_aux``) under ``tmp_path``; returns the folder."""
    folder = Path(tmp_path) / f"flame_{variant}_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    write_model(folder / MODEL_FILE[variant], variant, flame_arrays(seed))
    write_aux(folder, use_shared_aux, seed)
    return folder


def make_smplx_dir(tmp_path: Path, static_faces_idx: np.ndarray, static_bary: np.ndarray,
                   dynamic_faces_idx: np.ndarray, dynamic_bary: np.ndarray, seed: int = 0) -> Path:
    """A folder the ``smplx`` package's FLAME reads: FLAME_NEUTRAL.pkl + its landmark embedding files."""
    folder = Path(tmp_path) / f"smplx_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "FLAME_NEUTRAL.pkl", "wb") as f:
        pickle.dump(flame_arrays(seed), f)
    with open(folder / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump({"lmk_face_idx": np.asarray(static_faces_idx), "lmk_b_coords": np.asarray(static_bary)}, f)
    dynamic = {"lmk_face_idx": np.asarray(dynamic_faces_idx), "lmk_b_coords": np.asarray(dynamic_bary)}
    np.save(folder / "flame_dynamic_embedding.npy", np.array(dynamic, dtype=object), allow_pickle=True)
    return folder


# -- ICT-FaceKit as FLAME ----------------------------------------------------------------------------
# A FLAME-format model with a real face: a face-dense triangulation of the sphere of directions,
# shrink-wrapped onto ICT-FaceKit's neutral head along rays from ICT_RAY_ORIGIN, and every field
# (identity, expression, eyelids, jaw) sampled from ICT at the wrapped points.
ICT_RAY_ORIGIN = np.array([0.0, 0.01, 0.0])  # metres, ICT head frame (ear height, mid-sagittal)
NECK_POLAR = np.radians(150.0)  # the neck opening: polar angle from +y
NECK_CUT = -0.11  # metres: ICT below this (the shoulders) is left out; rays that pass it are filled smoothly
NECK_POINTS = 68  # a disk of V vertices, B on its boundary, has 2V - B - 2 triangles: 2 * 5023 - 68 - 2 = 9976
MOUTH_VERTICES = 42  # wrapped rays fewer than 5023: the lip cut's duplicates and the mouth pocket's vertices
MOUTH_DEPTH = 0.012  # metres: the mouth pocket's middle line lies this far behind the lips' contact line
FACE_ZOOM = 2.2  # conformal zoom towards +z: vertex density on the face ~ FACE_ZOOM**4 times the back's
ICT_LIDS = ("eyeBlink", "eyeSquint", "eyeWide")  # lid shapes, spread from the lids over the eyeball vertices
ICT_AS_EYELIDS = ("eyeBlink_L", "eyeBlink_R")  # -> l_eyelid.npy, r_eyelid.npy (ICT's _L: subject's left, +x)
ICT_AS_JAW = "jawOpen"  # -> the jaw joint and its skinning weights


def ict_expression_columns(ict_model) -> tuple[str, ...]:
    """The ICT expression names in FLAME expression columns 0.. (shapedirs[..., 300 + k]): all but
    the two blinks (eyelids) and jawOpen (jaw joint); the remaining columns are zero."""
    return tuple(n for n in ict_model.expression_names if n not in (*ICT_AS_EYELIDS, ICT_AS_JAW))


def _fibonacci_sphere(count: int) -> np.ndarray:
    """(count, 3) nearly uniform unit vectors."""
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


def _zoom_to_face(directions: np.ndarray) -> np.ndarray:
    """(N, 3) unit vectors -> (N, 3): stereographic projection from -z, scaled by 1 / FACE_ZOOM, back."""
    w = directions[:, :2] / (1.0 + directions[:, 2:])[..., :1] / FACE_ZOOM
    q = (w * w).sum(1, keepdims=True)
    return np.concatenate([2 * w, 1 - q], 1) / (1 + q)


def face_dense_directions(count: int = NUM_VERTICES) -> tuple[np.ndarray, np.ndarray]:
    """(count, 3) unit ray directions (dense towards +z, the last NECK_POINTS on the neck ring) and
    (2 * count - NECK_POINTS - 2, 3) int64 triangles: the spherical Delaunay triangulation, open at the neck."""
    inner_count = count - NECK_POINTS
    margin = 0.6 * np.pi * np.sin(NECK_POLAR) / NECK_POINTS  # keep the inner points off the ring
    for sphere_count in range(inner_count, 2 * inner_count):
        dirs = _zoom_to_face(_fibonacci_sphere(sphere_count))
        inner = dirs[np.arccos(np.clip(dirs[:, 1], -1, 1)) < NECK_POLAR - margin]
        if len(inner) == inner_count:
            break
    azimuth = np.linspace(-np.pi, np.pi, NECK_POINTS, endpoint=False)
    ring = np.stack([np.sin(NECK_POLAR) * np.sin(azimuth), np.full(NECK_POINTS, np.cos(NECK_POLAR)),
                     np.sin(NECK_POLAR) * np.cos(azimuth)], -1)
    dirs = np.concatenate([inner, ring])
    hull = ConvexHull(np.concatenate([dirs, [[0.0, -1.0, 0.0]]]))  # a pole closes the neck; its fan is dropped
    faces = hull.simplices[(hull.simplices < count).all(1)]
    normals = np.cross(dirs[faces[:, 1]] - dirs[faces[:, 0]], dirs[faces[:, 2]] - dirs[faces[:, 0]])
    flip = (normals * dirs[faces].mean(1)).sum(1) < 0
    faces[flip] = faces[flip][:, ::-1]
    assert faces.shape == (2 * count - NECK_POINTS - 2, 3), faces.shape
    return dirs, faces.astype(np.int64)


def cast_rays(origin: np.ndarray, directions: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outermost hit of each ray on a triangle soup (Moeller-Trumbore on the pairs whose directions are close).

    origin (3,), directions (N, 3) unit, triangles (F, 3, 3) -> distance (N,) (nan: no hit), triangle (N,) int64
    (-1: no hit), barycentrics (N, 3).
    """
    corner_dirs = triangles - origin
    corner_dirs /= np.linalg.norm(corner_dirs, axis=2, keepdims=True)
    centre = corner_dirs.mean(1)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    reach = np.linalg.norm(corner_dirs - centre[:, None], axis=2).max()  # chord from a centre to its corners
    pairs = cKDTree(centre).query_ball_point(directions, reach + 1e-9)
    ray = np.repeat(np.arange(len(directions)), [len(p) for p in pairs])
    tri = np.concatenate(pairs).astype(np.int64)
    v0, e1, e2 = triangles[tri, 0], triangles[tri, 1] - triangles[tri, 0], triangles[tri, 2] - triangles[tri, 0]
    d = directions[ray]
    pvec = np.cross(d, e2)
    det = (e1 * pvec).sum(1)
    safe = np.where(np.abs(det) < 1e-14, 1.0, det)
    tvec = origin - v0
    qvec = np.cross(tvec, e1)
    u, v, t = (tvec * pvec).sum(1) / safe, (d * qvec).sum(1) / safe, (e2 * qvec).sum(1) / safe
    hit = (np.abs(det) >= 1e-14) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    ray, tri, u, v, t = ray[hit], tri[hit], u[hit], v[hit], t[hit]
    order = np.lexsort((t, ray))  # per ray, the farthest hit last
    last = order[np.r_[ray[order][1:] != ray[order][:-1], True]]
    distance, index, bary = np.full(len(directions), np.nan), np.full(len(directions), -1), np.zeros((len(directions), 3))
    distance[ray[last]], index[ray[last]] = t[last], tri[last]
    bary[ray[last]] = np.stack([1 - u[last] - v[last], u[last], v[last]], -1)
    return distance, index, bary


def _fill_holes(values: np.ndarray, faces: np.ndarray, holes: np.ndarray, iterations: int = 500) -> np.ndarray:
    """(V,) ``values`` with the ``holes`` (V,) bool entries replaced by the harmonic fill over the mesh edges."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adjacency = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(values),) * 2).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(float)
    degree = np.asarray(adjacency.sum(1)).ravel()
    out = values.copy()
    out[holes] = np.nanmean(values)
    for _ in range(iterations):
        out[holes] = (adjacency @ out)[holes] / degree[holes]
    return out


def _regressor_row(vertices: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(V,) non-negative weights summing to 1 whose weighted vertex mean is ``target`` (3,), preferring near vertices."""
    distance = np.linalg.norm(vertices - target, axis=1)
    a = np.concatenate([vertices.T * 100.0, np.ones((1, len(vertices))) * 100.0, distance[None] * 0.1])
    b = np.concatenate([target * 100.0, [100.0], [0.0]])
    weights = nnls(a, b, maxiter=10000)[0]
    assert np.linalg.norm(weights @ vertices - target) < 1e-4 and abs(weights.sum() - 1) < 1e-4, (target, weights @ vertices, weights.sum())
    return weights / weights.sum()


def _rigid_rotation_fit(points: np.ndarray, offsets: np.ndarray) -> tuple[float, np.ndarray]:
    """Rotation about an x-parallel axis best matching the small ``offsets`` (N, 3) of ``points`` (N, 3):
    (angle in radians, positive opens a jaw; pivot (3,) on x = 0). The pivot is searched on a 5 mm grid
    around the temporomandibular joints (y -2..+2 cm, z -2..+3 cm): jawOpen also glides the jaw
    backwards, which a free fit absorbs with a pivot far above the head."""
    best = (np.inf, 0.0, np.zeros(3))
    for py in np.arange(-0.02, 0.0201, 0.005):
        for pz in np.arange(-0.02, 0.0301, 0.005):
            pivot = np.array([0.0, py, pz])
            arm = np.cross([1.0, 0.0, 0.0], points - pivot)  # the motion of a unit rotation
            angle = (arm * offsets).sum() / (arm * arm).sum()
            residual = np.linalg.norm(offsets - angle * arm, axis=1).mean()
            if residual < best[0]:
                best = (residual, angle, pivot)
    return float(best[1]), best[2]


def _sample(field: np.ndarray, corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(K, V_ict, 3) fields, (N, 3) triangle corners, (N, 3) barycentrics -> (N, 3, K)."""
    return np.einsum("knjc,nj->nck", field[:, corners], bary)


def _spread_over(values: np.ndarray, points: np.ndarray, targets: np.ndarray, sources: np.ndarray, k: int = 8) -> np.ndarray:
    """``values`` (N, ...) with rows ``targets`` (bool) replaced by inverse-distance weights of the k
    nearest ``sources`` rows in the frontal (x, y) plane of ``points`` (N, 3)."""
    tree = cKDTree(points[sources, :2])
    distance, nearest = tree.query(points[targets, :2], k)
    weights = 1.0 / np.maximum(distance, 1e-5) ** 2
    weights /= weights.sum(1, keepdims=True)
    out = values.copy()
    out[targets] = np.einsum("tk,tk...->t...", weights, values[np.flatnonzero(sources)[nearest]])
    return out


def _edge_graph(faces: np.ndarray, weight: np.ndarray, count: int) -> sp.csr_matrix:
    """(F, 3) triangles, (F * 3,) weights of their edges 01, 12, 20 (stacked by edge) -> (count, count) symmetric graph."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = sp.coo_matrix((weight, (edges[:, 0], edges[:, 1])), shape=(count, count)).tocsr()
    return graph.maximum(graph.T)


def _cut_lips(v: np.ndarray, faces: np.ndarray, contact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut the wrapped mesh along the lips' contact line: the shortest edge path between the vertices
    nearest its ends, hugging ``contact`` (C, 3), ICT's contact polyline in increasing x.

    v (V, 3), faces (F, 3) -> path (n + 1,) vertex ids corner to corner (increasing x; its inner vertices
    stay on the upper lip) and faces (F, 3) whose lower-lip triangles use the duplicates V .. V + n - 2
    of the path's inner vertices instead (a slit: the path's edges become a hole's two sides)."""
    def off_line(points: np.ndarray) -> np.ndarray:
        return points[:, 1] - np.interp(points[:, 0], contact[:, 0], contact[:, 1])

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    middle = v[edges].mean(1)
    outside = np.maximum(contact[0, 0] - middle[:, 0], middle[:, 0] - contact[-1, 0]).clip(0)
    cost = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1) * (1 + ((off_line(middle) ** 2 + outside ** 2) / 0.001 ** 2))
    start, end = cKDTree(v).query(contact[[0, -1]])[1]
    predecessor = csgraph.dijkstra(_edge_graph(faces, cost, len(v)), indices=start, return_predecessors=True)[1]
    path = [end]
    while path[-1] != start:
        path.append(predecessor[path[-1]])
    path = path[::-1]
    adjacent = _edge_graph(faces, np.ones(3 * len(faces)), len(v))
    while shortcut := [i for i in range(1, len(path) - 1) if adjacent[path[i - 1], path[i + 1]]]:
        del path[shortcut[0]]  # no triangle with all three corners on the path
    path = np.array(path)
    inner = path[1:-1]
    duplicate = np.full(len(v), -1)
    duplicate[inner] = len(v) + np.arange(len(inner))
    line = v[path[np.argsort(v[path, 0])]]
    below = v[:, 1] < np.interp(v[:, 0], line[:, 0], line[:, 1])  # the side of the path, off the path
    touches = np.isin(faces, inner).any(1)
    others = np.where(np.isin(faces, path), np.nan, below[faces].astype(float))
    side = np.nanmean(others[touches], 1)
    assert np.isin(side, (0.0, 1.0)).all(), "a triangle at the cut lies on both lips or on the path only"
    cut = faces.copy()
    lower = np.flatnonzero(touches)[side == 1.0]
    cut[lower] = np.where(duplicate[faces[lower]] >= 0, duplicate[faces[lower]], faces[lower])
    return path, cut


def _mouth_pocket(path: np.ndarray, count: int, first: int, cut_faces: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """The mouth pocket: ``count`` vertices (ids ``first``..) on a line from corner to corner behind the
    slit, each the mean of the upper and lower lip edge at its arc-length fraction, joined to both edges
    by a strip of triangles (no triangle holds both an upper and a lower lip vertex).

    path (n + 1,) the cut's path (its inner vertices' duplicates follow ``_cut_lips``' numbering, from
    ``len(v)`` = ``first - n + 1``) -> blend (count, first) sparse rows (the pocket's vertices as
    means of the lips' vertices) and (n - 1 + count) * 2 triangles oriented like ``cut_faces`` (F, 3)."""
    n = len(path) - 1
    lower_path = np.r_[path[0], first - n + 1 + np.arange(n - 1), path[-1]]
    t_lips = np.linspace(0.0, 1.0, n + 1)
    t_pocket = np.arange(1, count + 1) / (count + 1)
    segment = np.minimum((t_pocket * n).astype(int), n - 1)
    fraction = t_pocket * n - segment
    rows = np.repeat(np.arange(count), 4)
    cols = np.stack([path[segment], path[segment + 1], lower_path[segment], lower_path[segment + 1]], 1).ravel()
    values = np.stack([1 - fraction, fraction, 1 - fraction, fraction], 1).ravel() / 2
    blend = sp.coo_matrix((values, (rows, cols)), shape=(count, first)).tocsr()
    pocket = first + np.arange(count)
    triangles = []
    for lip in (path, lower_path):
        strip, i, j = [(lip[0], lip[1], pocket[0])], 1, 0  # ladder between lip[1:-1] and the pocket line
        while i < n - 1 or j < count - 1:
            if j == count - 1 or (i < n - 1 and t_lips[i + 1] < t_pocket[j + 1]):
                strip.append((lip[i], lip[i + 1], pocket[j]))
                i += 1
            else:
                strip.append((lip[i], pocket[j + 1], pocket[j]))
                j += 1
        strip.append((lip[n - 1], lip[n], pocket[-1]))
        strip = np.array(strip)
        directed = set(map(tuple, np.concatenate([cut_faces[:, [0, 1]], cut_faces[:, [1, 2]], cut_faces[:, [2, 0]]]).tolist()))
        if (lip[1], lip[2]) in directed:  # the strip must run along the lip edge the other way round
            strip = strip[:, ::-1]
        triangles.append(strip)
    return blend, np.concatenate(triangles)


def write_ict_as_flame(folder: Path, ict_model) -> Path:
    """Write a FLAME-format folder (flame2023.pkl in ``write_model(..., "2023")``'s layout plus every
    aux file) with ICT-FaceKit's face (``ict_model``: ``tracker.head_models.ict.ICT``) into ``folder``.

    Geometry: ``face_dense_directions`` shrink-wrapped onto ICT's neutral skin and eyeballs (ears left
    out: their rays land on the head behind them) along rays from ICT_RAY_ORIGIN; ICT's frame and
    metres are kept. Fields, sampled at the wrapped points (barycentric on ICT's triangles):
        shapedirs[..., :100]       ICT's 100 identity modes (shape 100..299 zero)
        shapedirs[..., 300:350]    ICT's expressions but blinks and jawOpen, ``ict_expression_columns``
                                   (weights ICT-like, ~[0, 1]; 350..399 zero)
        l/r_eyelid.npy             eyeBlink_L / eyeBlink_R (subject's left / right)
        jaw joint                  pivot and weights from jawOpen: a rotation of ``angle`` about
                                   the x-parallel axis through the pivot ~ jawOpen = 1
        eye joints                 ICT's eyeball centres; the vertices on ICT's eyeballs follow them
        root, neck joints          the neck ring's centre and half-way up to ear height
        posedirs                   zero
    Vertices on the eyeballs take the lid shapes' motion from the lids around them (the sheet over
    the eye closes with the lid). The mouth: the wrap is cut along ICT's lip contact line
    (``_cut_lips``), its two edges on ICT's upper / lower lip (the upper with the head, the lower with
    the jaw), and the last MOUTH_VERTICES vertices close the slit from behind (``_mouth_pocket``:
    no ICT correspondence, ``on_surface`` false; the cut's edges as ``upper_lip`` / ``lower_lip`` in
    ict_correspondence.npz). Embeddings: DECA's 68 points from ICT's calibrated landmarks (rays
    onto the wrapped mesh; the 17 contour points static in every yaw row) and MediaPipe's, placed by
    ``compute_mediapipe_embedding`` on the loaded model, at the official 105 indices of the shared
    flame-aux file. Returns ``folder``.
    """
    from tracker.fitting.mediapipe_embedding import compute_mediapipe_embedding
    from tracker.head_models.flame import FLAME

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    official = shared_aux_dir()
    if official is None:
        raise FileNotFoundError("the shared flame-aux folder (official MediaPipe landmark indices) is needed")
    neutral = ict_model.neutral.double().numpy()
    triangles = ict_model.faces.numpy()
    masks = {k: m.numpy() for k, m in ict_model.region_masks.items()}
    skin = (masks["upstream_face"] | masks["head_and_neck"]) & ~masks["ears"]
    target = (skin | masks["eyeball_left"] | masks["eyeball_right"]) & (neutral[:, 1] > NECK_CUT)
    target_triangles = triangles[target[triangles].all(1)]

    dirs, faces = face_dense_directions(NUM_VERTICES - MOUTH_VERTICES)
    distance, hit, bary = cast_rays(ICT_RAY_ORIGIN, dirs, neutral[target_triangles])
    corners = target_triangles[hit]  # (V, 3) ICT vertex ids
    missed = hit < 0  # the ears' holes, the slit, below the neck cut: a smooth patch, fields of the nearest ICT vertex
    distance = _fill_holes(distance, faces, missed)
    v = ICT_RAY_ORIGIN + distance[:, None] * dirs
    corners[missed] = np.flatnonzero(target)[cKDTree(neutral[target]).query(v[missed])[1]][:, None]
    bary[missed] = [1.0, 0.0, 0.0]

    def basis(group: str) -> np.ndarray:
        return getattr(ict_model, f"{group}_basis").double().numpy().reshape(-1, len(neutral), 3)

    # the slit: cut along ICT's lip contact line; the cut's two sides go onto ICT's upper / lower lip
    ict_points = neutral[ict_model.landmark_indices.numpy()]  # (68, 3) calibrated iBUG landmarks
    contact = np.stack([ict_points[60], *(ict_points[[61, 62, 63]] + ict_points[[67, 66, 65]]) / 2, ict_points[64]])
    path, faces = _cut_lips(v, faces, contact)
    inner, lower = path[1:-1], len(v) + np.arange(len(path) - 2)
    upper_lip, lower_lip = np.r_[path[0], inner, path[-1]], np.r_[path[0], lower, path[-1]]
    mouth_line = v[path[np.argsort(v[path, 0])]]  # (n + 1, 3) the cut in increasing x, before the lips go onto ICT's
    on_line = v[inner] * [1.0, 0.0, 1.0] + [[0.0, 1.0, 0.0]] * np.interp(v[inner, 0], contact[:, 0], contact[:, 1])[:, None]
    lip_ids = np.flatnonzero(skin & masks["mouth"])
    candidates = lip_ids[cKDTree(neutral[lip_ids]).query(on_line, 16)[1]]  # (n - 1, 16) ICT lip vertices near the line
    jaw_motion = np.linalg.norm(basis("expression")[list(ict_model.expression_names).index(ICT_AS_JAW)], axis=1)[candidates]
    moves = jaw_motion > np.median(jaw_motion, 1, keepdims=True)  # on the lower lip
    gap = np.linalg.norm(neutral[candidates] - on_line[:, None], axis=2)
    row = np.arange(len(inner))
    lip_vertex = np.concatenate([candidates[row, np.where(moves, np.inf, gap).argmin(1)],
                                 candidates[row, np.where(moves, gap, np.inf).argmin(1)]])
    v = np.concatenate([v, v[inner]])
    v[np.r_[inner, lower]] = neutral[lip_vertex]
    corners = np.concatenate([corners, corners[inner]])
    corners[np.r_[inner, lower]] = lip_vertex[:, None]
    bary = np.concatenate([bary, bary[inner]])
    bary[np.r_[inner, lower]] = [1.0, 0.0, 0.0]
    missed = np.concatenate([missed, np.zeros(len(lower), bool)])
    missed[inner] = False
    surface_count = len(v)
    nearest = corners[np.arange(surface_count), bary.argmax(1)]  # the ICT vertex each one is nearest to
    on_eyeball = {side: masks[f"eyeball_{side}"][nearest] & ~missed for side in ("left", "right")}
    eyeball = on_eyeball["left"] | on_eyeball["right"]

    identity = _sample(basis("identity"), corners, bary)  # (5023, 3, 100)
    names = list(ict_model.expression_names)
    expression = _sample(basis("expression"), corners, bary)  # (5023, 3, 53)
    lids = [i for i, n in enumerate(names) if n.startswith(ICT_LIDS)]
    expression[..., lids] = _spread_over(expression[..., lids], v, eyeball, ~eyeball)
    column = {n: expression[..., names.index(n)] for n in names}

    shapedirs = np.zeros((surface_count, 3, 400))
    shapedirs[..., : identity.shape[2]] = identity
    kept = ict_expression_columns(ict_model)
    shapedirs[..., 300 : 300 + len(kept)] = np.stack([column[n] for n in kept], -1)

    # jaw: pivot from the chin's jawOpen motion, weights = its motion / a rigid rotation's
    jaw = column[ICT_AS_JAW]
    moving = np.linalg.norm(jaw, axis=1) > 0.6 * np.linalg.norm(jaw, axis=1).max()
    angle, pivot = _rigid_rotation_fit(v[moving], jaw[moving])
    rigid = angle * np.cross([1.0, 0.0, 0.0], v - pivot)
    jaw_weight = np.clip(np.linalg.norm(jaw, axis=1) / np.maximum(np.linalg.norm(rigid, axis=1), 1e-6), 0, 1)
    # below the cut: a 3 mm blend beyond the mouth corners, narrowing to a step (the slit) between them
    off_line = v[:, 1] - np.interp(v[:, 0], mouth_line[:, 0], mouth_line[:, 1])
    beyond = np.maximum(mouth_line[0, 0] - v[:, 0], v[:, 0] - mouth_line[-1, 0]).clip(0, 0.005) / 0.005
    below_lips = 1.0 / (1.0 + np.exp(np.clip(off_line / np.maximum(0.003 * beyond, 1e-6), -50, 50)))
    below_lips[inner], below_lips[lower] = 0.0, 1.0
    below_lips = np.where(v[:, 2] > pivot[2], below_lips, 1.0)
    below_pivot = 1.0 / (1.0 + np.exp((v[:, 1] - pivot[1] - 0.01) / 0.005))
    jaw_weight *= below_lips * below_pivot * ~eyeball  # the upper lip and all above the pivot stay

    ring = np.arange(NUM_VERTICES - MOUTH_VERTICES - NECK_POINTS, NUM_VERTICES - MOUTH_VERTICES)
    root = v[ring].mean(0)
    rest = 1.0 - jaw_weight - eyeball
    root_share = 1.0 / (1.0 + np.exp(-(root[1] + 0.03 - v[:, 1]) / 0.008))
    weights = np.stack([rest * root_share, rest * (1 - root_share), jaw_weight,
                        on_eyeball["left"].astype(float), on_eyeball["right"].astype(float)], -1)

    # the mouth pocket behind the slit: every field the mean of the lips', MOUTH_DEPTH further in along the rays
    blend, pocket_faces = _mouth_pocket(path, NUM_VERTICES - surface_count, surface_count, faces)
    faces = np.concatenate([faces, pocket_faces])
    lips_mean = blend @ v
    rays = (lips_mean - ICT_RAY_ORIGIN) / np.linalg.norm(lips_mean - ICT_RAY_ORIGIN, axis=1, keepdims=True)
    v = np.concatenate([v, lips_mean - MOUTH_DEPTH * rays])
    shapedirs = np.concatenate([shapedirs, (blend @ shapedirs.reshape(surface_count, -1)).reshape(-1, 3, 400)])
    weights = np.concatenate([weights, blend @ weights])
    column = {n: np.concatenate([c, blend @ c]) for n, c in column.items()}
    from_lips = np.asarray(blend.argmax(1)).ravel()  # the pocket's correspondence: its nearest lip vertex's, off ICT
    corners, bary, nearest = corners[np.r_[:surface_count, from_lips]], bary[np.r_[:surface_count, from_lips]], nearest[np.r_[:surface_count, from_lips]]
    missed = np.r_[missed, np.ones(len(from_lips), bool)]
    np.savez(folder / "ict_correspondence.npz", corners=corners, bary=bary, on_surface=~missed,
             upper_lip=upper_lip, lower_lip=lower_lip)

    neck = np.array([0.0, root[1] / 2, root[2]])
    eye_centres = [neutral[masks[f"eyeball_{side}"]].mean(0) for side in ("left", "right")]
    J_regressor = sp.csc_matrix(np.stack([
        np.bincount(ring, minlength=NUM_VERTICES) / NECK_POINTS, _regressor_row(v, neck), _regressor_row(v, pivot),
        *(_regressor_row(v, c) for c in eye_centres)]))

    def exact32(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32).astype(np.float64)

    J_regressor.data = exact32(J_regressor.data)
    v, shapedirs, weights = exact32(v), exact32(shapedirs), exact32(weights)
    arrays = {"v_template": v, "f": faces.astype(np.uint32), "shapedirs": shapedirs,
              "posedirs": np.zeros((NUM_VERTICES, 3, 36)), "J_regressor": J_regressor, "J": J_regressor @ v,
              "weights": weights, "kintree_table": KINTREE_TABLE, "bs_style": "lbs", "bs_type": "lrotmin"}
    write_model(folder / MODEL_FILE["2023"], "2023", arrays)

    for file, name in zip(("l_eyelid.npy", "r_eyelid.npy"), ICT_AS_EYELIDS):
        np.save(folder / file, column[name])
    _write_ict_masks(folder, v, nearest, masks, ring, ict_model)
    _write_ict_landmarks(folder, v, faces[: len(faces) - len(pocket_faces)], ict_points, upper_lip, lower_lip)

    head = FLAME.from_dir(folder)  # no MediaPipe embedding yet
    embedding = compute_mediapipe_embedding(head)
    face_of = {tuple(sorted(f)): i for i, f in enumerate(faces.tolist())}
    indices = np.load(official / "mediapipe_landmark_embedding.npz")["landmark_indices"].astype(np.int64)
    ids, weights_mp = embedding.vertex_ids.numpy()[indices], embedding.bary.double().numpy()[indices]
    face_idx = np.array([face_of[tuple(sorted(c))] for c in ids.tolist()])
    order = np.argmax(faces[face_idx][:, :, None] == ids[:, None, :], axis=2)  # face corner j is ids column order[j]
    np.savez(folder / "mediapipe_landmark_embedding.npz", lmk_face_idx=face_idx.astype(np.uint32),
             lmk_b_coords=np.take_along_axis(weights_mp, order, 1), landmark_indices=indices)
    return folder


def _write_ict_masks(folder: Path, v: np.ndarray, nearest: np.ndarray, masks: dict, ring: np.ndarray, ict_model) -> None:
    """FLAME_masks.pkl from ICT's regions at each vertex's nearest ICT vertex."""
    at = {k: m[nearest] for k, m in masks.items()}
    landmarks = ict_model.neutral.double().numpy()[ict_model.landmark_indices.numpy()]
    left = v[:, 0] > 0
    ear_points = ict_model.neutral.double().numpy()[masks["ears"]]
    near_ear = cKDTree(ear_points).query(v)[0] < 0.015
    regions = {
        "face": at["face"], "eye_region": at["eyes"], "left_eye_region": at["eyes"] & left,
        "right_eye_region": at["eyes"] & ~left, "left_eyeball": at["eyeball_left"], "right_eyeball": at["eyeball_right"],
        "lips": at["mouth"], "nose": at["nose"], "forehead": at["narrow_face"] & (v[:, 1] > landmarks[17:27, 1].max()),
        "scalp": ~at["upstream_face"] & (v[:, 1] > 0.0), "neck": ~at["upstream_face"] & (v[:, 1] < landmarks[8, 1]),
        "boundary": np.isin(np.arange(NUM_VERTICES), ring), "left_ear": near_ear & left, "right_ear": near_ear & ~left,
    }
    with open(folder / "FLAME_masks.pkl", "wb") as file:
        pickle.dump({k: np.flatnonzero(regions[k]).astype(np.int64) for k in MASK_KEYS}, file, protocol=2)


def _write_ict_landmarks(folder: Path, v: np.ndarray, faces: np.ndarray, points: np.ndarray,
                         upper_lip: np.ndarray, lower_lip: np.ndarray) -> None:
    """DECA's landmark_embedding.npy: the (68, 3) ``points`` carried onto the ``faces`` (F, 3) along rays from
    ICT_RAY_ORIGIN; the inner lips' 61-63 / 65-67 onto the nearest point of the slit's upper / lower edge
    (``upper_lip`` / ``lower_lip`` (n + 1,) vertex ids corner to corner)."""
    rays = (points - ICT_RAY_ORIGIN) / np.linalg.norm(points - ICT_RAY_ORIGIN, axis=1, keepdims=True)
    distance, face_idx, bary = cast_rays(ICT_RAY_ORIGIN, rays, v[faces])
    inner_lips = (61, 62, 63, 65, 66, 67)
    assert not np.isnan(np.delete(distance, inner_lips)).any()
    for k, edge in zip(inner_lips, (upper_lip,) * 3 + (lower_lip,) * 3):
        a, b = v[edge[:-1]], v[edge[1:]]
        fraction = (((points[k] - a) * (b - a)).sum(1) / ((b - a) ** 2).sum(1)).clip(0, 1)
        i = np.linalg.norm(a + fraction[:, None] * (b - a) - points[k], axis=1).argmin()
        face_idx[k] = np.flatnonzero(np.isin(faces, edge[i : i + 2]).sum(1) == 2)[0]
        bary[k] = (faces[face_idx[k]] == edge[i]) * (1 - fraction[i]) + (faces[face_idx[k]] == edge[i + 1]) * fraction[i]
    np.save(folder / "landmark_embedding.npy", np.array(_deca_embedding(face_idx, bary), dtype=object), allow_pickle=True)


def _deca_embedding(face_idx: np.ndarray, bary: np.ndarray) -> dict:
    """(68,) triangles and (68, 3) barycentrics -> DECA's dict (the contour the same in every yaw row)."""
    return {
        "static_lmk_faces_idx": face_idx[17:].astype(np.int64),
        "static_lmk_bary_coords": bary[17:].astype(np.float64),
        "dynamic_lmk_faces_idx": torch.from_numpy(np.tile(face_idx[:17], (79, 1))).long(),  # torch, like DECA's file
        "dynamic_lmk_bary_coords": torch.from_numpy(np.tile(bary[:17], (79, 1, 1))).float(),
        "full_lmk_faces_idx": face_idx[None].astype(np.int64),
        "full_lmk_bary_coords": bary[None].astype(np.float32),
    }
