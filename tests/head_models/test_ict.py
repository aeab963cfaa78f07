"""ICT-FaceKit head model against the shared npz (independent numpy reference), plus the converter
on a tiny generated upstream checkout."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tracker.errors import TrackerError
from tracker.files.mesh_io import triangulate
from tracker.head_models.__main__ import main
from tracker.head_models.base import REQUIRED_REGIONS
from tracker.head_models.ict import ICT, LEFT_JAWLINE, RIGHT_JAWLINE
from tracker.head_models.ict_convert import UPSTREAM_REGIONS, convert

# iBUG-68 left/right mirror partners
MIRROR = (
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48] + [59, 58, 57, 56, 55] + [64, 63, 62, 61, 60] + [67, 66, 65]
)


@pytest.fixture(scope="module")
def npz(ict_npz_path) -> dict[str, np.ndarray]:
    with np.load(ict_npz_path, allow_pickle=False) as data:  # string arrays are unicode, no pickle
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def model(ict_npz_path) -> ICT:
    return ICT.from_npz(ict_npz_path, contour="jawline")


@pytest.fixture(scope="module")
def calibrated(ict_npz_path) -> ICT:
    return ICT.from_npz(ict_npz_path)


@pytest.fixture(scope="module")
def multipie(ict_npz_path) -> ICT:
    return ICT.from_npz(ict_npz_path, contour="multipie")


@pytest.fixture(scope="module")
def neutral(model) -> np.ndarray:
    return model.neutral.double().numpy()


# -- the shared model --------------------------------------------------------------------------
@pytest.mark.shared
def test_shapes_groups_and_buffers(model, npz):
    assert model.name == "ict" and model.num_vertices == 26719
    assert model.faces.shape == (52220, 3) and model.faces.dtype == torch.long
    assert {k: g.size for k, g in model.param_groups.items()} == {"identity": 100, "expression": 53}
    assert model.expression_names == tuple(npz["expression_names"])
    assert model.expression_names[0] == "browDown_L" and model.expression_names[-1] == "noseSneer_R"
    for name in ("neutral", "identity_basis", "expression_basis"):
        assert getattr(model, name).dtype == torch.float32
    assert model.state_dict() == {}  # the model's data never ends up in checkpoints
    assert npz["expression_names"].dtype.kind == "U" and str(npz["units"]) == "centimeters"


@pytest.mark.shared
def test_full_mesh_faces_are_the_npz_triangulation(model, npz):
    assert np.array_equal(triangulate(npz["polygons"]), npz["triangles"])
    assert np.array_equal(model.faces.numpy(), npz["triangles"])


@pytest.mark.shared
def test_units_are_metres(neutral, model):
    skin = model.region_masks["upstream_face"].numpy()
    width = np.ptp(neutral[skin, 0])  # ear to ear
    assert 0.15 < width < 0.22
    lm = model.landmarks(torch.from_numpy(neutral)[None])[0].numpy()
    assert 0.025 < np.linalg.norm(lm[39] - lm[42]) < 0.045  # inner eye corners
    assert 0.09 < lm[8, 1] * -1 + lm[27, 1] < 0.14  # nasion to chin


@pytest.mark.shared
def test_decode_is_the_readme_formula(model, npz):
    rng = np.random.default_rng(0)
    identity = rng.normal(size=(3, 100))
    expression = rng.random((3, 53))
    reference = (
        npz["neutral"].astype(np.float64)
        + np.einsum("bk,kvc->bvc", identity, npz["identity_deltas"].astype(np.float64))
        + np.einsum("be,evc->bvc", expression, npz["expression_deltas"].astype(np.float64))
    ) * 0.01
    vertices = model.decode({"identity": torch.from_numpy(identity), "expression": torch.from_numpy(expression)})
    assert vertices.shape == (3, 26719, 3) and vertices.dtype == torch.float32
    assert np.abs(vertices.double().numpy() - reference).max() < 2e-6  # metres


@pytest.mark.shared
def test_left_out_groups_are_neutral(model, neutral):
    only_expression = model.decode({"expression": torch.zeros(2, 53)})
    assert np.array_equal(only_expression[1].double().numpy(), neutral)
    blink = torch.zeros(1, 53)
    blink[0, model.expression_names.index("eyeBlink_L")] = 1
    moved = (model.decode({"expression": blink})[0].double().numpy() - neutral)[:, 1]
    assert moved.min() < -0.004 and neutral[np.argmin(moved), 0] > 0  # _L is the subject's left (+x)


@pytest.mark.shared
def test_priors(model):
    params = model.sample_params(4000, generator=torch.Generator().manual_seed(0))
    assert params["identity"].shape == (4000, 100) and params["expression"].shape == (4000, 53)
    assert abs(params["identity"].mean()) < 0.02 and abs(params["identity"].std() - 1) < 0.02
    assert params["expression"].min() >= 0 and params["expression"].max() <= 1
    active = params["expression"] > 0
    assert abs(active.float().mean() - 0.2) < 0.01  # sparse: each shape on with probability 0.2
    assert abs(params["expression"][active].mean() - 0.5) < 0.02  # then uniform in [0, 1]
    neutral = model.neutral_params(2)
    assert (neutral["identity"] == 0).all() and (neutral["expression"] == 0).all()


@pytest.mark.shared
def test_landmarks_lie_on_the_face_and_are_mirror_symmetric(model, multipie, calibrated, neutral):
    vertices = torch.from_numpy(neutral)[None].repeat(2, 1, 1)
    face = model.region_masks["face"].numpy()
    skin = model.region_masks["narrow_face"].numpy()
    assert calibrated.contour == "calibrated" and skin[calibrated.landmark_indices.numpy()].all()  # lids, not eyeballs
    for contour, head in (("jawline", model), ("multipie", multipie), ("calibrated", calibrated)):
        lm = head.landmarks(vertices)
        assert lm.shape == (2, 68, 3)
        assert face[head.landmark_indices.numpy()].all()
        lm = lm[0].numpy()
        mirrored = lm[MIRROR] * [-1, 1, 1]
        assert np.abs(mirrored - lm).max() < 1e-3, contour
        assert lm[36, 0] < 0 < lm[45, 0]  # point 36 is the subject's right eye corner


@pytest.mark.shared
def test_jawline_contour_replaces_points_0_to_16(model, multipie, npz):
    jaw = model.landmark_indices.numpy()
    assert model.contour == "jawline" and multipie.contour == "multipie"
    assert tuple(jaw[:8]) == RIGHT_JAWLINE and tuple(jaw[9:17]) == LEFT_JAWLINE
    assert np.array_equal(jaw[17:], npz["landmarks68"][17:]) and jaw[8] == npz["landmarks68"][8]
    assert np.array_equal(multipie.landmark_indices.numpy(), npz["landmarks68"])
    with pytest.raises(ValueError, match="contour"):
        ICT(npz, contour="dynamic")


@pytest.mark.shared
def test_regions(model, neutral, npz):
    masks = {k: m.numpy() for k, m in model.region_masks.items()}
    assert set(REQUIRED_REGIONS) <= set(masks)
    assert set(npz["region_names"]) - {"face"} <= set(masks)
    for region, mask in masks.items():
        assert mask.shape == (26719,) and mask.dtype == bool and mask.any(), region
    # upstream's geometry groups partition the mesh; narrow_face lies inside face
    groups = [masks["upstream_face" if name == "face" else name] for name in UPSTREAM_REGIONS if name != "narrow_face"]
    assert (np.sum(groups, axis=0) == 1).all()
    assert not (masks["narrow_face"] & ~masks["upstream_face"]).any()
    # N2FNet's face mask: the face proper and the eyeballs, no ears, no neck
    assert np.array_equal(masks["face"], masks["narrow_face"] | masks["eyeball_left"] | masks["eyeball_right"])
    derived = [masks[name] for name in ("eyes", "nose", "mouth", "ears")]
    assert (np.sum(derived, axis=0) <= 1).all()
    lm = npz["landmarks68"]
    assert masks["eyes"][lm[36:48]].all() and (masks["eyes"] & masks["eyeball_left"]).sum() == masks["eyeball_left"].sum()
    assert masks["nose"][lm[[28, 29, 30, 31, 33, 35]]].all() and masks["mouth"][lm[48:68]].all()
    ears = masks["ears"]
    assert not (ears & (masks["narrow_face"] | ~masks["upstream_face"])).any()
    left, right = ears & (neutral[:, 0] > 0), ears & (neutral[:, 0] < 0)
    assert left.sum() == right.sum() > 500  # two mirror-image auricles
    assert np.abs(neutral[ears, 0]).min() > 0.06
    assert neutral[lm[30], 1] - 0.04 < neutral[ears, 1].mean() < neutral[lm[27], 1]  # ear height: nose to eyes
    inside = (model.region_masks["eyes"] | model.region_masks["nose"])[model.faces].all(1)  # triangles of the two regions
    assert 0 < int(inside.sum()) < len(model.faces)


@pytest.mark.shared
def test_render_faces_leave_out_see_through_layers(model):
    solid = model.render_faces
    assert solid.shape == (48836, 3) and solid.dtype == torch.long
    layers = torch.zeros(model.num_vertices, dtype=torch.bool)
    for part in ("lacrimal_fluid", "eye_blend", "eye_occlusion", "eyelashes"):
        layers |= model.region_masks[f"{part}_left"] | model.region_masks[f"{part}_right"]
    assert not layers[solid].any()
    assert len(solid) + layers[model.faces].any(dim=1).sum() == len(model.faces)


@pytest.mark.shared
def test_gradients_are_the_bases(model):
    identity = torch.zeros(1, 100, requires_grad=True)
    expression = torch.full((1, 53), 0.2, requires_grad=True)
    weights = torch.randn(1, 26719, 3, generator=torch.Generator().manual_seed(1))
    (model.decode({"identity": identity, "expression": expression}) * weights).sum().backward()
    assert torch.allclose(identity.grad[0], model.identity_basis @ weights.flatten(), atol=1e-5)
    assert torch.allclose(expression.grad[0], model.expression_basis @ weights.flatten(), atol=1e-5)


@pytest.mark.shared
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda(model):
    gpu = copy.deepcopy(model).to("cuda")
    assert all(b.device.type == "cuda" for b in gpu.buffers())
    params = model.sample_params(2, generator=torch.Generator().manual_seed(2))
    on_gpu = gpu.decode({k: v.cuda() for k, v in params.items()})
    assert torch.allclose(on_gpu.cpu(), model.decode(params), atol=1e-6)
    assert gpu.landmarks(on_gpu).device.type == "cuda" and gpu.region_masks["mouth"].device.type == "cuda"


# -- errors a user can cause ------------------------------------------------------------------
def _assert_explains_fix(message: str) -> None:
    for fragment in ("N2F_ICT_MODEL", "N2F_SHARED_DIR", "github.com/ICT-VGL/ICT-FaceKit", "python -m tracker.head_models ict-convert"):
        assert fragment in message


def test_missing_file(tmp_path):
    with pytest.raises(TrackerError) as err:
        ICT.from_npz(tmp_path / "absent.npz")
    assert "not found" in str(err.value) and str(tmp_path / "absent.npz") in str(err.value)
    _assert_explains_fix(str(err.value))


def test_default_location_from_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("N2F_ICT_MODEL", raising=False)
    monkeypatch.setenv("N2F_SHARED_DIR", str(tmp_path))
    with pytest.raises(TrackerError, match="ict-facekit/ict_face_model.npz"):
        ICT.from_npz()
    monkeypatch.setattr("tracker.head_models.ict.default_ict_model_path", lambda: None)
    with pytest.raises(TrackerError, match="not configured") as err:
        ICT.from_npz()
    _assert_explains_fix(str(err.value))


@pytest.mark.shared
def test_broken_files(tmp_path, npz):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(TrackerError, match="not a readable npz") as err:
        ICT.from_npz(garbage)
    _assert_explains_fix(str(err.value))

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**npz, "expression_names": np.array(list(npz["expression_names"]), dtype=object)})
    with pytest.raises(TrackerError, match="not a readable npz"):
        ICT.from_npz(pickled)

    cases = {
        "missing": ({k: v for k, v in npz.items() if k != "expression_deltas"}, "missing arrays"),
        "shape": ({**npz, "identity_deltas": npz["identity_deltas"][:, :100]}, "identity_deltas"),
        "index": ({**npz, "landmarks68": npz["landmarks68"] + 30000}, "landmarks68"),
        "units": ({**npz, "units": np.array("furlongs")}, "units"),
        "regions": ({**npz, "region_names": np.array([f"r{i}" for i in range(18)])}, "missing"),
    }
    for name, (arrays, fragment) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(TrackerError, match="malformed") as err:
            ICT.from_npz(path)
        assert fragment in str(err.value), name


# -- the converter on a tiny generated checkout ------------------------------------------------
NEUTRAL = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0.5, 0.25], [0.5, 2, -0.5], [3, 3, 1], [-1, 2, 0.75]], dtype=np.float64)
UVS = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]])
POLYGONS = [[0, 1, 2, 3], [1, 4, 2], [3, 2, 5, 7], [4, 6, 5]]
POLYGON_UVS = [[0, 1, 2, 3], [1, 4, 2], [3, 2, 4, 0], [4, 0, 1]]
TINY_REGIONS = {"face": (0, 6), "narrow_face": (0, 4), "eyeball_left": (6, 7), "eyeball_right": (7, 8), "teeth": (8, 8)}
EXPRESSIONS = [f"shape{j:02d}_L" for j in range(53)]
LANDMARKS = [i % 8 for i in range(68)]


def _write_obj(path: Path, vertices: np.ndarray) -> None:
    lines = ["mtllib ICTFaceModelMaterial.mtl"] + [f"v {x!r} {y!r} {z!r}" for x, y, z in vertices.tolist()]
    lines += [f"vt {u!r} {v!r}" for u, v in UVS.tolist()] + ["usemtl face"]
    lines += ["f " + " ".join(f"{a + 1}/{t + 1}" for a, t in zip(p, uv)) for p, uv in zip(POLYGONS, POLYGON_UVS)]
    path.write_text("\n".join(lines) + "\n")


def _offsets(count: int, seed: int) -> np.ndarray:
    """(count, 8, 3) offsets on a 1/64 grid: exact in float16, float32 and decimal text."""
    return np.random.default_rng(seed).integers(-64, 65, size=(count, len(NEUTRAL), 3)) / 64.0


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ICT-FaceKit")
    folder = root / "FaceXModel"
    folder.mkdir()
    _write_obj(folder / "generic_neutral_mesh.obj", NEUTRAL)
    for i, offset in enumerate(_offsets(100, seed=1)):
        _write_obj(folder / f"identity{i:03d}.obj", NEUTRAL + offset)
    for name, offset in zip(EXPRESSIONS, _offsets(53, seed=2)):
        _write_obj(folder / f"{name}.obj", NEUTRAL + offset)
    (folder / "vertex_indices.json").write_text(json.dumps({"expressions": EXPRESSIONS, "idx_to_landmark_verts": LANDMARKS}))
    return root


def test_converter_round_trip(checkout, tmp_path):
    out = convert(checkout, tmp_path / "sub" / "tiny.npz", regions=TINY_REGIONS)
    with np.load(out, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    expected_dtypes = {
        "neutral": np.float32, "polygons": np.int32, "triangles": np.int32, "uv": np.float32, "polygon_uv": np.int32,
        "identity_deltas": np.float16, "expression_deltas": np.float16, "landmarks68": np.int32, "region_ranges": np.int32,
    }
    for key, dtype in expected_dtypes.items():
        assert arrays[key].dtype == dtype, key
    assert np.array_equal(arrays["neutral"], NEUTRAL)
    assert arrays["polygons"].tolist() == [p + [-1] * (4 - len(p)) for p in POLYGONS]
    assert arrays["polygon_uv"].tolist() == [p + [-1] * (4 - len(p)) for p in POLYGON_UVS]
    assert arrays["triangles"].tolist() == [[0, 1, 2], [1, 4, 2], [3, 2, 5], [4, 6, 5], [0, 2, 3], [3, 5, 7]]
    assert np.array_equal(arrays["uv"], UVS)
    assert np.array_equal(arrays["identity_deltas"], _offsets(100, seed=1))
    assert np.array_equal(arrays["expression_deltas"], _offsets(53, seed=2))
    assert arrays["identity_names"].tolist() == [f"identity{i:03d}" for i in range(100)]
    assert arrays["expression_names"].tolist() == EXPRESSIONS and arrays["expression_names"].dtype.kind == "U"
    assert arrays["landmarks68"].tolist() == LANDMARKS
    assert arrays["region_names"].tolist() == list(TINY_REGIONS) and arrays["region_ranges"].tolist() == [list(r) for r in TINY_REGIONS.values()]
    assert str(arrays["units"]) == "centimeters"

    tiny = ICT.from_npz(out, contour="multipie")
    rng = np.random.default_rng(3)
    identity, expression = rng.normal(size=(2, 100)), rng.random((2, 53))
    reference = (NEUTRAL + np.einsum("bk,kvc->bvc", identity, _offsets(100, 1)) + np.einsum("be,evc->bvc", expression, _offsets(53, 2))) / 100
    decoded = tiny.decode({"identity": torch.from_numpy(identity), "expression": torch.from_numpy(expression)})
    assert np.abs(decoded.double().numpy() - reference).max() < 1e-6
    assert tiny.expression_names == tuple(EXPRESSIONS) and tiny.landmarks(decoded).shape == (2, 68, 3)
    assert set(REQUIRED_REGIONS) <= set(tiny.region_masks)
    with pytest.raises(TrackerError, match="contour='multipie'"):
        ICT.from_npz(out)  # upstream's jawline indices do not fit this mesh


def test_converter_accepts_the_model_folder(checkout, tmp_path):
    out = convert(checkout / "FaceXModel", tmp_path / "tiny.npz", regions=TINY_REGIONS)
    assert out.is_file()


def _broken_copy(checkout: Path, tmp_path: Path) -> Path:
    copy_root = tmp_path / "broken"
    shutil.copytree(checkout, copy_root)
    return copy_root / "FaceXModel"


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (lambda f: (f / "shape07_L.obj").unlink(), "shape07_L.obj"),
        (lambda f: (f / "identity000.obj").unlink(), "identity000.obj"),
        (lambda f: (f / "vertex_indices.json").unlink(), "vertex_indices.json"),
        (lambda f: (f / "vertex_indices.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "vertex_indices.json").write_text(json.dumps({"expressions": EXPRESSIONS})), "idx_to_landmark_verts"),
        (lambda f: (f / "identity042.obj").write_text("v 0 0 0\n"), "identity042.obj has 1 vertices"),
        (lambda f: (f / "generic_neutral_mesh.obj").unlink(), "not an ICT-FaceKit checkout"),
    ],
)
def test_converter_explains_broken_checkouts(checkout, tmp_path, damage, fragment):
    folder = _broken_copy(checkout, tmp_path)
    damage(folder)
    with pytest.raises(TrackerError, match="ICT-VGL/ICT-FaceKit|inconsistent|not valid JSON") as err:
        convert(folder.parent, tmp_path / "out.npz", regions=TINY_REGIONS)
    assert fragment in str(err.value)


def test_converter_cli(checkout, tmp_path, capsys):
    assert main(["ict-convert", str(tmp_path / "nowhere"), str(tmp_path / "out.npz")]) == 2
    assert "not an ICT-FaceKit checkout" in capsys.readouterr().err
    assert main(["ict-convert", str(checkout), str(tmp_path / "out.npz")]) == 2  # upstream's region table needs 26,719 vertices
    assert "region ranges" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()
