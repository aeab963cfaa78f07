"""Face detection (MediaPipe Face Mesh) on real photos, the iBUG-68 subset against dlib's 68-point
annotations, and the smoothed DECA-style face crop."""

from __future__ import annotations

import collections
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest
import torch

from tracker.errors import TrackerError
from tracker.face.detection import (
    MEDIAPIPE_68,
    FaceCropper,
    FaceLandmarks,
    FaceMeshDetector,
    landmarks68_from_mesh,
)
from tracker.geometry.crop import crop_images


def _image(shared_path, name):
    path = shared_path / "real-faces" / "images" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return cv2.imread(str(path))


@pytest.fixture(scope="module")
def detector():
    with FaceMeshDetector(max_faces=3, static_images=True) as det:
        yield det


@pytest.fixture(scope="module")
def single_face(shared_path, detector):
    image = _image(shared_path, "single_face.jpg")
    return image, detector.detect(image)


def test_mapping_table_is_a_68_subset():
    assert len(MEDIAPIPE_68) == 68 and len(set(MEDIAPIPE_68)) == 68
    assert all(0 <= i < 468 for i in MEDIAPIPE_68)
    points = np.arange(478 * 3, dtype=np.float32).reshape(478, 3)
    assert np.array_equal(landmarks68_from_mesh(points), points[list(MEDIAPIPE_68), :2])


@pytest.mark.shared
def test_single_face_has_478_points_inside_the_image(single_face):
    image, faces = single_face
    assert len(faces) == 1
    face = faces[0]
    height, width = image.shape[:2]
    assert face.points.shape == (478, 3) and face.points.dtype == np.float32
    assert face.image_size == (width, height)
    xy = face.points[:, :2]
    assert (xy >= 0).all() and (xy[:, 0] <= width).all() and (xy[:, 1] <= height).all()
    assert 150 < face.size < 300  # the face spans about 220 px of the 572 x 562 photo
    # relative depth in pixels of x's scale: the face is about as deep as it is wide, not 500x off
    assert 0.3 < np.ptp(face.points[:, 2]) / np.ptp(xy[:, 0]) < 1.5
    lm68 = face.landmarks68
    assert lm68.shape == (68, 2)
    assert lm68[36, 0] < lm68[45, 0]  # dlib's 36 (the subject's right eye) is on the image left
    assert lm68[8, 1] > lm68[30, 1] > lm68[27, 1]  # chin below the nose tip below the bridge


@pytest.mark.shared
def test_no_face_gives_an_empty_list(shared_path, detector):
    assert detector.detect(_image(shared_path, "free-mountain-vector-01.jpg")) == []


@pytest.mark.shared
def test_several_faces_with_the_full_range_detector(shared_path):
    image = _image(shared_path, "multi_face.jpg")
    with FaceMeshDetector(max_faces=6, static_images=True, full_range=True) as det:
        faces = det.detect(image)
    # five faces of about 100 px in 1000 x 667 (the README says six; five are visible)
    print(f"multi_face.jpg: {len(faces)} faces, sizes {[round(f.size) for f in faces]}")
    assert len(faces) >= 4
    sizes = [f.size for f in faces]
    assert sizes == sorted(sizes, reverse=True)
    centres = np.array([f.points[:, :2].mean(0) for f in faces])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(faces)) * 1e9
    assert gaps.min() > 50  # distinct faces, no duplicates


@pytest.mark.shared
def test_region_detection_maps_back_to_frame_pixels(single_face, detector):
    image, faces = single_face
    whole = faces[0].points
    centre, side = whole[:, :2].mean(0), faces[0].size * 2.2
    zoomed = detector.detect(image, region=(centre[0] - side / 2, centre[1] - side / 2, side), region_size=320)
    assert zoomed
    error = np.abs(zoomed[0].points - whole).mean(0)
    assert error[0] < 0.02 * faces[0].size and error[1] < 0.02 * faces[0].size and error[2] < 0.03 * faces[0].size


def test_bad_input_and_closed_detector_raise():
    det = FaceMeshDetector(static_images=True)
    with pytest.raises(TrackerError):
        det.detect(np.zeros((10, 10), np.uint8))
    det.close()
    with pytest.raises(TrackerError):
        det.detect(np.zeros((10, 10, 3), np.uint8))


def _dlib_faces(folder):
    faces = []
    for name in ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml"):
        for image in ET.parse(folder / name).getroot().iter("image"):
            for box in image.iter("box"):
                parts = sorted(box.iter("part"), key=lambda p: int(p.get("name")))
                # dlib's pixel centres are integers; ours are at j + 0.5
                points = np.array([[float(p.get("x")), float(p.get("y"))] for p in parts]) + 0.5
                rect = [float(box.get(k)) for k in ("left", "top", "width", "height")]
                faces.append((image.get("file"), rect, points))
    return faces


@pytest.mark.shared
def test_68_subset_against_dlib_annotations(shared_path, detector):
    """NME (mean point error / outer-eye-corner distance 36-45) of our 68 subset vs dlib's 68-point
    model on its example photos. The faces are 37-60 px (hand boxes), too small for Face Mesh's
    own detector, so each face's hand box, enlarged 3x about its centre, is resampled to 256 px
    (``detect(region=...)``)."""
    folder = shared_path / "real-faces" / "dlib-faces"
    if not (folder / "testing_with_face_landmarks.xml").is_file():
        pytest.skip("dlib example faces not found")
    per_image = collections.defaultdict(list)
    per_point = []
    for file, (left, top, width, height), truth in _dlib_faces(folder):
        image = cv2.imread(str(folder / file))
        side = 3 * max(width, height)
        region = (left + width / 2 - side / 2, top + height / 2 - side / 2, side)
        found = detector.detect(image, region=region, region_size=256)
        assert found, f"no face found in {file} at {region}"
        ocular = np.linalg.norm(truth[36] - truth[45])
        error = np.linalg.norm(found[0].landmarks68 - truth, axis=1) / ocular  # nearest the region centre
        per_image[file].append(error.mean())
        per_point.append(error)
    per_point = np.array(per_point)
    print("\nimage              faces   NME")
    for file, values in per_image.items():
        print(f"{file:18s} {len(values):5d} {np.mean(values):6.3f}")
    print(f"all {len(per_point)} faces: NME {per_point.mean():.3f} (jaw 0-16 {per_point[:, :17].mean():.3f}, inner 17-67 {per_point[:, 17:].mean():.3f})")
    assert len(per_point) == 43
    assert per_point.mean() < 0.07
    assert per_point[:, 17:].mean() < 0.06 and per_point[:, :17].mean() < 0.11
    assert max(np.mean(v) for v in per_image.values()) < 0.09


# ----------------------------------------------------------------------------- cropper


def _face(points, size=(640, 480)):
    return FaceLandmarks(points=np.asarray(points, dtype=np.float32), image_size=size)


@pytest.mark.shared
def test_crop_box_image_and_landmarks_follow_the_deca_rule(single_face):
    image, faces = single_face
    cropper = FaceCropper(alpha=1.4, out_size=256)
    crop = cropper(image, faces, timestamp=0.0)[0]
    assert crop.image.shape == (256, 256, 3) and crop.image.dtype == np.uint8
    assert np.allclose(crop.box, crop.raw_box)  # the first frame of a track passes through
    expected = cropper.boxes(faces)[0]
    lm = faces[0].landmarks68
    side = (lm.max(0) - lm.min(0)).max() * 1.4
    assert np.allclose(expected, [*((lm.max(0) + lm.min(0)) / 2 - side / 2), side], atol=1e-3)
    reference = crop_images(torch.from_numpy(image).permute(2, 0, 1)[None].float(), torch.tensor(crop.box[None], dtype=torch.float32), 256)
    reference = reference[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(crop.image.astype(int) - reference).max() <= 1
    # landmarks in crop pixels: the 68 subset spans out_size / alpha, centred
    lm_crop = crop.landmarks68
    assert np.isclose((lm_crop.max(0) - lm_crop.min(0)).max(), 256 / 1.4, atol=1e-2)
    assert np.allclose((lm_crop.max(0) + lm_crop.min(0)) / 2, 128, atol=1e-2)
    assert np.allclose(crop.landmarks[:, 2], faces[0].points[:, 2] * crop.scale, rtol=1e-5, atol=1e-3)


@pytest.mark.shared
def test_smoothing_removes_jitter_and_follows_motion(single_face):
    _, faces = single_face
    image = np.zeros((1, 1, 3), np.uint8)  # only the boxes matter here (the crops come out empty)
    base = faces[0].points
    rng = np.random.default_rng(0)
    fps = 30.0
    cropper = FaceCropper()
    raw, smoothed = [], []
    for i in range(60):  # a static face whose landmarks jitter by ~2 px (rigid) + 0.5 px (each)
        points = base.copy()
        points[:, :2] += rng.normal(0, 2.0, 2) + rng.normal(0, 0.5, (len(points), 2))
        crop = cropper(image, [_face(points)], i / fps)[0]
        raw.append(crop.raw_box)
        smoothed.append(crop.box)
    jitter_raw = np.std(np.array(raw)[10:], axis=0)
    jitter_smooth = np.std(np.array(smoothed)[10:], axis=0)
    print(f"box jitter raw {jitter_raw.round(2)} px -> smoothed {jitter_smooth.round(2)} px")
    assert (jitter_smooth < 0.5 * jitter_raw).all()

    cropper = FaceCropper()
    side = cropper.boxes(faces)[0, 2]
    lags = []
    for i in range(60):  # moving right at one box side per second
        points = base.copy()
        points[:, 0] += side * i / fps
        crop = cropper(image, [_face(points)], i / fps)[0]
        lags.append((crop.raw_box[0] - crop.box[0]) / side)
        assert crop.track_id == 0
    print(f"lag at one side per second: {100 * np.mean(lags[20:]):.1f}% of the side")
    assert 0 <= np.mean(lags[20:]) < 0.08


def test_face_lost_resets_the_track():
    rng = np.random.default_rng(1)
    points = np.c_[rng.uniform(200, 300, (478, 2)), rng.normal(0, 10, 478)]
    frame = np.zeros((480, 640, 3), np.uint8)
    cropper = FaceCropper()
    first = cropper(frame, [_face(points)], 0.0)[0]
    cropper(frame, [_face(points + [5, 0, 0])], 0.033)
    assert cropper(frame, [], 0.066) == []
    again = cropper(frame, [_face(points + [40, 0, 0])], 0.1)[0]
    assert again.track_id != first.track_id
    assert np.allclose(again.box, again.raw_box)  # no blending with the lost face


def test_several_faces_largest_first_and_stable_ids():
    rng = np.random.default_rng(2)
    unit = np.c_[rng.uniform(-1, 1, (478, 2)), rng.normal(0, 0.1, 478)]
    small = unit * [40, 40, 40] + [150, 200, 0]
    large = unit * [70, 70, 70] + [450, 220, 0]
    frame = np.zeros((480, 640, 3), np.uint8)
    only = FaceCropper(max_faces=1)(frame, [_face(small), _face(large)], 0.0)
    assert len(only) == 1 and np.isclose(only[0].face.points[:, 0].mean(), large[:, 0].mean())
    cropper = FaceCropper(max_faces=2)
    first = cropper(frame, [_face(small), _face(large)], 0.0)
    assert len(first) == 2 and first[0].box[2] > first[1].box[2]  # the large face first
    large_id, small_id = first[0].track_id, first[1].track_id
    assert large_id != small_id
    later = cropper(frame, [_face(small + [-2, 1, 0]), _face(large + [3, 0, 0])], 0.033)
    assert [c.track_id for c in later] == [large_id, small_id]  # each face keeps its id


def _frames(shared_path, name, count):
    path = shared_path / "real-faces" / "videos" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    capture = cv2.VideoCapture(str(path))
    frames = [capture.read()[1] for _ in range(count)]
    capture.release()
    if any(frame is None for frame in frames):
        pytest.skip(f"could not decode {path}")
    return frames


@pytest.mark.shared
def test_video_tracking_then_a_clip_without_face(shared_path):
    """Tracking mode on a few frames of a real clip, then frames without a face: empty lists and
    the cropper drops the track."""
    cropper = FaceCropper()
    with FaceMeshDetector(max_faces=1) as det:
        crops = [cropper(f, det.detect(f), i / 30) for i, f in enumerate(_frames(shared_path, "single_face.mp4", 5))]
        assert all(len(c) == 1 for c in crops)
        assert len({c[0].track_id for c in crops}) == 1
        steps = np.abs(np.diff([c[0].box for c in crops], axis=0)).max(0)
        assert (steps < 0.05 * crops[0][0].box[2]).all()
        det.reset()
        for i, frame in enumerate(_frames(shared_path, "no_face.mp4", 3)):
            assert det.detect(frame) == []
            assert cropper(frame, [], 1 + i / 30) == []
