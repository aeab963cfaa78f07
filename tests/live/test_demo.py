"""The demo source (``tracker.live.demo``): its script, its mapping to ICT, its eyes against the
tracker's gaze convention, and its renders through MediaPipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tracker.errors import TrackerError
from tracker.fitting.arkit import (
    ARKIT_INDEX,
    EYE_LOOK_FULL,
    arkit_to_ict,
    gaze_weights,
    ict_to_arkit_matrix,
)
from tracker.head_models import load_head_model
from tracker.live.demo import (
    SCRIPTED_SHAPES,
    DemoPerformer,
    demo_script,
    eye_rotations,
    open_demo_source,
)


@pytest.fixture(scope="module")
def ict_model(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


@pytest.fixture(scope="module")
def flame_model(tmp_path_factory):
    from tests.flame_factory import make_flame_dir

    return load_head_model("flame", make_flame_dir(tmp_path_factory.mktemp("flame")))


def test_script_performs_each_shape_alone_then_blinks_turns_and_speech() -> None:
    script = demo_script()
    assert script.weights.shape == (len(script), 52) and script.angles.shape == (len(script), 3)
    assert [s.start for s in script.segments[1:]] == [s.stop for s in script.segments[:-1]] and script.segments[-1].stop == len(script)
    alone = [s for s in script.segments if s.shape is not None]
    assert [s.shape for s in alone] == list(SCRIPTED_SHAPES) and "tongueOut" not in SCRIPTED_SHAPES and len(alone) == 51
    for segment in alone:
        rows = script.weights[segment.start : segment.stop]
        k = ARKIT_INDEX[segment.shape]
        assert rows[:, k].max() == pytest.approx(1.0, abs=0.01) and rows[0, k] == 0 and rows[-1, k] == 0
        assert np.delete(rows, k, axis=1).max() == 0 and not script.angles[segment.start : segment.stop].any()
    labels = [s.label for s in script.segments]
    assert labels[0] == "neutral" and labels.count("blink") == 3 and "wink left" in labels and "wink right" in labels
    wink = next(s for s in script.segments if s.label == "wink left")
    assert script.weights[wink.start : wink.stop, ARKIT_INDEX["eyeBlinkLeft"]].max() == 1.0
    assert script.weights[wink.start : wink.stop, ARKIT_INDEX["eyeBlinkRight"]].max() == 0.0
    turns = np.concatenate([script.angles[s.start : s.stop] for s in script.segments if s.label == "head turn"])
    assert np.degrees(np.abs(turns).max(0)) == pytest.approx([30.0, 15.0, 12.0], abs=0.1)
    speech = next(s for s in script.segments if s.label == "speech")
    assert script.weights[speech.start : speech.stop, ARKIT_INDEX["jawOpen"]].std() > 0.05
    assert np.array_equal(demo_script().weights, script.weights)  # the same performance every time
    with pytest.raises(TrackerError, match="tongueOut"):
        demo_script(shapes=("tongueOut",))


def test_arkit_weights_map_to_ict_and_back(ict_model) -> None:
    weights = np.random.default_rng(0).uniform(0, 1, (5, 52)).astype(np.float32)
    weights[:, ARKIT_INDEX["tongueOut"]] = 0  # ICT has no tongue
    ict = arkit_to_ict(weights, ict_model.expression_names)
    assert ict.shape == (5, 53)
    np.testing.assert_allclose(ict @ ict_to_arkit_matrix(ict_model.expression_names).T, weights, atol=1e-6)
    names = list(ict_model.expression_names)
    assert (ict[:, names.index("cheekPuff_L")] == weights[:, ARKIT_INDEX["cheekPuff"]]).all()


@pytest.mark.parametrize("side", ["Left", "Right"])
@pytest.mark.parametrize("direction", ["Out", "In", "Up", "Down"])
def test_eyes_turn_as_the_tracker_reads_gaze(side: str, direction: str) -> None:
    """An eyeLook weight turns that eye so that the tracker's own mapping (``gaze_weights``, fed
    the angles of the turned forward axis) reads the same weight back, and the other eye stays."""
    weights = np.zeros(52)
    weights[ARKIT_INDEX[f"eyeLook{direction}{side}"]] = 0.5
    rotations = eye_rotations(weights)
    eye = 0 if side == "Left" else 1
    x, y, z = rotations[eye] @ [0.0, 0.0, 1.0]
    angles = np.full((2, 2), np.nan)
    angles[eye] = (math.atan2(x, z), math.atan2(-y, math.hypot(x, z)))  # eye_gaze's (yaw, pitch)
    assert math.degrees(math.acos(min(1.0, z))) == pytest.approx(math.degrees(0.5 * EYE_LOOK_FULL), abs=1e-6)
    np.testing.assert_allclose(gaze_weights(np.zeros(52), angles), weights, atol=1e-6)
    np.testing.assert_allclose(rotations[1 - eye], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rotations[eye], Rotation.from_matrix(rotations[eye]).as_matrix(), atol=1e-12)  # a rotation


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_renders_show_a_face_mediapipe_finds_with_lids_that_close(ict_model) -> None:
    from tracker.face.detection import FaceMeshDetector
    from train.evaluate_real import openings

    script = demo_script()
    performer = DemoPerformer(ict_model, script)
    blink = next(s for s in script.segments if s.shape == "eyeBlinkLeft")
    turn = next(s for s in script.segments if s.label == "head turn")
    frames = {"neutral": 0, "blink": (blink.start + blink.stop) // 2, "turned": (turn.start + turn.stop) // 2}
    found = {}
    with FaceMeshDetector(max_faces=1, static_images=True) as detector:
        for name, t in frames.items():
            image = performer.frame(t)
            assert image.shape == (480, 640, 3) and image.dtype == np.uint8
            faces = detector.detect(image)
            assert len(faces) == 1, name
            found[name] = faces[0]
    # the left eye (the face's own left: the image's right) closes; MediaPipe's lids follow it
    neutral, closed = (openings_per_eye(found[name].landmarks68) for name in ("neutral", "blink"))
    assert closed[0] < 0.4 * neutral[0] and closed[1] > 0.8 * neutral[1]
    assert openings(found["neutral"].landmarks68)[1] > 0.05
    # the head turned by 30 degrees: the nose tip moves sideways in the image by far more than a blink's noise
    assert abs(found["turned"].landmarks68[30, 0] - found["neutral"].landmarks68[30, 0]) > 20


def openings_per_eye(points: np.ndarray) -> tuple[float, float]:
    """(68, 2) iBUG points -> the lid gaps of the face's (left, right) eye, px (iBUG 42-47 is the
    image's right eye: the face's left)."""
    left = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in ((43, 47), (44, 46))])
    right = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in ((37, 41), (38, 40))])
    return float(left), float(right)


def test_source_delivers_the_script_in_order_at_its_rate(ict_model) -> None:
    script = demo_script(shapes=("jawOpen",), shape_frames=5, gap_frames=1, turns=False, speech_frames=0)
    with open_demo_source(ict_model, script) as source:
        frames = list(source)
    assert source.frame_count == len(script) == len(frames) and source.name == "demo" and source.size == (640, 480)
    assert [f.index for f in frames] == list(range(len(script)))
    assert [f.source_time for f in frames] == pytest.approx([t / 30.0 for t in range(len(script))])
    jaw = next(s for s in script.segments if s.shape == "jawOpen")
    assert not np.array_equal(frames[jaw.start + 2].image, frames[0].image)  # the mouth opened
    with open_demo_source(ict_model, script, loop=True) as source:
        looped = [source.read(timeout=10) for _ in range(len(script) + 2)]
    assert source.frame_count is None and [f.source_time for f in looped[-2:]] == pytest.approx([len(script) / 30.0, (len(script) + 1) / 30.0])
    np.testing.assert_array_equal(looped[len(script)].image, frames[0].image)


def test_the_demo_needs_an_ict_head(flame_model) -> None:
    with pytest.raises(TrackerError, match="ICT"):
        DemoPerformer(flame_model, demo_script(shapes=("jawOpen",), turns=False, speech_frames=0))
