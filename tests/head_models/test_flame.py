"""FLAME head model: forward pass against smplx's independent FLAME, landmarks (DECA's embedding),
eyelids, file loading (2020 chumpy pkl, 2023 pkl, npz), the safe unpickler and error messages."""

from __future__ import annotations

import importlib.util
import io
import math
import os
import pickle
import pickletools
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from tests.flame_factory import (
    MODEL_FILE,
    flame_arrays,
    make_flame_dir,
    make_smplx_dir,
    shared_aux_dir,
    write_chumpy_pickle,
    write_generated_aux,
)
from tracker.errors import TrackerError
from tracker.geometry.camera import flip_matrix
from tracker.geometry.rotations import (
    euler_to_matrix,
    euler_to_rotation_6d,
    identity_6d,
    rotation_6d_to_axis_angle,
)
from tracker.head_models.base import REQUIRED_REGIONS, RotationPrior
from tracker.head_models.flame import FLAME, FlameFiles
from tracker.head_models.safe_pickle import load_npy_object, load_pickle, to_numpy

VARIANTS = ("2020", "2023", "npz")
BATCH = 4


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flame_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flame")
    return {variant: make_flame_dir(root, variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def models(flame_dirs):
    """(variant, dtype) -> FLAME, loaded once."""
    cache: dict = {}

    def get(variant: str = "2023", dtype: torch.dtype = torch.float32) -> FLAME:
        if (variant, dtype) not in cache:
            cache[variant, dtype] = FLAME.from_dir(flame_dirs[variant], dtype=dtype)
        return cache[variant, dtype]

    return get


@pytest.fixture(scope="module")
def smplx_flame(flame_dirs, tmp_path_factory):
    """(dtype, layer) -> smplx's FLAME (axis-angle) or FLAMELayer (rotation matrices) on the same arrays."""
    smplx = pytest.importorskip("smplx")
    emb = load_npy_object(flame_dirs["2023"] / "landmark_embedding.npy")
    folder = make_smplx_dir(
        tmp_path_factory.mktemp("smplx"),
        to_numpy(emb["static_lmk_faces_idx"]), to_numpy(emb["static_lmk_bary_coords"]),
        to_numpy(emb["dynamic_lmk_faces_idx"]), to_numpy(emb["dynamic_lmk_bary_coords"]),
    )
    cache: dict = {}

    def get(dtype: torch.dtype, layer: bool = False) -> torch.nn.Module:
        if (dtype, layer) not in cache:
            cls = smplx.FLAMELayer if layer else smplx.FLAME
            cache[dtype, layer] = cls(model_path=str(folder), num_betas=300, num_expression_coeffs=100,
                                      batch_size=BATCH, dtype=dtype)
        return cache[dtype, layer]

    return get


def random_params(model: FLAME, batch: int = BATCH, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Prior samples plus non-trivial global, neck and eye rotations and a translation."""
    g = torch.Generator().manual_seed(seed)
    params = model.sample_params(batch, generator=g, device="cpu")
    wide = RotationPrior(std_deg=(20.0, 25.0, 10.0))
    for key in ("global", "neck", "eyes"):
        params[key] = wide.sample(batch, model.param_groups[key].size, generator=g)
    params["translation"] = 0.05 * torch.randn(batch, 3, generator=g)
    return {k: v.to(dtype) for k, v in params.items()}


def smplx_vertices(reference, params: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """smplx FLAME (axis-angle derived from our 6D in float64) -> (vertices (B, V, 3), static landmarks (B, 51, 3))."""
    def aa(d6: torch.Tensor) -> torch.Tensor:
        return rotation_6d_to_axis_angle(d6.double()).to(dtype)

    out = reference(
        betas=params["shape"].to(dtype), expression=params["expression"].to(dtype),
        global_orient=aa(params["global"]), neck_pose=aa(params["neck"]), jaw_pose=aa(params["jaw"]),
        leye_pose=aa(params["eyes"][:, :6]), reye_pose=aa(params["eyes"][:, 6:]), transl=params["translation"].to(dtype),
    )
    return out.vertices.detach(), out.joints[:, -51:].detach()


def barycentric(vertices: np.ndarray, faces: np.ndarray, faces_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Independent numpy reference: (V, 3), (F, 3), (L,), (L, 3) -> (L, 3)."""
    return np.stack([sum(bary[l, k] * vertices[faces[faces_idx[l], k]] for k in range(3)) for l in range(len(faces_idx))])


def deca_contour_row(rotation: np.ndarray) -> int:
    """DECA's FLAME._find_dynamic_lmk_idx_and_bcoords for one (3, 3) rotation, in plain numpy."""
    yaw = math.atan2(-rotation[2, 0], math.sqrt(rotation[0, 0] ** 2 + rotation[1, 0] ** 2))
    angle = int(np.round(min(yaw * 180.0 / np.pi, 39)))
    if angle >= 0:
        return angle
    return 78 if angle < -39 else 39 - angle


# -- (1) forward pass vs smplx ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_matches_smplx(models, smplx_flame, variant, dtype):
    model = models(variant, dtype)
    params = random_params(model, dtype=dtype)
    params["eyelids"] = torch.zeros(BATCH, 2, dtype=dtype)
    ours = model.decode(params)
    reference, _ = smplx_vertices(smplx_flame(dtype), params, dtype)
    diff = (ours - reference).abs().max().item()
    print(f"\nFLAME {variant} {dtype}: max |ours - smplx| = {diff:.3e} m "
          f"(largest vertex displacement {(ours - model.v_template).abs().max().item():.3f} m)")
    assert ours.dtype == dtype and ours.shape == (BATCH, 5023, 3)
    assert diff < 1e-6


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_matches_smplx_layer_exactly_in_float64(models, smplx_flame, variant):
    """smplx's FLAMELayer takes rotation matrices: no axis-angle conversion, no Rodrigues epsilon."""
    model = models(variant, torch.float64)
    params = random_params(model, dtype=torch.float64)
    params["eyelids"] = torch.zeros(BATCH, 2, dtype=torch.float64)
    rotations = model.joint_rotations(model.complete_params(params))[:, :, None]  # (B, 5, 1, 3, 3)
    out = smplx_flame(torch.float64, layer=True)(
        betas=params["shape"], expression=params["expression"], global_orient=rotations[:, 0],
        neck_pose=rotations[:, 1], jaw_pose=rotations[:, 2], leye_pose=rotations[:, 3], reye_pose=rotations[:, 4],
        transl=params["translation"],
    )
    diff = (model.decode(params) - out.vertices).abs().max().item()
    print(f"\nFLAME {variant} float64 vs smplx FLAMELayer (rotation matrices): {diff:.3e} m")
    assert diff < 1e-12


def test_neutral_params_give_the_template(models):
    model = models()
    vertices = model.decode(model.neutral_params(2))
    torch.testing.assert_close(vertices, model.v_template.expand(2, -1, -1), atol=1e-7, rtol=0)


def test_param_groups_and_priors(models):
    model = models()
    assert list(model.param_groups) == ["shape", "expression", "jaw", "eyelids", "global", "neck", "eyes", "translation"]
    assert [g.size for g in model.param_groups.values()] == [300, 100, 6, 2, 6, 6, 12, 3]
    assert model.param_groups["shape"].prior.std == 0.8 and model.param_groups["expression"].prior.std == 0.5
    assert model.param_groups["eyelids"].prior.std == 0.3
    assert model.param_groups["jaw"].prior.std_deg == (15.0, 5.0, 5.0)
    samples = model.sample_params(3, generator=torch.Generator().manual_seed(0))
    assert {k: v.shape[1] for k, v in samples.items()} == {k: g.size for k, g in model.param_groups.items()}


def test_truncated_shape_and_expression_spaces(flame_dirs, models):
    full = models()
    small = FLAME.from_dir(flame_dirs["2023"], n_shape=100, n_expression=50)
    params = random_params(small)
    padded = dict(params, shape=torch.cat([params["shape"], torch.zeros(BATCH, 200)], 1),
                  expression=torch.cat([params["expression"], torch.zeros(BATCH, 50)], 1))
    torch.testing.assert_close(small.decode(params), full.decode(padded))


# -- (2) landmarks -------------------------------------------------------------------------------
def test_static_landmarks_match_barycentric_and_smplx(models, smplx_flame, flame_dirs):
    model = models("2023", torch.float64)
    params = random_params(model, dtype=torch.float64)
    params["eyelids"] = torch.zeros(BATCH, 2, dtype=torch.float64)
    vertices = model.decode(params)
    ours = model.landmarks(vertices, params)[:, 17:].numpy()
    emb = load_npy_object(flame_dirs["2023"] / "landmark_embedding.npy")
    faces = flame_arrays()["f"].astype(np.int64)
    for b in range(BATCH):
        expected = barycentric(vertices[b].numpy(), faces, to_numpy(emb["static_lmk_faces_idx"]),
                               to_numpy(emb["static_lmk_bary_coords"]))
        np.testing.assert_allclose(ours[b], expected, atol=1e-12)
    _, smplx_static = smplx_vertices(smplx_flame(torch.float64), params, torch.float64)
    np.testing.assert_allclose(ours, smplx_static.numpy(), atol=1e-7)  # smplx: 1e-8 rad Rodrigues epsilon


@pytest.mark.parametrize("yaw_deg, row", [(0.0, 0), (30.0, 30), (-30.0, 69)])
def test_contour_follows_head_yaw(models, flame_dirs, yaw_deg, row):
    model = models("2023", torch.float64)
    yaw = euler_to_rotation_6d(torch.tensor([[0.0, math.radians(yaw_deg), 0.0]], dtype=torch.float64))
    params = {"global": yaw}  # neck left out: identity
    pose = random_params(model, 1, seed=3, dtype=torch.float64) | params | {"neck": identity_6d(1, dtype=torch.float64)}
    vertices = model.decode(pose)
    assert deca_contour_row(euler_to_matrix(torch.tensor([0.0, math.radians(yaw_deg), 0.0])).numpy()) == row
    emb = load_npy_object(flame_dirs["2023"] / "landmark_embedding.npy")
    expected = barycentric(vertices[0].numpy(), flame_arrays()["f"].astype(np.int64),
                           to_numpy(emb["dynamic_lmk_faces_idx"])[row], to_numpy(emb["dynamic_lmk_bary_coords"])[row])
    np.testing.assert_allclose(model.landmarks(vertices, params)[0, :17].numpy(), expected, atol=1e-6)
    # the same yaw given as the camera's rotation instead of the head's (R = FLIP Ry FLIP)
    flip = flip_matrix(dtype=torch.float64)
    view = flip @ euler_to_matrix(torch.tensor([[0.0, math.radians(yaw_deg), 0.0]], dtype=torch.float64)) @ flip
    torch.testing.assert_close(model.landmarks(vertices, None, view), model.landmarks(vertices, params))


def test_contour_rows_match_deca_formula_for_random_poses(models):
    model = models()
    g = torch.Generator().manual_seed(7)
    batch = 64

    def euler(*std_deg: float) -> torch.Tensor:
        return torch.randn(batch, 3, generator=g) * torch.tensor(std_deg) * math.pi / 180

    params = {"global": euler_to_rotation_6d(euler(10.0, 40.0, 10.0)),
              "neck": euler_to_rotation_6d(euler(10.0, 20.0, 5.0))}
    view = euler_to_matrix(euler(10.0, 30.0, 5.0))
    flip = flip_matrix()
    rel = flip @ view @ flip @ matrix_from_6d_rows(params["global"]) @ matrix_from_6d_rows(params["neck"])
    torch.testing.assert_close(model.head_rotation(batch, params, view), rel)
    rows = [deca_contour_row(r) for r in rel.double().numpy()]
    assert len(set(rows)) > 20  # the poses cover many contour rows, both signs
    vertices = model.v_template.expand(batch, -1, -1)
    expected = torch.stack([model.dynamic_lmk_faces_idx[r] for r in rows])
    got = model.landmarks(vertices, params, view)[:, :17]
    bary = torch.stack([model.dynamic_lmk_bary_coords[r] for r in rows])
    corners = vertices[0][model.faces[expected]]  # (B, 17, 3, 3)
    torch.testing.assert_close(got, (corners * bary[..., None]).sum(-2))


def matrix_from_6d_rows(d6: torch.Tensor) -> torch.Tensor:
    """(B, 6) exact rotation rows -> (B, 3, 3), third row = cross product (no Gram-Schmidt)."""
    r1, r2 = d6[:, :3], d6[:, 3:]
    return torch.stack([r1, r2, torch.cross(r1, r2, dim=-1)], dim=1)


def test_mediapipe_landmarks(models, flame_dirs):
    model = models()
    vertices = model.decode(random_params(model))
    data = np.load(flame_dirs["2023"] / "mediapipe_landmark_embedding.npz")
    ours = model.mediapipe_landmarks(vertices.double())
    expected = barycentric(vertices[1].double().numpy(), flame_arrays()["f"].astype(np.int64),
                           data["lmk_face_idx"].astype(np.int64), data["lmk_b_coords"])
    assert ours.shape == (BATCH, 105, 3)
    np.testing.assert_allclose(ours[1].numpy(), expected, atol=1e-6)
    assert model.mediapipe_indices.tolist() == data["landmark_indices"].tolist()


def test_region_masks(models, flame_dirs):
    model = models()
    masks = model.region_masks
    raw = load_pickle(flame_dirs["2023"] / "FLAME_masks.pkl")
    assert set(REQUIRED_REGIONS) <= set(masks) and set(raw) <= set(masks)
    assert all(m.shape == (5023,) and m.dtype == torch.bool for m in masks.values())
    assert torch.equal(masks["ears"], masks["left_ear"] | masks["right_ear"])
    assert torch.equal(masks["eyes"], masks["eye_region"]) and torch.equal(masks["mouth"], masks["lips"])
    assert sorted(torch.nonzero(masks["nose"]).flatten().tolist()) == sorted(np.asarray(raw["nose"]).tolist())


# -- (3) eyelids -----------------------------------------------------------------------------------
def test_eyelids_are_added_after_skinning(models, smplx_flame, flame_dirs):
    model = models("2023", torch.float64)
    params = random_params(model, dtype=torch.float64)
    params["global"] = euler_to_rotation_6d(torch.tensor([[0.3, 1.0, 0.2]], dtype=torch.float64)).expand(BATCH, 6)
    params["eyelids"] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, -0.4], [1.5, 1.5]], dtype=torch.float64)
    reference, _ = smplx_vertices(smplx_flame(torch.float64), params, torch.float64)
    left = np.load(flame_dirs["2023"] / "l_eyelid.npy")
    right = np.load(flame_dirs["2023"] / "r_eyelid.npy")
    weights = params["eyelids"][:, :, None, None]
    offsets = weights[:, 0] * torch.from_numpy(left) + weights[:, 1] * torch.from_numpy(right)
    torch.testing.assert_close(model.decode(params), reference + offsets, atol=1e-7, rtol=0)


def test_eyelid_group_only_with_eyelid_files(flame_dirs, tmp_path):
    for name in ("generic_model.pkl", "landmark_embedding.npy", "FLAME_masks.pkl"):
        os.symlink(flame_dirs["2020"] / name, tmp_path / name)
    model = FLAME.from_dir(tmp_path)
    assert "eyelids" not in model.param_groups and not model.has_mediapipe
    assert model.decode(random_params(model)).shape == (BATCH, 5023, 3)
    with pytest.raises(TrackerError, match="mediapipe_landmark_embedding.npz"):
        model.mediapipe_landmarks(model.v_template[None])


# -- (4) safe unpickler --------------------------------------------------------------------------
class _Payload:
    """Pickles as a call that would create ``marker``."""

    def __init__(self, call, marker: Path) -> None:
        self.call, self.marker = call, marker

    def __reduce__(self):
        if self.call is eval:
            return eval, (f"open({str(self.marker)!r}, 'w').close()",)
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("call, name", [(os.system, "system"), (eval, "builtins.eval")])
def test_unpickler_refuses_code(tmp_path, call, name):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"v_template": _Payload(call, marker)})
    with pytest.raises(pickle.UnpicklingError, match=name):
        load_pickle(io.BytesIO(payload))
    # the same payload as an object .npy and as a FLAME model file
    npy = tmp_path / "evil.npy"
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(payload)
    with pytest.raises(pickle.UnpicklingError, match=name):
        load_npy_object(npy)
    (tmp_path / "generic_model.pkl").write_bytes(payload)
    with pytest.raises(TrackerError, match="refusing to unpickle"):
        FLAME.from_dir(tmp_path)
    assert not marker.exists()


class _StoragePayload:
    """Pickles as torch.storage._load_from_bytes(bytes) around a code-running pickle."""

    def __init__(self, inner: bytes) -> None:
        self.inner = inner

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.inner,)


def test_torch_storage_bytes_go_through_weights_only_load(tmp_path):
    marker = tmp_path / "pwned"
    outer = pickle.dumps(_StoragePayload(pickle.dumps(_Payload(os.system, marker), protocol=2)))
    assert b"_load_from_bytes" in outer
    with pytest.raises(pickle.UnpicklingError):
        load_pickle(io.BytesIO(outer))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 4])
def test_chumpy_objects_in_every_protocol(tmp_path, protocol):
    """Protocols 0/1 go through copyreg._reconstructor, 2+ through NEWOBJ; Python 2 names included."""
    arrays = {"shapedirs": np.arange(12.0).reshape(2, 3, 2), "f": np.array([[0, 1, 2]], dtype=np.uint32)}
    write_chumpy_pickle(arrays, tmp_path / "model.pkl", protocol)
    loaded = load_pickle(tmp_path / "model.pkl")
    assert "chumpy" not in sys.modules
    for key, value in arrays.items():
        np.testing.assert_array_equal(to_numpy(loaded[key]), value)


def test_allow_list_knows_old_and_new_module_names():
    """scipy < 1.8 (scipy.sparse.csc) and numpy 2 (numpy._core) spellings load too."""
    matrix = sp.csc_matrix(np.eye(3))
    payload = pickle.dumps({"J": matrix, "v": np.ones(3)}, protocol=2)
    for old, new in ((b"scipy.sparse._csc", b"scipy.sparse.csc"), (b"numpy.core.multiarray", b"numpy._core.multiarray")):
        assert old in payload
        payload = payload.replace(old, new)
    loaded = load_pickle(io.BytesIO(payload))
    np.testing.assert_array_equal(to_numpy(loaded["J"]), np.eye(3))
    np.testing.assert_array_equal(loaded["v"], np.ones(3))


# -- (5) chumpy without chumpy ---------------------------------------------------------------------
def test_chumpy_2020_pickle_loads_without_chumpy(flame_dirs, models):
    assert importlib.util.find_spec("chumpy") is None, "chumpy is installed: this test must run without it"
    path = flame_dirs["2020"] / MODEL_FILE["2020"]
    globals_named = {arg for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"}
    assert "chumpy.ch Ch" in globals_named
    model_2020 = models("2020")
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    for name, buffer in models("2023").named_buffers():
        torch.testing.assert_close(getattr(model_2020, name), buffer, rtol=0, atol=0, msg=name)


# -- (6) errors ------------------------------------------------------------------------------------
def test_missing_files_give_one_error_with_sources(tmp_path):
    with pytest.raises(TrackerError) as info:
        FLAME.from_dir(tmp_path)
    message = str(info.value)
    for text in ("generic_model.pkl", "flame2023.pkl", "landmark_embedding.npy", "FLAME_masks.pkl",
                 "https://flame.is.tue.mpg.de", "github.com/yfeng95/DECA", "CC-BY-4.0"):
        assert text in message, text


def test_half_an_eyelid_pair_is_reported(flame_dirs, tmp_path):
    for path in flame_dirs["2023"].iterdir():
        if path.name != "r_eyelid.npy":
            os.symlink(path, tmp_path / path.name)
    with pytest.raises(TrackerError, match=r"(?s)r_eyelid\.npy: file not found.*Pixel3DMM"):
        FLAME.from_dir(tmp_path)


def test_wrong_shapes_are_listed_per_file(tmp_path):
    arrays = {k: (v.toarray() if hasattr(v, "toarray") else v)
              for k, v in flame_arrays().items() if not isinstance(v, str)}
    arrays["v_template"] = arrays["v_template"][:5000]
    arrays["shapedirs"] = arrays["shapedirs"][..., :350]
    np.savez(tmp_path / "flame.npz", **arrays)
    write_generated_aux(tmp_path)
    emb = load_npy_object(tmp_path / "landmark_embedding.npy")
    emb["static_lmk_bary_coords"] = emb["static_lmk_bary_coords"][:50]
    np.save(tmp_path / "landmark_embedding.npy", np.array(emb, dtype=object), allow_pickle=True)
    np.save(tmp_path / "l_eyelid.npy", np.zeros((5023, 2)))
    with pytest.raises(TrackerError) as info:
        FLAME.from_dir(tmp_path)
    message = str(info.value)
    assert "'v_template' has shape (5000, 3), expected (5023, 3)" in message
    assert "'shapedirs' has 350 components, 400 needed" in message
    assert "'static_lmk_bary_coords' has shape (50, 3)" in message and "DECA" in message
    assert "l_eyelid.npy" in message and "FLAME_masks.pkl" not in message


def test_invalid_component_counts(flame_dirs):
    with pytest.raises(TrackerError, match="n_shape"):
        FLAME.from_dir(flame_dirs["2023"], n_shape=301)


def test_files_from_dir_prefers_standard_names(flame_dirs):
    files = FlameFiles.from_dir(flame_dirs["2020"])
    assert files.model.name == "generic_model.pkl" and files.eyelids is not None
    assert files.mediapipe_embedding is not None and files.mediapipe_embedding.name == "mediapipe_landmark_embedding.npz"


# -- (7) the real auxiliary files --------------------------------------------------------------------
@pytest.mark.shared
def test_real_aux_files_load(shared_path):
    aux = shared_path / "flame-aux"
    if not (aux / "landmark_embedding.npy").is_file():
        pytest.skip(f"{aux} has no FLAME aux files")
    emb = load_npy_object(aux / "landmark_embedding.npy")
    assert isinstance(emb["dynamic_lmk_faces_idx"], torch.Tensor)  # real torch tensors inside the pickle
    shapes = {k: to_numpy(v).shape for k, v in emb.items()}
    assert shapes["static_lmk_faces_idx"] == (51,) and shapes["dynamic_lmk_bary_coords"] == (79, 17, 3)
    masks = load_pickle(aux / "FLAME_masks.pkl")
    assert {"face", "eye_region", "nose", "lips", "left_ear", "right_ear"} <= set(masks)
    assert max(int(np.max(v)) for v in masks.values()) < 5023
    mediapipe = np.load(aux / "mediapipe_landmark_embedding.npz", allow_pickle=False)
    assert mediapipe["lmk_face_idx"].shape == (105,) and mediapipe["lmk_face_idx"].max() < 9976
    assert load_npy_object(aux / "l_eyelid.npy").shape == (5023, 3)
    files = FlameFiles.from_dir(aux)
    with pytest.raises(TrackerError) as info:  # everything but the model itself
        FLAME.from_files(files)
    message = str(info.value)
    assert "generic_model.pkl: file not found" in message
    assert "landmark_embedding.npy:" not in message and "FLAME_masks.pkl:" not in message and "eyelid" not in message


# -- (8) devices and dtypes ----------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(flame_dirs):
    model = FLAME.from_dir(flame_dirs["2023"])
    params = random_params(model)
    cpu_vertices = model.decode(params)
    cpu_landmarks = model.landmarks(cpu_vertices, params)
    gpu = model.to("cuda")
    gpu_params = {k: v.cuda() for k, v in params.items()}
    vertices = gpu.decode(gpu_params)
    assert vertices.device.type == "cuda" and gpu.region_masks["face"].device.type == "cuda"
    torch.testing.assert_close(vertices.cpu(), cpu_vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(gpu.landmarks(vertices, gpu_params).cpu(), cpu_landmarks, atol=1e-5, rtol=0)


def test_double_converts_every_float_buffer(flame_dirs):
    model = FLAME.from_dir(flame_dirs["2023"]).double()
    params = random_params(model, dtype=torch.float64)
    vertices = model.decode(params)
    assert vertices.dtype == torch.float64 and model.landmarks(vertices, params).dtype == torch.float64


# -- (9) gradients ---------------------------------------------------------------------------------
def test_gradients_reach_every_group(models):
    model = models()
    params = {k: v.requires_grad_() for k, v in random_params(model).items()}
    vertices = model.decode(params)
    loss = vertices.square().sum() + model.landmarks(vertices, params).square().sum()
    loss.backward()
    for key, value in params.items():
        assert value.grad is not None and torch.isfinite(value.grad).all() and value.grad.abs().sum() > 0, key



@pytest.mark.shared
def test_real_aux_files_beside_another_template_are_refused(tmp_path):
    """The shared (real FLAME) aux files index real FLAME's triangles: beside the generated mesh
    their landmarks land in no face's layout, and the error names the file and what to do."""
    if shared_aux_dir() is None:
        pytest.skip("shared flame-aux folder not found")
    with pytest.raises(TrackerError, match=r"(?s)landmark_embedding\.npy: its 68 landmarks do not form a face.*another FLAME template"):
        FLAME.from_dir(make_flame_dir(tmp_path, use_shared_aux=True))


def test_landmark_decode_skins_only_their_vertices_to_the_same_points(models) -> None:
    """``decode_landmarks`` (the landmark triangles' vertices only, joints from their linear map)
    gives ``landmarks(decode(...))``'s points: every group posed, eyelids, views across the
    contour table's yaw bins."""
    from scipy.spatial.transform import Rotation

    from tracker.geometry.rotations import axis_angle_to_rotation_6d
    from tracker.head_models.base import HeadModel

    flame = models("2023", torch.float64)
    g = torch.Generator().manual_seed(3)

    def rotations(count: int, scale: float) -> torch.Tensor:
        return axis_angle_to_rotation_6d(torch.randn(count, 3, generator=g, dtype=torch.float64) * scale).reshape(BATCH, -1)

    params = {"shape": torch.randn(BATCH, 300, generator=g, dtype=torch.float64), "expression": torch.randn(BATCH, 100, generator=g, dtype=torch.float64),
              "jaw": rotations(BATCH, 0.2), "global": rotations(BATCH, 0.3), "neck": rotations(BATCH, 0.2), "eyes": rotations(2 * BATCH, 0.2),
              "eyelids": torch.rand(BATCH, 2, generator=g, dtype=torch.float64), "translation": torch.randn(BATCH, 3, generator=g, dtype=torch.float64) * 0.01}
    view = torch.from_numpy(Rotation.from_euler("y", [[-60], [-20], [15], [50]], degrees=True).as_matrix())
    expected = HeadModel.decode_landmarks(flame, params, view)
    assert torch.allclose(flame.decode_landmarks(params, view), expected, rtol=0, atol=1e-12)
