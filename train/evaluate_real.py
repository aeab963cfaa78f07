"""``python -m train.evaluate_real --checkpoint C``: the whole live pipeline (MediaPipe -> crop ->
cue -> N2FNet -> head mesh) on real faces: landmark accuracy on annotated photos, detection, speed
and temporal jitter on videos.

Images: the dlib example photos (``real-faces/dlib-faces/*_with_face_landmarks.xml``, dlib's imglab
XML, 43 faces with 37-109 px boxes in 9 PASCAL VOC photos). Their 68 iBUG-order points were produced by
dlib's own 68-point model: PSEUDO ground truth, not human labels. Every photo is tracked on its
own (fresh tracker state, no smoothing) with MediaPipe's full-range face detector (Face Mesh's own
short-range detector finds 11 of these faces) and upscaled ``--upscale`` times first (default 2:
the detector then finds 42 faces, 41 at native size); landmarks are mapped back to the photo's
pixels. Each annotation is matched to the detected face whose MediaPipe 68-point box overlaps the
annotation's box most (greedy one-to-one, highest IoU first; IoU > 0.3, else not detected).
NME: mean point distance divided by the inter-ocular distance, the annotation's outer eye corners
(iBUG points 36 and 45), in %; NME-51 leaves out the 17 jaw-contour points (0-16), which
landmark schemes place differently. Two rows over the same detected faces: the head model's 68
landmarks projected into the photo (``FaceResult.landmarks68``, ours) and MediaPipe's own 68-point
subset (``mesh_landmarks68``, what the crop was cut from).

Videos (``real-faces/videos/*.mp4|*.mov`` or ``--videos``): every frame in order through the
app's tracker (``Pipeline`` in sequential mode; smoothing on as in the app unless
``--no-smoothing``). The frames are stamped with their media time (index / the video's frame
rate), so the One-Euro smoothing sees a camera at the video's rate whatever the processing speed.
FPS: steady-state throughput of the whole per-frame pipeline, (frames - 1) / wall-clock time from
the first result to the last (decoding runs ahead on the source's thread). Jitter: the mean norm of
the second temporal difference x[t-1] - 2 x[t] + x[t+1], which is zero for motion at constant
velocity, taken over every triple of consecutive frames of one tracked face (a frame without a
face, or a new track, starts a new run): (i) per 68-point landmark in frame pixels divided by the
inter-ocular distance of MediaPipe's landmarks at the middle frame (%), for ours and for MediaPipe's
raw landmarks; (ii) per mesh vertex (the head model's face region) in the camera frame, mm. (For
independent noise of std s per coordinate the second difference has std sqrt(6) s per coordinate
and a mean norm of about 3.1 s in 2D, 3.9 s in 3D.)
Agreement with MediaPipe on every frame with a face (MediaPipe's 68-point subset of the same
frame as reference): NME-51 in % of its inter-ocular distance; the Pearson correlation and the
standard-deviation ratio of the mouth opening (inner-lip gap, iBUG 62-66) and of the eye opening
(mean of the lid gaps 37-41, 38-40, 43-47, 44-46), each over the outer-eye-corner distance. The
refinement's mean iterations and milliseconds per face.

``--synthetic-arkit`` also tracks the demo's rendered ICT performance (``train.synthetic_arkit``:
every ARKit shape alone, blinks, winks, head turns, speech, with known weights) and reports per
shape r with the truth and the crosstalk, the peer's beside with ``--arkit-peer``.

``--ablation`` runs it all for N2FNet alone, the refinement from the mean face without the
network, and N2FNet plus the refinement, and prints the comparison.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import sys
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tracker.errors import TrackerError
from tracker.files.paths import shared_dir
from tracker.fitting.arkit import ARKIT_NAMES
from tracker.geometry.boxes import box_iou
from tracker.live.options import (
    TrackerOptions,
    add_tracker_arguments,
    options_from_args,
)
from train.arkit_peer import (
    PEER_FILE,
    PEER_SOURCE,
    ArkitPeer,
    PeerComparison,
    arkit_correlations,
    compare_with_peer,
    correlation,
    default_peer_path,
    format_agreement_table,
    format_peer_table,
    subframe_lag,
)
from train.cli import Progress, add_output_options, run, writable_file
from train.real_split import SPLITS, split_paths

if TYPE_CHECKING:
    import torch

    from tracker.fitting.arkit_side_fit import ArkitFit
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.results import TrackingResult

ANNOTATION_FILES = ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml")
VIDEO_SUFFIXES = (".mp4", ".mov")
JAW_POINTS = 17  # iBUG points 0-16: the jaw contour
MATCH_IOU = 0.3
DEFAULT_UPSCALE = 2.0
IMAGE_MAX_FACES = 20  # faces tracked per photo (the dlib photos hold up to 10)


# ----------------------------------------------------------------------------- annotations


@dataclass(frozen=True, eq=False)
class AnnotatedFace:
    """One annotated face of an imglab XML.

    image   the photo's path; split  the XML's name ("training", "testing", ...); face  its index
    in the photo; box  (4,) x0, y0, x1, y1 continuous pixels; points  (68, 2) iBUG-68 landmarks
    in continuous pixels (dlib's integer pixel centres + 0.5, the tracker's convention).
    """

    image: Path
    split: str
    face: int
    box: np.ndarray
    points: np.ndarray


def parse_imglab(path: str | Path) -> list[AnnotatedFace]:
    """dlib imglab XML (``<image file><box top left width height><part name x y/>``) -> its faces
    with 68 points each; image paths are relative to the XML's folder. Boxes marked ignore='1' are
    skipped; a box without exactly parts 0-67 is an error."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as error:
        raise TrackerError(f"cannot read the landmark XML {path}: {error}") from error
    split = path.stem.replace("_with_face_landmarks", "")
    faces = []
    for image in root.iter("image"):
        boxes = [box for box in image.iter("box") if box.get("ignore", "0") != "1"]
        for index, box in enumerate(boxes):
            parts = {int(p.get("name")): (float(p.get("x")), float(p.get("y"))) for p in box.iter("part")}
            if sorted(parts) != list(range(68)):
                raise TrackerError(f"{path}: box {index} of {image.get('file')} has parts {sorted(parts)}, expected 0-67")
            left, top, width, height = (float(box.get(k)) for k in ("left", "top", "width", "height"))
            points = np.array([parts[k] for k in range(68)]) + 0.5
            faces.append(AnnotatedFace(path.parent / image.get("file"), split, index, np.array([left, top, left + width, top + height]), points))
    return faces


def annotated_faces(folder: Path) -> list[AnnotatedFace]:
    """The faces of both dlib landmark XMLs in ``folder``."""
    missing = [name for name in ANNOTATION_FILES if not (folder / name).is_file()]
    if missing:
        raise TrackerError(f"{folder}: missing {', '.join(missing)} (dlib's example faces with 68-point landmarks)")
    return [face for name in ANNOTATION_FILES for face in parse_imglab(folder / name)]


# ----------------------------------------------------------------------------- matching and NME


def landmark_box(points: np.ndarray) -> np.ndarray:
    """(N, 2) points -> (4,) x0, y0, x1, y1 of their bounding box."""
    return np.concatenate((points.min(0), points.max(0)))


def match_boxes(annotations: np.ndarray, detections: np.ndarray, threshold: float = MATCH_IOU) -> list[tuple[int | None, float]]:
    """(A, 4) annotation boxes, (D, 4) detection boxes -> per annotation (detection index or None,
    its IoU): greedy one-to-one, highest IoU first; pairs with IoU <= ``threshold`` never match."""
    ious = np.array([[box_iou(a, d) for d in detections] for a in annotations]).reshape(len(annotations), len(detections))
    matches: list[tuple[int | None, float]] = [(None, float(row.max()) if row.size else 0.0) for row in ious]
    taken: set[int] = set()
    for flat in np.argsort(-ious, axis=None):
        a, d = divmod(int(flat), len(detections))
        if ious[a, d] <= threshold:
            break
        if matches[a][0] is None and d not in taken:
            matches[a] = (d, float(ious[a, d]))
            taken.add(d)
    return matches


def nme_percent(pred: np.ndarray, truth: np.ndarray, with_jaw: bool = True) -> np.ndarray:
    """(B, 68, 2) predicted and annotated landmarks -> (B,) NME in % of the annotation's
    inter-ocular distance (points 36-45); ``with_jaw=False``: over points 17-67 only."""
    import torch

    from train import metrics

    visible = None
    if not with_jaw:
        visible = torch.ones(len(pred), 68, dtype=torch.bool)
        visible[:, :JAW_POINTS] = False
    return 100.0 * metrics.nme(torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(truth, dtype=torch.float64), visible).numpy()


# ----------------------------------------------------------------------------- images


@dataclass
class FaceRow:
    """One annotated face: detected or not, the IoU of its best detection, the annotation's
    inter-ocular distance (px) and the four NMEs (%, NaN when not detected)."""

    image: str
    split: str
    face: int
    box_left: float
    box_top: float
    box_width: float
    box_height: float
    detected: bool
    iou: float
    inter_ocular_px: float
    nme68_head_model: float = math.nan
    nme51_head_model: float = math.nan
    nme68_mediapipe: float = math.nan
    nme51_mediapipe: float = math.nan


@dataclass
class LandmarkSummary:
    """One row of the image table: NMEs (%) over the detected faces."""

    name: str
    faces: int
    detected: int
    nme68_mean: float
    nme68_median: float
    nme51_mean: float
    nme51_median: float

    @property
    def detection_rate(self) -> float:
        return self.detected / self.faces if self.faces else math.nan


def image_options(args: argparse.Namespace, **overrides) -> TrackerOptions:
    """The app's tracker without smoothing, for unrelated photos: MediaPipe's full-range detector
    in static mode, up to IMAGE_MAX_FACES faces (refinement as ``--refine``; ``overrides``: other
    TrackerOptions fields, e.g. refine=False)."""
    return options_from_args(args, **{"max_faces": IMAGE_MAX_FACES, "smoothing": False, "photos": True, "detector": "full-range", **overrides})


def video_options(args: argparse.Namespace, **overrides) -> TrackerOptions:
    """The tracker exactly as ``python -m app.live`` builds it from the same options, one face,
    smoothing as ``--no-smoothing`` says (``overrides``: other TrackerOptions fields)."""
    return options_from_args(args, **{"max_faces": 1, "smoothing": not args.no_smoothing, **overrides})


@dataclass
class TrackedPhoto:
    """One dlib photo tracked: its BGR image (photo pixels), the tracking result (pixels of the
    photo resized by ``upscale``) and, per annotation, (annotation, matched face index or None,
    IoU of the best detection)."""

    image: np.ndarray
    result: TrackingResult
    upscale: float
    matches: list[tuple[AnnotatedFace, int | None, float]]


def tracked_photos(tracker: FaceTracker, faces: list[AnnotatedFace], upscale: float = DEFAULT_UPSCALE):
    """Yield a ``TrackedPhoto`` per photo of ``faces``: resized by ``upscale``, tracked from a fresh
    state (``FaceTracker.track_image``), each annotation matched to a detection by the box of
    MediaPipe's 68 points (``match_boxes``)."""
    import cv2

    by_image: dict[Path, list[AnnotatedFace]] = {}
    for face in faces:
        by_image.setdefault(face.image, []).append(face)
    for path, annotations in by_image.items():
        image = cv2.imread(str(path))
        if image is None:
            raise TrackerError(f"cannot read the image {path}")
        resized = image if upscale == 1.0 else cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_LINEAR)
        result = tracker.track_image(resized)
        boxes = np.array([landmark_box(f.mesh_landmarks68 / upscale) for f in result.faces]).reshape(-1, 4)
        matches = match_boxes(np.stack([a.box for a in annotations]), boxes)
        yield TrackedPhoto(image, result, upscale, [(a, d, iou) for a, (d, iou) in zip(annotations, matches)])


def evaluate_images(tracker: FaceTracker, faces: list[AnnotatedFace], upscale: float = DEFAULT_UPSCALE) -> tuple[list[FaceRow], int]:
    """Track every photo of ``faces`` -> (one row per annotated face, detections matched to no
    annotation: unannotated faces or false detections)."""
    from train import metrics

    rows, unmatched = [], 0
    for photo in tracked_photos(tracker, faces, upscale):
        ours = [f.landmarks68 / upscale for f in photo.result.faces]
        mediapipe = [f.mesh_landmarks68 / upscale for f in photo.result.faces]
        unmatched += len(photo.result.faces) - sum(d is not None for _, d, _ in photo.matches)
        for annotation, detection, iou in photo.matches:
            x0, y0, x1, y1 = annotation.box
            ocular = float(np.linalg.norm(annotation.points[metrics.RIGHT_EYE_OUTER] - annotation.points[metrics.LEFT_EYE_OUTER]))
            row = FaceRow(annotation.image.name, annotation.split, annotation.face, x0, y0, x1 - x0, y1 - y0, detection is not None, iou, ocular)
            if detection is not None:
                truth = annotation.points[None]
                row.nme68_head_model, row.nme51_head_model = (float(nme_percent(ours[detection][None], truth, jaw)[0]) for jaw in (True, False))
                row.nme68_mediapipe, row.nme51_mediapipe = (float(nme_percent(mediapipe[detection][None], truth, jaw)[0]) for jaw in (True, False))
            rows.append(row)
    return rows, unmatched


def summarise_faces(rows: list[FaceRow]) -> list[LandmarkSummary]:
    """Per landmark source (head model, MediaPipe): mean and median NME over the detected faces."""
    detected = [r for r in rows if r.detected]
    summaries = []
    for name, key in (("head model, projected (ours)", "head_model"), ("MediaPipe 68 subset (raw)", "mediapipe")):
        all68 = np.array([getattr(r, f"nme68_{key}") for r in detected])
        inner = np.array([getattr(r, f"nme51_{key}") for r in detected])
        stats = [float(f(v)) if len(v) else math.nan for v in (all68, inner) for f in (np.mean, np.median)]
        summaries.append(LandmarkSummary(name, len(rows), len(detected), *stats))
    return summaries


def format_image_table(summaries: list[LandmarkSummary]) -> str:
    """Table: Landmarks | faces | detected | NME-68 mean, median | NME-51 mean, median (%)."""
    lines = [
        "| Landmarks | faces | detected | NME-68 mean % | NME-68 median % | NME-51 mean % | NME-51 median % |",
        "|" + "---|" * 7,
    ]
    for s in summaries:
        nmes = " | ".join(_number(v) for v in (s.nme68_mean, s.nme68_median, s.nme51_mean, s.nme51_median))
        lines.append(f"| {s.name} | {s.faces} | {s.detected} ({_number(100 * s.detection_rate, 1)}%) | {nmes} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- jitter


def jitter(track: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """(T, N, D) positions of N points in T consecutive frames -> (T-2,) mean over the points of
    |x[t-1] - 2 x[t] + x[t+1]|, divided by ``scale`` (T,) at the middle frame t when given."""
    track = np.asarray(track, dtype=np.float64)
    second = track[:-2] - 2.0 * track[1:-1] + track[2:]
    values = np.linalg.norm(second, axis=-1).mean(-1)
    return values if scale is None else values / np.asarray(scale, dtype=np.float64)[1:-1]


class JitterMeter:
    """Running mean of ``jitter`` over runs of consecutive frames of one tracked face: ``push``
    each frame's (N, D) points; a gap in the frame index or a new track id starts a new run."""

    def __init__(self) -> None:
        self._window: deque[tuple[np.ndarray, float]] = deque(maxlen=3)
        self._last: tuple[int, int] | None = None
        self.total, self.count = 0.0, 0

    def push(self, index: int, track_id: int, points: np.ndarray, scale: float = 1.0) -> None:
        if self._last is None or self._last != (index - 1, track_id):
            self._window.clear()
        self._last = (index, track_id)
        self._window.append((np.asarray(points, dtype=np.float64), float(scale)))
        if len(self._window) == 3:
            self.total += float(jitter(np.stack([p for p, _ in self._window]), np.array([s for _, s in self._window]))[0])
            self.count += 1

    @property
    def mean(self) -> float:
        """Mean over every triple pushed so far (NaN when none)."""
        return self.total / self.count if self.count else math.nan


# ----------------------------------------------------------------------------- videos


@dataclass
class VideoRow:
    """One video: frames tracked, frames with a face, steady-state FPS, mean per-frame processing
    (ms), jitter of our projected landmarks and of MediaPipe's (% inter-ocular), of the face
    mesh (mm), and the number of frame triples the jitter averages; agreement with MediaPipe's
    68 points on the same frames: NME-51 (%, MediaPipe's inter-ocular distance), Pearson
    correlation and standard-deviation ratio (ours / MediaPipe's) of the mouth and eye openings
    (``openings``); the refinement's mean iterations and ms per face (0: not refined) and the
    frames tracked with a locked identity. ARKit weights (``tracker.fitting.arkit``) against MediaPipe's
    own points: correlation of jawOpen with MediaPipe's mouth opening, and of the mean eyeBlink
    with MediaPipe's eye closing (minus its opening); with ``--arkit-side-fit`` the same for the
    ICT fit that gives FLAME its weights (``tracker.fitting.arkit_side_fit``, run beside the tracker on the same
    faces), its mean absolute difference from the tracker's 52 weights and its ms per face; with
    ``--arkit-peer`` our weights beside MediaPipe's blendshape model's (``train.arkit_peer``).
    ``mouth_lag``: frames by which our mouth opening trails MediaPipe's (the peak of their
    cross-correlation to a fraction of a frame, ``subframe_lag``, over the frames with a face).
    ``offline_steps``: with ``--offline``, the seconds of the offline tracker's steps
    (``OfflineStats``: first pass, refit, smoothing, output pass)."""

    video: str
    frames: int
    detected: int
    fps: float
    processing_ms: float
    jitter_landmarks_percent: float
    jitter_mediapipe_percent: float
    jitter_mesh_mm: float
    triples: int
    nme51_vs_mediapipe: float = math.nan
    mouth_correlation: float = math.nan
    eye_correlation: float = math.nan
    mouth_std_ratio: float = math.nan
    eye_std_ratio: float = math.nan
    refine_iterations: float = 0.0
    refine_ms: float = 0.0
    identity_locked_frames: int = 0
    jaw_open_correlation: float = math.nan
    blink_correlation: float = math.nan
    side_fit_jaw_open_correlation: float = math.nan
    side_fit_blink_correlation: float = math.nan
    side_fit_difference: float = math.nan
    side_fit_ms: float = math.nan
    mouth_lag: float = math.nan
    offline_steps: dict[str, float] | None = None
    peer: PeerComparison | None = None

    @property
    def detection_rate(self) -> float:
        return self.detected / self.frames if self.frames else math.nan


MOUTH_PAIRS = ((62, 66),)  # inner-lip centres (iBUG, 0-based)
EYE_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))  # upper and lower lid points of both eyes


def openings(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 68, 2) iBUG landmarks -> (mouth (...), eye (...)) openings: the inner-lip gap and the
    mean lid gap, each over the outer-eye-corner distance (points 36-45)."""
    from train import metrics

    points = np.asarray(points, dtype=np.float64)
    ocular = np.linalg.norm(points[..., metrics.RIGHT_EYE_OUTER, :] - points[..., metrics.LEFT_EYE_OUTER, :], axis=-1)

    def gap(pairs) -> np.ndarray:
        return np.mean([np.linalg.norm(points[..., a, :] - points[..., b, :], axis=-1) for a, b in pairs], axis=0) / ocular

    return gap(MOUTH_PAIRS), gap(EYE_PAIRS)


class VideoMeter:
    """Pipeline sink: counts frames and faces, result times, the three jitters of the first
    (largest) face and its agreement with MediaPipe (``VideoRow``); ``face_vertices`` (V,) bool
    selects the mesh vertices (None: all)."""

    def __init__(self, face_vertices: torch.Tensor | None, side_fit: ArkitFit | None = None, peer: ArkitPeer | None = None) -> None:
        self.face_vertices = face_vertices
        self.side_fit = side_fit
        self.peer = peer
        self.peer_arkit: list[np.ndarray] = []
        self.frame_index: list[int] = []
        self.arkit: list[np.ndarray] = []
        self.side_arkit: list[np.ndarray] = []
        self.side_ms: list[float] = []
        self.times: list[float] = []
        self.processing_ms: list[float] = []
        self.refine_ms: list[float] = []
        self.refine_iterations: list[int] = []
        self.detected = 0
        self.locked = 0
        self.ours, self.mediapipe, self.mesh = JitterMeter(), JitterMeter(), JitterMeter()
        self.ours68: list[np.ndarray] = []
        self.mediapipe68: list[np.ndarray] = []

    def __call__(self, result: TrackingResult) -> None:
        from train import metrics

        self.times.append(time.perf_counter())
        self.processing_ms.append(result.processing_ms)
        # the peer sees every frame (its VIDEO mode tracks between them); kept where we found a face
        peer = None if self.peer is None else self.peer(result.frame.image, 1000.0 * result.frame.timestamp)
        if not result.faces:
            return
        self.detected += 1
        face, index = result.faces[0], result.frame.index
        self.frame_index.append(index)
        if peer is not None:
            self.peer_arkit.append(peer)
        ocular = float(np.linalg.norm(face.mesh_landmarks68[metrics.RIGHT_EYE_OUTER] - face.mesh_landmarks68[metrics.LEFT_EYE_OUTER]))
        self.ours.push(index, face.track_id, face.landmarks68, ocular / 100.0)
        self.mediapipe.push(index, face.track_id, face.mesh_landmarks68, ocular / 100.0)
        vertices = face.vertices if self.face_vertices is None else face.vertices[self.face_vertices]
        self.mesh.push(index, face.track_id, vertices.numpy() * metrics.MM_PER_METRE)
        self.ours68.append(np.asarray(face.landmarks68, dtype=np.float64))
        self.mediapipe68.append(np.asarray(face.mesh_landmarks68, dtype=np.float64))
        self.refine_iterations.append(face.refine_iterations)
        self.refine_ms.append(result.timings.get("refine", 0.0) / len(result.faces))
        self.locked += face.identity_state in ("locked", "given")
        self.arkit.append(np.full(len(ARKIT_NAMES), np.nan) if face.avatar is None else face.avatar.weights)
        if self.side_fit is not None:
            started = time.perf_counter()
            expression = self.side_fit.fit(face.crop, result.focal, result.principal)[0]
            self.side_ms.append((time.perf_counter() - started) * 1000.0)
            self.side_arkit.append(np.clip(self.side_fit.matrix @ expression, 0.0, 1.0))

    def row(self, name: str) -> VideoRow:
        frames = len(self.times)
        fps = (frames - 1) / (self.times[-1] - self.times[0]) if frames > 1 and self.times[-1] > self.times[0] else math.nan
        processing = float(np.mean(self.processing_ms)) if frames else math.nan
        row = VideoRow(name, frames, self.detected, fps, processing, self.ours.mean, self.mediapipe.mean, self.mesh.mean, self.ours.count)
        if self.ours68:
            ours, theirs = np.stack(self.ours68), np.stack(self.mediapipe68)
            row.nme51_vs_mediapipe = float(np.mean(nme_percent(ours, theirs, with_jaw=False)))
            (mouth, eye), (mouth_mp, eye_mp) = openings(ours), openings(theirs)
            row.mouth_correlation, row.eye_correlation = correlation(mouth, mouth_mp), correlation(eye, eye_mp)
            row.mouth_std_ratio = float(mouth.std() / mouth_mp.std()) if mouth_mp.std() > 0 else math.nan
            row.eye_std_ratio = float(eye.std() / eye_mp.std()) if eye_mp.std() > 0 else math.nan
            row.mouth_lag = subframe_lag(mouth, mouth_mp)
            row.refine_iterations = float(np.mean(self.refine_iterations))
            row.refine_ms = float(np.mean(self.refine_ms))
            row.identity_locked_frames = self.locked
            row.jaw_open_correlation, row.blink_correlation = arkit_correlations(np.stack(self.arkit), mouth_mp, eye_mp)
            if self.side_arkit:
                side = np.stack(self.side_arkit)
                row.side_fit_jaw_open_correlation, row.side_fit_blink_correlation = arkit_correlations(side, mouth_mp, eye_mp)
                row.side_fit_difference = float(np.nanmean(np.abs(side - np.stack(self.arkit))))
                row.side_fit_ms = float(np.mean(self.side_ms))
            if self.peer_arkit:
                row.peer = compare_with_peer(np.stack(self.arkit), np.stack(self.peer_arkit), np.array(self.frame_index), mouth_mp, eye_mp)
        return row


def evaluate_video(tracker: FaceTracker, path: Path, max_frames: int | None = None, side_fit: ArkitFit | None = None,
                   peer_model: Path | None = None, offline: bool = False) -> VideoRow:
    """Every frame of ``path`` (at most ``max_frames``) in order through the sequential pipeline,
    from a fresh tracker state (``side_fit``: also run this ARKit fit on every face; ``peer_model``:
    MediaPipe's blendshape model beside it, a fresh one per video; ``offline``: tracked by the
    offline tracker, ``tracker.offline``, whose output pass the meter sees: FPS and ms/frame are then
    every step's wall time over the frames)."""
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import MediaClockSource, open_source
    from tracker.offline.two_pass import UNSMOOTHED, OfflineSmoothing, OfflineTracker

    tracker.reset()
    peer = None if peer_model is None else ArkitPeer(peer_model)
    meter = VideoMeter(tracker.head.region_masks.get("face"), side_fit, peer)
    started = time.perf_counter()
    stats = None
    try:
        if offline:
            smoothing = OfflineSmoothing() if tracker.smoothing else UNSMOOTHED
            stats = OfflineTracker(tracker, smoothing).track(lambda: MediaClockSource(open_source(path, realtime=False)), lambda source: [meter], max_frames)
        else:
            Pipeline(MediaClockSource(open_source(path, realtime=False)), tracker, [meter], mode="sequential", max_frames=max_frames).run()
    finally:
        if peer is not None:
            peer.close()
    row = meter.row(path.name)
    if stats is not None and row.frames:
        wall = time.perf_counter() - started
        row.fps, row.processing_ms = row.frames / wall, 1000.0 * wall / row.frames
        row.offline_steps = {"first_pass_s": stats.observe_s, "refit_s": stats.refit_s, "smoothing_s": stats.smooth_s, "output_pass_s": stats.output_s}
    return row


def format_video_table(rows: list[VideoRow]) -> str:
    """Table: Video | frames | face found | FPS | ms/frame | jitter: ours 2D, MediaPipe 2D, mesh |
    against MediaPipe: NME-51, mouth and eye correlation and std ratio, mouth lag | refine iterations, ms."""
    lines = [
        "| Video | frames | face found | FPS | ms/frame | jitter 68 ours % IOD | jitter 68 MediaPipe % IOD | jitter mesh mm "
        "| NME-51 vs MediaPipe % | mouth corr | eye corr | mouth std ratio | eye std ratio | mouth lag frames | refine iters | refine ms |",
        "|" + "---|" * 16,
    ]
    for r in rows:
        lines.append(
            f"| {r.video} | {r.frames} | {_number(100 * r.detection_rate, 1)}% | {_number(r.fps, 1)} | {_number(r.processing_ms, 1)} | "
            f"{_number(r.jitter_landmarks_percent, 3)} | {_number(r.jitter_mediapipe_percent, 3)} | {_number(r.jitter_mesh_mm, 3)} | "
            f"{_number(r.nme51_vs_mediapipe)} | {_number(r.mouth_correlation, 3)} | {_number(r.eye_correlation, 3)} | "
            f"{_number(r.mouth_std_ratio)} | {_number(r.eye_std_ratio)} | {_number(r.mouth_lag)} | {_number(r.refine_iterations, 1)} | {_number(r.refine_ms)} |"
        )
    return "\n".join(lines)


def format_offline_steps(rows: list[VideoRow]) -> str:
    """Table: Video | first pass | refit | smoothing | output pass | (refit + smoothing + output) / first pass."""
    lines = ["| Video | first pass s | refit s | smoothing s | output pass s | later steps / first pass |", "|" + "---|" * 6]
    for r in rows:
        if r.offline_steps:
            steps = r.offline_steps
            later = steps["refit_s"] + steps["smoothing_s"] + steps["output_pass_s"]
            lines.append(f"| {r.video} | {steps['first_pass_s']:.1f} | {steps['refit_s']:.1f} | {steps['smoothing_s']:.2f} | {steps['output_pass_s']:.1f} | "
                         f"{_number(later / steps['first_pass_s'] if steps['first_pass_s'] > 0 else math.nan)} |")
    return "\n".join(lines)


def format_arkit_table(rows: list[VideoRow]) -> str:
    """Table: Video | jawOpen vs MediaPipe mouth | eyeBlink vs MediaPipe eye closing | the same for the
    ICT side fit | its mean |difference| from the tracker's weights | its ms per face."""
    lines = [
        "| Video | jawOpen ~ mouth opening | eyeBlink ~ eye closing | side fit: jawOpen ~ mouth | side fit: eyeBlink ~ closing "
        "| side fit mean abs diff | side fit ms |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        if r.detected:
            lines.append(
                f"| {r.video} | {_number(r.jaw_open_correlation, 3)} | {_number(r.blink_correlation, 3)} | "
                f"{_number(r.side_fit_jaw_open_correlation, 3)} | {_number(r.side_fit_blink_correlation, 3)} | "
                f"{_number(r.side_fit_difference, 3)} | {_number(r.side_fit_ms)} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def data_folder(path: str | None) -> Path:
    """``--data`` or the shared folder's real-faces/; a TrackerError that says how to set it when absent."""
    if path is not None:
        folder = Path(path)
    else:
        shared = shared_dir()
        if shared is None:
            raise TrackerError("the real-face material was not found: set N2F_SHARED_DIR, place the shared folder at ../shared, or pass --data DIR")
        folder = shared / "real-faces"
    if not folder.is_dir():
        raise TrackerError(f"the real-face material folder {folder} does not exist (set N2F_SHARED_DIR or pass --data DIR)")
    return folder


def video_paths(args: argparse.Namespace, folder: Path) -> list[Path]:
    if args.videos and args.split:
        raise TrackerError("give either --videos or --split, not both")
    if args.split:
        return split_paths(folder, args.split, "videos")
    if args.videos:
        paths = [Path(p) for p in args.videos]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise TrackerError(f"videos not found: {', '.join(missing)}")
        return paths
    paths = sorted(p for p in (folder / "videos").glob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise TrackerError(f"no .mp4/.mov videos in {folder / 'videos'}")
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate_real", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tracker_arguments(p, p, checkpoint_required=True, detector_note="; videos only: the photos always use full-range")
    p.add_argument("--data", help="real-face material folder (default: the shared folder's real-faces/)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--images-only", action="store_true", help="only the annotated photos")
    only.add_argument("--videos-only", action="store_true", help="only the videos")
    only.add_argument("--synthetic-only", action="store_true", help="only the rendered ARKit ground truth (--synthetic-arkit)")
    p.add_argument("--videos", nargs="+", help="video files (default: DATA/videos/*.mp4|*.mov)")
    p.add_argument("--split", choices=tuple(SPLITS), help="only the videos of that side of train.real_split (heldout: those no fine-tuning saw)")
    p.add_argument("--max-frames", type=int, help="track at most this many frames of each video")
    p.add_argument("--no-smoothing", action="store_true", help="videos: switch off the parameter and crop smoothing (the app's --no-smoothing)")
    p.add_argument("--offline", action="store_true",
                   help="videos: track them as python -m app.batch does, two passes with the identity pooled over the whole clip and a zero-lag smoother (tracker.offline)")
    p.add_argument("--upscale", type=float, default=DEFAULT_UPSCALE, help=f"resize the photos by this factor before tracking (default {DEFAULT_UPSCALE:g})")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the app)")
    p.add_argument("--csv", help="write the per-face rows of the photos to this CSV")
    p.add_argument("--json", help="write every figure (settings, per-face rows, tables) to this JSON")
    p.add_argument("--arkit-side-fit", action="store_true",
                   help="videos: also run the ICT fit that gives FLAME its ARKit weights (tracker.fitting.arkit_side_fit) on every face, "
                   "and compare its weights with the tracker's and with MediaPipe's mouth and eye openings")
    p.add_argument("--arkit-peer", nargs="?", const="", metavar="TASK_FILE",
                   help=f"videos: run MediaPipe's blendshape model ({PEER_FILE}; default: the shared folder's peers/, skipped with a "
                        "reason when absent) on the same frames and compare its ARKit weights with ours")
    p.add_argument("--synthetic-arkit", action="store_true",
                   help="also track the demo's rendered ICT head (tracker.live.demo) and compare its ARKit weights with the known ones, "
                        "per shape (with --arkit-peer: the peer's beside)")
    p.add_argument("--synthetic-shapes", nargs="+", metavar="SHAPE",
                   help="the ARKit shapes the rendered head performs alone (default: all 51 ICT has), before its blinks, winks, turns and speech")
    p.add_argument("--ablation", action="store_true",
                   help="N2FNet's role: run everything three times (N2FNet alone; refinement from the mean face, no network; "
                   "N2FNet + refinement) and print a comparison table")
    add_output_options(p)
    return p


# variant name -> TrackerOptions overrides
ABLATION = {
    "N2FNet alone": {"refine": False},
    "refinement from the mean face (no network)": {"refine": True, "refine_start": "mean"},
    "N2FNet + refinement": {"refine": True, "refine_start": "network"},
}


def format_ablation_table(results: dict[str, dict]) -> str:
    """One row per ABLATION variant: photo NMEs, then the mean over the videos of the video figures."""
    lines = [
        "| Variant | photos NME-68 % | photos NME-51 % | videos NME-51 vs MediaPipe % | mouth corr | eye corr | jitter 68 % IOD "
        "| MediaPipe jitter | refine iters | refine ms |",
        "|" + "---|" * 10,
    ]
    for name, report in results.items():
        ours = report.get("images", {}).get("summary", [{}])[0]
        rows = report.get("videos", {}).get("rows", [])
        mean = {key: float(np.nanmean([r[key] for r in rows if r[key] is not None])) if rows else math.nan
                for key in ("nme51_vs_mediapipe", "mouth_correlation", "eye_correlation", "jitter_landmarks_percent",
                            "jitter_mediapipe_percent", "refine_iterations", "refine_ms")}
        lines.append(
            f"| {name} | {_number(ours.get('nme68_mean', math.nan))} | {_number(ours.get('nme51_mean', math.nan))} | "
            f"{_number(mean['nme51_vs_mediapipe'])} | {_number(mean['mouth_correlation'], 3)} | {_number(mean['eye_correlation'], 3)} | "
            f"{_number(mean['jitter_landmarks_percent'], 3)} | {_number(mean['jitter_mediapipe_percent'], 3)} | "
            f"{_number(mean['refine_iterations'], 1)} | {_number(mean['refine_ms'])} |"
        )
    return "\n".join(lines)


def report_images(args: argparse.Namespace, folder: Path, **overrides) -> dict:
    """Track the annotated photos, print their table (and write --csv) -> the JSON part."""
    from tracker.live.face_tracker import FaceTracker

    faces = annotated_faces(folder / "dlib-faces")
    tracker = FaceTracker.from_options(image_options(args, **overrides))
    try:
        rows, unmatched = evaluate_images(tracker, faces, args.upscale)
    finally:
        tracker.close()
    summaries = summarise_faces(rows)
    print(
        f"Photos: {len(rows)} annotated faces in {len({r.image for r in rows})} dlib example photos (PASCAL VOC), checkpoint {args.checkpoint}.\n"
        "PSEUDO ground truth: the 68 points come from dlib's 68-point model, not from human labelling.\n"
        "NME: mean point distance / inter-ocular distance (the annotation's outer eye corners, points 36 and 45), in %; "
        "NME-51 leaves out the 17 jaw-contour points 0-16.\n"
        f"Detection: MediaPipe full-range detector + face mesh, photos upscaled {args.upscale:g}x, one photo at a time, no smoothing; "
        f"a face is found when the box of MediaPipe's 68 points overlaps its annotation box with IoU > {MATCH_IOU}; "
        f"{unmatched} detections matched no annotation."
    )
    print(format_image_table(summaries))
    if args.csv:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=[f.name for f in dataclasses.fields(FaceRow)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in rows)
        _write_whole(args.csv, table.getvalue(), "--csv")
    return {
        "upscale": args.upscale,
        "unmatched_detections": unmatched,
        "summary": [dataclasses.asdict(s) for s in summaries],
        "faces": [dataclasses.asdict(r) for r in rows],
    }


def report_videos(args: argparse.Namespace, paths: list[Path], peer_model: Path | None = None, **overrides) -> dict:
    """Track the videos ``paths``, print their table -> the JSON part (``peer_model``: the ARKit
    peer beside the tracker, ``peer_model_path``)."""
    import torch

    from tracker.fitting.arkit_side_fit import ArkitFit
    from tracker.head_models import load_head_model
    from tracker.live.face_tracker import FaceTracker

    tracker = FaceTracker.from_options(video_options(args, **overrides))
    try:
        ict = load_head_model("ict", args.ict_model) if args.arkit_side_fit else None
        rows = [evaluate_video(tracker, path, args.max_frames, ArkitFit(ict) if ict is not None else None, peer_model, args.offline) for path in paths]
    finally:
        tracker.close()
    limit = f", at most {args.max_frames} frames each" if args.max_frames else ""
    print(
        f"Videos: every frame in order{limit}, {'offline tracker (two passes, zero-lag smoothing)' if args.offline else 'sequential pipeline'}, "
        f"smoothing {'off' if args.no_smoothing else 'on (app default)'}, "
        f"device {args.device}, torch threads {torch.get_num_threads()}.\n"
        "FPS: (frames - 1) / wall clock from the first result to the last; ms/frame: the pipeline taking a frame -> its result.\n"
        "Jitter: mean norm of the second temporal difference over consecutive frames with a face (motion at constant velocity "
        "counts zero); 68 landmarks in % of MediaPipe's inter-ocular distance, face-region mesh vertices in mm (camera frame)."
    )
    print(format_video_table(rows))
    if args.offline:
        print("\nThe offline tracker's steps, seconds: the first pass (the live tracker), the refit (landmark fits only), the zero-lag "
              "smoothing, the output pass (the video read again, every frame decoded); the later steps' cost against the first pass.")
        print(format_offline_steps(rows))
    print(
        "\nARKit weights (tracker.fitting.arkit) against MediaPipe's own points on the same frames: Pearson correlation of jawOpen with "
        "MediaPipe's mouth opening, of the mean eyeBlink with MediaPipe's eye closing (minus the lid gap)."
        + (" Side fit: ICT fitted from the neutral face beside the tracker, as for FLAME (tracker.fitting.arkit_side_fit)." if args.arkit_side_fit else "")
    )
    print(format_arkit_table(rows))
    if peer_model is not None:
        print(f"\nARKit weights beside the peer, MediaPipe's blendshape model ({peer_model}, VIDEO mode, the same frames; train.arkit_peer "
              "defines the figures): r with MediaPipe's openings, relative jitter (mean |second difference| / standard deviation), "
              "lag in frames (peak cross-correlation with the opening; + late), shapes with sd > 0.02.")
        print(format_peer_table(rows))
        print("\nPer-shape agreement with the peer: Pearson r of the two systems' weights, shapes both move (sd > 0.02).")
        print(format_agreement_table(rows))
    return {"smoothing": not args.no_smoothing, "offline": args.offline, "rows": [dataclasses.asdict(r) for r in rows]}


def synthetic_script(args: argparse.Namespace):
    """The demo's script (``tracker.live.demo.DemoScript``) that ``--synthetic-arkit`` / ``--synthetic-only``
    track (``--synthetic-shapes``: those shapes alone); None without either. A TrackerError for a
    shape the demo cannot perform, or shapes given without either option."""
    if not (args.synthetic_arkit or args.synthetic_only):
        if args.synthetic_shapes:
            raise TrackerError("--synthetic-shapes chooses the rendered head's shapes: add --synthetic-arkit or --synthetic-only")
        return None
    from tracker.live.demo import demo_script

    return demo_script() if args.synthetic_shapes is None else demo_script(shapes=tuple(args.synthetic_shapes))


def report_synthetic(args: argparse.Namespace, script, peer_model: Path | None = None, **overrides) -> dict:
    """Track the demo's rendered performance of ``script``, print its per-shape table -> the JSON part."""
    from tracker.head_models import load_head_model
    from tracker.live.face_tracker import FaceTracker
    from train.synthetic_arkit import evaluate_performance, format_synthetic_table

    tracker = FaceTracker.from_options(video_options(args, **overrides))
    peer = None if peer_model is None else ArkitPeer(peer_model)
    try:
        report = evaluate_performance(tracker, load_head_model("ict", args.ict_model), peer, script)
    finally:
        tracker.close()
        if peer is not None:
            peer.close()
    print(f"\nARKit weights on rendered ground truth (tracker.live.demo; train.synthetic_arkit defines the figures): {report.frames} frames, "
          f"a face found by ours in {report.found}" + (f", by the peer in {report.peer_found}" if peer is not None else "") +
          f"; the largest resting weight {report.resting:.2f}" + (f" / peer {report.peer_resting:.2f}" if peer is not None else "") + ".")
    print(format_synthetic_table(report))
    return dataclasses.asdict(report)


def peer_model_path(args: argparse.Namespace) -> Path | None:
    """``--arkit-peer``'s model: the file given, else the shared folder's (None, said why, when it is
    not there: the comparison is skipped); None without the option."""
    if args.arkit_peer is None:
        return None
    if args.arkit_peer:
        path = Path(args.arkit_peer).expanduser()
        if not path.is_file():
            raise TrackerError(f"--arkit-peer: {path} does not exist; the peer is {PEER_SOURCE}")
        return path
    path = default_peer_path()
    if path is None:
        print(f"--arkit-peer: skipped, no {PEER_FILE} in the shared folder's peers/ (N2F_SHARED_DIR); give its path: it is {PEER_SOURCE}")
    return path


def check_ablation(options: TrackerOptions) -> None:
    """The ablation varies the network's part in fitting the head model it regresses: a
    TrackerError for another head model (fitted without its network) or a given start."""
    from tracker.n2fnet.checkpoint import load_checkpoint

    trained_for = str(load_checkpoint(options.checkpoint_path())["n2fnet"]["head_model"])
    fitted = options.fitted_head_model(trained_for)
    if fitted != trained_for:
        raise TrackerError(
            f"--ablation compares N2FNet's part in fitting the head model it regresses ({trained_for}); {fitted} is fitted without its "
            "network here: leave out --ablation, or the options that fit another head model (--flame-dir, --head-model)"
        )
    if options.refine_start is not None:
        raise TrackerError(f"--ablation sets the refinement's start itself: leave out --refine-start {options.refine_start}")


def evaluate_all(args: argparse.Namespace, progress: Progress) -> None:
    """Settings, material and the --csv/--json files checked first; then the photos and videos of
    every variant tracked and reported."""
    if args.upscale <= 0:
        raise TrackerError(f"--upscale must be positive, got {args.upscale}")
    folder = data_folder(args.data)
    paths = None if args.images_only or args.synthetic_only else video_paths(args, folder)
    script = synthetic_script(args)
    peer_model = None if paths is None and script is None else peer_model_path(args)
    outputs = [str(writable_file(path, option)) for path, option in ((args.csv, "--csv"), (args.json, "--json")) if path]
    import torch

    torch.set_num_threads(max(1, args.threads))
    report: dict = {"checkpoint": str(args.checkpoint), "device": args.device, "torch_threads": torch.get_num_threads()}
    progress.began("the tables printed above are complete" + (f"; {' and '.join(outputs)} (written at the end) were not written" if outputs else ""))
    if args.ablation:
        check_ablation(video_options(args))
    variants = ABLATION if args.ablation else {"": {}}
    results: dict[str, dict] = {}
    for name, overrides in variants.items():
        if name:
            print(f"\n## {name}")
        part: dict = {}
        if not (args.videos_only or args.synthetic_only):
            part["images"] = report_images(args, folder, **overrides)
        if paths is not None:
            if not args.videos_only:
                print()
            part["videos"] = report_videos(args, paths, peer_model, **overrides)
        if script is not None:
            part["synthetic_arkit"] = report_synthetic(args, script, peer_model, **overrides)
        results[name] = _finite_or_none(part)
    if args.ablation:
        print("\n## Ablation: N2FNet's role (videos: mean over the videos)")
        print(format_ablation_table(results))
        report["ablation"] = results
    else:
        report.update(results[""])
    if args.json:
        _write_whole(args.json, json.dumps(_finite_or_none(report), indent=1), "--json")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: evaluate_all(args, progress), "the evaluation", verbose=args.verbose)


def _write_whole(path: str, text: str, option: str) -> None:
    """``text`` to ``path`` whole or not at all; a TrackerError naming ``option`` when it cannot be written."""
    from tracker.files.atomic_write import atomic_write

    try:
        atomic_write(path, text.encode())
    except OSError as error:
        raise TrackerError(f"{option} {path}: cannot write it ({error.strerror or error})") from None


def _number(value: float, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _finite_or_none(value):
    """NaN and infinities -> None, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    sys.exit(main())
