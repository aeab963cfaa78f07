"""OBJ / PLY writing and OBJ reading, checked against small independent parsers written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tracker.errors import TrackerError
from tracker.files.mesh_io import parse_obj, read_obj, triangulate, write_obj, write_ply


def _mesh(seed: int = 0, vertices: int = 30, faces: int = 40):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(vertices, 3)).astype(np.float32) * 0.1
    f = rng.integers(0, vertices, size=(faces, 3))
    return v, f


def _records(path: Path, tag: str) -> list[list[str]]:
    return [line.split()[1:] for line in path.read_text().splitlines() if line.split()[:1] == [tag]]


def test_obj_written_from_torch_reads_back_exactly(tmp_path):
    v, f = _mesh()
    path = write_obj(tmp_path / "m.obj", torch.from_numpy(v), torch.from_numpy(f))
    vertices = np.array(_records(path, "v"), dtype=np.float32)
    faces = np.array(_records(path, "f"), dtype=np.int64) - 1
    assert np.array_equal(vertices, v)  # float32 written with 9 significant digits round-trips
    assert np.array_equal(faces, f)
    read_v, read_f = read_obj(path)
    assert np.array_equal(read_v.astype(np.float32), v) and np.array_equal(read_f, f)


def test_obj_float64_keeps_full_precision(tmp_path):
    v = np.random.default_rng(1).normal(size=(5, 3))
    path = write_obj(tmp_path / "m.obj", v, np.array([[0, 1, 2], [2, 3, 4]]))
    assert np.array_equal(np.array(_records(path, "v"), dtype=np.float64), v)


@pytest.mark.parametrize("with_uvs,with_normals,pattern", [(True, False, "{0}/{0}"), (False, True, "{0}//{0}"), (True, True, "{0}/{0}/{0}")])
def test_obj_normals_and_uvs(tmp_path, with_uvs, with_normals, pattern):
    v, f = _mesh(vertices=6, faces=4)
    rng = np.random.default_rng(2)
    uvs = rng.random((6, 2)) if with_uvs else None
    normals = rng.normal(size=(6, 3)) if with_normals else None
    path = write_obj(tmp_path / "m.obj", v, f, normals=normals, uvs=uvs)
    expected_faces = [[pattern.format(i + 1) for i in row] for row in f]
    assert _records(path, "f") == expected_faces
    if with_uvs:
        assert np.array_equal(np.array(_records(path, "vt"), dtype=np.float64), uvs)
    if with_normals:
        assert np.array_equal(np.array(_records(path, "vn"), dtype=np.float64), normals)
    mesh = parse_obj(path)
    assert np.array_equal(mesh.polygons, f)
    assert np.array_equal(mesh.polygon_uvs, f if with_uvs else np.full_like(f, -1))


def test_parse_obj_forms_quads_negative_indices(tmp_path):
    text = """# a quad and a triangle in every corner syntax
mtllib x.mtl
o thing
v 0 0 0
v 1 0 0 0.5 0.5 0.5
v 1 1 0
v 0 1 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1 0
vn 0 0 1
g group
usemtl skin
s 1
f 1/1/1 2/2/1 3/3/1 4/4/1
f 2//1 3//1 4//1
v 2 2 2
f -5/1 -1/2 -3/3
f 5 1 2
"""
    path = tmp_path / "forms.obj"
    path.write_text(text)
    mesh = parse_obj(path)
    assert mesh.vertices.shape == (5, 3) and np.array_equal(mesh.vertices[1], [1, 0, 0])
    assert mesh.uvs.shape == (4, 2)
    assert mesh.polygons.tolist() == [[0, 1, 2, 3], [1, 2, 3, -1], [0, 4, 2, -1], [4, 0, 1, -1]]
    assert mesh.polygon_uvs.tolist() == [[0, 1, 2, 3], [-1, -1, -1, -1], [0, 1, 2, -1], [-1, -1, -1, -1]]
    vertices, faces = read_obj(path)
    # corner-major fan: every polygon's first triangle, then the quad's second
    assert faces.tolist() == [[0, 1, 2], [1, 2, 3], [0, 4, 2], [4, 0, 1], [0, 2, 3]]
    assert np.array_equal(vertices, mesh.vertices)


def test_triangulate_pentagon():
    assert triangulate(np.array([[0, 1, 2, 3, 4], [5, 6, 7, -1, -1]])).tolist() == [[0, 1, 2], [5, 6, 7], [0, 2, 3], [0, 3, 4]]


@pytest.mark.parametrize(
    "body,fragment",
    [("v 0 0\n", "line 1"), ("v 0 0 0\nf 1 2\n", "line 2"), ("v 0 0 0\nf 1 1 x\n", "line 2"), ("v 0 0 0\nf 1 1 2\n", "vertex 2"), ("v 0 0 0\nf 0 1 1\n", "line 2"), ("v 0 0 0\nf -2 1 1\n", "line 2")],
)
def test_malformed_obj_names_the_problem(tmp_path, body, fragment):
    path = tmp_path / "bad.obj"
    path.write_text(body)
    with pytest.raises(TrackerError, match=fragment):
        parse_obj(path)


def test_missing_obj_is_a_tracker_error(tmp_path):
    with pytest.raises(TrackerError, match="nothing.obj"):
        read_obj(tmp_path / "nothing.obj")


# -- PLY ---------------------------------------------------------------------------------------
def _read_ply(path: Path):
    """Independent reader for the PLY files write_ply makes: header parsed line by line."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply"
    fmt = header[1].split()[1]
    counts, props, current = {}, {"vertex": [], "face": []}, None
    for line in header[2:]:
        words = line.split()
        if words[0] == "element":
            current = words[1]
            counts[current] = int(words[2])
        elif words[0] == "property":
            props[current].append(words[1:])
    body = data[end:]
    nv, nf = counts["vertex"], counts["face"]
    assert props["face"] == [["list", "uchar", "int", "vertex_indices"]]
    if fmt == "ascii":
        rows = body.decode("ascii").split("\n")
        vertex_rows = np.array([r.split() for r in rows[:nv]], dtype=np.float64)
        face_rows = np.array([r.split() for r in rows[nv : nv + nf]], dtype=np.int64)
        assert (face_rows[:, 0] == 3).all()
        return vertex_rows, face_rows[:, 1:], [p[-1] for p in props["vertex"]]
    assert fmt == "binary_little_endian"
    types = {"float": "<f4", "uchar": "u1"}
    vertex_dtype = np.dtype([(p[1], types[p[0]]) for p in props["vertex"]])
    vertex_table = np.frombuffer(body, dtype=vertex_dtype, count=nv)
    face_table = np.frombuffer(body, dtype=np.dtype([("n", "u1"), ("i", "<i4", (3,))]), count=nf, offset=nv * vertex_dtype.itemsize)
    assert len(body) == nv * vertex_dtype.itemsize + nf * face_table.dtype.itemsize
    assert (face_table["n"] == 3).all()
    vertex_rows = np.stack([vertex_table[name].astype(np.float64) for name in vertex_dtype.names], axis=1)
    return vertex_rows, face_table["i"].astype(np.int64), list(vertex_dtype.names)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_with_colors(tmp_path, binary):
    v, f = _mesh(seed=3)
    colors = np.random.default_rng(4).integers(0, 256, size=(len(v), 3)).astype(np.uint8)
    path = write_ply(tmp_path / "m.ply", torch.from_numpy(v), f, colors=colors, binary=binary)
    vertex_rows, faces, names = _read_ply(path)
    assert names == ["x", "y", "z", "red", "green", "blue"]
    assert np.array_equal(vertex_rows[:, :3].astype(np.float32), v)
    assert np.array_equal(vertex_rows[:, 3:].astype(np.uint8), colors)
    assert np.array_equal(faces, f)


def test_ply_without_colors_and_float_colors(tmp_path):
    v, f = _mesh(seed=5)
    vertex_rows, faces, names = _read_ply(write_ply(tmp_path / "a.ply", v, torch.from_numpy(f)))
    assert names == ["x", "y", "z"] and np.array_equal(vertex_rows.astype(np.float32), v) and np.array_equal(faces, f)
    float_colors = np.tile([[0.0, 0.5, 1.0]], (len(v), 1))
    vertex_rows, _, _ = _read_ply(write_ply(tmp_path / "b.ply", v, f, colors=float_colors))
    assert (vertex_rows[:, 3:] == [0, 128, 255]).all()


def test_writers_reject_bad_shapes(tmp_path):
    v, f = _mesh()
    with pytest.raises(ValueError, match="vertices"):
        write_obj(tmp_path / "x.obj", v[:, :2], f)
    with pytest.raises(ValueError, match="indices"):
        write_ply(tmp_path / "x.ply", v, f + len(v))
    with pytest.raises(ValueError, match="colors"):
        write_ply(tmp_path / "x.ply", v, f, colors=np.zeros((3, 3)))
