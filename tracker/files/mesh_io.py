"""Triangle-mesh files: OBJ (read and write) and PLY (write, binary or ASCII).

Arrays may be numpy arrays or torch tensors (any device); they are written as given, no unit
conversion. Indices are 0-based in memory and 1-based inside OBJ files.

Writers (each file is written whole or not at all, never through a link in the way: ``tracker.files.atomic_write``):
    write_obj(path, vertices (V, 3), faces (F, 3), normals (V, 3)?, uvs (V, 2)?)
    write_ply(path, vertices (V, 3), faces (F, 3), colors (V, 3)?, binary=True)
    encode_obj(...), encode_ply(...) -> bytes: the same files' contents, for a writer of its own
Readers:
    parse_obj(path) -> ObjMesh   every polygon with its texture-coordinate indices
    read_obj(path)  -> (vertices (V, 3) float64, faces (F, 3) int64), polygons fan-triangulated
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write


@dataclass(frozen=True)
class ObjMesh:
    """The geometry of an OBJ file.

    vertices      (V, 3) float64
    uvs           (T, 2) float64 texture coordinates (T may be 0)
    polygons      (F, K) int64 vertex indices, 0-based; rows with fewer than K corners padded with -1
    polygon_uvs   (F, K) int64 texture-coordinate indices, -1 where a corner has none
    """

    vertices: np.ndarray
    uvs: np.ndarray
    polygons: np.ndarray
    polygon_uvs: np.ndarray


def parse_obj(path: str | Path) -> ObjMesh:
    """Read ``v``, ``vt`` and ``f`` records (``f`` corners as ``v``, ``v/vt``, ``v//vn`` or ``v/vt/vn``,
    negative indices relative to the end); other records (``vn``, ``g``, ``usemtl``, ...) are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise TrackerError(f"cannot read OBJ file {path}: {err.strerror or err}") from err
    vertices: list[list[float]] = []
    uvs: list[list[float]] = []
    corners: list[list[int]] = []
    corner_uvs: list[list[int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if fields[0] == "v":
                vertices.append(_floats(fields, 3))
            elif fields[0] == "vt":
                uvs.append(_floats(fields, 2))
            elif fields[0] == "f":
                if len(fields) < 4:
                    raise ValueError("a face needs at least 3 corners")
                refs = [field.split("/") for field in fields[1:]]
                corners.append([_index(r[0], len(vertices)) for r in refs])
                corner_uvs.append([_index(r[1], len(uvs)) if len(r) > 1 and r[1] else -1 for r in refs])
        except ValueError as err:
            raise TrackerError(f"malformed OBJ file {path}, line {number}: {line.strip()!r} ({err})") from err
    vertex_array = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    uv_array = np.asarray(uvs, dtype=np.float64).reshape(-1, 2)
    polygons, polygon_uvs = _pad(corners), _pad(corner_uvs)
    if polygons.size and polygons.max() >= len(vertex_array):
        raise TrackerError(f"malformed OBJ file {path}: a face refers to vertex {polygons.max() + 1}, the file has {len(vertex_array)}")
    if polygon_uvs.size and polygon_uvs.max() >= len(uv_array):
        raise TrackerError(f"malformed OBJ file {path}: a face refers to texture coordinate {polygon_uvs.max() + 1}, the file has {len(uv_array)}")
    return ObjMesh(vertex_array, uv_array, polygons, polygon_uvs)


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, faces (F, 3) int64); polygons are fan-triangulated by ``triangulate``."""
    mesh = parse_obj(path)
    return mesh.vertices, triangulate(mesh.polygons)


def triangulate(polygons: np.ndarray) -> np.ndarray:
    """(F, K) polygons padded with -1 -> (T, 3) fan triangles (c0, c_i, c_i+1).

    Corner-major order: first every polygon's (c0, c1, c2), then (c0, c2, c3) of every polygon
    with a 4th corner, and so on (a quad mesh becomes [first halves; second halves]).
    """
    polygons = np.asarray(polygons)
    if polygons.ndim != 2 or polygons.shape[1] < 3:
        raise ValueError(f"polygons must be (F, K>=3), got {polygons.shape}")
    parts = []
    for i in range(1, polygons.shape[1] - 1):
        rows = polygons[polygons[:, i + 1] >= 0]
        parts.append(rows[:, [0, i, i + 1]])
    return np.concatenate(parts).astype(np.int64)


def write_obj(path: str | Path, vertices, faces, normals=None, uvs=None) -> Path:
    """Write a triangle mesh as OBJ; ``normals`` (V, 3) and ``uvs`` (V, 2) are per vertex."""
    return atomic_write(path, encode_obj(vertices, faces, normals, uvs))


def encode_obj(vertices, faces, normals=None, uvs=None) -> bytes:
    """The OBJ file ``write_obj`` writes."""
    v = _vertex_array(vertices)
    f = _face_array(faces, len(v))
    blocks = [_rows("v", v)]
    if uvs is not None:
        blocks.append(_rows("vt", _per_vertex(uvs, len(v), 2, "uvs")))
    if normals is not None:
        blocks.append(_rows("vn", _per_vertex(normals, len(v), 3, "normals")))
    corner = {(False, False): "%d", (True, False): "%d/%d", (False, True): "%d//%d", (True, True): "%d/%d/%d"}
    has = (uvs is not None, normals is not None)
    line = "f " + " ".join([corner[has]] * 3) + "\n"
    columns = np.repeat(f + 1, 1 + sum(has), axis=1)
    blocks.append("".join(line % tuple(row) for row in columns.tolist()))
    return "".join(blocks).encode("utf-8")


def write_ply(path: str | Path, vertices, faces, colors=None, binary: bool = True) -> Path:
    """Write a triangle mesh as PLY: float32 x, y, z, optional uchar red, green, blue per vertex
    (``colors`` (V, 3) uint8, or floats in [0, 1]), and a ``uchar int vertex_indices`` list per face.
    Binary files are little-endian."""
    return atomic_write(path, encode_ply(vertices, faces, colors, binary))


def encode_ply(vertices, faces, colors=None, binary: bool = True) -> bytes:
    """The PLY file ``write_ply`` writes."""
    v = _vertex_array(vertices).astype(np.float32)
    f = _face_array(faces, len(v)).astype(np.int32)
    vertex_fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        rgb = _colors(colors, len(v))
        vertex_fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header = [
        "ply",
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        "comment written by tracker.files.mesh_io",
        f"element vertex {len(v)}",
        *(f"property {'float' if t == '<f4' else 'uchar'} {name}" for name, t in vertex_fields),
        f"element face {len(f)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    vertex_table = np.empty(len(v), dtype=vertex_fields)
    for axis, name in enumerate("xyz"):
        vertex_table[name] = v[:, axis]
    if colors is not None:
        for channel, name in enumerate(("red", "green", "blue")):
            vertex_table[name] = rgb[:, channel]
    stream = io.BytesIO()
    stream.write(("\n".join(header) + "\n").encode("ascii"))
    if binary:
        face_table = np.empty(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        face_table["n"] = 3
        face_table["i"] = f
        stream.write(vertex_table.tobytes())
        stream.write(face_table.tobytes())
    else:
        vertex_format = " ".join(["%.9g"] * 3 + (["%d"] * 3 if colors is not None else []))
        np.savetxt(stream, np.array(vertex_table.tolist()), fmt=vertex_format)
        np.savetxt(stream, np.column_stack([np.full(len(f), 3), f]), fmt="%d")
    return stream.getvalue()


# -- helpers ---------------------------------------------------------------------------------
def _floats(fields: list[str], count: int) -> list[float]:
    if len(fields) < count + 1:
        raise ValueError(f"expected {count} numbers")
    return [float(x) for x in fields[1 : count + 1]]


def _index(token: str, count: int) -> int:
    """One 1-based (or negative, relative) OBJ index -> 0-based."""
    index = int(token)
    resolved = index - 1 if index > 0 else count + index
    if index == 0 or resolved < 0:
        raise ValueError(f"index {index} refers to no element ({count} defined so far)")
    return resolved


def _pad(rows: list[list[int]]) -> np.ndarray:
    width = max((len(r) for r in rows), default=3)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _vertex_array(vertices) -> np.ndarray:
    v = _numpy(vertices)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {v.shape}")
    return v if v.dtype.kind == "f" else v.astype(np.float64)


def _face_array(faces, num_vertices: int) -> np.ndarray:
    f = _numpy(faces)
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be (F, 3) triangles, got {f.shape}")
    f = f.astype(np.int64)
    if f.size and (f.min() < 0 or f.max() >= num_vertices):
        raise ValueError(f"face indices must lie in [0, {num_vertices})")
    return f


def _per_vertex(array, num_vertices: int, width: int, name: str) -> np.ndarray:
    a = _numpy(array)
    if a.shape != (num_vertices, width):
        raise ValueError(f"{name} must be ({num_vertices}, {width}), got {a.shape}")
    return a if a.dtype.kind == "f" else a.astype(np.float64)


def _colors(colors, num_vertices: int) -> np.ndarray:
    c = _numpy(colors)
    if c.shape != (num_vertices, 3):
        raise ValueError(f"colors must be ({num_vertices}, 3), got {c.shape}")
    if c.dtype.kind == "f":
        c = np.round(np.clip(c, 0.0, 1.0) * 255.0)
    return c.astype(np.uint8)


def _rows(tag: str, values: np.ndarray) -> str:
    """'tag a b c' lines; 9 significant digits for float32 (and smaller), 17 for float64, so
    values read back exactly in their own precision."""
    digits = 17 if values.dtype.itemsize > 4 else 9
    fmt = tag + f" %.{digits}g" * values.shape[1] + "\n"
    return "".join(fmt % tuple(row) for row in values.tolist())
