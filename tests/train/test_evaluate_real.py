"""``python -m train.evaluate_real``: the imglab XML parser, face matching, NME, jitter, and the CLI
end to end on the shared real faces (untrained network: only the plumbing is checked)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tracker.errors import TrackerError
from train import evaluate_real

XML = """<?xml version='1.0' encoding='ISO-8859-1'?>
<dataset><name>test</name><images>
  <image file='a.jpg'>
    <box top='10' left='20' width='30' height='31'>{parts_a}</box>
    <box top='0' left='0' width='5' height='5' ignore='1'/>
    <box top='50' left='60' width='40' height='40'>{parts_b}</box>
  </image>
  <image file='sub/b.jpg'><box top='1' left='2' width='3' height='4'>{parts_c}</box></image>
</images></dataset>
"""


def _parts(offset: float, reverse: bool = False, count: int = 68) -> str:
    names = range(count - 1, -1, -1) if reverse else range(count)  # imglab order is not guaranteed
    return "".join(f"<part name='{k:02d}' x='{offset + k}' y='{offset + 2 * k}'/>" for k in names)


def test_parse_imglab_reads_boxes_and_ordered_points(tmp_path: Path) -> None:
    path = tmp_path / "testing_with_face_landmarks.xml"
    path.write_text(XML.format(parts_a=_parts(0), parts_b=_parts(100, reverse=True), parts_c=_parts(5)))
    faces = evaluate_real.parse_imglab(path)
    assert [(f.image, f.face, f.split) for f in faces] == [
        (tmp_path / "a.jpg", 0, "testing"), (tmp_path / "a.jpg", 1, "testing"), (tmp_path / "sub" / "b.jpg", 0, "testing"),
    ]
    assert np.array_equal(faces[0].box, [20, 10, 50, 41])
    k = np.arange(68)
    # dlib's integer pixel centres -> the tracker's continuous coordinates (+0.5)
    assert np.allclose(faces[0].points, np.c_[k, 2 * k] + 0.5)
    assert np.allclose(faces[1].points, np.c_[100 + k, 100 + 2 * k] + 0.5)


def test_parse_imglab_rejects_incomplete_faces(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(XML.format(parts_a=_parts(0), parts_b=_parts(0, count=67), parts_c=_parts(0)))
    with pytest.raises(TrackerError, match="expected 0-67"):
        evaluate_real.parse_imglab(path)


@pytest.mark.shared
def test_the_shared_dlib_faces(shared_path: Path) -> None:
    folder = shared_path / "real-faces" / "dlib-faces"
    if not (folder / "testing_with_face_landmarks.xml").is_file():
        pytest.skip("dlib example faces not found")
    faces = evaluate_real.annotated_faces(folder)
    assert len(faces) == 43
    assert all(f.points.shape == (68, 2) and f.image.is_file() for f in faces)
    assert all(37 <= f.box[2] - f.box[0] <= 110 for f in faces)


def test_match_boxes_is_one_to_one_above_the_threshold() -> None:
    annotations = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [0, 0, 10, 9]], dtype=float)
    detections = np.array([[1, 0, 11, 10], [50, 50, 60, 60]], dtype=float)
    matches = evaluate_real.match_boxes(annotations, detections)
    assert matches[0] == (0, pytest.approx(90 / 110))  # the better of the two overlapping annotations
    assert matches[1] == (None, 0.0)
    assert matches[2][0] is None  # its detection is taken
    assert evaluate_real.match_boxes(annotations, np.zeros((0, 4))) == [(None, 0.0)] * 3


def test_nme_against_a_hand_computed_case() -> None:
    truth = np.zeros((1, 68, 2))
    truth[0, :, 0] = np.arange(68)
    truth[0, 45] = truth[0, 36] + [10.0, 0.0]  # inter-ocular distance 10 px
    shifted = truth + [3.0, 4.0]  # every point 5 px off
    assert evaluate_real.nme_percent(shifted, truth) == pytest.approx([50.0])
    assert evaluate_real.nme_percent(shifted, truth, with_jaw=False) == pytest.approx([50.0])
    jaw_only = truth.copy()
    jaw_only[0, :17] += [3.0, 4.0]  # only the 17 jaw points off by 5 px
    assert evaluate_real.nme_percent(jaw_only, truth) == pytest.approx([100 * 17 * 5 / 68 / 10])
    assert evaluate_real.nme_percent(jaw_only, truth, with_jaw=False) == pytest.approx([0.0])


def test_jitter_ignores_constant_velocity_and_measures_alternation() -> None:
    rng = np.random.default_rng(0)
    base, velocity = rng.normal(size=(68, 2)) * 50, rng.normal(size=(68, 2))
    t = np.arange(10)[:, None, None]
    assert np.allclose(evaluate_real.jitter(base + velocity * t), 0.0)
    # +-a about a moving path: the second difference is 4a at every frame
    a = np.array([0.3, 0.4])
    wobble = base + velocity * t + np.where(t % 2 == 0, 1.0, -1.0) * a
    assert np.allclose(evaluate_real.jitter(wobble), 4 * 0.5)
    scale = np.full(10, 20.0)
    assert np.allclose(evaluate_real.jitter(wobble, scale), 4 * 0.5 / 20.0)


def test_jitter_meter_averages_within_runs_only() -> None:
    meter = evaluate_real.JitterMeter()
    assert math.isnan(meter.mean)
    a = np.array([[0.3, 0.4]])
    for index in (0, 1, 2, 3):  # one run of 4 frames: 2 triples of 4|a| = 2
        meter.push(index, 7, (-1) ** index * a, scale=0.5)
    for index in (5, 6):  # after a gap: too short for a triple
        meter.push(index, 7, 100 * a)
    meter.push(7, 8, -100 * a)  # a new track: no triple across it
    assert meter.count == 2 and meter.mean == pytest.approx(4.0)


@pytest.mark.shared
def test_cli_end_to_end_on_the_shared_faces(untrained_checkpoint: Path, shared_path: Path, tmp_path: Path, capsys) -> None:
    videos = shared_path / "real-faces" / "videos"
    clips = [videos / "single_face.mp4", videos / "no_face.mp4"]
    if not all(p.is_file() for p in clips) or not (shared_path / "real-faces" / "dlib-faces").is_dir():
        pytest.skip("shared real faces not found")
    out_csv, out_json = tmp_path / "faces.csv", tmp_path / "report.json"
    code = evaluate_real.main(
        ["--checkpoint", str(untrained_checkpoint), "--max-frames", "10", "--videos", *map(str, clips), "--csv", str(out_csv), "--json", str(out_json)]
    )
    printed = capsys.readouterr().out
    print(printed)
    assert code == 0
    assert "pseudo ground truth" in printed.lower() and "torch threads 1" in printed
    assert "| head model, projected (ours) | 43 |" in printed and "| MediaPipe 68 subset (raw) | 43 |" in printed
    assert "| single_face.mp4 | 10 | 100.0% |" in printed and "| no_face.mp4 | 10 | 0.0% |" in printed
    report = json.loads(out_json.read_text())
    assert len(report["images"]["faces"]) == 43 and len(out_csv.read_text().splitlines()) == 44
    for summary in report["images"]["summary"]:
        assert summary["detected"] >= 35
        assert all(math.isfinite(summary[k]) for k in ("nme68_mean", "nme68_median", "nme51_mean", "nme51_median"))
    assert report["images"]["summary"][1]["nme51_mean"] < 8  # MediaPipe's own points do not depend on the network
    single, empty = report["videos"]["rows"]
    assert single["triples"] == 8
    assert all(math.isfinite(single[k]) and single[k] > 0 for k in ("fps", "jitter_landmarks_percent", "jitter_mediapipe_percent", "jitter_mesh_mm"))
    assert empty["detected"] == 0 and empty["jitter_mesh_mm"] is None


def test_missing_material_is_a_clear_error(tmp_path: Path, capsys) -> None:
    code = evaluate_real.main(["--checkpoint", "unused.pt", "--data", str(tmp_path / "nowhere")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.shared
@pytest.mark.parametrize(("extra", "message"), [
    (["--flame-dir", "FLAME"], "flame is fitted without its network here"),
    (["--refine-start", "pnp"], "sets the refinement's start itself"),
])
def test_ablation_refuses_settings_it_would_override(shared_path, capsys, extra, message) -> None:
    """The ablation varies N2FNet's part for the head model it regresses: FLAME fitted beside an
    ICT checkpoint, or a start of the user's, is refused before anything is tracked."""
    from tracker.live.options import DEFAULT_CHECKPOINT

    argv = ["--checkpoint", str(DEFAULT_CHECKPOINT), "--data", str(shared_path / "real-faces"), "--ablation", "--videos-only", *extra]
    assert evaluate_real.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_offline_videos_are_tracked_as_the_batch_tracks_them(untrained_checkpoint: Path, shared_path: Path, tmp_path: Path, capsys) -> None:
    videos = shared_path / "real-faces" / "videos"
    out_json = tmp_path / "report.json"
    code = evaluate_real.main(["--checkpoint", str(untrained_checkpoint), "--max-frames", "10", "--videos-only", "--offline",
                               "--videos", str(videos / "single_face.mp4"), str(videos / "no_face.mp4"), "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert code == 0 and "offline tracker (two passes, zero-lag smoothing)" in printed
    report = json.loads(out_json.read_text())["videos"]
    single, empty = report["rows"]
    assert report["offline"] and single["frames"] == single["detected"] == 10 and empty["frames"] == 10 and empty["detected"] == 0
    assert single["identity_locked_frames"] == 10  # the identity pooled over the clip, given from frame 0
    assert single["offline_steps"]["first_pass_s"] > single["offline_steps"]["refit_s"] > 0 and "| single_face.mp4 | " in printed.split("offline tracker's steps")[1]
    assert all(math.isfinite(single[k]) for k in ("fps", "nme51_vs_mediapipe", "mouth_lag"))
