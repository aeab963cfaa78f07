"""Pack an upstream ICT-FaceKit checkout into the one-file npz that ``tracker.head_models.ict`` loads.

    python -m tracker.head_models ict-convert ICT-FaceKit/ ict_face_model.npz

Upstream (github.com/ICT-VGL/ICT-FaceKit, MIT licence) keeps the "Light" model in ``FaceXModel/``:
``generic_neutral_mesh.obj`` (quads and triangles with texture coordinates, centimetres),
``identity000.obj`` ... ``identity099.obj`` (the identity PCA modes as full meshes),
``<expression>.obj`` for each name in ``vertex_indices.json["expressions"]`` (53 ARKit-style
shapes), and ``vertex_indices.json`` with the 68 landmark vertices in ``idx_to_landmark_verts``
(the same list as the upstream README's "Multi-PIE 68 point facial landmarks"). The geometry
groups' vertex ranges are only in the upstream README's tables; ``UPSTREAM_REGIONS`` copies them.

Output arrays (format: ``ict-facekit/README.md`` of the shared folder): neutral (V, 3) float32,
polygons (F, 4) int32 padded with -1, triangles (T, 3) int32, uv (U, 2) float32, polygon_uv
(F, 4) int32, identity_deltas (K, V, 3) float16, identity_names (K,), expression_deltas
(E, V, 3) float16, expression_names (E,), landmarks68 (68,) int32, region_names (R,),
region_ranges (R, 2) int32 [start, stop), units "centimeters". Deltas are mesh minus neutral.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.files.mesh_io import parse_obj, triangulate

UPSTREAM_URL = "github.com/ICT-VGL/ICT-FaceKit"

# Vertex ranges [start, stop) of the upstream README's "Face Model Topology" and "Face Area
# Details" tables (README lists inclusive [first:last]).
UPSTREAM_REGIONS: dict[str, tuple[int, int]] = {
    "face": (0, 9409),
    "head_and_neck": (9409, 11248),
    "mouth_socket": (11248, 13294),
    "eye_socket_left": (13294, 13678),
    "eye_socket_right": (13678, 14062),
    "gums_and_tongue": (14062, 17039),
    "teeth": (17039, 21451),
    "eyeball_left": (21451, 23021),
    "eyeball_right": (23021, 24591),
    "lacrimal_fluid_left": (24591, 24795),
    "lacrimal_fluid_right": (24795, 24999),
    "eye_blend_left": (24999, 25023),
    "eye_blend_right": (25023, 25047),
    "eye_occlusion_left": (25047, 25199),
    "eye_occlusion_right": (25199, 25351),
    "eyelashes_left": (25351, 26035),
    "eyelashes_right": (26035, 26719),
    "narrow_face": (0, 6706),
}


def convert(checkout: str | Path, out: str | Path, regions: Mapping[str, tuple[int, int]] = UPSTREAM_REGIONS) -> Path:
    """Read the upstream model from ``checkout`` (the repository root or its ``FaceXModel`` folder)
    and write the packed npz to ``out``; ``regions`` maps names to vertex ranges [start, stop)."""
    folder = _model_folder(Path(checkout))
    config = _read_config(folder / "vertex_indices.json")
    neutral = parse_obj(folder / "generic_neutral_mesh.obj")
    num_vertices = len(neutral.vertices)
    if neutral.polygons.shape[1] > 4:
        raise TrackerError(f"{folder / 'generic_neutral_mesh.obj'} has polygons with more than 4 corners; the ICT model has triangles and quads only")

    identity_names = _identity_names(folder)
    expression_names = list(config["expressions"])
    missing = [name for name in expression_names if not (folder / f"{name}.obj").is_file()]
    if missing:
        raise TrackerError(f"{folder} lacks the expression meshes {', '.join(n + '.obj' for n in missing)} listed in vertex_indices.json; use a complete checkout of {UPSTREAM_URL}")

    landmarks = np.asarray(config["idx_to_landmark_verts"], dtype=np.int64)
    if landmarks.shape != (68,) or landmarks.min() < 0 or landmarks.max() >= num_vertices:
        raise TrackerError(f"{folder / 'vertex_indices.json'}: idx_to_landmark_verts must be 68 vertex indices below {num_vertices}")
    ranges = np.asarray(list(regions.values()), dtype=np.int64).reshape(-1, 2)
    if ranges.size and (ranges.min() < 0 or ranges.max() > num_vertices or (ranges[:, 0] > ranges[:, 1]).any()):
        raise TrackerError(f"region ranges must lie within [0, {num_vertices}] (the neutral mesh's vertex count); this checkout's topology does not match the region table")

    arrays = {
        "neutral": neutral.vertices.astype(np.float32),
        "polygons": _four_columns(neutral.polygons),
        "triangles": triangulate(neutral.polygons).astype(np.int32),
        "uv": neutral.uvs.astype(np.float32),
        "polygon_uv": _four_columns(neutral.polygon_uvs),
        "identity_deltas": _deltas(folder, identity_names, neutral.vertices),
        "identity_names": np.array(identity_names, dtype=str),
        "expression_deltas": _deltas(folder, expression_names, neutral.vertices),
        "expression_names": np.array(expression_names, dtype=str),
        "landmarks68": landmarks.astype(np.int32),
        "region_names": np.array(list(regions), dtype=str),
        "region_ranges": ranges.astype(np.int32),
        "units": np.array("centimeters"),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def _model_folder(checkout: Path) -> Path:
    for folder in (checkout / "FaceXModel", checkout):
        if (folder / "generic_neutral_mesh.obj").is_file():
            return folder
    raise TrackerError(
        f"{checkout} is not an ICT-FaceKit checkout: FaceXModel/generic_neutral_mesh.obj is missing. "
        f"Clone the public repository {UPSTREAM_URL} (MIT licence) and pass its folder."
    )


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TrackerError(f"cannot read {path} ({err.strerror or err}); it is part of every {UPSTREAM_URL} checkout") from err
    except json.JSONDecodeError as err:
        raise TrackerError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise TrackerError(f"{path} must hold a JSON object")
    missing = [key for key in ("expressions", "idx_to_landmark_verts") if key not in config]
    if missing:
        raise TrackerError(f"{path} lacks {', '.join(missing)}; use a current checkout of {UPSTREAM_URL}")
    if not all(isinstance(name, str) for name in config["expressions"]) or not all(
        isinstance(index, int) for index in config["idx_to_landmark_verts"]
    ):
        raise TrackerError(f"{path}: 'expressions' must list names and 'idx_to_landmark_verts' vertex indices")
    return config


def _identity_names(folder: Path) -> list[str]:
    """identity000, identity001, ... as long as the files continue (upstream's own rule)."""
    names = []
    while (folder / f"identity{len(names):03d}.obj").is_file():
        names.append(f"identity{len(names):03d}")
    if not names:
        raise TrackerError(f"{folder} has no identity000.obj; use a complete checkout of {UPSTREAM_URL}")
    return names


def _deltas(folder: Path, names: list[str], neutral: np.ndarray) -> np.ndarray:
    """(len(names), V, 3) float16 offsets of each ``<name>.obj`` from the neutral vertices."""
    out = np.empty((len(names), *neutral.shape), dtype=np.float16)
    for i, name in enumerate(names):
        vertices = parse_obj(folder / f"{name}.obj").vertices
        if vertices.shape != neutral.shape:
            raise TrackerError(f"{folder / (name + '.obj')} has {len(vertices)} vertices, the neutral mesh {len(neutral)}; the checkout is inconsistent")
        out[i] = vertices - neutral
    return out


def _four_columns(polygons: np.ndarray) -> np.ndarray:
    """(F, K<=4) indices padded with -1 -> (F, 4) int32."""
    out = np.full((len(polygons), 4), -1, dtype=np.int32)
    out[:, : polygons.shape[1]] = polygons
    return out
