"""``python -m train.pseudo_gt``: the real-face pseudo ground truth for fine-tuning, checked against
independent computations (the head model's own projection, the live tracker's cue on the same
frame), and its folder read back by ``train.real_data``; the stated split of the real faces."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tracker.errors import TrackerError
from tracker.geometry import camera
from tracker.head_models import load_head_model
from tracker.live.face_tracker import FaceTracker
from tracker.live.sources import Frame
from train import evaluate_real, pseudo_gt
from train.real_data import MixedSource, RealDataset
from train.real_split import HELDOUT, TRAIN, split_paths
from train.synthetic import SamplerConfig, SyntheticSampler

FRAMES = 6


def test_variants_parse_and_transform() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[5, 2] = 255
    flip = pseudo_gt.Variant.parse("flip")
    assert flip.flip and flip.degrees == 0 and flip(image)[5, 57, 0] == 255
    both = pseudo_gt.Variant.parse("flip_rot-12.5")
    assert both.flip and both.degrees == -12.5 and both(image).shape == image.shape
    assert pseudo_gt.Variant.parse("rot15").degrees == 15 and not pseudo_gt.Variant.parse("rot15").flip
    assert np.array_equal(pseudo_gt.Variant.parse("none")(image), image)
    dot = np.zeros((41, 41, 3), np.uint8)
    dot[20, 35] = 255  # right of the centre: a counter-clockwise quarter turn takes it above
    turned = pseudo_gt.Variant.parse("rot90")(dot)[..., 0]
    assert np.unravel_index(turned.argmax(), turned.shape) == (5, 20)
    for bad in ("", "spin", "rot", "flip_", "rotx"):
        with pytest.raises(TrackerError, match="unknown variant"):
            pseudo_gt.Variant.parse(bad)


def test_the_split_keeps_every_held_out_person_out_of_training(shared_path: Path) -> None:
    folder = shared_path / "real-faces"
    train = split_paths(folder, "train", "videos") + split_paths(folder, "train", "images")
    heldout = split_paths(folder, "heldout", "videos") + split_paths(folder, "heldout", "images")
    assert not {p.name for p in train} & {p.name for p in heldout}
    on_disk = {p.name for p in (folder / "videos").iterdir()} | {p.name for p in (folder / "images").iterdir() if p.stem != "free-mountain-vector-01"}
    assert on_disk == set(TRAIN["videos"] + TRAIN["images"] + HELDOUT["videos"] + HELDOUT["images"])  # every file is on one side
    with pytest.raises(TrackerError, match="unknown split"):
        split_paths(folder, "validation", "videos")
    assert evaluate_real.video_paths(argparse.Namespace(videos=None, split="heldout"), folder) == split_paths(folder, "heldout", "videos")
    with pytest.raises(TrackerError, match="not both"):
        evaluate_real.video_paths(argparse.Namespace(videos=["a.mp4"], split="heldout"), folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory, shared_path: Path) -> Path:
    out = tmp_path_factory.mktemp("pseudo_gt") / "data"
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    photo = shared_path / "real-faces" / "images" / "multi_face.jpg"
    code = pseudo_gt.main([str(video), str(photo), "--out", str(out), "--max-frames", str(FRAMES), "--variants", "none,flip_rot10", "--refine-iters", "4"])
    assert code == 0
    return out


def _rows(folder: Path) -> list[dict]:
    with (folder / "quality.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_face_gets_every_file_and_a_quality_row(built: Path) -> None:
    rows = _rows(built)
    video_rows = [r for r in rows if r["source"] == "single_face" and r["variant"] == "none"]
    assert [int(r["frame"]) for r in video_rows] == list(range(FRAMES))
    photo_rows = [r for r in rows if r["source"] == "multi_face"]
    assert len({r["face"] for r in photo_rows if r["variant"] == "none"}) == 5  # the five people of the photo
    for row in rows:
        name = row["name"]
        for folder, suffix in (("normals", ".png"), ("masks", ".png"), ("params", ".npz"), ("cameras", ".json"), ("poses", ".json"), ("landmarks", ".txt")):
            assert (built / folder / f"{name}{suffix}").is_file(), (folder, name)
        assert row["identity_state"] in ("calibrating", "locked") and int(row["refine_iterations"]) > 0
        assert 0 < float(row["fit_nme51"]) < 8  # a fit close to MediaPipe's points
    with pytest.raises(TrackerError, match="already holds"):
        pseudo_gt.PseudoGtWriter(built)


def test_stored_pose_params_and_intrinsics_reproject_onto_the_stored_landmarks(built: Path, ict_npz_path: Path) -> None:
    """The head model's own landmark projection, from the stored files alone, lands where the
    quality figure says (and on MediaPipe's points in the crop)."""
    head = load_head_model("ict", ict_npz_path)
    for row in _rows(built)[:: max(1, len(_rows(built)) // 8)]:
        name = row["name"]
        with np.load(built / "params" / f"{name}.npz") as data:
            params = {g: torch.from_numpy(data[g])[None] for g in data.files}
        pose = json.loads((built / "poses" / f"{name}.json").read_text())
        intrinsics = json.loads((built / "cameras" / f"{name}.json").read_text())
        rotation = torch.tensor(pose["rotation"])[None]
        translation = torch.tensor(pose["translation"])[None]
        points = head.decode_landmarks(params, view_rotation=rotation)
        projected = camera.project_head(points, rotation, translation, torch.tensor(intrinsics["focal"])[None], torch.tensor(intrinsics["principal"])[None])[0]
        landmarks = np.loadtxt(built / "landmarks" / f"{name}.txt")
        assert np.all((landmarks > -20) & (landmarks < 148))  # crop pixels of the 128-px crop
        nme = evaluate_real.nme_percent(projected.numpy()[None], landmarks[None], with_jaw=False)[0]
        assert nme == pytest.approx(float(row["fit_nme51"]), abs=0.01)


def test_stored_maps_are_the_live_cue_of_that_frame(built: Path, shared_path: Path) -> None:
    """Frame 3 of the clip, tracked again by a fresh tracker: its cue equals the stored maps."""
    tracker = FaceTracker.from_options(pseudo_gt.labelling_options(str(pseudo_gt.DEFAULT_CHECKPOINT), False, "torch", 4))
    capture = cv2.VideoCapture(str(shared_path / "real-faces" / "videos" / "single_face.mp4"))
    fps = capture.get(cv2.CAP_PROP_FPS)
    for index in range(4):
        ok, image = capture.read()
        assert ok
        prepared = tracker.prepare(Frame(image, index, index / fps, index / fps))
    capture.release()
    tracker.close()
    cue = prepared.cues[0]
    name = "single_face_none_00003_0"
    stored = cv2.imread(str(built / "normals" / f"{name}.png"), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float64) / 65535 * 2 - 1
    mask = cv2.imread(str(built / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED) > 0
    assert np.array_equal(mask, cue.mask > 0)
    assert np.abs(stored - cue.normals)[mask].max() < 2e-5


def test_the_folder_reads_back_for_both_fine_tuning_stages(built: Path, ict_npz_path: Path) -> None:
    rows = _rows(built)
    name = rows[0]["name"]
    stage1 = RealDataset(built, 64, default_focal=500.0, stage=1)  # stored at 128 px, read at 64
    assert len(stage1) == len(rows)
    sample = stage1.load(name)
    intrinsics = json.loads((built / "cameras" / f"{name}.json").read_text())
    assert torch.allclose(sample["focal"], torch.tensor(intrinsics["focal"]) / 2)  # the crop's own camera, scaled
    assert torch.allclose(sample["principal"], torch.tensor(intrinsics["principal"]) / 2)
    assert sample["normals"].shape == (3, 64, 64) and set(sample["params"]) >= {"identity", "expression"}
    limit = sorted(float(r["fit_nme51"]) for r in rows)[len(rows) // 2]
    assert len(RealDataset(built, 64, 500.0, stage=1, max_fit_nme=limit)) == sum(float(r["fit_nme51"]) <= limit for r in rows)
    with pytest.raises(TrackerError, match="no sample's fit_nme51"):
        RealDataset(built, 64, 500.0, stage=1, max_fit_nme=0.0)
    stage2 = RealDataset(built, 128, 500.0, stage=2)
    batch = stage2.sample(3)
    assert batch.landmarks_2d.shape == (3, 68, 2) and bool(batch.landmark_visible.all())

    head = load_head_model("ict", ict_npz_path)
    synthetic = SyntheticSampler(head, SamplerConfig(output_size=128), seed=0)
    mixed = MixedSource(stage2, synthetic, real_fraction=0.25).sample(8)
    assert mixed.normals.shape == (8, 3, 128, 128) and mixed.landmarks_2d.shape == (8, 68, 2) and mixed.landmark_visible.shape == (8, 68)
    mixed1 = MixedSource(stage1, SyntheticSampler(head, SamplerConfig(output_size=64), seed=0), real_fraction=0.5).sample(4)
    assert {g: v.shape[0] for g, v in mixed1.params.items()} == {g: 4 for g in mixed1.params}
