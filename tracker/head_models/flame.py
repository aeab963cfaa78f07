"""FLAME head model (Li et al. 2017) as the tracker's ``HeadModel``.

5023 vertices, 300 shape + 100 expression components, 5 joints (global/root, neck, jaw, left eye,
right eye) rotated by 6D rotations, optional eyelid blendshapes added after skinning (Pixel3DMM,
VHAP), DECA's 68-point landmark embedding (17 yaw-dependent jaw-contour points + 51 static).
The forward pass is standard FLAME linear blend skinning, written like ``smplx``'s ``lbs.py``.

Users bring the files (FLAME's licence is per user); the official pickles load without chumpy
through ``tracker.head_models.safe_pickle``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.geometry.camera import flip_matrix
from tracker.geometry.rotations import rotation_6d_to_matrix
from tracker.head_models.base import GaussianPrior, HeadModel, ParamGroup, RotationPrior
from tracker.head_models.safe_pickle import load_npy_object, load_pickle, to_numpy

NUM_VERTICES = 5023
NUM_FACES = 9976
NUM_JOINTS = 5  # global (root), neck, jaw, left eye, right eye
SHAPE_SPACE = 300  # shapedirs[..., :300] is shape, shapedirs[..., 300:400] expression
EXPRESSION_SPACE = 100
NUM_CONTOUR, NUM_STATIC, NUM_YAW_BINS = 17, 51, 79
NUM_MEDIAPIPE = 105

# accepted model file names, in order of preference (matched case-insensitively)
MODEL_NAMES = ("generic_model.pkl", "flame2023.pkl", "flame2023_no_jaw.pkl", "flame2023_open.pkl", "flame.npz")
LANDMARK_NAME = "landmark_embedding.npy"
MASKS_NAME = "FLAME_masks.pkl"
EYELID_NAMES = ("l_eyelid.npy", "r_eyelid.npy")
MEDIAPIPE_NAME = "mediapipe_landmark_embedding.npz"

MODEL_SOURCE = (
    "get the FLAME model at https://flame.is.tue.mpg.de (register, then download FLAME 2020 or FLAME 2023; "
    "FLAME 2023 Open is CC-BY-4.0)"
)
MASKS_SOURCE = "get FLAME_masks.pkl ('FLAME Vertex Masks') at https://flame.is.tue.mpg.de"
LANDMARK_SOURCE = "get landmark_embedding.npy from DECA's data folder (https://github.com/yfeng95/DECA, data/)"
EYELID_SOURCE = "get l_eyelid.npy and r_eyelid.npy from Pixel3DMM's or VHAP's FLAME assets"
MEDIAPIPE_SOURCE = "get mediapipe_landmark_embedding.npz from metrical-tracker's or VHAP's FLAME assets"
TEMPLATE_SOURCE = (
    "these files were made for another FLAME template (their triangle indices land elsewhere on this mesh): "
    "use the files that came with your model (the FLAME download, DECA's data folder, metrical-tracker / VHAP / "
    "Pixel3DMM assets for the official FLAME topology)"
)
# template fingerprint: the embedded landmarks must lie on this mesh in a face's layout (generous
# bounds; head frame +x subject's left, +y up, +z out of the face, metres)
EYE_DISTANCE_RANGE = (0.04, 0.08)  # between the eye centres (iBUG 36-41, 42-47); adults ~0.06
ANCHOR_TOLERANCE = 0.35  # MediaPipe anchor to its iBUG point, eyelid centroid to its eye: times the eye distance
# MediaPipe index -> iBUG-68 index of the same place (eye corners, mouth corners, nose tip, lip middles)
MEDIAPIPE_ANCHORS = ((33, 36), (133, 39), (362, 42), (263, 45), (61, 48), (291, 54), (4, 30), (0, 51), (17, 57))

# required region -> the FLAME_masks.pkl entries it unites
MASK_REGIONS = {
    "face": ("face",), "eyes": ("eye_region",), "nose": ("nose",), "mouth": ("lips",), "ears": ("left_ear", "right_ear"),
}


# -- files -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlameFiles:
    """Where the FLAME files are. Required: model, landmark embedding, masks."""

    model: Path
    landmark_embedding: Path
    masks: Path
    eyelids: tuple[Path, Path] | None = None
    mediapipe_embedding: Path | None = None

    @classmethod
    def from_dir(cls, folder: str | Path) -> FlameFiles:
        """Standard file names in ``folder``; a required file that is absent keeps its default path."""
        folder = Path(folder).expanduser()
        present = {p.name.lower(): p for p in folder.iterdir()} if folder.is_dir() else {}

        def find(name: str) -> Path | None:
            return present.get(name.lower())

        model = next((find(n) for n in MODEL_NAMES if find(n)), folder / MODEL_NAMES[0])
        eyelids = tuple(find(n) or folder / n for n in EYELID_NAMES)
        return cls(
            model=model,
            landmark_embedding=find(LANDMARK_NAME) or folder / LANDMARK_NAME,
            masks=find(MASKS_NAME) or folder / MASKS_NAME,
            eyelids=eyelids if any(find(n) for n in EYELID_NAMES) else None,
            mediapipe_embedding=find(MEDIAPIPE_NAME),
        )


class _Problems:
    """Collects every problem with the files, then raises one TrackerError listing them all."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: Path, details: list[str], source: str) -> None:
        """Record the ``details`` found in one file (nothing if empty) with where to get it."""
        if details:
            self.lines.append(f"  {path}: {'; '.join(details)}\n    -> {source}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise TrackerError("FLAME files are missing or malformed:\n" + "\n".join(self.lines))


def _read(path: Path, reader, details: list[str]):
    """``reader(path)``, or None with a note in ``details`` when the file is absent or unreadable."""
    if not path.is_file():
        details.append("file not found")
        return None
    try:
        return reader(path)
    except Exception as error:  # any damage in a user's file becomes a readable problem
        details.append(f"cannot be read ({type(error).__name__}: {error})")
        return None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz, without pickle."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _array(data, key: str, shape: tuple[int | None, ...], details: list[str], integer: bool = False):
    """``data[key]`` as a dense float64 / int64 array of ``shape`` (None = any size), or None with a
    note in ``details``."""
    if key not in data:
        details.append(f"key '{key}' missing")
        return None
    try:
        array = to_numpy(data[key])
    except (ValueError, TypeError, AttributeError) as error:  # AttributeError: a sparse matrix pickled without its state
        details.append(f"'{key}' cannot be read ({error})")
        return None
    expected = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        details.append(f"'{key}' has shape {tuple(array.shape)}, expected {expected}")
        return None
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        details.append(f"'{key}' must hold finite numbers")
        return None
    if integer:
        if np.any(array != np.round(array)):
            details.append(f"'{key}' must hold integers")
            return None
        return array.astype(np.int64)
    return array.astype(np.float64)


def _indices(array: np.ndarray | None, key: str, upper: int, details: list[str]) -> np.ndarray | None:
    """``array`` if every index lies in [0, upper), else None with a note in ``details``."""
    if array is not None and array.size and (array.min() < 0 or array.max() >= upper):
        details.append(f"'{key}' holds indices outside [0, {upper})")
        return None
    return array


@dataclass
class FlameData:
    """Validated FLAME arrays (numpy), ready to become buffers."""

    v_template: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3) int64
    shape_dirs: np.ndarray  # (V, 3, n_shape)
    expression_dirs: np.ndarray  # (V, 3, n_expression)
    posedirs: np.ndarray  # (36, V * 3), smplx layout
    J_regressor: np.ndarray  # (5, V) dense
    weights: np.ndarray  # (V, 5)
    parents: tuple[int, ...]  # (5,), parents[0] = -1
    landmark_embedding: dict[str, np.ndarray]  # DECA's static_* (51, ...) and dynamic_* (79, 17, ...)
    masks: dict[str, np.ndarray]  # {name: (V,) bool}
    eyelids: np.ndarray | None  # (2, V, 3)
    mediapipe: dict[str, np.ndarray] | None  # faces_idx (105,), bary_coords (105, 3), indices (105,)

    @classmethod
    def load(cls, files: FlameFiles, n_shape: int = SHAPE_SPACE, n_expression: int = EXPRESSION_SPACE) -> FlameData:
        """Read and validate every file; raise one TrackerError that lists all problems."""
        if not (0 <= n_shape <= SHAPE_SPACE and 0 <= n_expression <= EXPRESSION_SPACE):
            raise TrackerError(f"FLAME: n_shape must be in 0..{SHAPE_SPACE} and n_expression in 0..{EXPRESSION_SPACE}, "
                               f"got {n_shape} and {n_expression}")
        problems = _Problems()
        model = _load_model(files.model, n_shape, n_expression, problems)
        landmarks = _load_landmark_embedding(files.landmark_embedding, problems)
        masks = _load_masks(files.masks, problems)
        eyelids = _load_eyelids(files.eyelids, problems) if files.eyelids else None
        mediapipe = _load_mediapipe(files.mediapipe_embedding, problems) if files.mediapipe_embedding else None
        if model is not None and landmarks is not None:
            _check_template_fit(files, model, landmarks, eyelids, mediapipe, problems)
        problems.raise_if_any()
        return cls(**model, landmark_embedding=landmarks, masks=masks, eyelids=eyelids, mediapipe=mediapipe)


def _load_model(path: Path, n_shape: int, n_expression: int, problems: _Problems) -> dict | None:
    details: list[str] = []
    data = _read(path, lambda p: _read_npz(p) if p.suffix.lower() == ".npz" else load_pickle(p), details)
    if data is not None and not isinstance(data, dict):
        details.append(f"holds a {type(data).__name__}, expected a dict of FLAME arrays")
    if details or data is None:
        problems.add(path, details + [f"accepted names in a folder: {', '.join(MODEL_NAMES)}"], MODEL_SOURCE)
        return None
    V = NUM_VERTICES
    arrays = {
        "v_template": _array(data, "v_template", (V, 3), details),
        "faces": _indices(_array(data, "f", (NUM_FACES, 3), details, integer=True), "f", V, details),
        "posedirs": _array(data, "posedirs", (V, 3, 4 * 9), details),
        "J_regressor": _array(data, "J_regressor", (NUM_JOINTS, V), details),
        "weights": _array(data, "weights", (V, NUM_JOINTS), details),
    }
    shapedirs = _array(data, "shapedirs", (V, 3, None), details)
    n_dirs = SHAPE_SPACE + n_expression if n_expression else n_shape
    if shapedirs is not None and shapedirs.shape[2] < n_dirs:
        details.append(f"'shapedirs' has {shapedirs.shape[2]} components, {n_dirs} needed "
                       f"(shape first, expression from index {SHAPE_SPACE})")
    kintree = _array(data, "kintree_table", (2, NUM_JOINTS), details, integer=True)
    parents = (-1, *kintree[0, 1:].tolist()) if kintree is not None else ()
    if kintree is not None and any(not 0 <= p < i for i, p in enumerate(parents) if i):
        details.append(f"'kintree_table' parents {parents[1:]} do not form a tree rooted at joint 0")
    problems.add(path, details, MODEL_SOURCE)
    if details:
        return None
    return {
        **arrays,
        "posedirs": arrays["posedirs"].reshape(-1, arrays["posedirs"].shape[-1]).T,  # (36, V * 3) as smplx
        "shape_dirs": shapedirs[..., :n_shape],
        "expression_dirs": shapedirs[..., SHAPE_SPACE : SHAPE_SPACE + n_expression],
        "parents": parents,
    }


def _load_landmark_embedding(path: Path, problems: _Problems) -> dict[str, np.ndarray] | None:
    details: list[str] = []
    data = _read(path, load_npy_object, details)
    embedding = None
    if data is not None and not isinstance(data, dict):
        details.append(f"holds a {type(data).__name__}, expected DECA's dict")
    elif data is not None:
        static_idx = _array(data, "static_lmk_faces_idx", (NUM_STATIC,), details, integer=True)
        dynamic_idx = _array(data, "dynamic_lmk_faces_idx", (NUM_YAW_BINS, NUM_CONTOUR), details, integer=True)
        embedding = {
            "static_faces_idx": _indices(static_idx, "static_lmk_faces_idx", NUM_FACES, details),
            "static_bary_coords": _array(data, "static_lmk_bary_coords", (NUM_STATIC, 3), details),
            "dynamic_faces_idx": _indices(dynamic_idx, "dynamic_lmk_faces_idx", NUM_FACES, details),
            "dynamic_bary_coords": _array(data, "dynamic_lmk_bary_coords", (NUM_YAW_BINS, NUM_CONTOUR, 3), details),
        }
    problems.add(path, details, LANDMARK_SOURCE)
    return None if details else embedding


def _load_masks(path: Path, problems: _Problems) -> dict[str, np.ndarray] | None:
    details: list[str] = []
    data = _read(path, load_pickle, details)
    masks: dict[str, np.ndarray] = {}
    if data is not None and not isinstance(data, dict):
        details.append(f"holds a {type(data).__name__}, expected a dict of vertex index arrays")
    elif data is not None:
        for key in data:
            idx = _indices(_array(data, key, (None,), details, integer=True), key, NUM_VERTICES, details)
            if idx is not None:
                masks[str(key)] = np.zeros(NUM_VERTICES, dtype=bool)
                masks[str(key)][idx] = True
        needed = sorted({k for keys in MASK_REGIONS.values() for k in keys} - set(data))
        if needed:
            details.append(f"regions {needed} missing")
    problems.add(path, details, MASKS_SOURCE)
    return None if details else masks


def _load_eyelids(paths: tuple[Path, Path], problems: _Problems) -> np.ndarray | None:
    fields = []
    for path in paths:
        details: list[str] = []
        data = _read(path, lambda p: {"eyelid": np.load(p, allow_pickle=False)}, details)
        fields.append(_array(data, "eyelid", (NUM_VERTICES, 3), details) if data is not None else None)
        problems.add(path, details, EYELID_SOURCE)
    return None if any(f is None for f in fields) else np.stack(fields)


def _load_mediapipe(path: Path, problems: _Problems) -> dict[str, np.ndarray] | None:
    details: list[str] = []
    data = _read(path, _read_npz, details)
    embedding = None
    if data is not None:
        faces_idx = _array(data, "lmk_face_idx", (NUM_MEDIAPIPE,), details, integer=True)
        embedding = {
            "faces_idx": _indices(faces_idx, "lmk_face_idx", NUM_FACES, details),
            "bary_coords": _array(data, "lmk_b_coords", (NUM_MEDIAPIPE, 3), details),
            "indices": _array(data, "landmark_indices", (NUM_MEDIAPIPE,), details, integer=True),
        }
    problems.add(path, details, MEDIAPIPE_SOURCE)
    return None if details else embedding


def _points(v: np.ndarray, faces: np.ndarray, faces_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(V, 3) vertices, (F, 3) faces, (L,) face indices, (L, 3) barycentrics -> (L, 3) points."""
    return np.einsum("lkc,lk->lc", v[faces[faces_idx]], bary)


def _check_template_fit(files: FlameFiles, model: dict, landmarks: dict, eyelids: np.ndarray | None,
                        mediapipe: dict | None, problems: _Problems) -> None:
    """Record a problem for each embedding file that does not describe a face on this model's template:
    the 68 points (static + the frontal contour row) in a face's layout, MediaPipe's anchor points near
    their iBUG-68 counterparts, each eyelid field centred on an eye."""
    v, faces = model["v_template"], model["faces"]
    lm = np.concatenate([_points(v, faces, landmarks["dynamic_faces_idx"][0], landmarks["dynamic_bary_coords"][0]),
                         _points(v, faces, landmarks["static_faces_idx"], landmarks["static_bary_coords"])])
    eyes = np.stack([lm[42:48].mean(0), lm[36:42].mean(0)])  # subject's left, right
    mouth = lm[48:60].mean(0)
    distance = float(np.linalg.norm(eyes[0] - eyes[1]))
    details = []
    if not EYE_DISTANCE_RANGE[0] <= distance <= EYE_DISTANCE_RANGE[1]:
        details.append(f"eye centres {distance * 100:.1f} cm apart (a face: {EYE_DISTANCE_RANGE[0] * 100:.0f}-"
                       f"{EYE_DISTANCE_RANGE[1] * 100:.0f} cm)")
    x = lm[:, 0]
    if not (x[36] < x[39] < x[42] < x[45] and x[48] < x[54]):
        details.append("eye corners 36 < 39 < 42 < 45 and mouth corners 48 < 54 are not in order along +x "
                       f"(x = {np.round(x[[36, 39, 42, 45, 48, 54]] * 100, 1).tolist()} cm)")
    heights = [eyes[:, 1].mean(), lm[30, 1], mouth[1], lm[8, 1]]
    if not heights[0] > heights[1] > heights[2] > heights[3]:
        details.append(f"eyes, nose tip, mouth, chin are not top to bottom along +y (y = {np.round(np.array(heights) * 100, 1).tolist()} cm)")
    if not lm[30, 2] > eyes[:, 2].mean() > v[:, 2].mean():
        details.append(f"the nose tip (z {lm[30, 2] * 100:.1f} cm) is not in front of the eyes (z {eyes[:, 2].mean() * 100:.1f} cm), "
                       f"or they are not in front of the mesh's centre (z {v[:, 2].mean() * 100:.1f} cm)")
    if details:
        problems.add(files.landmark_embedding, ["its 68 landmarks do not form a face on this mesh: " + "; ".join(details)],
                     TEMPLATE_SOURCE)
        return
    tolerance = ANCHOR_TOLERANCE * distance
    if mediapipe is not None:
        mp = _points(v, faces, mediapipe["faces_idx"], mediapipe["bary_coords"])
        row = {int(i): k for k, i in enumerate(mediapipe["indices"])}
        far = [f"MediaPipe {m} is {np.linalg.norm(mp[row[m]] - lm[i]) * 100:.1f} cm from iBUG {i}"
               for m, i in MEDIAPIPE_ANCHORS if m in row and np.linalg.norm(mp[row[m]] - lm[i]) > tolerance]
        if far:
            problems.add(files.mediapipe_embedding, ["its points do not sit on the face that the 68 landmarks of "
                         f"{files.landmark_embedding.name} mark ({tolerance * 100:.1f} cm allowed): " + "; ".join(far)],
                         TEMPLATE_SOURCE)
    if eyelids is not None:
        for path, field in zip(files.eyelids, eyelids):
            size = np.linalg.norm(field, axis=1)
            centre = (size[:, None] * v).sum(0) / max(size.sum(), 1e-12)
            gap = float(np.linalg.norm(eyes - centre, axis=1).min())
            if gap > tolerance:
                detail = (f"its displacements are centred {gap * 100:.1f} cm from the nearest eye of the 68 landmarks "
                          f"({tolerance * 100:.1f} cm allowed)")
                problems.add(path, [detail], TEMPLATE_SOURCE)


# -- linear blend skinning (the smplx lbs.py steps) ------------------------------------------------
def blend_shapes(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """(B, K) coefficients, (V, 3, K) directions -> (B, V, 3) offsets."""
    return torch.einsum("bk,vck->bvc", coeffs, dirs)


def vertices_to_joints(regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """(J, V) regressor, (B, V, 3) vertices -> (B, J, 3) joints."""
    return torch.einsum("jv,bvc->bjc", regressor, vertices)


def rigid_transforms(rotations: torch.Tensor, joints: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
    """(B, J, 3, 3) local joint rotations, (B, J, 3) rest joints -> (B, J, 3, 4) skinning transforms.

    Transform j maps a rest-pose point attached to joint j to its posed position.
    """
    world_rot = [rotations[:, 0]]
    world_pos = [joints[:, 0]]
    for j in range(1, len(parents)):
        p = parents[j]
        world_rot.append(world_rot[p] @ rotations[:, j])
        world_pos.append(world_pos[p] + (world_rot[p] @ (joints[:, j] - joints[:, p])[..., None])[..., 0])
    rot = torch.stack(world_rot, dim=1)  # (B, J, 3, 3)
    pos = torch.stack(world_pos, dim=1)  # (B, J, 3)
    shift = pos - (rot @ joints[..., None])[..., 0]  # posed joint minus rotated rest joint
    return torch.cat([rot, shift[..., None]], dim=-1)


def lbs(
    coeffs: torch.Tensor,
    rotations: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor,
    J_regressor: torch.Tensor,
    parents: tuple[int, ...],
    weights: torch.Tensor,
) -> torch.Tensor:
    """Blendshapes, pose correctives and linear blend skinning.

    coeffs (B, K), rotations (B, J, 3, 3), v_template (V, 3), shapedirs (V, 3, K),
    posedirs (9 (J - 1), 3 V), J_regressor (J, V), weights (V, J) -> vertices (B, V, 3).
    """
    batch = coeffs.shape[0]
    v_shaped = v_template + blend_shapes(coeffs, shapedirs)
    joints = vertices_to_joints(J_regressor, v_shaped)
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    pose_feature = (rotations[:, 1:] - eye).reshape(batch, -1)  # (B, 9 (J - 1)), root excluded
    v_posed = v_shaped + (pose_feature @ posedirs).reshape(batch, -1, 3)
    per_vertex = torch.einsum("vj,bjrc->bvrc", weights, rigid_transforms(rotations, joints, parents))  # (B, V, 3, 4)
    return torch.einsum("bvrc,bvc->bvr", per_vertex[..., :3], v_posed) + per_vertex[..., 3]


# -- landmarks -------------------------------------------------------------------------------------
def vertices_to_landmarks(vertices: torch.Tensor, faces: torch.Tensor, faces_idx: torch.Tensor,
                          bary: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) vertices, (F, 3) faces, (B, L) face indices, (B, L, 3) barycentrics -> (B, L, 3)."""
    corners = faces[faces_idx]  # (B, L, 3) vertex indices
    batch = torch.arange(vertices.shape[0], device=vertices.device)[:, None, None]
    return torch.einsum("blkc,blk->blc", vertices[batch, corners], bary)


def contour_rows(rotation: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) head rotation in the view frame -> (B,) row of DECA's 79-row contour table.

    DECA's ``_find_dynamic_lmk_idx_and_bcoords``: yaw = atan2(-R20, sqrt(R00^2 + R10^2)) in whole
    degrees, clamped to 39; rows 0..39 for yaw 0..39, rows 40..78 for yaw -1..-39 (and below).
    """
    yaw = torch.atan2(-rotation[:, 2, 0], torch.sqrt(rotation[:, 0, 0] ** 2 + rotation[:, 1, 0] ** 2))
    degrees = torch.round(torch.clamp(yaw * 180.0 / math.pi, max=39)).long()
    return torch.where(degrees >= 0, degrees, (39 - degrees).clamp(max=78))


# -- the model -------------------------------------------------------------------------------------
class FLAME(HeadModel):
    """FLAME with 6D joint rotations; see the module docstring. Build with ``from_dir`` / ``from_files``.

    Buffers are not persistent: a checkpoint's state_dict never carries FLAME's (licensed) data.
    """

    name = "flame"

    def __init__(self, data: FlameData, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        n_shape, n_expression = data.shape_dirs.shape[2], data.expression_dirs.shape[2]
        self.param_groups = _param_groups(n_shape, n_expression, data.eyelids is not None)
        self.parents = data.parents

        def buffer(name: str, array: np.ndarray, kind: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.tensor(array, dtype=kind), persistent=False)

        buffer("v_template", data.v_template)
        buffer("faces", data.faces, torch.long)
        buffer("shapedirs", np.concatenate([data.shape_dirs, data.expression_dirs], axis=2))  # (V, 3, K)
        buffer("posedirs", data.posedirs)
        buffer("J_regressor", data.J_regressor)
        buffer("lbs_weights", data.weights)
        # the rest joints are linear in the coefficients: (J, 3) + (J, 3, K) c (decode_landmarks)
        self.register_buffer("joint_template", self.J_regressor @ self.v_template, persistent=False)
        self.register_buffer("joint_dirs", torch.einsum("jv,vck->jck", self.J_regressor, self.shapedirs), persistent=False)
        lmk = data.landmark_embedding
        buffer("static_lmk_faces_idx", lmk["static_faces_idx"], torch.long)
        buffer("static_lmk_bary_coords", lmk["static_bary_coords"])
        buffer("dynamic_lmk_faces_idx", lmk["dynamic_faces_idx"], torch.long)
        buffer("dynamic_lmk_bary_coords", lmk["dynamic_bary_coords"])
        if data.eyelids is not None:
            buffer("eyelid_dirs", data.eyelids)  # (2, V, 3): left, right
        self._landmark_subset()
        self.has_mediapipe = data.mediapipe is not None
        if data.mediapipe is not None:
            buffer("mediapipe_lmk_faces_idx", data.mediapipe["faces_idx"], torch.long)
            buffer("mediapipe_lmk_bary_coords", data.mediapipe["bary_coords"])
            buffer("mediapipe_indices", data.mediapipe["indices"], torch.long)
        masks = {k: torch.from_numpy(v) for k, v in data.masks.items()}
        for region, keys in MASK_REGIONS.items():
            masks[region] = torch.stack([masks[k] for k in keys]).any(0)
        self.register_regions(masks)

    def _landmark_subset(self) -> None:
        """Buffers for ``decode_landmarks``: the vertices of every landmark triangle (the static ones
        and every contour row's), their template, blendshapes, pose correctives, skinning weights
        and eyelid offsets, and the triangles' corners as rows of that subset."""
        triangles = torch.cat([self.faces[self.static_lmk_faces_idx].reshape(-1), self.faces[self.dynamic_lmk_faces_idx].reshape(-1)])
        ids, _ = torch.unique(triangles, return_inverse=True)
        row_of = torch.full((len(self.v_template),), -1, dtype=torch.long)
        row_of[ids] = torch.arange(len(ids))
        self.register_buffer("lmk_static_corners", row_of[self.faces[self.static_lmk_faces_idx]], persistent=False)  # (51, 3)
        self.register_buffer("lmk_dynamic_corners", row_of[self.faces[self.dynamic_lmk_faces_idx]], persistent=False)  # (79, 17, 3)
        self.register_buffer("lmk_template", self.v_template[ids], persistent=False)  # (n, 3)
        self.register_buffer("lmk_shapedirs", self.shapedirs[ids].contiguous(), persistent=False)  # (n, 3, K)
        posedirs = self.posedirs.view(len(self.posedirs), -1, 3)[:, ids].reshape(len(self.posedirs), -1)
        self.register_buffer("lmk_posedirs", posedirs.contiguous(), persistent=False)  # (9 (J - 1), 3 n)
        self.register_buffer("lmk_weights", self.lbs_weights[ids].contiguous(), persistent=False)  # (n, J)
        if self.has_eyelids:
            self.register_buffer("lmk_eyelid_dirs", self.eyelid_dirs[:, ids].contiguous(), persistent=False)  # (2, n, 3)

    @classmethod
    def from_files(cls, files: FlameFiles, n_shape: int = SHAPE_SPACE, n_expression: int = EXPRESSION_SPACE,
                   dtype: torch.dtype = torch.float32) -> FLAME:
        """Load and validate ``files``; one TrackerError lists every missing or malformed file."""
        return cls(FlameData.load(files, n_shape, n_expression), dtype=dtype)

    @classmethod
    def from_dir(cls, folder: str | Path, n_shape: int = SHAPE_SPACE, n_expression: int = EXPRESSION_SPACE,
                 dtype: torch.dtype = torch.float32) -> FLAME:
        """``from_files(FlameFiles.from_dir(folder))``."""
        return cls.from_files(FlameFiles.from_dir(folder), n_shape, n_expression, dtype)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def has_eyelids(self) -> bool:
        return "eyelids" in self.param_groups

    def joint_rotations(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Complete params -> (B, 5, 3, 3) rotations in kinematic order (global, neck, jaw, left eye, right eye)."""
        eyes = params["eyes"]
        d6 = torch.stack([params["global"], params["neck"], params["jaw"], eyes[:, :6], eyes[:, 6:]], dim=1)
        return rotation_6d_to_matrix(d6)

    def decode(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """{group: (B, size)} -> vertices (B, 5023, 3) in metres: LBS, eyelids, then translation."""
        p = self.complete_params(params)
        coeffs = torch.cat([p["shape"], p["expression"]], dim=1)
        vertices = lbs(coeffs, self.joint_rotations(p), self.v_template, self.shapedirs, self.posedirs,
                       self.J_regressor, self.parents, self.lbs_weights)
        if self.has_eyelids:  # after skinning, as Pixel3DMM does
            vertices = vertices + torch.einsum("bk,kvc->bvc", p["eyelids"], self.eyelid_dirs)
        return vertices + p["translation"][:, None, :]

    def decode_landmarks(self, params: dict[str, torch.Tensor], view_rotation: torch.Tensor | None = None) -> torch.Tensor:
        """{group: (B, size)} -> (B, 68, 3) iBUG-68 landmarks, as ``landmarks(decode(params))`` but
        skinning only the vertices of the landmark triangles (``_landmark_subset``; the joints from
        their linear map of the coefficients): a few hundred vertices instead of 5023."""
        p = self.complete_params(params)
        batch = p["shape"].shape[0]
        rotations = self.joint_rotations(p)  # (B, J, 3, 3)
        rows = contour_rows(self._view_head_rotation(rotations[:, 0] @ rotations[:, 1], view_rotation))
        corners = torch.cat([self.lmk_dynamic_corners[rows], self.lmk_static_corners.expand(batch, -1, -1)], dim=1)  # (B, 68, 3)
        bary = torch.cat([self.dynamic_lmk_bary_coords[rows], self.static_lmk_bary_coords.expand(batch, -1, -1)], dim=1)
        coeffs = torch.cat([p["shape"], p["expression"]], dim=1)
        v_shaped = self.lmk_template + blend_shapes(coeffs, self.lmk_shapedirs)  # (B, n, 3)
        joints = self.joint_template + blend_shapes(coeffs, self.joint_dirs)  # (B, J, 3)
        eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
        pose_feature = (rotations[:, 1:] - eye).reshape(batch, -1)
        v_posed = v_shaped + (pose_feature @ self.lmk_posedirs).reshape(batch, -1, 3)
        per_vertex = torch.einsum("vj,bjrc->bvrc", self.lmk_weights, rigid_transforms(rotations, joints, self.parents))
        vertices = torch.einsum("bvrc,bvc->bvr", per_vertex[..., :3], v_posed) + per_vertex[..., 3]
        if self.has_eyelids:
            vertices = vertices + torch.einsum("bk,kvc->bvc", p["eyelids"], self.lmk_eyelid_dirs)
        vertices = vertices + p["translation"][:, None, :]
        points = vertices[torch.arange(batch, device=vertices.device)[:, None, None], corners]  # (B, 68, 3, 3)
        return torch.einsum("blkc,blk->blc", points, bary.to(vertices.dtype))

    def head_rotation(self, batch: int, params: dict[str, torch.Tensor] | None = None,
                      view_rotation: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, 3) head rotation seen from a frontal camera: FLIP @ view_rotation @ FLIP @ R_global @ R_neck.

        ``view_rotation`` is the camera-frame rotation R of ``head_to_camera``; missing parts are identity.
        """
        dtype, device = self.v_template.dtype, self.v_template.device
        rotation = torch.eye(3, dtype=dtype, device=device).expand(batch, 3, 3)
        for key in ("neck", "global"):
            if params and params.get(key) is not None:
                rotation = rotation_6d_to_matrix(params[key].to(dtype)) @ rotation
        return self._view_head_rotation(rotation, view_rotation)

    def _view_head_rotation(self, rotation: torch.Tensor, view_rotation: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, 3) R_global @ R_neck -> the head rotation a frontal camera sees (``head_rotation``)."""
        if view_rotation is None:
            return rotation
        flip = flip_matrix(device=rotation.device, dtype=rotation.dtype)
        return flip @ view_rotation.to(rotation.dtype) @ flip @ rotation

    def landmarks(self, vertices: torch.Tensor, params: dict[str, torch.Tensor] | None = None,
                  view_rotation: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V, 3) vertices -> (B, 68, 3) iBUG-68 landmarks: 17 yaw-dependent contour points, then 51 static."""
        batch = vertices.shape[0]
        rows = contour_rows(self.head_rotation(batch, params, view_rotation))
        faces_idx = torch.cat([self.dynamic_lmk_faces_idx[rows], self.static_lmk_faces_idx.expand(batch, -1)], dim=1)
        bary = torch.cat([self.dynamic_lmk_bary_coords[rows], self.static_lmk_bary_coords.expand(batch, -1, -1)], dim=1)
        return vertices_to_landmarks(vertices, self.faces, faces_idx, bary.to(vertices.dtype))

    def mediapipe_landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) vertices -> (B, 105, 3) points matching MediaPipe landmarks ``mediapipe_indices``."""
        if not self.has_mediapipe:
            raise TrackerError(f"FLAME was loaded without {MEDIAPIPE_NAME}; {MEDIAPIPE_SOURCE}")
        batch = vertices.shape[0]
        faces_idx = self.mediapipe_lmk_faces_idx.expand(batch, -1)
        bary = self.mediapipe_lmk_bary_coords.expand(batch, -1, -1).to(vertices.dtype)
        return vertices_to_landmarks(vertices, self.faces, faces_idx, bary)


def _param_groups(n_shape: int, n_expression: int, eyelids: bool) -> dict[str, ParamGroup]:
    """Parameter groups with the paper's sampling priors (shape, expression, jaw, eyelids)."""
    groups = {
        "shape": ParamGroup(n_shape, GaussianPrior(0.8), "identity coefficients"),
        "expression": ParamGroup(n_expression, GaussianPrior(0.5), "expression coefficients"),
        "jaw": ParamGroup(6, RotationPrior(std_deg=(15.0, 5.0, 5.0)), "jaw rotation, 6D"),
    }
    if eyelids:
        groups["eyelids"] = ParamGroup(2, GaussianPrior(0.3), "left, right eyelid blendshape weights")
    groups |= {
        "global": ParamGroup(6, RotationPrior(), "root rotation, 6D"),
        "neck": ParamGroup(6, RotationPrior(), "neck rotation, 6D"),
        "eyes": ParamGroup(12, RotationPrior(), "left then right eyeball rotation, 6D each"),
        "translation": ParamGroup(3, GaussianPrior(0.0), "offset added to all vertices, metres"),
    }
    return groups
