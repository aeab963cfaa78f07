"""ARKit weights against rendered ground truth (``train.evaluate_real --synthetic-arkit``): the demo's
ICT head (``tracker.live.demo``) performs every shape alone, blinks, winks, head turns and speech
with known weights; the tracker, and the peer beside it, track the rendered frames.

Per shape (frames where both systems found the face):
    r          Pearson r of the true weight with the system's, over the whole performance
    crosstalk  the largest other weight during the frames in which that shape alone moves
               (its true weight above 0), the resting weights included
    peak       the system's largest weight of that shape while it alone moves (true peak 1)
Resting: the largest weight of any shape over the neutral frames (the performance's first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tracker.fitting.arkit import ARKIT_NAMES
from tracker.live.demo import DemoScript, demo_script, open_demo_source
from train.arkit_peer import ArkitPeer, correlation


@dataclass
class ShapeFigures:
    """One shape's figures (module docstring), ours and the peer's (NaN: no peer)."""

    shape: str
    r: float
    crosstalk: float
    crosstalk_shape: str
    peak: float
    peer_r: float = math.nan
    peer_crosstalk: float = math.nan
    peer_crosstalk_shape: str = ""
    peer_peak: float = math.nan


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
    """Pipeline sink: per frame index our weights (52,) of the first face and the peer's (NaN: none)."""

    def __init__(self, frames: int, peer: ArkitPeer | None) -> None:
        self.ours = np.full((frames, len(ARKIT_NAMES)), np.nan)
        self.theirs = np.full((frames, len(ARKIT_NAMES)), np.nan)
        self.peer = peer

    def __call__(self, result) -> None:
        index = result.frame.index
        if self.peer is not None:
            self.theirs[index] = self.peer(result.frame.image, 1000.0 * result.frame.timestamp)
        if result.faces and result.faces[0].avatar is not None:
            self.ours[index] = result.faces[0].avatar.raw_weights


def track_performance(tracker, head, script: DemoScript, peer: ArkitPeer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of ``script``, performed by the ICT ``head``, rendered and tracked in order
    (sequential pipeline, a fresh tracker state) -> ours (T, 52), the peer's (T, 52); NaN rows
    where a system found no face."""
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import MediaClockSource

    tracker.reset()
    meter = _Meter(len(script), peer)
    Pipeline(MediaClockSource(open_demo_source(head, script)), tracker, [meter], mode="sequential").run()
    return meter.ours, meter.theirs


def shape_figures(truth: np.ndarray, weights: np.ndarray, script: DemoScript) -> dict[str, tuple[float, float, str, float]]:
    """(T, 52) true and tracked weights (NaN rows: no face) -> {shape: (r, crosstalk, the shape
    that crosstalk is, peak)} for the shapes ``script`` performs alone."""
    found = np.isfinite(weights).all(1) | (np.isfinite(weights).sum(1) == len(ARKIT_NAMES) - 1)  # the peer has no tongueOut
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


def resting(weights: np.ndarray, script: DemoScript) -> float:
    """The largest weight (any shape) over the script's neutral frames (NaN when none has a face)."""
    neutral = [s for s in script.segments if s.label == "neutral"]
    rows = np.concatenate([weights[s.start : s.stop] for s in neutral]) if neutral else weights[:0]
    return float(np.nanmax(rows)) if np.isfinite(rows).any() else math.nan


def evaluate_performance(tracker, head, peer: ArkitPeer | None = None, script: DemoScript | None = None) -> SyntheticReport:
    """The demo's performance (default ``demo_script()``) by the ICT ``head``, tracked by ``tracker``
    and ``peer`` -> figures."""
    script = demo_script() if script is None else script
    ours, theirs = track_performance(tracker, head, script, peer)
    truth = script.weights.astype(np.float64)
    mine = shape_figures(truth, ours, script)
    peers = shape_figures(truth, theirs, script) if peer is not None else {}
    shapes = []
    for name, figures in mine.items():
        shapes.append(ShapeFigures(name, *figures, *peers.get(name, (math.nan, math.nan, "", math.nan))))
    return SyntheticReport(len(script), int(np.isfinite(ours).all(1).sum()), int(np.isfinite(theirs).any(1).sum()),
                           resting(ours, script), resting(theirs, script), shapes)


def format_synthetic_table(report: SyntheticReport) -> str:
    """| shape | r | crosstalk (which) | peak | per cell ours / peer."""

    def num(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.2f}"

    lines = ["| shape | r, ours / peer | crosstalk, ours / peer | largest other shape, ours / peer | peak, ours / peer |", "|" + "---|" * 5]
    for s in report.shapes:
        lines.append(f"| {s.shape} | {num(s.r)} / {num(s.peer_r)} | {num(s.crosstalk)} / {num(s.peer_crosstalk)} | "
                     f"{s.crosstalk_shape or '-'} / {s.peer_crosstalk_shape or '-'} | {num(s.peak)} / {num(s.peer_peak)} |")
    return "\n".join(lines)
