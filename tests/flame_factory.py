"""Builds FLAME-format model folders from random smooth data, for tests (no FLAME file needed).

The generated model has the official key layout, shapes and dtypes: a head-like surface with
exactly 5023 vertices and 9976 triangles, smooth low-frequency shape / expression / pose-corrective
fields of realistic size (mm to cm), a sparse joint regressor and skinning weights whose rows sum
to 1, and the official kintree_table. Variants:
    "2020"  generic_model.pkl, every dense array wrapped in chumpy's ``chumpy.ch.Ch`` (pickle protocol 2)
    "2023"  flame2023.pkl, plain numpy arrays + scipy sparse J_regressor
    "npz"   flame.npz, the same keys, J_regressor dense
Auxiliary files (landmark_embedding.npy, FLAME_masks.pkl, eyelids, MediaPipe embedding) are
copied from the shared ``flame-aux`` folder when it is there (real FLAME topology), else generated
in the same formats.
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

from tracker.files.paths import shared_dir

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
    t, a = surface_coords()
    unit = np.stack([np.sin(t) * np.sin(a), np.cos(t), np.sin(t) * np.cos(a)], -1)
    neck = 1.0 - 0.4 / (1.0 + np.exp(-(t - 0.72 * np.pi) / 0.05))
    vertices = unit * np.array([0.078, 0.12, 0.1]) * neck[:, None]
    vertices[:, 2] += 0.022 * _bump(t, a, 0.5 * np.pi, 0.0, 0.1)

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


def write_generated_aux(folder: Path, seed: int = 0) -> None:
    """DECA-format landmark embedding, masks, eyelids and MediaPipe embedding for the generated mesh."""
    rng = np.random.default_rng(seed + 1)
    v, f = head_mesh()
    front = np.flatnonzero(v[f].mean(1)[:, 2] > 0.04)
    side = np.flatnonzero(np.abs(v[f].mean(1)[:, 0]) > 0.04)
    embedding = {
        "static_lmk_faces_idx": rng.choice(front, 51, replace=False).astype(np.int64),
        "static_lmk_bary_coords": _random_bary(rng, 51),
        "dynamic_lmk_faces_idx": torch.from_numpy(rng.choice(side, (79, 17))).long(),  # torch, like DECA's file
        "dynamic_lmk_bary_coords": torch.from_numpy(_random_bary(rng, 79, 17)).float(),
        "full_lmk_faces_idx": rng.choice(front, (1, 68)).astype(np.int64),
        "full_lmk_bary_coords": _random_bary(rng, 1, 68).astype(np.float32),
    }
    np.save(folder / "landmark_embedding.npy", np.array(embedding, dtype=object), allow_pickle=True)

    regions = _regions()
    masks = {k: np.flatnonzero(regions[k]).astype(np.int64) for k in MASK_KEYS}
    with open(folder / "FLAME_masks.pkl", "wb") as file:
        pickle.dump(masks, file, protocol=2)

    t, a = surface_coords()
    for name, (t0, a0) in zip(("l_eyelid.npy", "r_eyelid.npy"), EYES.values()):
        upper_lid = _bump(t, a, t0 - 0.04, a0, 0.06)
        np.save(folder / name, np.array([0.0, -0.008, 0.001]) * upper_lid[:, None])

    np.savez(folder / "mediapipe_landmark_embedding.npz",
             lmk_face_idx=rng.choice(front, 105, replace=False).astype(np.uint32),
             lmk_b_coords=_random_bary(rng, 105), landmark_indices=np.sort(rng.choice(468, 105, replace=False)))


def write_aux(folder: Path, use_shared: bool = True, seed: int = 0) -> None:
    """Copy the shared aux files into ``folder`` when present (and ``use_shared``), else generate them."""
    source = shared_aux_dir() if use_shared else None
    if source is None:
        write_generated_aux(folder, seed)
        return
    for name in AUX_FILES:
        shutil.copyfile(source / name, folder / name)


def make_flame_dir(tmp_path: Path, variant: str = "2023", use_shared_aux: bool = True, seed: int = 0) -> Path:
    """A complete FLAME folder (model of ``variant`` + aux files) under ``tmp_path``; returns the folder."""
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
