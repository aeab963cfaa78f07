"""ARKit weights against rendered ground truth (``train.evaluate_real --synthetic-arkit``): the demo's
ICT head (``tracker.live.demo``) performs every shape alone, blinks, winks, head turns and speech
with known weights; the tracker, and the peer beside it, track the rendered frames.

Per shape and system (the frames where that system found the face):
    r          Pearson r of the true weight with the system's, over the whole performance
    crosstalk  the largest other weight during the frames in which that shape alone moves
               (its true weight above 0), the resting weights included
    peak       the system's largest weight of that shape while it alone moves (true peak 1)
    gain       how far MediaPipe's 468 points follow the shape (whether they can see it): at the
               segment's peak, the points' motion from the neutral frames projected on the motion
               of the same points embedded in the rendered head (``mediapipe_embedding``), over
               the latter's squared length (1: they follow it; 0: they do not move); with the
               largest true point motion in pixels. Below ``VISIBLE_GAIN`` the shape is one
               MediaPipe's points barely see, and no system fed by them can be held to it.
Resting: the largest weight of any shape over the neutral frames (the performance's first).
Each again after the neutral calibration a user would run (``tracker.fitting.arkit_profile``: the
median weights of the neutral frames read 0, full motion still 1), for both systems alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tracker.fitting.arkit import ARKIT_NAMES
from tracker.fitting.arkit_profile import ArkitProfile
from tracker.fitting.mediapipe_embedding import MEDIAPIPE_POINTS
from tracker.live.demo import DemoPerformer, DemoScript, demo_script, open_demo_source
from train.arkit_peer import ArkitPeer, correlation

VISIBLE_GAIN = 0.4  # below it, MediaPipe's points barely follow a shape (module docstring)


@dataclass
class Figures:
    """One system's figures of one shape (module docstring); ``calibrated_*``: after the neutral
    calibration on the performance's neutral frames (``neutral_profile``)."""

    r: float
    crosstalk: float
    crosstalk_shape: str
    peak: float
    calibrated_crosstalk: float
    calibrated_shape: str
    calibrated_peak: float


@dataclass
class ShapeFigures:
    """One shape's figures, ours and the peer's (None: no peer); ``gain`` and ``motion_px``: how
    far MediaPipe's points follow it and how far they should (module docstring)."""

    shape: str
    ours: Figures
    peer: Figures | None = None
    gain: float = math.nan
    motion_px: float = math.nan


@dataclass
class SyntheticReport:
    """The figures of one performance: frames tracked, found by each system, resting maxima, per shape."""

    frames: int
    found: int
    peer_found: int
    resting: float
    peer_resting: float
    shapes: list[ShapeFigures]


class _Meter:
    """Pipeline sink: per frame index our weights (52,) of the first face, the peer's and
    MediaPipe's 468 points (468, 2) (NaN: none)."""

    def __init__(self, frames: int, peer: ArkitPeer | None) -> None:
        self.ours = np.full((frames, len(ARKIT_NAMES)), np.nan)
        self.theirs = np.full((frames, len(ARKIT_NAMES)), np.nan)
        self.points = np.full((frames, MEDIAPIPE_POINTS, 2), np.nan)
        self.peer = peer

    def __call__(self, result) -> None:
        index = result.frame.index
        if self.peer is not None:
            self.theirs[index] = self.peer(result.frame.image, 1000.0 * result.frame.timestamp)
        if result.faces and result.faces[0].avatar is not None:
            self.ours[index] = result.faces[0].avatar.raw_weights
            self.points[index] = result.faces[0].crop.face.points[:MEDIAPIPE_POINTS, :2]


def track_performance(tracker, head, script: DemoScript, peer: ArkitPeer | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame of ``script``, performed by the ICT ``head``, rendered and tracked in order
    (sequential pipeline, a fresh tracker state) -> ours (T, 52), the peer's (T, 52), MediaPipe's
    points (T, 468, 2); NaN rows where a system found no face."""
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import MediaClockSource

    tracker.reset()
    meter = _Meter(len(script), peer)
    Pipeline(MediaClockSource(open_demo_source(head, script)), tracker, [meter], mode="sequential").run()
    return meter.ours, meter.theirs, meter.points


def mediapipe_gain(head, script: DemoScript, points: np.ndarray) -> dict[str, tuple[float, float]]:
    """(T, 468, 2) MediaPipe's points on the rendered frames -> {shape: (gain, largest true point
    motion in px)} for the shapes ``script`` performs alone (module docstring)."""
    from tracker.fitting.mediapipe_embedding import mediapipe_embedding

    performer, embedding = DemoPerformer(head, script), mediapipe_embedding(head)

    def truth(t: int) -> np.ndarray:
        return performer.project(embedding.points(performer.vertices(t)[None])[0].double().numpy(), t)

    neutral = next(s for s in script.segments if s.label == "neutral")
    rest_seen = np.nanmean(points[neutral.start : neutral.stop], 0)
    rest_true = np.mean([truth(t) for t in range(neutral.start, neutral.stop)], 0)
    out = {}
    for segment in script.segments:
        if segment.shape is None:
            continue
        peak = segment.start + int(np.argmax(script.weights[segment.start : segment.stop, ARKIT_NAMES.index(segment.shape)]))
        moved, seen = truth(peak) - rest_true, points[peak] - rest_seen
        out[segment.shape] = (float((seen * moved).sum() / (moved * moved).sum()), float(np.linalg.norm(moved, axis=1).max()))
    return out

def shape_figures(truth: np.ndarray, weights: np.ndarray, script: DemoScript) -> dict[str, tuple[float, float, str, float]]:
    """(T, 52) true and tracked weights (NaN rows: no face) -> {shape: (r, crosstalk, the shape
    that crosstalk is, peak)} for the shapes ``script`` performs alone."""
    found = np.isfinite(weights).any(1)  # a row without a face is NaN throughout (compare_with_peer's rule)
    out = {}
    for segment in script.segments:
        if segment.shape is None:
            continue
        k = ARKIT_NAMES.index(segment.shape)
        frames = np.arange(segment.start, segment.stop)
        frames = frames[(truth[frames, k] > 0) & found[frames]]
        r = correlation(truth[found, k], np.nan_to_num(weights[found, k]))
        if len(frames) == 0:
            out[segment.shape] = (r, math.nan, "", math.nan)
            continue
        others = np.nan_to_num(weights[frames], nan=0.0)
        others[:, k] = -np.inf
        worst = np.unravel_index(np.argmax(others), others.shape)
        out[segment.shape] = (r, float(others[worst]), ARKIT_NAMES[worst[1]], float(np.nanmax(weights[frames, k])))
    return out


def neutral_frames(weights: np.ndarray, script: DemoScript) -> np.ndarray:
    """(T, 52) weights -> (n, 52) their rows over the script's neutral frames."""
    neutral = [s for s in script.segments if s.label == "neutral"]
    return np.concatenate([weights[s.start : s.stop] for s in neutral]) if neutral else weights[:0]


def resting(weights: np.ndarray, script: DemoScript) -> float:
    """The largest weight (any shape) over the script's neutral frames (NaN when none has a face)."""
    rows = neutral_frames(weights, script)
    return float(np.nanmax(rows)) if np.isfinite(rows).any() else math.nan


def neutral_profile(weights: np.ndarray, script: DemoScript) -> ArkitProfile:
    """The profile of a neutral calibration over the script's neutral frames (their median weights)."""
    rows = neutral_frames(weights, script)
    return ArkitProfile().with_neutral(np.nan_to_num(np.nanmedian(rows, axis=0), nan=0.0) if np.isfinite(rows).any() else np.zeros(len(ARKIT_NAMES)))


def system_figures(truth: np.ndarray, weights: np.ndarray, script: DemoScript) -> dict[str, Figures]:
    """(T, 52) true and tracked weights -> {shape: Figures}, raw and calibrated."""
    raw = shape_figures(truth, weights, script)
    calibrated = shape_figures(truth, neutral_profile(weights, script).apply(weights).astype(np.float64), script)
    return {name: Figures(*raw[name], *calibrated[name][1:]) for name in raw}


def evaluate_performance(tracker, head, peer: ArkitPeer | None = None, script: DemoScript | None = None) -> SyntheticReport:
    """The demo's performance (default ``demo_script()``) by the ICT ``head``, tracked by ``tracker``
    and ``peer`` -> figures."""
    script = demo_script() if script is None else script
    ours, theirs, points = track_performance(tracker, head, script, peer)
    truth = script.weights.astype(np.float64)
    mine = system_figures(truth, ours, script)
    peers = system_figures(truth, theirs, script) if peer is not None else {}
    gains = mediapipe_gain(head, script, points)
    shapes = [ShapeFigures(name, figures, peers.get(name), *gains[name]) for name, figures in mine.items()]
    return SyntheticReport(len(script), int(np.isfinite(ours).all(1).sum()), int(np.isfinite(theirs).any(1).sum()),
                           resting(ours, script), resting(theirs, script), shapes)


def format_synthetic_table(report: SyntheticReport) -> str:
    """| shape | r | crosstalk (which) | peak |, raw and calibrated; each cell ours / peer."""

    def num(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.2f}"

    def pair(s: ShapeFigures, field: str) -> str:
        mine, theirs = getattr(s.ours, field), None if s.peer is None else getattr(s.peer, field)
        text = (lambda v: v or "-") if field.endswith("shape") else num
        return f"{text(mine)} / {text(theirs) if theirs is not None else '-'}"

    fields = ("r", "crosstalk", "crosstalk_shape", "peak", "calibrated_crosstalk", "calibrated_shape", "calibrated_peak")
    lines = ["| shape | MediaPipe's gain (motion px) | r | crosstalk | largest other shape | peak | calibrated: crosstalk | largest other shape | peak |",
             "|" + "---|" * 9]
    for s in report.shapes:
        seen = f"{num(s.gain)} ({s.motion_px:.1f})" + (" barely seen" if s.gain < VISIBLE_GAIN else "")
        lines.append(f"| {s.shape} | {seen} | " + " | ".join(pair(s, f) for f in fields) + " |")
    return "\n".join(lines) + "\n(each cell: ours / peer; calibrated: after a neutral calibration on the neutral frames)"
