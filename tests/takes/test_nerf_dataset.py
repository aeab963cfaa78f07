"""The GaussianAvatars dataset export (tracker.takes.nerf_dataset), read back by a loader written
from GaussianAvatars' own reader (scene/dataset_readers.py readCamerasFromTransforms and
readMeshesFromTransforms, scene/flame_gaussian_model.py load_meshes, at 30cc4bd): its keys, shapes
and camera convention. The faces it describes are posed by smplx's independent FLAME and must
land on the pixels where the tracker's own decode and camera put them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.flame_factory import make_flame_dir, make_smplx_dir
from tracker.errors import TrackerError
from tracker.geometry import camera
from tracker.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_rotation_6d,
    rotation_6d_to_matrix,
)
from tracker.head_models import load_head_model
from tracker.head_models.base import RotationPrior
from tracker.head_models.safe_pickle import load_npy_object, to_numpy
from tracker.takes.nerf_dataset import export_dataset
from tracker.takes.recording import Take

WIDTH, HEIGHT, FOCAL, FRAMES = 320, 240, 400.0, 5


def _video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (WIDTH, HEIGHT))
    for i in range(FRAMES + 1):
        writer.write(np.full((HEIGHT, WIDTH, 3), 20 * i, np.uint8))
    writer.release()
    return path


def _take(head, params: dict[str, torch.Tensor], found: np.ndarray) -> Take:
    """A take of FRAMES frames, the face turning and moving, ``found``: frames with a face."""
    angles = torch.stack([torch.linspace(-0.4, 0.4, FRAMES), torch.linspace(0.2, -0.1, FRAMES), torch.linspace(0.0, 0.15, FRAMES)], 1)
    translation = np.stack([np.linspace(-0.03, 0.02, FRAMES), np.linspace(0.01, -0.02, FRAMES), np.linspace(0.55, 0.65, FRAMES)], 1)
    return Take(
        head_model=head.name, groups={k: v.shape[1] for k, v in params.items()},
        timestamp=np.arange(FRAMES) / 25.0, frame_index=np.arange(FRAMES), face_found=found,
        crop_box=np.zeros((FRAMES, 3), np.float32), rotation_6d=euler_to_rotation_6d(angles).numpy().astype(np.float32),
        translation=translation.astype(np.float32), focal=np.full((FRAMES, 2), FOCAL, np.float32),
        principal=np.tile(np.float32([WIDTH / 2, HEIGHT / 2]), (FRAMES, 1)), params={k: v.numpy().astype(np.float32) for k, v in params.items()},
        metadata={}, track_id=np.where(found, 0, -1),
    )


def _our_pixels(head, take: Take, row: int) -> np.ndarray:
    """(V, 2) where the tracker puts the take's mesh in the frame."""
    params = {g: torch.from_numpy(v[row : row + 1]) for g, v in take.params.items()}
    with torch.no_grad():
        rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[row : row + 1]))
        return camera.project_head(head.decode(params), rotation, torch.from_numpy(take.translation[row : row + 1]),
                                   torch.from_numpy(take.focal[row : row + 1]), torch.from_numpy(take.principal[row : row + 1]))[0].numpy()


def gaussian_avatars_read(root: Path) -> tuple[list[dict], dict[int, dict]]:
    """GaussianAvatars' reading of a dataset, as its code does it -> (cameras, {timestep: flame params})."""
    assert (root / "canonical_flame_param.npz").exists() and not (root / "sparse").exists()  # scene/__init__.py: DynamicNerf
    cameras, meshes = [], {}
    for split in ("train", "val", "test"):  # readDynamicNerfInfo: all three must exist
        contents = json.loads((root / f"transforms_{split}.json").read_text())
        fovx_shared = contents.get("camera_angle_x")
        for frame in contents["frames"]:
            file_path = frame["file_path"]
            if ".png" not in file_path:
                file_path += ".png"
            c2w = np.array(frame["transform_matrix"])
            c2w[:3, 1:3] *= -1
            w2c = np.linalg.inv(c2w)
            fovx = frame.get("camera_angle_x", fovx_shared)
            width, height = frame["w"], frame["h"]
            focal = width / (2 * math.tan(fovx / 2))  # fov2focal
            fovy = 2 * math.atan(height / (2 * focal))  # focal2fov
            cameras.append({"w2c": w2c, "fovx": fovx, "fovy": fovy, "width": width, "height": height, "image": root / file_path,
                            "timestep": frame["timestep_index"], "camera_id": frame["camera_index"] if "camera_id" in frame else None})
            if split != "val" and frame["timestep_index"] not in meshes:  # readMeshesFromTransforms: train and test
                meshes[frame["timestep_index"]] = dict(np.load(root / frame["flame_param_path"], allow_pickle=True))
    return cameras, meshes


def _project(w2c: np.ndarray, fovx: float, fovy: float, width: int, height: int, points: np.ndarray) -> np.ndarray:
    """GaussianAvatars' symmetric-frustum camera (getWorld2View2, getProjectionMatrix) -> (N, 2) pixels."""
    view = points @ w2c[:3, :3].T + w2c[:3, 3]
    x = view[:, 0] / view[:, 2] / math.tan(fovx / 2)  # NDC
    y = view[:, 1] / view[:, 2] / math.tan(fovy / 2)
    return np.stack([(x + 1) * width / 2, (y + 1) * height / 2], 1)


@pytest.fixture(scope="module")
def flame_setup(tmp_path_factory):
    smplx = pytest.importorskip("smplx")
    folder = make_flame_dir(tmp_path_factory.mktemp("flame"), "2023")
    head = load_head_model("flame", path=folder)
    emb = load_npy_object(folder / "landmark_embedding.npy")
    reference_dir = make_smplx_dir(tmp_path_factory.mktemp("smplx"), to_numpy(emb["static_lmk_faces_idx"]), to_numpy(emb["static_lmk_bary_coords"]),
                                   to_numpy(emb["dynamic_lmk_faces_idx"]), to_numpy(emb["dynamic_lmk_bary_coords"]))
    reference = smplx.FLAME(model_path=str(reference_dir), num_betas=300, num_expression_coeffs=100, batch_size=1, dtype=torch.float64)
    return head, reference


def test_a_flame_take_exports_what_gaussian_avatars_reads_and_poses_the_same_face(flame_setup, tmp_path: Path) -> None:
    head, reference = flame_setup
    g = torch.Generator().manual_seed(0)
    params = head.sample_params(FRAMES, generator=g, device="cpu")
    for key in ("global", "neck", "jaw", "eyes"):
        params[key] = RotationPrior(std_deg=(15.0, 15.0, 8.0)).sample(FRAMES, head.param_groups[key].size, generator=g)
    params["translation"] = 0.02 * torch.randn(FRAMES, 3, generator=g)
    params["shape"] = params["shape"][:1].expand(FRAMES, -1).clone()  # one person
    params["eyelids"] = torch.zeros(FRAMES, 2)  # Pixel3DMM's eyelid blendshapes: no place in this layout (module docstring)
    found = np.array([True, True, False, True, True])
    take = _take(head, params, found)
    root = export_dataset(take, _video(tmp_path / "clip.avi"), head, tmp_path / "dataset")

    cameras, meshes = gaussian_avatars_read(root)
    assert sorted(meshes) == [0, 1, 2, 3]  # the frames with a face, timesteps 0..T-1
    assert [c["timestep"] for c in cameras] == [0, 1, 2, 3] and all(c["camera_id"] == 0 for c in cameras)
    assert json.loads((root / "transforms_val.json").read_text())["frames"] == []
    assert len(json.loads((root / "transforms_train.json").read_text())["frames"]) == 3  # ceil(0.7 * 4)
    transforms = json.loads((root / "transforms.json").read_text())
    assert [f["timestep_index_original"] for f in transforms["frames"]] == [0, 1, 3, 4] and transforms["head_model"] == "flame"
    # load_meshes: shape from timestep 0, 1-D (300,); expr 2-D with 100 columns; static_offset (1, V <= 5143, 3)
    assert meshes[0]["shape"].shape == (300,) and meshes[0]["static_offset"].shape == (1, 5023, 3)
    for mesh in meshes.values():
        assert mesh["expr"].shape == (1, 100) and mesh["eyes_pose"].shape == (1, 6)
        assert all(mesh[k].shape == (1, 3) for k in ("translation", "rotation", "neck_pose", "jaw_pose"))
        assert all(v.dtype == np.float32 for v in mesh.values())

    for camera_info, row in zip(cameras, np.flatnonzero(found), strict=True):
        mesh = {k: torch.from_numpy(v.astype(np.float64)) for k, v in meshes[camera_info["timestep"]].items()}
        vertices = reference(betas=mesh["shape"][None], expression=mesh["expr"], global_orient=mesh["rotation"], neck_pose=mesh["neck_pose"],
                             jaw_pose=mesh["jaw_pose"], leye_pose=mesh["eyes_pose"][:, :3], reye_pose=mesh["eyes_pose"][:, 3:],
                             transl=mesh["translation"]).vertices[0].detach().numpy()
        theirs = _project(camera_info["w2c"], camera_info["fovx"], camera_info["fovy"], camera_info["width"], camera_info["height"], vertices)
        np.testing.assert_allclose(theirs, _our_pixels(head, take, row), atol=0.02)
        image, mask = cv2.imread(str(camera_info["image"])), cv2.imread(str(root / f"fg_masks/{camera_info['timestep']:05d}_00.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (HEIGHT, WIDTH, 3) and abs(int(image[0, 0, 0]) - 20 * int(row)) <= 3  # the frame of that timestep
        inside = np.round(theirs).astype(int)
        inside = inside[(inside[:, 0] >= 0) & (inside[:, 0] < WIDTH) & (inside[:, 1] >= 0) & (inside[:, 1] < HEIGHT)]
        assert mask.shape == (HEIGHT, WIDTH) and (mask[inside[:, 1], inside[:, 0]] == 255).mean() > 0.98 and 0.02 < (mask == 255).mean() < 0.9


def test_an_ict_take_exports_the_same_structure_with_its_own_parameters(ict_npz_path: Path, tmp_path: Path) -> None:
    head = load_head_model("ict", ict_npz_path)
    params = head.sample_params(FRAMES, generator=torch.Generator().manual_seed(1), device="cpu")
    params["identity"] = params["identity"][:1].expand(FRAMES, -1).clone()
    take = _take(head, params, np.ones(FRAMES, bool))
    root = export_dataset(take, _video(tmp_path / "clip.avi"), head, tmp_path / "dataset")
    cameras, meshes = gaussian_avatars_read(root)
    assert json.loads((root / "transforms.json").read_text())["head_model"] == "ict"
    assert meshes[0]["shape"].shape == (100,) and meshes[0]["expr"].shape == (1, 53)
    for camera_info in cameras:
        mesh = meshes[camera_info["timestep"]]
        ours = {"identity": torch.from_numpy(mesh["shape"])[None], "expression": torch.from_numpy(mesh["expr"])}
        with torch.no_grad():
            vertices = head.decode(ours)[0].double() @ axis_angle_to_matrix(torch.from_numpy(mesh["rotation"][0]).double()).T
        world = vertices.numpy() + mesh["translation"][0]
        theirs = _project(camera_info["w2c"], camera_info["fovx"], camera_info["fovy"], camera_info["width"], camera_info["height"], world)
        np.testing.assert_allclose(theirs, _our_pixels(head, take, camera_info["timestep"]), atol=0.02)


def test_a_take_gaussian_avatars_cannot_express_is_refused(ict_npz_path: Path, tmp_path: Path) -> None:
    head = load_head_model("ict", ict_npz_path)
    params = head.sample_params(FRAMES, generator=torch.Generator().manual_seed(1), device="cpu")
    take = _take(head, params, np.ones(FRAMES, bool))
    take.principal[:] = [150.0, 120.0]  # off the image centre
    with pytest.raises(TrackerError, match="principal point at the image centre"):
        export_dataset(take, _video(tmp_path / "clip.avi"), head, tmp_path / "dataset")
    take.face_found[:] = False
    with pytest.raises(TrackerError, match="no face to export"):
        export_dataset(take, tmp_path / "clip.avi", head, tmp_path / "dataset")
