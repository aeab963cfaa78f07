"""Offline tracking of a recorded video: the whole clip is known, so every frame can use all of it.

    offline = OfflineTracker(tracker)                       # a FaceTracker (tracker.live.face_tracker)
    stats = offline.track(lambda: open_source(path, realtime=False), lambda source: [RecordingSink(...)])

Four steps, the video read twice:

1. **Observe** (the first pass): the live tracker runs over every frame, except that each track
   pools its identity over all of its frames instead of locking it after the first
   ``RefineSettings.calibration_frames``; for the head model's fit and for the ARKit weights' own
   ICT fit alike. It keeps what the later steps need of each face: its MediaPipe points, crop box
   and track, and the network's own prediction (``FaceResult.network``).
2. **Refit** (no pixels: the kept observations only): every face of every frame is fitted again,
   with its track's pooled identity given from the track's first frame, and with no causal
   smoothing: no One-Euro filters, no temporal term pulling a frame towards the one before. Its
   start and prior are the network's predictions smoothed by the zero-lag smoother.
3. **Smooth**: each track's parameters, pose, ARKit weights and gaze go through a zero-lag
   smoother over the whole track (``tracker.offline.zero_lag``; the cutoffs: ``OfflineSmoothing``).
4. **Output**: the video is read again and every frame's result, decoded from the smoothed values
   (``FaceTracker.replay``), goes to the sinks, as the pipeline's would: a recording, a meter.

The first pass is the live tracker's cost; the refit costs the landmark fits (no detection,
no cue, no network), the smoothing a banded solve per track, and the output a decode per frame.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tracker.face.detection import FaceCrop
from tracker.face.smoothing import FrameParameters
from tracker.fitting.arkit import ARKIT_NAMES, LID_SHAPES, gaze_weights
from tracker.fitting.track_fitter import TrackFitter
from tracker.geometry.rotations import matrix_to_rotation_6d, rotation_6d_to_matrix
from tracker.head_models.base import default_identity_group
from tracker.live.face_tracker import FaceTracker
from tracker.live.pipeline import Pipeline, StatsSnapshot
from tracker.live.results import Prepared, RawOutput, TrackingResult
from tracker.live.sources import Frame, FrameSource
from tracker.offline.zero_lag import lambda_for_cutoff, whittaker

EYE_LOOK_SHAPES = tuple(i for i, name in enumerate(ARKIT_NAMES) if name.startswith("eyeLook"))
DEFAULT_FPS = 30.0  # a track's frame rate when its frames carry no media time


@dataclass(frozen=True)
class OfflineSmoothing:
    """Cutoffs of the zero-lag smoother (``zero_lag.lambda_for_cutoff``: the frequency, in Hz, at
    which half the amplitude passes) per kind of value; None: not smoothed. Chosen on the real
    videos against the live tracker (docs/offline-tracking.md): the expression at 5 Hz lowered
    the mesh's eye-opening correlation with MediaPipe's below live's, 8 Hz keeps it; the lids at
    4 Hz cost blink correlation, 6 Hz keeps it; the pose at 6 Hz jitters a third more than at 4.

    pose_hz        head rotation and translation
    expression_hz  the head model's per-frame parameters (expression, jaw, ...; the identity is
                   one per track)
    weights_hz     ARKit weights away from the eyes
    lids_hz        the six lid weights (blinks are short)
    gaze_hz        the eye angles (and the eyeLook weights, which follow from them)
    """

    pose_hz: float | None = 4.0
    expression_hz: float | None = 8.0
    weights_hz: float | None = 4.0
    lids_hz: float | None = 6.0
    gaze_hz: float | None = 5.0


UNSMOOTHED = OfflineSmoothing(None, None, None, None, None)  # the refit as it comes (--no-smoothing)


@dataclass
class OfflineStats:
    """How an offline run went: frames read, frames with a face, tracks, the seconds of each step
    and the output pass's pipeline figures."""

    frames: int = 0
    face_frames: int = 0
    tracks: int = 0
    observe_s: float = 0.0
    refit_s: float = 0.0
    smooth_s: float = 0.0
    output_s: float = 0.0
    output: StatsSnapshot | None = None


@dataclass
class _Observed:
    """One frame of the first pass: where and when it was, its face crops (pixels dropped) and the
    network's prediction of each."""

    index: int
    timestamp: float
    source_time: float | None
    size: tuple[int, int]  # (height, width)
    crops: list[FaceCrop]
    networks: list[FrameParameters]

    @property
    def time(self) -> float:
        """Seconds: the media time where the frame has one, else when it was read."""
        return self.source_time if self.source_time is not None else self.timestamp


@dataclass
class _Track:
    """One track's refitted frames, then smoothed in place: ``frames`` (T,) frame indices and per
    frame its crop, parameters, raw ARKit weights and eye angles (None: no avatar), identity state,
    refinement iterations, and the face's rank among the frame's faces."""

    frames: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    crops: list[FaceCrop] = field(default_factory=list)
    values: list[FrameParameters] = field(default_factory=list)
    weights: list[np.ndarray | None] = field(default_factory=list)
    eyes: list[np.ndarray | None] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)


class OfflineTracker:
    """``FaceTracker`` over a whole recorded video in two passes (module docstring).

    tracker    the live tracker (reset before and after; its smoothing setting is kept)
    smoothing  the zero-lag smoother's cutoffs
    refit_iterations  LM iterations per frame of the refit (None: the tracker's own)
    """

    def __init__(self, tracker: FaceTracker, smoothing: OfflineSmoothing = OfflineSmoothing(), refit_iterations: int | None = None) -> None:
        self.tracker, self.smoothing, self.refit_iterations = tracker, smoothing, refit_iterations

    def track(self, open_frames: Callable[[], FrameSource], output_sinks: Callable[[FrameSource], Sequence], max_frames: int | None = None,
              first_pass_sinks: Sequence = ()) -> OfflineStats:
        """Track the video that ``open_frames()`` opens (called twice: one new FrameSource per
        pass, the same frames each time) -> OfflineStats. ``output_sinks(source)`` makes the sinks
        of the output pass when it starts (a recording is opened only then: an error or Ctrl-C in
        the first three steps leaves nothing behind); the pipeline closes them. ``first_pass_sinks``
        see the first pass's live results as they come (progress)."""
        stats = OfflineStats()
        started = time.perf_counter()
        observed, identities = self._observe(open_frames(), max_frames, first_pass_sinks)
        stats.frames = len(observed)
        stats.face_frames = sum(bool(o.crops) for o in observed)
        stats.observe_s = time.perf_counter() - started
        started = time.perf_counter()
        tracks = self._refit(observed, identities)
        stats.tracks = len(tracks)
        stats.refit_s = time.perf_counter() - started
        started = time.perf_counter()
        for track in tracks.values():
            self._smooth(track)
        stats.smooth_s = time.perf_counter() - started
        started = time.perf_counter()
        source = open_frames()
        try:
            sinks = list(output_sinks(source))
        except BaseException:
            source.stop()
            raise
        stats.output = Pipeline(source, _Replay(self.tracker, tracks), sinks, mode="sequential", max_frames=max_frames).run()
        stats.output_s = time.perf_counter() - started
        return stats

    # -- 1. observe ------------------------------------------------------------------------------
    def _fitters(self) -> list[tuple[str, TrackFitter]]:
        """The tracker's landmark fits: the head model's ("mesh", when refined) and the ARKit
        weights' own ICT fit ("arkit", when there is one)."""
        fitters = [("mesh", self.tracker.fitter)] if self.tracker.refine else []
        if self.tracker.arkit_fit is not None:
            fitters.append(("arkit", self.tracker.arkit_fit.fitter))
        return fitters

    def _observe(self, source: FrameSource, max_frames: int | None, sinks: Sequence) -> tuple[list[_Observed], dict[str, dict[int, np.ndarray]]]:
        """The first pass: the live tracker, each track pooling its identity over all its frames
        -> (every frame's observations, {fit: {track id: (K,) its identity after its last frame}})."""
        fitters = self._fitters()
        observed: list[_Observed] = []
        identities: dict[str, dict[int, np.ndarray]] = {name: {} for name, _ in fitters}

        def keep(result: TrackingResult) -> None:
            frame = result.frame
            faces = [face for face in result.faces if face.network is not None]
            observed.append(_Observed(frame.index, frame.timestamp, frame.source_time, frame.image.shape[:2],
                                      [replace(face.crop, image=None) for face in faces], [face.network for face in faces]))
            alive = {face.track_id for face in faces}
            for name, fitter in fitters:
                identities[name].update({t: i for t, i in fitter.identities().items() if t in alive})

        self.tracker.reset()
        saved = [fitter.calibration_frames for _, fitter in fitters]
        for _, fitter in fitters:
            fitter.calibration_frames = math.inf
        try:
            Pipeline(source, self.tracker, [keep, *sinks], mode="sequential", max_frames=max_frames).run()
        finally:
            for (_, fitter), frames in zip(fitters, saved):
                fitter.calibration_frames = frames
            self.tracker.reset()
        return observed, identities

    # -- 2. refit --------------------------------------------------------------------------------
    def _refit(self, observed: list[_Observed], identities: dict[str, dict[int, np.ndarray]]) -> dict[int, _Track]:
        """Every observed face fitted again with its track's pooled identity from its first frame and
        no causal smoothing -> {track id: _Track}."""
        tracker = self.tracker
        fitters = self._fitters()
        saved_smoothing = tracker.smoothing
        saved_settings = [fitter.refiner.settings for _, fitter in fitters]
        tracks: dict[int, _Track] = {}
        networks = self._smoothed_networks(observed)
        tracker.reset()
        tracker.smoothing = False
        for name, fitter in fitters:
            fitter.track_identities = dict(identities.get(name, {}))
            if self.refit_iterations is not None:
                fitter.refiner.settings = replace(fitter.refiner.settings, iterations=self.refit_iterations)
        try:
            for position, frame in enumerate(observed):
                if not frame.crops:
                    continue
                image = np.broadcast_to(np.zeros((), np.uint8), (*frame.size, 3))  # the frame's shape, for its camera; no pixels
                prepared = Prepared(Frame(image, frame.index, frame.timestamp, frame.source_time), frame.crops, [None] * len(frame.crops), None)
                result = tracker.finish(prepared, RawOutput.stacked(networks[position]))
                for rank, face in enumerate(result.faces):
                    track = tracks.setdefault(face.track_id, _Track())
                    track.frames.append(frame.index)
                    track.times.append(frame.time)
                    track.crops.append(face.crop)
                    track.values.append(FrameParameters({g: v.clone() for g, v in face.params.items()}, face.rotation_6d.clone(), face.translation.clone()))
                    avatar = face.avatar
                    track.weights.append(None if avatar is None else np.array(avatar.raw_weights, np.float64))
                    track.eyes.append(None if avatar is None else np.array(avatar.eye_angles, np.float64))
                    track.states.append(face.identity_state)
                    track.iterations.append(face.refine_iterations)
                    track.ranks.append(rank)
        finally:
            tracker.smoothing = saved_smoothing
            for (_, fitter), settings in zip(fitters, saved_settings):
                fitter.track_identities = {}
                fitter.refiner.settings = settings
            tracker.reset()
        return tracks

    def _smoothed_networks(self, observed: list[_Observed]) -> list[list[FrameParameters]]:
        """Each track's network predictions through the zero-lag smoother (``expression_hz``,
        ``pose_hz``): the refit's start and prior, per observed frame and face."""
        by_track: dict[int, _Track] = {}
        for frame in observed:
            for crop, network in zip(frame.crops, frame.networks):
                track = by_track.setdefault(crop.track_id, _Track())
                track.frames.append(frame.index)
                track.times.append(frame.time)
                track.values.append(network)
        for track in by_track.values():
            self._smooth_values(track, smooth_identity=True)
        rows = {track_id: iter(track.values) for track_id, track in by_track.items()}
        return [[next(rows[crop.track_id]) for crop in frame.crops] for frame in observed]

    # -- 3. smooth -------------------------------------------------------------------------------
    def _smooth(self, track: _Track) -> None:
        """``track``'s refitted values through the zero-lag smoother, in place (``OfflineSmoothing``):
        parameters and pose, then the ARKit weights and gaze."""
        smooth = self._smoother(track)
        self._smooth_values(track, smooth_identity=False)
        if any(w is None for w in track.weights):
            return
        s = self.smoothing
        weights = np.stack(track.weights)
        smoothed = weights.copy()
        lids, others = list(LID_SHAPES), [i for i in range(len(ARKIT_NAMES)) if i not in LID_SHAPES and i not in EYE_LOOK_SHAPES]
        smoothed[:, lids] = smooth(weights[:, lids], s.lids_hz)
        smoothed[:, others] = smooth(weights[:, others], s.weights_hz)
        eyes = np.stack(track.eyes).reshape(len(weights), 4)
        seen = np.isfinite(eyes).all(axis=1)
        if seen.any():
            eyes = np.where(seen[:, None], smooth(np.nan_to_num(eyes), s.gaze_hz, seen), np.nan)
        for t in range(len(weights)):
            track.eyes[t] = eyes[t].reshape(2, 2)
            track.weights[t] = gaze_weights(np.clip(smoothed[t], 0.0, 1.0), track.eyes[t])

    def _smooth_values(self, track: _Track, smooth_identity: bool) -> None:
        """``track.values`` (parameters, rotation, translation) through the zero-lag smoother, in
        place; the identity group too when ``smooth_identity`` (a network's per-frame identity)."""
        smooth = self._smoother(track)
        s = self.smoothing
        identity_group = None if smooth_identity else default_identity_group(track.values[0].params)
        batch = RawOutput.stacked(track.values)
        params = {g: v.double().numpy() if g == identity_group else smooth(v.double().numpy(), s.expression_hz) for g, v in batch.params.items()}
        rotation = smooth(batch.rotation_6d.double().numpy(), s.pose_hz)
        rotation = matrix_to_rotation_6d(rotation_6d_to_matrix(torch.from_numpy(rotation))).numpy()  # orthonormal again
        translation = smooth(batch.translation.double().numpy(), s.pose_hz)
        track.values = [
            FrameParameters({g: torch.from_numpy(params[g][t]).float() for g in params}, torch.from_numpy(rotation[t]).float(),
                            torch.from_numpy(translation[t]).float())
            for t in range(len(track.values))
        ]

    def _smoother(self, track: _Track) -> Callable[..., np.ndarray]:
        """The zero-lag smoother of ``track``'s frames: smooth((T, C) values, cutoff Hz or None,
        seen (T,) bool or None) -> (T, C), solved on the grid of every frame from the track's first
        to its last. Frames the track misses, and frames not ``seen``, are filled by the solve, not
        fitted."""
        frames = np.asarray(track.frames)
        grid = frames - frames[0]
        span = track.times[-1] - track.times[0]
        fps = grid[-1] / span if span > 0 and grid[-1] > 0 else DEFAULT_FPS

        def smooth(values: np.ndarray, cutoff: float | None, seen: np.ndarray | None = None) -> np.ndarray:
            if cutoff is None:
                return values
            weight = np.zeros(grid[-1] + 1)
            weight[grid if seen is None else grid[seen]] = 1.0
            full = np.zeros((len(weight), values.shape[1]))
            full[grid] = values
            return whittaker(full, lambda_for_cutoff(cutoff, fps), weight)[grid]

        return smooth


class _Replay:
    """The output pass's stages for ``Pipeline``: each frame of the video read again gets its
    faces' smoothed values (``FaceTracker.replay``); no detection and no network."""

    def __init__(self, tracker: FaceTracker, tracks: dict[int, _Track]) -> None:
        self.tracker = tracker
        self.device = torch.device("cpu")
        self._faces: dict[int, list[tuple[int, _Track, int]]] = {}  # frame index -> (rank, track, row)
        for track in tracks.values():
            for row, (index, rank) in enumerate(zip(track.frames, track.ranks)):
                self._faces.setdefault(index, []).append((rank, track, row))

    def run_network(self, inputs):
        raise RuntimeError("the offline output pass runs no network")

    def prepare(self, frame: Frame) -> Prepared:
        return Prepared(frame, [], [], None)

    def finish(self, prepared: Prepared, raw: RawOutput | None) -> TrackingResult:
        frame = prepared.frame
        focal, principal = self.tracker.intrinsics(frame.image)
        faces = sorted(self._faces.get(frame.index, []), key=lambda face: face[0])
        if not faces:
            return TrackingResult(frame, [], focal, principal, {})
        crops = [track.crops[row] for _, track, row in faces]
        images = self.tracker.cropper.crop(frame.image, np.stack([crop.box for crop in crops]))
        return self.tracker.replay(
            frame, focal, principal,
            [replace(crop, image=image) for crop, image in zip(crops, images)],
            [track.values[row] for _, track, row in faces],
            [track.weights[row] for _, track, row in faces],
            [track.eyes[row] for _, track, row in faces],
            [track.states[row] for _, track, row in faces],
            [track.iterations[row] for _, track, row in faces],
        )
