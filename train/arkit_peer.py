"""The peer for ARKit weights: MediaPipe's Face Landmarker blendshape model, run beside the tracker
on the same frames, and the figures that compare two series of ARKit weights with the face's
openings (``train.evaluate_real --arkit-peer``).

The model file (``face_landmarker_v2_with_blendshapes.task``, Apache-2.0) is the user's or the
shared folder's ``peers/`` (``N2F_SHARED_DIR``); nothing downloads it, and the tracker never needs
it. It runs in VIDEO mode (its own face tracking between frames), one face.

    peer = ArkitPeer(path)            # TrackerError naming the file when it is missing or unreadable
    weights = peer(image_bgr, time_ms)  # (52,) in ARKIT_NAMES order, NaN: no face / shape it lacks
    figures = compare_weights(ours, theirs, frame_index, mouth, eye)

Definitions (the same for both systems, on the frames where both give weights):
    r           Pearson r of jawOpen with the mouth opening, of the mean eyeBlink with the eye
                closing (minus the lid gap), the openings measured on MediaPipe's own points
    relative jitter  mean |second difference| over runs of consecutive frames, over the series'
                standard deviation across the video: scale-free, so moving less does not look
                steadier
    lag         the frame offset (within +-MAX_LAG) of the peak cross-correlation of the weight
                with the opening; positive: the weight follows the face late
    delay       the same peak to a fraction of a frame (a parabola through the correlations at
                the lag and its two neighbours): a filter's added delay shows here long before
                it moves the whole-frame lag
    moving      shapes whose standard deviation is above MOVING_SD
    agreement   per shape, Pearson r between the two systems' series
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.files.paths import shared_dir
from tracker.fitting.arkit import ARKIT_INDEX, ARKIT_NAMES

PEER_FILE = "face_landmarker_v2_with_blendshapes.task"
PEER_SOURCE = ("MediaPipe's Face Landmarker v2 with blendshapes (Apache-2.0): the mediapipe repository's "
               f"mediapipe/tasks/testdata/vision/{PEER_FILE}, or the shared folder's peers/ (N2F_SHARED_DIR)")
MAX_LAG = 10  # frames searched either way for the peak cross-correlation
MOVING_SD = 0.02  # a shape "moves" when its weight's standard deviation across the video is above this
BLINKS = [ARKIT_INDEX["eyeBlinkLeft"], ARKIT_INDEX["eyeBlinkRight"]]


def default_peer_path() -> Path | None:
    """The shared folder's peer model, or None when there is none."""
    folder = shared_dir()
    path = None if folder is None else folder / "peers" / PEER_FILE
    return path if path is not None and path.is_file() else None


class ArkitPeer:
    """MediaPipe's Face Landmarker with blendshapes in VIDEO mode; ``peer(image, time_ms)``."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise TrackerError(f"the ARKit peer model {path} does not exist; it is {PEER_SOURCE}")
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(path)), running_mode=vision.RunningMode.VIDEO,
                                               num_faces=1, output_face_blendshapes=True)
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as error:
            raise TrackerError(f"{path} is not a Face Landmarker model with blendshapes ({error}); the peer is {PEER_SOURCE}") from error
        self._last_ms = -1

    def __call__(self, image_bgr: np.ndarray, time_ms: float) -> np.ndarray:
        """(H, W, 3) uint8 BGR frame at ``time_ms`` (increasing) -> (52,) float64 weights in
        ``ARKIT_NAMES`` order; all NaN without a face, NaN for a shape the model lacks (tongueOut)."""
        import mediapipe as mp

        stamp = max(round(time_ms), self._last_ms + 1)  # VIDEO mode needs strictly increasing times
        self._last_ms = stamp
        rgb = np.ascontiguousarray(image_bgr[..., ::-1])
        result = self._landmarker.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb), stamp)
        weights = np.full(len(ARKIT_NAMES), np.nan)
        if result.face_blendshapes:
            for category in result.face_blendshapes[0]:
                index = ARKIT_INDEX.get(category.category_name)
                if index is not None:
                    weights[index] = category.score
        return weights

    def close(self) -> None:
        self._landmarker.close()


@dataclasses.dataclass
class WeightFigures:
    """One system's ARKit weights on one video (module docstring): r, relative jitter and lag of
    jawOpen and of the mean eyeBlink, and the number of shapes that move."""

    jaw_open_r: float
    blink_r: float
    jaw_open_jitter: float
    blink_jitter: float
    jaw_open_lag: int | None
    blink_lag: int | None
    jaw_open_delay: float
    blink_delay: float
    moving: int


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two (T,) series (NaN when either is constant or T < 3)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def relative_jitter(series: np.ndarray, frame_index: np.ndarray) -> float:
    """(T,) series at (T,) frame indices -> mean |second difference| over triples of consecutive
    frames, over the series' standard deviation (NaN when constant or no triple)."""
    series, frame_index = np.asarray(series, np.float64), np.asarray(frame_index)
    consecutive = (np.diff(frame_index[:-1]) == 1) & (np.diff(frame_index[1:]) == 1)
    spread = series.std()
    if not consecutive.any() or spread == 0:
        return math.nan
    second = series[2:] - 2 * series[1:-1] + series[:-2]
    return float(np.abs(second[consecutive]).mean() / spread)


def lag(series: np.ndarray, reference: np.ndarray, max_lag: int = MAX_LAG) -> int | None:
    """The shift k in [-max_lag, max_lag] maximising corr(series[t + k], reference[t]): k > 0 when
    ``series`` follows ``reference`` late (None when no shift has a correlation)."""
    best, best_r = None, -math.inf
    for k in range(-max_lag, max_lag + 1):
        r = _shifted_correlation(series, reference, k)
        if not math.isnan(r) and r > best_r:
            best, best_r = k, r
    return best


def subframe_lag(series: np.ndarray, reference: np.ndarray, max_lag: int = MAX_LAG) -> float:
    """``lag`` to a fraction of a frame: the vertex of the parabola through the correlations at the
    best shift and its two neighbours (the whole shift at the search's edge; NaN without one)."""
    best = lag(series, reference, max_lag)
    if best is None:
        return math.nan
    if abs(best) == max_lag:
        return float(best)
    before, at, after = (_shifted_correlation(series, reference, best + d) for d in (-1, 0, 1))
    curvature = before - 2.0 * at + after
    return float(best) if not curvature < 0 else best + 0.5 * (before - after) / curvature


def _shifted_correlation(series: np.ndarray, reference: np.ndarray, k: int) -> float:
    return correlation(series[k:], reference[: len(reference) - k]) if k >= 0 else correlation(series[:k], reference[-k:])


def arkit_correlations(weights: np.ndarray, mouth: np.ndarray, eye: np.ndarray) -> tuple[float, float]:
    """(T, 52) ARKit weights, (T,) MediaPipe mouth and eye openings -> (correlation of jawOpen with
    the mouth opening, of the mean eyeBlink with the eye closing, i.e. minus the opening)."""
    return correlation(weights[:, ARKIT_INDEX["jawOpen"]], mouth), correlation(weights[:, BLINKS].mean(1), -np.asarray(eye, np.float64))


def weight_figures(weights: np.ndarray, frame_index: np.ndarray, mouth: np.ndarray, eye: np.ndarray) -> WeightFigures:
    """(T, 52) weights, (T,) frame indices, mouth and eye openings on the same frames -> figures.
    Shapes that are NaN throughout (one the system lacks) do not count as moving."""
    jaw, blink, closing = weights[:, ARKIT_INDEX["jawOpen"]], weights[:, BLINKS].mean(1), -np.asarray(eye, np.float64)
    spread = weights.std(0)  # NaN for a shape the system lacks: not moving
    return WeightFigures(
        *arkit_correlations(weights, mouth, eye),
        relative_jitter(jaw, frame_index), relative_jitter(blink, frame_index),
        lag(jaw, np.asarray(mouth, np.float64)), lag(blink, closing),
        subframe_lag(jaw, np.asarray(mouth, np.float64)), subframe_lag(blink, closing),
        int((spread > MOVING_SD).sum()),
    )


def shape_agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """(T, 52) two systems' weights on the same frames -> {shape: Pearson r} for every shape that
    both move (standard deviation above MOVING_SD)."""
    out = {}
    for index, name in enumerate(ARKIT_NAMES):
        a, b = ours[:, index], theirs[:, index]
        if np.isfinite(b).all() and a.std() > MOVING_SD and b.std() > MOVING_SD:
            out[name] = correlation(a, b)
    return out


@dataclasses.dataclass
class PeerComparison:
    """Our weights and the peer's on the ``frames`` where both have a face: each one's figures and
    the per-shape ``agreement`` ({shape: r}, shapes both move)."""

    frames: int
    ours: WeightFigures
    peer: WeightFigures
    agreement: dict[str, float]


def compare_with_peer(ours: np.ndarray, theirs: np.ndarray, frame_index: np.ndarray, mouth: np.ndarray, eye: np.ndarray) -> PeerComparison:
    """(T, 52) our weights and the peer's (a NaN row: the peer found no face), (T,) frame indices,
    MediaPipe's mouth and eye openings on those frames -> the comparison on the frames both have."""
    both = np.isfinite(theirs).any(1) & np.isfinite(ours).all(1)
    ours, theirs, frame_index = ours[both], theirs[both], np.asarray(frame_index)[both]
    mouth, eye = np.asarray(mouth)[both], np.asarray(eye)[both]
    return PeerComparison(int(both.sum()), weight_figures(ours, frame_index, mouth, eye), weight_figures(theirs, frame_index, mouth, eye),
                          shape_agreement(ours, theirs))


def _pair(a, b, digits: int = 3) -> str:
    def one(v) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    return f"{one(a)} / {one(b)}"


def format_peer_table(rows) -> str:
    """Rows with a ``peer`` (``train.evaluate_real.VideoRow``) -> a table, ours / peer per cell."""
    lines = ["| video | frames | jawOpen r | eyeBlink r | rel. jitter jawOpen | rel. jitter eyeBlink | lag jawOpen (delay) | lag eyeBlink (delay) | shapes moving |",
             "|" + "---|" * 9]
    for row in rows:
        c = row.peer
        if c is None:
            continue
        o, p = c.ours, c.peer
        lines.append(f"| {row.video} | {c.frames} | {_pair(o.jaw_open_r, p.jaw_open_r)} | {_pair(o.blink_r, p.blink_r)} | "
                     f"{_pair(o.jaw_open_jitter, p.jaw_open_jitter)} | {_pair(o.blink_jitter, p.blink_jitter)} | "
                     f"{_pair(_lag(o.jaw_open_lag, o.jaw_open_delay), _lag(p.jaw_open_lag, p.jaw_open_delay))} | "
                     f"{_pair(_lag(o.blink_lag, o.blink_delay), _lag(p.blink_lag, p.blink_delay))} | {_pair(o.moving, p.moving)} |")
    return "\n".join(lines) + "\n(each cell: ours / peer; lag in whole frames, delay to a fraction of a frame)"


def _lag(whole: int | None, delay: float) -> str | None:
    return None if whole is None else f"{whole} ({delay:+.2f})"


def format_agreement_table(rows) -> str:
    """Rows with a ``peer`` -> | shape | r per video |, shapes that any video has both move; negative r first."""
    compared = [row for row in rows if row.peer is not None]
    shapes = sorted({name for row in compared for name in row.peer.agreement},
                    key=lambda name: min(row.peer.agreement.get(name, math.inf) for row in compared))
    lines = ["| shape | " + " | ".join(row.video for row in compared) + " |", "|" + "---|" * (1 + len(compared))]
    for name in shapes:
        cells = [row.peer.agreement.get(name) for row in compared]
        lines.append(f"| {name} | " + " | ".join("-" if v is None or math.isnan(v) else f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)
