"""The offline tracker (tracker.offline.two_pass) against the live tracker on the same frames of
a real video, with the shipped network: the same frames and faces, one identity per track from
frame 0, landmarks as close to MediaPipe's, much steadier, and the mouth not delayed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracker.live.face_tracker import FaceTracker
from tracker.live.options import DEFAULT_CHECKPOINT, TrackerOptions
from tracker.live.pipeline import Pipeline
from tracker.live.results import TrackingResult
from tracker.live.sources import open_source
from tracker.offline.two_pass import UNSMOOTHED, OfflineTracker
from train.evaluate_real import jitter, nme_percent, openings

FRAMES = 72  # the whole of single_face.mp4


@pytest.fixture(scope="module")
def video(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos" / "single_face.mp4"


@pytest.fixture(scope="module")
def tracker(ict_npz_path: Path):
    tracker = FaceTracker.from_options(TrackerOptions(checkpoint=DEFAULT_CHECKPOINT, runtime="torch", ict_model=ict_npz_path))
    yield tracker
    tracker.close()


def live_results(tracker: FaceTracker, video: Path) -> list[TrackingResult]:
    results: list[TrackingResult] = []
    tracker.reset()
    Pipeline(open_source(video, realtime=False), tracker, [results.append], mode="sequential", max_frames=FRAMES).run()
    return results


def offline_results(tracker: FaceTracker, video: Path, **kwargs) -> tuple[list[TrackingResult], object]:
    results: list[TrackingResult] = []
    opened: list[str] = []

    def sinks(source):
        opened.append(source.name)
        return [results.append]

    stats = OfflineTracker(tracker, **kwargs).track(lambda: open_source(video, realtime=False), sinks, FRAMES)
    assert len(opened) == 1, "the output sinks are made once, for the second pass"
    return results, stats


def landmarks(results: list[TrackingResult]) -> tuple[np.ndarray, np.ndarray]:
    """(T, 68, 2) ours and MediaPipe's 68-point subset, the first face of each frame."""
    return np.stack([r.faces[0].landmarks68 for r in results]), np.stack([r.faces[0].mesh_landmarks68 for r in results])


@pytest.mark.shared
def test_offline_tracks_the_same_frames_steadier_and_without_lag(tracker: FaceTracker, video: Path) -> None:
    live = live_results(tracker, video)
    offline, stats = offline_results(tracker, video)
    assert [r.frame.index for r in offline] == [r.frame.index for r in live] == list(range(FRAMES))
    assert all(len(r.faces) == 1 for r in live) and all(len(r.faces) == 1 for r in offline)
    assert stats.frames == stats.face_frames == FRAMES and stats.tracks == 1
    assert stats.output is not None and stats.observe_s > stats.refit_s > 0

    # one identity for the whole track, given from frame 0; the live tracker calibrates first
    faces = [r.faces[0] for r in offline]
    assert {f.identity_state for f in faces} == {"given"} and live[0].faces[0].identity_state == "calibrating"
    identity = np.stack([f.params["identity"].numpy() for f in faces])
    assert np.array_equal(identity, np.broadcast_to(identity[0], identity.shape))
    # the network's own prediction rides along live; the offline result is smoothed, not a prediction
    assert all(r.faces[0].network is not None for r in live) and all(f.network is None for f in faces)
    # ARKit weights: raw and profiled, in range
    assert all(f.avatar is not None and f.avatar.raw_weights is not None and 0 <= f.avatar.weights.min() and f.avatar.weights.max() <= 1 for f in faces)

    ours_live, peer = landmarks(live)
    ours_offline, peer_offline = landmarks(offline)
    assert np.array_equal(peer, peer_offline), "the offline pass saw other MediaPipe points"
    nme = {name: float(nme_percent(points, peer, with_jaw=False).mean()) for name, points in (("live", ours_live), ("offline", ours_offline))}
    steady = {name: float(jitter(points).mean()) for name, points in (("live", ours_live), ("offline", ours_offline))}
    assert nme["offline"] <= 1.03 * nme["live"], nme
    assert steady["offline"] < 0.6 * steady["live"], steady

    # the mouth opening peaks with MediaPipe's: lag 0 (the live One-Euro filter is allowed its delay)
    mouth, truth = openings(ours_offline)[0], openings(peer)[0]
    mouth, truth = mouth - mouth.mean(), truth - truth.mean()
    shifts = list(range(-5, 6))
    correlation = [np.dot(mouth[max(0, s):FRAMES + min(0, s)], truth[max(0, -s):FRAMES - max(0, s)]) for s in shifts]
    assert shifts[int(np.argmax(correlation))] == 0
    assert np.corrcoef(mouth, truth)[0, 1] > 0.95


@pytest.mark.shared
def test_the_zero_lag_smoother_is_what_steadies_the_refit(tracker: FaceTracker, video: Path) -> None:
    smoothed, _ = offline_results(tracker, video)
    unsmoothed, _ = offline_results(tracker, video, smoothing=UNSMOOTHED)
    assert {f.identity_state for r in unsmoothed for f in r.faces} == {"given"}
    steady = [float(jitter(landmarks(results)[0]).mean()) for results in (smoothed, unsmoothed)]
    assert steady[0] < 0.6 * steady[1], steady


@pytest.mark.shared
def test_ctrl_c_in_the_first_pass_opens_no_output_and_leaves_the_tracker_as_it_was(tracker: FaceTracker, video: Path) -> None:
    calibration = tracker.fitter.calibration_frames

    def interrupt(result: TrackingResult) -> None:
        if result.frame.index == 10:
            raise KeyboardInterrupt

    opened = []
    with pytest.raises(KeyboardInterrupt):
        OfflineTracker(tracker).track(lambda: open_source(video, realtime=False), lambda source: opened.append(source) or [], FRAMES,
                                      first_pass_sinks=[interrupt])
    assert not opened, "the output pass began: a take would have been started"
    assert tracker.fitter.calibration_frames == calibration and tracker.fitter.identities() == {}
