"""ICT-FaceKit as a FLAME-format model (tests/flame_factory.py ``write_ict_as_flame``): the layout
of the official files, a real face that the FLAME loader reads, and FLAME's jaw, eyelids and
MediaPipe embedding doing what they do on FLAME. Renders go to /tmp/ict_as_flame/."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.flame_factory import (
    AUX_FILES,
    MASK_KEYS,
    NUM_FACES,
    NUM_VERTICES,
    ict_expression_columns,
)
from tracker.fitting.mediapipe_embedding import _shade
from tracker.geometry.rotations import euler_to_matrix, euler_to_rotation_6d
from tracker.head_models import load_head_model
from tracker.head_models.flame import FLAME
from tracker.head_models.safe_pickle import load_npy_object, load_pickle
from tracker.render import render_maps

pytestmark = pytest.mark.shared
RENDERS = Path("/tmp/ict_as_flame")
SIZE = 512


@pytest.fixture(scope="module")
def flame(ict_as_flame_dir) -> FLAME:
    return FLAME.from_dir(ict_as_flame_dir)


@pytest.fixture(scope="module")
def ict(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


def render(flame: FLAME, vertices: torch.Tensor, name: str | None = None) -> tuple[np.ndarray, dict]:
    """(1, V, 3) head-frame vertices -> (SIZE, SIZE, 3) uint8 frontal shaded render and its camera
    (rotation, translation, focal, principal); saved to RENDERS/name.png when named."""
    centre = vertices[0, flame.region_masks["face"]].mean(0)
    vertices = (vertices - centre).float()
    camera = {"rotation": euler_to_matrix(torch.zeros(1, 3)), "translation": torch.tensor([[0.0, 0.0, 0.6]]),
              "focal": torch.full((1, 2), 1.5 * SIZE), "principal": torch.full((1, 2), SIZE / 2)}
    maps = render_maps(vertices, flame.render_faces, camera["rotation"], camera["translation"], camera["focal"],
                       camera["principal"], (SIZE, SIZE))
    image = _shade(maps.normals[0], maps.mask[0])
    if name:
        RENDERS.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(RENDERS / f"{name}.png"), image)
    return image, {**camera, "centre": centre}


def test_layout_of_the_official_files(ict_as_flame_dir):
    model = load_pickle(ict_as_flame_dir / "flame2023.pkl")
    assert model["v_template"].shape == (NUM_VERTICES, 3) and model["f"].shape == (NUM_FACES, 3)
    assert model["shapedirs"].shape == (NUM_VERTICES, 3, 400) and model["posedirs"].shape == (NUM_VERTICES, 3, 36)
    assert model["J_regressor"].shape == (5, NUM_VERTICES) and model["weights"].shape == (NUM_VERTICES, 5)
    assert model["kintree_table"].tolist() == [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]
    assert np.allclose(model["weights"].sum(1), 1.0) and (model["weights"] >= 0).all()
    assert np.allclose(np.asarray(model["J_regressor"].sum(1)).ravel(), 1.0)
    assert len(np.unique(model["f"])) == NUM_VERTICES  # every vertex is used
    assert all((ict_as_flame_dir / name).is_file() for name in AUX_FILES)
    embedding = load_npy_object(ict_as_flame_dir / "landmark_embedding.npy")
    assert embedding["dynamic_lmk_faces_idx"].shape == (79, 17) and embedding["full_lmk_bary_coords"].shape == (1, 68, 3)
    mediapipe = np.load(ict_as_flame_dir / "mediapipe_landmark_embedding.npz")
    assert mediapipe["lmk_face_idx"].dtype == np.uint32 and mediapipe["lmk_b_coords"].dtype == np.float64
    assert mediapipe["landmark_indices"].dtype == np.int64 and mediapipe["lmk_b_coords"].shape == (105, 3)
    assert np.allclose(mediapipe["lmk_b_coords"].sum(1), 1.0) and (mediapipe["lmk_b_coords"] >= -1e-6).all()
    assert set(load_pickle(ict_as_flame_dir / "FLAME_masks.pkl")) == set(MASK_KEYS)


def test_decoded_faces_match_ict_at_the_wrapped_points(flame, ict, ict_as_flame_dir):
    """Random identity and expression: FLAME's vertices are ICT's surface points, to float32 rounding."""
    correspondence = np.load(ict_as_flame_dir / "ict_correspondence.npz")
    corners, bary = torch.from_numpy(correspondence["corners"]), torch.from_numpy(correspondence["bary"]).float()
    on_surface = torch.from_numpy(correspondence["on_surface"])
    eyes = flame.region_masks["eye_region"]
    generator = torch.Generator().manual_seed(0)
    identity = torch.randn(1, 100, generator=generator)
    names = ict_expression_columns(ict)
    weights = torch.rand(1, len(names), generator=generator) * 0.5
    expression = torch.zeros(1, len(ict.expression_names))
    expression[0, [ict.expression_names.index(n) for n in names]] = weights[0]
    ict_vertices = ict.decode({"identity": identity, "expression": expression})[0]
    expected = (ict_vertices[corners] * bary[..., None]).sum(1)
    flame_params = {"shape": torch.cat([identity, torch.zeros(1, 200)], 1),
                    "expression": torch.cat([weights, torch.zeros(1, 100 - len(names))], 1)}
    decoded = flame.decode(flame_params)[0]
    error_mm = (decoded - expected).norm(dim=1) * 1000
    neutral_error_mm = (flame.decode(flame.neutral_params(1))[0] - (ict.neutral[corners] * bary[..., None]).sum(1)).norm(dim=1) * 1000
    assert on_surface.float().mean() > 0.95
    assert neutral_error_mm[on_surface].max() < 0.01
    # eyeball vertices take the lid shapes from the lids around them; elsewhere ICT's own fields
    assert error_mm[on_surface & ~eyes].max() < 0.05, error_mm.max()


def test_jaw_rotation_opens_the_mouth(flame):
    """The lower lip (iBUG 57) comes down with the chin, the upper lip (51) stays."""
    lips = [51, 57]  # outer lips, upper and lower middle
    closed = flame.landmarks(flame.decode(flame.neutral_params(1)))[0, lips]
    jaw = euler_to_rotation_6d(torch.tensor([[math.radians(20.0), 0.0, 0.0]]))
    opened_vertices = flame.decode({"jaw": jaw})
    opened = flame.landmarks(opened_vertices)[0, lips]
    gap_closed, gap_open = (closed[0] - closed[1]).norm().item(), (opened[0] - opened[1]).norm().item()
    chin_drop = (flame.landmarks(flame.decode(flame.neutral_params(1)))[0, 8, 1] - flame.landmarks(opened_vertices)[0, 8, 1]).item()
    render(flame, opened_vertices, "jaw_open_20deg")
    print(f"lip gap {gap_closed * 1000:.1f} -> {gap_open * 1000:.1f} mm, chin down {chin_drop * 1000:.1f} mm")
    assert gap_open > gap_closed + 0.008 and chin_drop > 0.015
    assert (opened[0] - closed[0]).norm() < 0.003  # the upper lip stays


def test_the_slit_opens_between_the_inner_lips(flame):
    """The mesh is cut along the lips' contact line: with the jaw at 20 deg the inner-lip gap (iBUG 62-66)
    grows by over 10 mm while the upper lip (51, 62) stays within 2 mm."""
    closed = flame.landmarks(flame.decode(flame.neutral_params(1)))[0]
    jaw = euler_to_rotation_6d(torch.tensor([[math.radians(20.0), 0.0, 0.0]]))
    opened = flame.landmarks(flame.decode({"jaw": jaw}))[0]
    for upper, lower in ((62, 66), (61, 67), (63, 65)):
        gaps = [(x[upper] - x[lower]).norm().item() * 1000 for x in (closed, opened)]
        print(f"inner lip gap {upper}-{lower}: {gaps[0]:.1f} -> {gaps[1]:.1f} mm")
    assert (opened[62] - opened[66]).norm() > (closed[62] - closed[66]).norm() + 0.010
    assert (opened[[51, 62]] - closed[[51, 62]]).norm(dim=1).max() < 0.002


def test_no_triangle_bridges_the_lips(flame, ict_as_flame_dir):
    """The slit's two edges (upper / lower lip vertices, corners excluded) share no triangle, and between the
    mouth corners no face triangle holds a vertex that stays with the jaw at 20 deg and one that follows it."""
    correspondence = np.load(ict_as_flame_dir / "ict_correspondence.npz")
    upper, lower = correspondence["upper_lip"][1:-1], correspondence["lower_lip"][1:-1]
    faces = flame.faces.numpy()
    assert len(upper) >= 8 and not (np.isin(faces, upper).any(1) & np.isin(faces, lower).any(1)).any()
    neutral = flame.decode(flame.neutral_params(1))[0]
    jaw = euler_to_rotation_6d(torch.tensor([[math.radians(20.0), 0.0, 0.0]]))
    motion = (flame.decode({"jaw": jaw})[0] - neutral).norm(dim=1).numpy()
    lips = flame.landmarks(neutral[None])[0].numpy()
    x, y = neutral[:, 0].numpy(), neutral[:, 1].numpy()
    mouth = (x > lips[60, 0] + 0.003) & (x < lips[64, 0] - 0.003) & (np.abs(y - lips[[62, 66], 1].mean()) < 0.008)
    mouth &= correspondence["on_surface"]  # the face, not the mouth pocket behind the slit
    in_mouth = faces[mouth[faces].all(1)]
    assert len(in_mouth) > 20
    assert not ((motion[in_mouth].min(1) < 0.003) & (motion[in_mouth].max(1) > 0.010)).any()


@pytest.mark.parametrize("side", [0, 1], ids=["left", "right"])
def test_eyelid_coefficient_one_closes_the_lid(flame, side):
    """Upper-lid middle landmark (iBUG 43/44 left, 37/38 right) comes down to the lower lid's (47/46, 41/40)."""
    upper, lower = ((43, 44), (47, 46)) if side == 0 else ((37, 38), (41, 40))
    eyelids = torch.zeros(1, 2)
    eyelids[0, side] = 1.0
    open_lm = flame.landmarks(flame.decode(flame.neutral_params(1)))[0]
    closed_vertices = flame.decode({"eyelids": eyelids})
    closed_lm = flame.landmarks(closed_vertices)[0]
    gap_open = (open_lm[list(upper), 1] - open_lm[list(lower), 1]).mean().item()
    gap_closed = (closed_lm[list(upper), 1] - closed_lm[list(lower), 1]).mean().item()
    other = slice(36, 42) if side == 0 else slice(42, 48)
    print(f"eyelid {side}: lid gap {gap_open * 1000:.1f} -> {gap_closed * 1000:.1f} mm")
    assert gap_open > 0.006 and abs(gap_closed) < 0.0035
    assert (closed_lm[other] - open_lm[other]).norm(dim=1).max() < 1e-4  # the other eye stays open
    if side == 0:
        both = flame.decode({"eyelids": torch.ones(1, 2)})
        render(flame, both, "eyes_closed")


def test_mediapipe_sees_the_face_where_the_embedding_puts_its_points(flame):
    from tracker.face.detection import FaceMeshDetector

    vertices = flame.decode(flame.neutral_params(1))
    image, camera = render(flame, vertices, "neutral")
    with FaceMeshDetector(max_faces=1, static_images=True) as detector:
        faces = detector.detect(image)
    assert faces, "MediaPipe finds no face in the neutral render"
    points = flame.mediapipe_landmarks(vertices)[0].float() - camera["centre"]
    camera_points = points * torch.tensor([1.0, -1.0, -1.0]) + camera["translation"][0]  # FLIP, then t
    projected = camera_points[:, :2] / camera_points[:, 2:] * camera["focal"][0] + camera["principal"][0]
    detected = torch.from_numpy(faces[0].points[flame.mediapipe_indices.numpy(), :2]).float()
    error = (projected - detected).norm(dim=1)
    print(f"MediaPipe vs embedding: median {error.median():.1f} px, max {error.max():.1f} px")
    assert error.median() < 3.0 and error.max() < 12.0
