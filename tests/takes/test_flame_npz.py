"""FLAME sequence export (``tracker.takes.flame_npz``, ``--format flame-npz``): a recorded FLAME take's
parameters decode to the take's vertices through the ``smplx`` package's FLAME (the field's
reference) on the generated FLAME-format model, in the head frame and, after the export, in VHAP's
world; the file has the keys, shapes and dtypes that VHAP's and GaussianAvatars' loaders read; an
ICT take is refused; the command line writes whole files and never over the take.

Eyelids: smplx's FLAME has none; their offsets (our FLAME's, added after skinning in the head frame)
are added to smplx's vertices rotated by the exported ``head_rotation`` (docs/flame-npz.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.flame_factory import make_flame_dir, make_smplx_dir
from tracker.export import main as export_main
from tracker.files.atomic_write import temporary_files
from tracker.geometry.camera import FLIP_MATRIX, head_to_camera
from tracker.geometry.rotations import (
    euler_to_rotation_6d,
    rotation_6d_to_axis_angle,
    rotation_6d_to_matrix,
)
from tracker.head_models.base import RotationPrior
from tracker.head_models.flame import FLAME
from tracker.head_models.safe_pickle import load_npy_object, to_numpy
from tracker.takes.flame_npz import CAMERA_DISTANCE, PER_FRAME, export_flame_npz
from tracker.takes.recording import Recorder, read_take

TOLERANCE = 1e-6  # m
FRAMES = list(range(7))
NO_FACE = {3}  # frame 3: no face at all; track 7 has faces in frames 1 and 2 only
# what VHAP's FlameTracker.save_result writes (vhap/model/tracker.py) and GaussianAvatars' motion loader reads
VHAP_KEYS = {"rotation", "translation", "neck_pose", "jaw_pose", "eyes_pose", "shape", "expr", "timestep_id",
             "n_processed_frames", "focal_length", "lights", "image_size"}
MOTION_KEYS = ("translation", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "expr")  # FlameGaussianModel.load_ply


def _pose(frame: int) -> tuple[np.ndarray, np.ndarray]:
    euler = torch.tensor([[0.2 * math.sin(frame), 0.4 - 0.15 * frame, 0.1 * frame - 0.25]], dtype=torch.float64)
    return euler_to_rotation_6d(euler)[0].numpy(), np.array([0.03 * frame - 0.06, 0.015 * frame - 0.02, 0.55 + 0.03 * frame])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(FLAME folder, float64 model, take path, the recorded params per frame of track 0)."""
    root = tmp_path_factory.mktemp("flame_npz")
    folder = make_flame_dir(root, "2023")
    model = FLAME.from_dir(folder, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    params = model.sample_params(len(FRAMES), generator=g, device="cpu")
    wide = RotationPrior(std_deg=(20.0, 25.0, 10.0))
    for key in ("global", "neck", "eyes", "jaw"):
        params[key] = wide.sample(len(FRAMES), model.param_groups[key].size, generator=g)
    params["shape"] = params["shape"][:1].expand(len(FRAMES), -1).clone()
    params["translation"] = 0.02 * torch.randn(len(FRAMES), 3, generator=g)
    assert "eyelids" in params
    params["eyelids"] = torch.linspace(-0.5, 1.2, len(FRAMES))[:, None] * torch.tensor([1.0, -0.6])
    params = {k: v.float() for k, v in params.items()}  # as recorded
    groups = {g_: spec.size for g_, spec in model.param_groups.items()}
    path = root / "take.npz"
    with Recorder(path, "flame", groups, focal=(610.0, 600.0), principal=(320.0, 240.0)) as recorder:
        for r, frame in enumerate(FRAMES):
            if frame in NO_FACE:
                recorder.append(10.0 + frame / 30.0, frame, None)
                continue
            r6d, t = _pose(frame)
            recorder.append(10.0 + frame / 30.0, frame, {k: v[r].numpy() for k, v in params.items()}, rotation_6d=r6d,
                            translation=t, track_id=0, identity_state="locked")
            if frame in (1, 2):
                other = {k: v[(r + 3) % len(FRAMES)].numpy() for k, v in params.items()}
                recorder.append(10.0 + frame / 30.0, frame, other, rotation_6d=r6d, translation=t + 0.1, track_id=7)
    return folder, model, path


@pytest.fixture(scope="module")
def smplx_flame(setup, tmp_path_factory):
    """smplx's FLAME (axis-angle, float64) on the same generated arrays, with the landmark files it needs."""
    smplx = pytest.importorskip("smplx")
    folder = setup[0]
    emb = load_npy_object(folder / "landmark_embedding.npy")
    smplx_dir = make_smplx_dir(
        tmp_path_factory.mktemp("smplx"),
        to_numpy(emb["static_lmk_faces_idx"]), to_numpy(emb["static_lmk_bary_coords"]),
        to_numpy(emb["dynamic_lmk_faces_idx"]), to_numpy(emb["dynamic_lmk_bary_coords"]),
    )

    def run(batch: int, **params) -> np.ndarray:
        layer = smplx.FLAME(model_path=str(smplx_dir), num_betas=300, num_expression_coeffs=100, batch_size=batch, dtype=torch.float64)
        params = {k: torch.as_tensor(np.asarray(v, np.float64)) for k, v in params.items()}
        return layer(**params).vertices.detach().numpy()

    return run


def _track_rows(take, track: int = 0) -> np.ndarray:
    return np.flatnonzero(take.face_found & (take.track_id == track))


def _eyelid_offsets(model: FLAME, eyelids: np.ndarray) -> np.ndarray:
    return np.einsum("bk,kvc->bvc", eyelids.astype(np.float64), model.eyelid_dirs.numpy())


# -- (1) the take's own parameters through smplx, head frame -------------------------------------
def test_recorded_flame_params_decode_through_smplx_in_the_head_frame(setup, smplx_flame):
    """Mapping: global -> global_orient, neck -> neck_pose, jaw -> jaw_pose, eyes[:6] / eyes[6:] ->
    leye_pose / reye_pose (6D -> axis-angle), translation -> transl, shape -> betas, expression ->
    expression; eyelids (not in smplx) added after skinning."""
    _, model, path = setup
    take = read_take(path)
    rows = _track_rows(take)
    p = {g: torch.from_numpy(take.params[g][rows].astype(np.float64)) for g in take.params}
    ours = model.decode(p).numpy()

    def aa(d6: torch.Tensor) -> np.ndarray:
        return rotation_6d_to_axis_angle(d6).numpy()

    reference = smplx_flame(len(rows), betas=p["shape"], expression=p["expression"], global_orient=aa(p["global"]),
                            neck_pose=aa(p["neck"]), jaw_pose=aa(p["jaw"]), leye_pose=aa(p["eyes"][:, :6]),
                            reye_pose=aa(p["eyes"][:, 6:]), transl=p["translation"])
    reference = reference + _eyelid_offsets(model, take.params["eyelids"][rows])
    assert np.abs(ours - reference).max() < TOLERANCE


# -- (2) the export ------------------------------------------------------------------------------
def test_export_has_the_loaders_keys_shapes_and_dtypes(setup, tmp_path):
    _, model, path = setup
    take = read_take(path)
    result = export_flame_npz(take, model, tmp_path / "seq.npz")
    assert result.track == 0 and result.frames == len(FRAMES) and result.held == [3]
    with np.load(result.path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert VHAP_KEYS <= set(arrays)
    T = len(FRAMES)
    expected = {"shape": (300,), "expr": (T, 100), "rotation": (T, 3), "neck_pose": (T, 3), "jaw_pose": (T, 3),
                "eyes_pose": (T, 6), "translation": (T, 3), "eyelids": (T, 2), "focal_length": (1,), "lights": (9, 3),
                "intrinsic": (T, 4), "extrinsic": (3, 4), "head_rotation": (T, 3, 3), "image_size": (2,),
                "frame_index": (T,), "timestep_id": (T,), "timestamp": (T,), "face_found": (T,), "n_processed_frames": ()}
    assert {k: arrays[k].shape for k in expected} == expected
    for key in ("shape", "expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation", "eyelids", "focal_length",
                "lights", "intrinsic", "extrinsic", "head_rotation"):
        assert arrays[key].dtype == np.float32, key
    assert arrays["timestamp"].dtype == np.float64 and arrays["face_found"].dtype == bool
    assert arrays["frame_index"].dtype == np.int64 and arrays["image_size"].dtype == np.int64
    np.testing.assert_array_equal(arrays["frame_index"], FRAMES)
    np.testing.assert_allclose(arrays["timestamp"], np.array(FRAMES) / 30.0, atol=1e-9)
    np.testing.assert_array_equal(arrays["face_found"], [f not in NO_FACE for f in FRAMES])
    np.testing.assert_array_equal(arrays["image_size"], [480, 640])  # (H, W) from the principal point
    assert arrays["focal_length"][0] == pytest.approx(610.0 / 640.0)
    np.testing.assert_allclose(arrays["intrinsic"][0], [610.0, 600.0, 320.0, 240.0])
    # GaussianAvatars' --motion_path: the float32 arrays, then these keys, one row per timestep
    motion = {k: v for k, v in arrays.items() if v.dtype == np.float32}
    assert all(motion[k].shape[0] == T for k in MOTION_KEYS)
    for key in PER_FRAME:
        np.testing.assert_array_equal(arrays[key][3], arrays[key][2])  # no face in frame 3: frame 2 held


@pytest.mark.parametrize("track", [0, 7])
def test_exported_sequence_decodes_to_the_takes_vertices_through_smplx(setup, smplx_flame, tmp_path, track):
    """smplx's FLAME of the file's arrays (+ the eyelid offsets rotated by ``head_rotation``) is the
    take's posed head, FLIP (R FLIP X_head + t) + (0, 0, 1): VHAP's world, within 1e-6 m."""
    _, model, path = setup
    take = read_take(path)
    result = export_flame_npz(take, model, tmp_path / "seq.npz", track)
    with np.load(result.path, allow_pickle=False) as npz:
        a = {k: npz[k] for k in npz.files}
    T = len(a["frame_index"])
    vertices = smplx_flame(T, betas=np.broadcast_to(a["shape"], (T, 300)), expression=a["expr"], global_orient=a["rotation"],
                           neck_pose=a["neck_pose"], jaw_pose=a["jaw_pose"], leye_pose=a["eyes_pose"][:, :3],
                           reye_pose=a["eyes_pose"][:, 3:], transl=a["translation"])
    vertices = vertices + np.einsum("bvc,brc->bvr", _eyelid_offsets(model, a["eyelids"]), a["head_rotation"].astype(np.float64))

    rows = _track_rows(take, track)
    p = {g: torch.from_numpy(take.params[g][rows].astype(np.float64)) for g in take.params}
    rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[rows].astype(np.float64)))
    camera = head_to_camera(model.decode(p), rotation, torch.from_numpy(take.translation[rows].astype(np.float64))).numpy()
    world = camera @ FLIP_MATRIX.astype(np.float64) + np.array([0.0, 0.0, CAMERA_DISTANCE])
    frames = take.frame_index[rows]
    source = [np.flatnonzero(frames <= f)[-1] if (frames <= f).any() else 0 for f in a["frame_index"]]  # held frames
    error = np.abs(vertices - world[source]).max()
    print(f"\ntrack {track}: max |smplx(export) - take| = {error:.2e} m")
    assert error < TOLERANCE
    assert result.held == [f for f in FRAMES if f not in set(frames.tolist())]


# -- (3) the command line ------------------------------------------------------------------------
def test_cli_writes_the_whole_file_and_refuses_overwriting_the_take(setup, tmp_path, capsys):
    folder, _, path = setup
    out = tmp_path / "out" / "seq.npz"
    assert export_main([str(path), "--format", "flame-npz", "--out", str(out), "--flame-dir", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "FLAME sequence" in printed and "holding the previous one: 3" in printed
    assert temporary_files(out) == [] and sorted(p.name for p in out.parent.iterdir()) == ["seq.npz"]
    with np.load(out, allow_pickle=False) as npz:
        assert npz["expr"].shape == (len(FRAMES), 100)
    before = path.read_bytes()
    assert export_main([str(path), "--format", "flame-npz", "--out", str(path), "--flame-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and "the take being exported" in err[0]
    assert path.read_bytes() == before


def test_cli_refuses_an_ict_take(tmp_path, capsys):
    path = tmp_path / "ict.npz"
    with Recorder(path, "ict", {"identity": 4, "expression": 3}, focal=(500.0, 500.0), principal=(320.0, 240.0)) as recorder:
        recorder.append(0.0, 0, {"identity": np.zeros(4), "expression": np.zeros(3)}, rotation_6d=[1, 0, 0, 0, 1, 0], translation=[0, 0, 1])
    out = tmp_path / "seq.npz"
    assert export_main([str(path), "--format", "flame-npz", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "'ict'" in err[0] and "not FLAME" in err[0]
    assert not out.exists() and temporary_files(out) == []
