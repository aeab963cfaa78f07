"""ARKit weights and gaze (tracker.fitting.arkit; the head angles: tests/geometry/test_camera_crop.py), the ICT fit that gives FLAME its weights
(tracker.fitting.arkit_side_fit), and their recording; checked against scipy, geometry, and real video."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from tests.flame_factory import make_flame_dir
from tracker.fitting.arkit import (
    ARKIT_INDEX,
    ARKIT_NAMES,
    EYE_LOOK_FULL,
    LID_SHAPES,
    NON_EYE_SHAPES,
    Eyeballs,
    WeightFilter,
    eye_gaze,
    gaze_weights,
    ict_to_arkit_matrix,
)
from tracker.geometry import camera
from tracker.head_models import load_head_model
from tracker.head_models.flame import FLAME
from tracker.live.face_tracker import FaceTracker
from tracker.live.options import DEFAULT_CHECKPOINT, TrackerOptions
from tracker.n2fnet import N2FNet
from tracker.n2fnet.checkpoint import save_checkpoint
from tracker.takes.recording import Recorder, journal_path, read_take
from train.evaluate_real import evaluate_video

FOCAL, PRINCIPAL = np.array([800.0, 800.0]), np.array([320.0, 240.0])


@pytest.fixture(scope="module")
def ict(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


def test_arkit_names_follow_apples_order():
    assert len(ARKIT_NAMES) == len(set(ARKIT_NAMES)) == 52
    # indices of Unreal's EARFaceBlendShape / Live Link Face (Apple's order)
    assert [ARKIT_INDEX[n] for n in ("eyeBlinkLeft", "eyeWideRight", "jawOpen", "mouthClose", "browInnerUp", "cheekPuff", "tongueOut")] == [0, 13, 17, 18, 43, 46, 51]


def test_ict_to_arkit_mapping(ict):
    matrix = ict_to_arkit_matrix(ict.expression_names)
    names = list(ict.expression_names)
    assert matrix.shape == (52, 53)
    assert not matrix[ARKIT_INDEX["tongueOut"]].any()  # ICT has no tongue
    for split in ("browInnerUp", "cheekPuff"):  # one ARKit shape, two ICT halves: their mean
        row = matrix[ARKIT_INDEX[split]]
        assert row[names.index(split + "_L")] == row[names.index(split + "_R")] == 0.5 and row.sum() == 1.0
    for arkit, ict_shape in (("eyeBlinkLeft", "eyeBlink_L"), ("mouthSmileRight", "mouthSmile_R"), ("jawLeft", "jawLeft"), ("mouthLeft", "mouthLeft")):
        assert matrix[ARKIT_INDEX[arkit], names.index(ict_shape)] == 1.0
    assert ((matrix > 0).sum(0) == 1).all(), "every ICT shape drives exactly one ARKit weight"


def test_ict_left_is_the_faces_own_left(ict):
    """ARKit's Left is the face's own left, +x of the head frame: ICT's _L shapes must move that side."""
    names = list(ict.expression_names)
    neutral = ict.decode({"expression": torch.zeros(1, 53)})[0]
    for shape in ("eyeBlink_L", "mouthSmile_L", "browOuterUp_L"):
        expression = torch.zeros(1, 53)
        expression[0, names.index(shape)] = 1.0
        moved = (ict.decode({"expression": expression})[0] - neutral).norm(dim=1)
        assert (moved[neutral[:, 0] > 0].sum() > 5 * moved[neutral[:, 0] < 0].sum()), shape


def test_gaze_recovers_a_known_eye_direction():
    eyeballs = Eyeballs(np.array([[0.032, 0.036, 0.08], [-0.032, 0.036, 0.08]], np.float32), np.array([0.012, 0.012], np.float32))
    rotation = camera.FLIP_MATRIX @ Rotation.from_euler("YXZ", [0.2, -0.1, 0.05]).as_matrix() @ camera.FLIP_MATRIX  # yaw, pitch, roll
    translation = np.array([0.02, -0.01, 0.6])
    truth = np.array([[0.25, -0.15], [-0.1, 0.3]])  # (left, right) x (yaw, pitch)
    irises = []
    for eye, (yaw, pitch) in enumerate(truth):
        direction = np.array([np.sin(yaw) * np.cos(pitch), -np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        point_head = eyeballs.centres[eye] + eyeballs.radii[eye] * direction
        point = (rotation @ (camera.flip_matrix().numpy() @ point_head)) + translation
        irises.append(point[:2] / point[2] * FOCAL + PRINCIPAL)
    irises = np.array(irises)
    assert np.allclose(eye_gaze(eyeballs, rotation, translation, irises, FOCAL, PRINCIPAL), truth, atol=1e-4)
    assert np.allclose(eye_gaze(eyeballs, rotation, translation, irises[::-1], FOCAL, PRINCIPAL), truth, atol=1e-4), "either iris order"
    assert np.isnan(eye_gaze(eyeballs, rotation, translation, np.full((2, 2), np.nan), FOCAL, PRINCIPAL)).all()


def test_gaze_drives_the_eye_look_weights():
    weights = np.zeros(52, np.float32)
    towards_faces_left = gaze_weights(weights, np.array([[EYE_LOOK_FULL / 2, 0.0], [EYE_LOOK_FULL * 2, -EYE_LOOK_FULL]]))
    assert towards_faces_left[ARKIT_INDEX["eyeLookOutLeft"]] == pytest.approx(0.5) and towards_faces_left[ARKIT_INDEX["eyeLookInLeft"]] == 0
    assert towards_faces_left[ARKIT_INDEX["eyeLookInRight"]] == 1.0 and towards_faces_left[ARKIT_INDEX["eyeLookOutRight"]] == 0
    assert towards_faces_left[ARKIT_INDEX["eyeLookUpRight"]] == 1.0 and towards_faces_left[ARKIT_INDEX["eyeLookDownRight"]] == 0
    unknown = gaze_weights(np.full(52, 0.3, np.float32), np.full((2, 2), np.nan))
    assert np.allclose(unknown, 0.3)


@pytest.mark.shared
def test_arkit_weights_follow_a_real_speakers_mouth_and_eyes(shared_path):
    """The shipped ICT tracker on a real video: jawOpen follows MediaPipe's mouth opening and the
    blinks MediaPipe's eye closing (MediaPipe's own points, not ours)."""
    tracker = FaceTracker.from_options(TrackerOptions(checkpoint=DEFAULT_CHECKPOINT, runtime="torch"))
    try:
        row = evaluate_video(tracker, shared_path / "real-faces" / "videos" / "single_face.mp4")
    finally:
        tracker.close()
    assert row.jaw_open_correlation > 0.85 and row.blink_correlation > 0.5, (row.jaw_open_correlation, row.blink_correlation)


@pytest.mark.shared
def test_flame_tracker_gets_arkit_weights_from_the_ict_fit_beside_it(shared_path, tmp_path, ict_npz_path):
    """A FLAME tracker (generated FLAME model, untrained network, no FLAME refinement) has no
    ARKit semantics of its own: its weights come from ICT fitted to the same landmarks, and they
    follow the speaker's mouth and eyes as well as the ICT tracker's own."""
    flame_dir = make_flame_dir(tmp_path)
    torch.manual_seed(0)
    net = N2FNet.for_head_model(FLAME.from_dir(flame_dir), backbone="resnet18", input_size=64)
    checkpoint = tmp_path / "untrained_flame.pt"
    save_checkpoint(checkpoint, {"model": net.state_dict(), "n2fnet": net.config.to_dict(), "head_model": {"name": "flame", "path": None}})
    options = TrackerOptions(checkpoint=checkpoint, flame_dir=flame_dir, ict_model=ict_npz_path, runtime="torch", refine=False)
    without = FaceTracker.from_options(options)
    without.arkit_fit = None
    tracker = FaceTracker.from_options(options)  # a FLAME checkpoint: the ICT fit beside it
    try:
        row = evaluate_video(tracker, shared_path / "real-faces" / "videos" / "single_face.mp4")
        result = _track_one(without, shared_path / "real-faces" / "videos" / "single_face.mp4")
    finally:
        tracker.close()
        without.close()
    assert result.faces and result.faces[0].avatar is None, "no ICT fit: no ARKit weights for FLAME"
    assert row.jaw_open_correlation > 0.85 and row.blink_correlation > 0.5, (row.jaw_open_correlation, row.blink_correlation)
    assert row.detected == 72


def _track_one(tracker: FaceTracker, video):
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import open_source

    results = []
    Pipeline(open_source(video), tracker, [results.append], mode="sequential", max_frames=1).run()
    return results[0]


def test_avatar_values_are_recorded_and_old_layouts_still_read(tmp_path):
    groups = {"identity": 2, "expression": 53}
    arkit = np.linspace(0, 1, 52, dtype=np.float32)
    eyes = np.array([[0.1, -0.2], [0.05, np.nan]], np.float32)
    with Recorder(tmp_path / "take.npz", "ict", groups) as recorder:
        recorder.append(0.0, 0, {"identity": np.zeros(2), "expression": np.zeros(53)}, arkit=arkit, eye_angles=eyes)
        recorder.append(0.1, 1, None)
        data = recorder.journal_path.read_bytes()
    take = read_take(tmp_path / "take.npz")
    assert np.array_equal(take.arkit[0], arkit) and np.array_equal(take.eye_angles[0], eyes, equal_nan=True)
    assert np.isnan(take.arkit[1]).all() and np.isnan(take.eye_angles[1]).all()
    journal = tmp_path / "partial.npz.partial"
    journal.write_bytes(data)
    assert np.array_equal(read_take(journal).arkit[0], arkit)
    # a journal of the layout before the avatar values (tracks, no arkit / eye_angles fields)
    fields = [("timestamp", "<f8", ()), ("frame_index", "<i8", ()), ("face_found", "u1", ()), ("track_id", "<i8", ()), ("identity_state", "u1", ()),
              ("crop_box", "<f4", (3,)), ("rotation_6d", "<f4", (6,)), ("translation", "<f4", (3,)), ("focal", "<f4", (2,)), ("principal", "<f4", (2,)),
              ("params/identity", "<f4", (2,)), ("params/expression", "<f4", (53,))]
    records = np.zeros(2, np.dtype(fields))
    records["frame_index"], records["face_found"], records["track_id"] = [0, 1], [1, 1], [0, 0]
    header = json.dumps({"head_model": "ict", "groups": groups, "identity_group": "identity", "metadata": {},
                         "record_fields": [[n, d, list(s)] for n, d, s in fields], "record_size": records.dtype.itemsize + 4}).encode()
    body = b"".join(r.tobytes() + struct.pack("<I", zlib.crc32(r.tobytes())) for r in records)
    old = tmp_path / "old.npz"
    journal_path(old).write_bytes(struct.pack("<8sII", b"N2FTAKE1", len(header), zlib.crc32(header)) + header + body)
    take = read_take(old)
    assert len(take) == 2 and np.isnan(take.arkit).all() and take.eye_angles.shape == (2, 2, 2)


@pytest.mark.shared
def test_a_file_take_keeps_the_videos_own_times_and_avatar_values(shared_path, tmp_path):
    """Headless, a file is tracked as fast as it goes; its take still carries the video's times
    (what exports animate at) and every face's ARKit weights and gaze."""
    from app import live

    take_path = tmp_path / "take.npz"
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    assert live.main(["--video", str(video), "--headless", "--quiet", "--max-frames", "8", "--record", str(take_path)]) == 0
    take = read_take(take_path)
    assert np.allclose(take.media_time, np.arange(8) / 30.0, atol=1e-3) and np.array_equal(take.clock(), take.media_time)
    assert np.isfinite(take.arkit).all() and (take.arkit >= 0).all() and (take.arkit <= 1).all()
    assert np.isfinite(take.eye_angles).all() and (np.abs(take.eye_angles) < 0.7).all()


@pytest.mark.parametrize("side", ["Left", "Right"])
def test_a_wink_closes_one_eye_without_the_other_or_the_gaze(ict, side):
    """One eye closes and opens again (ICT's own blink shape of that eye, so one eye's embedded
    points move), the head still, the irises where the open eyes look straight ahead: the ICT fit
    solves the lids apart, so the other eye's blink stays below 0.1 and the gaze measured from the
    irises moves by less than 2 degrees. The winking eye's own blink must follow (above 0.6: the
    prior and the correlated eyeLook / eyeSquint shapes still take part of it, issue 25)."""
    from tracker.fitting.arkit import IRIS_CENTRES, EyeballDecoder
    from tracker.fitting.refinement import Refiner, embedded_head, single_blas_thread
    from tracker.fitting.track_fitter import TrackFitter
    from tracker.geometry.camera import FLIP
    from tracker.geometry.rotations import exp_rotation

    model, eyeballs, matrix = embedded_head(ict), EyeballDecoder(ict), ict_to_arkit_matrix(ict.expression_names)
    identity = np.random.default_rng(0).normal(size=model.identity_size) * 0.5
    blink = ict.expression_names.index("eyeBlink_L" if side == "Left" else "eyeBlink_R")
    other = ARKIT_INDEX[f"eyeBlink{'Right' if side == 'Left' else 'Left'}"]
    rotation, translation = exp_rotation(np.radians([3.0, -6.0, 1.0])), np.array([0.01, -0.02, 0.6])
    fitter = TrackFitter(Refiner(model), identity=identity)

    def pixels(points: np.ndarray, rot: np.ndarray, shift: np.ndarray) -> np.ndarray:
        camera_points = points @ (rot * FLIP).T + shift
        return FOCAL * camera_points[:, :2] / camera_points[:, 2:] + PRINCIPAL

    own, others, gaze = [], [], []
    with single_blas_thread():
        for t in range(40):
            local = np.zeros(model.local_size)
            local[blink] = 0.5 - 0.5 * np.cos(np.pi * t / 20)  # open -> closed -> open
            observed = np.zeros((478, 2))
            observed[model.mediapipe_ids] = pixels(model.points(identity, local), rotation, translation)
            open_eyes = eyeballs(model.to_params(identity, np.zeros(model.local_size)))
            observed[list(IRIS_CENTRES)] = pixels(open_eyes.centres + np.array([0.0, 0.0, 1.0]) * open_eyes.radii[:, None], rotation, translation)
            fit = fitter.fit(0, observed, FOCAL, PRINCIPAL).solution
            weights = np.clip(matrix @ fit.local, 0.0, 1.0)
            own.append(weights[ARKIT_INDEX[f"eyeBlink{side}"]])
            others.append(weights[other])
            angles = eye_gaze(eyeballs(model.to_params(fit.identity, fit.local)), fit.rotation, fit.translation, observed[list(IRIS_CENTRES)], FOCAL, PRINCIPAL)
            gaze.append(np.degrees(angles))
    gaze = np.array(gaze)
    drift = np.abs(gaze - gaze[0]).max()
    print(f"wink {side}: own blink peak {max(own):.2f}, other eye's blink at most {max(others):.3f}, gaze moved at most {drift:.2f} deg")
    assert max(own) > 0.6 and max(others) < 0.1 and drift < 2.0


@pytest.mark.parametrize("shape", ["eyeBlinkLeft", "jawOpen"])
def test_the_weight_filter_steadies_a_resting_face_and_keeps_a_fast_moves_timing(shape: str):
    """A 30 fps track: a resting weight with the solve's frame-to-frame noise, then two fast moves
    (a blink; a syllable's jaw). The filter cuts the rest noise by more than 40 %; each move keeps its
    peak frame and most of its height, and its cross-correlation with the truth peaks at 0 frames.
    The eyeLook shapes (from the irises) pass unchanged, and [0, 1] holds."""
    rng = np.random.default_rng(3)
    fps, frames = 30.0, 240
    truth = np.full(frames, 0.1)
    for start in (60, 150):
        truth[start : start + 5] = 0.1 + 0.8 * np.array([0.35, 0.85, 1.0, 0.7, 0.25])  # up fast, down slower
    weights = np.tile(rng.uniform(0.0, 1.0, len(ARKIT_NAMES)), (frames, 1))
    column = ARKIT_INDEX[shape]
    weights[:, column] = np.clip(truth + rng.normal(0.0, 0.02, frames), 0.0, 1.0)
    filt = WeightFilter()
    steady = np.stack([filt(w, i / fps) for i, w in enumerate(weights)])

    def rest_noise(series: np.ndarray) -> float:
        return float(np.abs(np.diff(series[10:55], 2)).mean())

    assert rest_noise(steady[:, column]) < 0.6 * rest_noise(weights[:, column])
    for start in (60, 150):
        window = slice(start - 3, start + 8)
        assert steady[window, column].argmax() == weights[window, column].argmax()
        assert steady[start + 2, column] > 0.8 * weights[start + 2, column]
    best = max(range(-3, 4), key=lambda k: np.corrcoef(np.roll(steady[:, column], -k), truth)[0, 1])
    assert best == 0
    gaze = [i for i in range(len(ARKIT_NAMES)) if i not in LID_SHAPES + NON_EYE_SHAPES]
    assert [ARKIT_NAMES[i] for i in gaze] == [f"eyeLook{d}{side}" for side in ("Left", "Right") for d in ("Down", "In", "Out", "Up")]
    assert np.array_equal(steady[:, gaze], weights[:, gaze])
    assert steady.min() >= 0.0 and steady.max() <= 1.0
    assert [ARKIT_NAMES[i] for i in LID_SHAPES] == [f"eye{s}{side}" for side in ("Left", "Right") for s in ("Blink", "Squint", "Wide")]


def test_the_arkit_fits_network_prior_takes_the_eyes_smoothed_and_the_rest_of_this_frame(ict):
    """ArkitFit.network_prior: the smoothed pose and eye shapes (the network's lids are noisy frame to
    frame), this frame's own mouth, jaw, brows and cheeks (the smoothing would delay them)."""
    from tracker.face.smoothing import FrameParameters
    from tracker.fitting.arkit_side_fit import ArkitFit

    size = len(ict.expression_names)
    network = FrameParameters({"expression": torch.full((size,), 0.9), "identity": torch.zeros(3)}, torch.arange(6.0), torch.ones(3))
    smoothed = FrameParameters({"expression": torch.full((size,), 0.1), "identity": torch.ones(3)}, torch.arange(6.0) + 1, torch.zeros(3))
    prior = ArkitFit(ict).network_prior(network, smoothed)
    for name, value in zip(ict.expression_names, prior.params["expression"].tolist(), strict=True):
        assert value == pytest.approx(0.1 if name.startswith("eye") else 0.9), name
    assert {n.split("_")[0] for n in ict.expression_names if n.startswith("eye")} >= {"eyeBlink", "eyeSquint", "eyeWide", "eyeLookDown"}
    assert torch.equal(prior.params["identity"], smoothed.params["identity"])
    assert torch.equal(prior.rotation_6d, smoothed.rotation_6d) and torch.equal(prior.translation, smoothed.translation)
    assert torch.equal(network.params["expression"], torch.full((size,), 0.9))  # the inputs are left as they were
