"""Face detection, dense landmarks and the DECA-style face crop of the live tracker.

    FaceMeshDetector   MediaPipe Face Mesh (the models inside the mediapipe 0.10.21 wheel, CPU):
                       BGR frame -> list of ``FaceLandmarks`` (478 points with iris refinement)
    FaceLandmarks      one face: ``points`` (478, 3) pixels, ``landmarks68`` (68, 2) iBUG-68 subset
    FaceCropper        landmarks -> square crop box (DECA rule, padding ``alpha``), One-Euro smoothed
                       per tracked face, resampled to ``out_size`` with ``crop_images``
    FaceCrop           one crop: image, box, crop-space landmarks, track id

Coordinates follow ``tracker.geometry.camera``: continuous pixel coordinates, origin at the
top-left *corner* of the image, pixel centres at (j + 0.5, i + 0.5). MediaPipe's normalised
landmarks map onto them directly: ``x = lm.x * width``, ``y = lm.y * height`` (its normalised
coordinates run over the whole image extent, 0 and 1 being the image borders). Its relative depth
``lm.z`` "uses roughly the same scale as x" and is scaled by the width too: ``z = lm.z * width``
pixels; smaller z is nearer the camera, z = 0 near the centre of the head.

iBUG-68 subset (``MEDIAPIPE_68``): one mesh vertex per iBUG point. Starting point: the widely used
MediaPipe -> dlib table of github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks (which averages two
vertices for points 3, 4, 12, 27, 28; here the better one of each pair is kept). Checked against
dlib's 68-point annotations of the 43 faces in the shared dlib example photos (normalised by the
outer-eye-corner distance, points 36-45): its brows, nose, eyes and lips are right (NME 0.048; a
neighbouring vertex fits a few points slightly better, by well under a pixel at these face sizes,
and the reference's symmetric, semantic choices are kept), but its jaw follows MediaPipe's face
oval, which runs outside dlib's jaw line at the cheeks and shifted along it towards the ears
(jaw NME 0.120). Jaw points 2, 3, 6, 7 and their mirror images 14, 13, 10, 9 are replaced by
the mesh vertices closest to dlib's points, kept mirror-symmetric (each lowers the error on both
halves of the photos, the training and the testing xml): jaw NME 0.083, all 68 points 0.066 -> 0.057 (tests/face/test_face_detection.py prints the
per-photo table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

import cv2
import numpy as np
import torch

from tracker.console import NativeMute
from tracker.errors import TrackerError
from tracker.face.smoothing import OneEuroFilter, OneEuroSettings
from tracker.geometry.boxes import box_iou, square_corners
from tracker.geometry.crop import crop_images, square_box_from_landmarks

__all__ = [
    "MEDIAPIPE_68",
    "FaceLandmarks",
    "FaceMeshDetector",
    "FaceCrop",
    "FaceCropper",
    "landmarks68_from_mesh",
]

# iBUG-68 point k (0-based, dlib order: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth
# 48-67; "right" = the subject's right = image left) -> MediaPipe Face Mesh vertex index.
MEDIAPIPE_68: tuple[int, ...] = (
    # jaw outline 0-16 (image left -> chin -> image right); 2, 3, 6, 7 and their mirrors 14, 13,
    # 10, 9 replace the reference's 93, 132|58, 150, 176 / 323, 361, 379, 400 (see the module
    # docstring): dlib's jaw runs inside MediaPipe's face-oval vertices at the cheeks
    127, 234, 177, 215, 172, 136, 149, 148, 152, 377, 378, 365, 397, 435, 401, 454, 356,
    # right brow 17-21, left brow 22-26
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30, nostrils 31-35
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    # right eye 36-41 (outer corner first, clockwise in the image), left eye 42-47
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    # outer lips 48-59
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,
    # inner lips 60-67
    78, 82, 13, 312, 308, 317, 14, 87,
)


def landmarks68_from_mesh(points: np.ndarray) -> np.ndarray:
    """(..., 468 or 478, D) MediaPipe mesh points -> (..., 68, 2) iBUG-68 pixel landmarks."""
    return np.asarray(points)[..., MEDIAPIPE_68, :2]


@dataclass(frozen=True, eq=False)
class FaceLandmarks:
    """One detected face.

    points      (478, 3) float32 (468 without iris refinement): x, y in pixels of the frame
                (continuous, pixel centres at j + 0.5), z relative depth in pixels (scale of x,
                smaller = nearer the camera)
    image_size  (width, height) of the frame
    """

    points: np.ndarray
    image_size: tuple[int, int]

    @property
    def landmarks68(self) -> np.ndarray:
        """(68, 2) float32 iBUG-68 landmarks in pixels."""
        return landmarks68_from_mesh(self.points)

    @property
    def bounds(self) -> np.ndarray:
        """(4,) x0, y0, x1, y1 of the mesh points."""
        xy = self.points[:, :2]
        return np.concatenate((xy.min(0), xy.max(0)))

    @property
    def size(self) -> float:
        """Larger side of the points' bounding box, pixels."""
        x0, y0, x1, y1 = self.bounds
        return float(max(x1 - x0, y1 - y0))


class FaceMeshDetector:
    """MediaPipe Face Mesh on BGR frames.

    Args:
        max_faces: most faces reported per frame.
        refine: iris refinement (478 points instead of 468; also sharper eye and lip contours).
        min_detection_confidence, min_tracking_confidence: MediaPipe's thresholds.
        static_images: True for unrelated photos (face detector on every call); False for video
            (the landmarks of the previous frame seed the next one; call ``reset`` between clips).
        full_range: find faces with MediaPipe's full-range face detector (BlazeFace full range,
            also in the wheel) and run the mesh on a square region around each (see below).

    ``detect(image_bgr)`` returns a list of ``FaceLandmarks`` (empty when no face is found), the
    largest face first. Use as a context manager or call ``close()``.

    Small faces: Face Mesh's own face detector (BlazeFace short range) sees the whole frame at
    128 x 128 and is meant for faces within about 2 m of a phone camera: faces under about a
    fifth of the frame are missed (multi_face.jpg, five ~100 px faces in 1000 x 667: one found),
    and upscaling the whole frame does not help. Two ways around it:
    - ``full_range=True``: the full-range detector finds the faces (all five there; 41 of the 43
      37-60 px faces of dlib's example photos), the mesh runs on each face's region, resampled to
      ``region_size`` pixels. Costs the detector (~10-20 ms a frame) plus a static mesh per face,
      every frame (no tracking between frames).
    - ``detect(image, region=(x0, y0, side))``: look in one square region of the frame (from
      another detector, a hand-drawn box, the previous crop), resampled to ``region_size``.
    Landmarks always come back in frame pixels.
    """

    # a face region for the mesh: the detector's box (about the eyebrows-to-chin square) scaled by
    # this factor about its centre; Face Mesh expects the face to fill about half the region
    REGION_FACTOR = 2.0
    # calls after which a graph's start-up lines stop being muted even without a face (_settled)
    MUTED_CALLS = 30

    def __init__(
        self,
        max_faces: int = 1,
        refine: bool = True,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        static_images: bool = False,
        full_range: bool = False,
        region_size: int = 256,
    ) -> None:
        if max_faces < 1:
            raise TrackerError(f"max_faces must be at least 1, got {max_faces}")
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as error:  # pragma: no cover - mediapipe is a hard dependency
            raise TrackerError(
                f"MediaPipe Face Mesh is not available ({error}); install the pinned version: "
                "pip install mediapipe==0.10.21 (later releases no longer bundle the models)"
            ) from error
        self.max_faces, self.refine = int(max_faces), bool(refine)
        self.full_range, self.region_size = bool(full_range), int(region_size)
        self._settings = dict(
            static_image_mode=bool(static_images) or self.full_range,
            max_num_faces=1 if self.full_range else int(max_faces),
            refine_landmarks=bool(refine),
            min_detection_confidence=float(min_detection_confidence),
            min_tracking_confidence=float(min_tracking_confidence),
        )
        self._module = face_mesh
        self._mute, self._calls = NativeMute(), 0  # released by _settled
        try:
            self._mesh = face_mesh.FaceMesh(**self._settings)
            self._boxes = (
                face_detection.FaceDetection(model_selection=1, min_detection_confidence=float(min_detection_confidence))
                if self.full_range
                else None
            )
        except BaseException:
            self._mute.release()
            raise

    def detect(
        self, image_bgr: np.ndarray, region: tuple[float, float, float] | None = None, region_size: int | None = None
    ) -> list[FaceLandmarks]:
        """(H, W, 3) uint8 BGR frame -> faces found, largest first (empty list when none).

        ``region``: optional square (x0, y0, side) in frame pixels to look in, resampled to
        ``region_size`` x ``region_size`` (default: the constructor's) to zoom in on small faces
        (see the class docstring); the faces then come nearest the region's centre first.
        """
        if self._mesh is None:
            raise TrackerError("FaceMeshDetector is closed; create a new one")
        image = np.asarray(image_bgr)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise TrackerError(f"detect() needs an (H, W, 3) uint8 BGR image, got {image.dtype} {image.shape}")
        size = self.region_size if region_size is None else int(region_size)
        if region is not None:
            return self._mesh_faces(image, region, size)
        if not self.full_range:
            return self._mesh_faces(image, None, size)
        faces: list[FaceLandmarks] = []
        for box in self.face_boxes(image):
            centre, side = box[:2] + box[2] / 2, box[2] * self.REGION_FACTOR
            found = self._mesh_faces(image, (centre[0] - side / 2, centre[1] - side / 2, side), size)
            if found and not any(box_iou(found[0].bounds, other.bounds) > 0.5 for other in faces):
                faces.append(found[0])
        return sorted(faces, key=lambda f: -f.size)[: self.max_faces]

    __call__ = detect

    def face_boxes(self, image_bgr: np.ndarray) -> np.ndarray:
        """(N, 3) square boxes (x0, y0, side) of the full-range face detector, best first
        (``full_range=True`` only); side = the larger side of the detector's box."""
        if self._boxes is None:
            raise TrackerError("face_boxes() needs FaceMeshDetector(full_range=True)")
        height, width = image_bgr.shape[:2]
        result = self._boxes.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        boxes = []
        for detection in sorted(result.detections or [], key=lambda d: -d.score[0]):
            rel = detection.location_data.relative_bounding_box
            w, h = rel.width * width, rel.height * height
            side = max(w, h)
            cx, cy = rel.xmin * width + w / 2, rel.ymin * height + h / 2
            boxes.append((cx - side / 2, cy - side / 2, side))
        return np.array(boxes, dtype=np.float64).reshape(-1, 3)

    def _mesh_faces(self, image: np.ndarray, region: tuple[float, float, float] | None, region_size: int) -> list[FaceLandmarks]:
        height, width = image.shape[:2]
        if region is not None:
            x0, y0, side = (float(v) for v in region)
            if side <= 0:
                raise TrackerError(f"detection region needs a positive side, got {region}")
            scale = region_size / side
            # output pixel centre j + 0.5 samples x0 + (j + 0.5) / scale (continuous coordinates);
            # OpenCV's pixel centres are integers, hence the 0.5 shifts
            inverse = np.array([[1 / scale, 0, x0 + 0.5 / scale - 0.5], [0, 1 / scale, y0 + 0.5 / scale - 0.5]])
            image = cv2.warpAffine(
                image, inverse, (region_size, region_size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
            )
        result = self._mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        self._settled(bool(result.multi_face_landmarks))
        faces = []
        for face in result.multi_face_landmarks or []:
            points = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            if region is None:
                points *= np.array([width, height, width], dtype=np.float32)
            else:  # normalised in the region -> frame pixels (z scales like x)
                points *= np.float32(side)
                points[:, 0] += np.float32(x0)
                points[:, 1] += np.float32(y0)
            faces.append(FaceLandmarks(points=points, image_size=(width, height)))
        if region is not None:  # the face nearest the region centre first
            centre = np.array([x0 + side / 2, y0 + side / 2], dtype=np.float32)
            return sorted(faces, key=lambda f: float(np.linalg.norm(f.points[:, :2].mean(0) - centre)))
        return sorted(faces, key=lambda f: -f.size)

    def _settled(self, face_found: bool) -> None:
        """MediaPipe's graphs print start-up lines (C++, to descriptor 2, from their own threads)
        from their creation until their first face: muted until then (``tracker.console``), or
        for at most ``MUTED_CALLS`` calls when no face comes."""
        self._calls += 1
        if face_found or self._calls >= self.MUTED_CALLS:
            self._mute.release()

    def reset(self) -> None:
        """Forget the tracked faces (a new clip): the next frame runs the face detector."""
        if self._mesh is not None:
            self._mesh.close()
            self._mute.release()
            self._mute, self._calls = NativeMute(), 0
            self._mesh = self._module.FaceMesh(**self._settings)

    def close(self) -> None:
        mute = getattr(self, "_mute", None)
        if mute is not None:
            mute.release()
        for name in ("_mesh", "_boxes"):
            graph = getattr(self, name, None)
            if graph is not None:
                graph.close()
                setattr(self, name, None)

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; mediapipe's graphs hold threads
        try:
            self.close()
        except Exception:
            pass


@dataclass(frozen=True, eq=False)
class FaceCrop:
    """One face cut out of a frame.

    image      (S, S, 3) uint8 BGR crop (zeros where the box leaves the frame)
    box        (3,) float64 (x0, y0, side) in frame pixels: the smoothed box the crop was cut with
    raw_box    (3,) float64 this frame's unsmoothed box
    landmarks  (478, 3) float32 mesh points in crop pixels (x, y as the crop's pixel convention,
               z scaled by the same factor ``out_size / side``)
    face       the frame-space ``FaceLandmarks``
    track_id   identity of the face across frames (a new id after the face was lost)
    """

    image: np.ndarray
    box: np.ndarray
    raw_box: np.ndarray
    landmarks: np.ndarray
    face: FaceLandmarks
    track_id: int

    @property
    def landmarks68(self) -> np.ndarray:
        """(68, 2) iBUG-68 landmarks in crop pixels."""
        return landmarks68_from_mesh(self.landmarks)

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel (``out_size / side``)."""
        return float(self.image.shape[0] / self.box[2])


@dataclass
class _Track:
    track_id: int
    reference: float  # box side when the track started: the filter works in units of it
    filter: OneEuroFilter | None
    box: np.ndarray = field(default_factory=lambda: np.zeros(3))


# One-Euro settings for the box (cx, cy, side) in units of the face's box side. Simulated at 30 fps
# on a real face's landmarks (tracker tests): a static face's jitter drops to about a quarter; a
# face moving one box side per second is followed with a lag of about 3.5% of the side (the
# training crops are jittered by 3% of the side, so the network tolerates that much)
DEFAULT_BOX_SMOOTHING = OneEuroSettings(min_cutoff=0.5, beta=2.0, d_cutoff=1.0)


class FaceCropper:
    """Square DECA-style crops of tracked faces, temporally smoothed.

    Args:
        alpha: padding factor: the box of the landmarks' min/max, side ``max(w, h) * alpha``,
            centred on the box centre (``square_box_from_landmarks``; the training data's rule,
            ``train.synthetic.SamplerConfig.alpha`` = 1.4).
        out_size: crop size in pixels (N2FNet's input: 256).
        max_faces: most faces cropped per frame; the largest faces (box side) are taken.
        smoothing: One-Euro settings for the box centre and side, expressed in units of the box
            side at the start of the track (so they suit any face size); None: no smoothing.
        box_landmarks: "68" (the iBUG-68 subset, as the training data) or "mesh" (all points).
        match_iou: a face continues a track when its box overlaps the track's last box by at
            least this IoU; otherwise the track is dropped (face lost) and a new one starts.

    ``cropper(image_bgr, faces, timestamp)`` -> list of ``FaceCrop``, largest face first. Faces not
    seen in a frame lose their track (their filter restarts when they come back); ``reset()``
    drops every track (new clip, source switched).
    """

    def __init__(
        self,
        alpha: float = 1.4,
        out_size: int = 256,
        max_faces: int = 1,
        smoothing: OneEuroSettings | None = DEFAULT_BOX_SMOOTHING,
        box_landmarks: str = "68",
        match_iou: float = 0.3,
    ) -> None:
        if alpha <= 0 or out_size < 1 or max_faces < 1:
            raise TrackerError(f"FaceCropper needs alpha > 0, out_size >= 1, max_faces >= 1; got {alpha}, {out_size}, {max_faces}")
        if box_landmarks not in ("68", "mesh"):
            raise TrackerError(f"box_landmarks must be '68' or 'mesh', got {box_landmarks!r}")
        self.alpha, self.out_size, self.max_faces = float(alpha), int(out_size), int(max_faces)
        self.smoothing, self.box_landmarks, self.match_iou = smoothing, box_landmarks, float(match_iou)
        self._tracks: list[_Track] = []
        self._next_id = 0

    def reset(self) -> None:
        """Forget every tracked face."""
        self._tracks = []

    def boxes(self, faces: list[FaceLandmarks]) -> np.ndarray:
        """(N, 3) unsmoothed (x0, y0, side) boxes of ``faces``."""
        if not faces:
            return np.zeros((0, 3))
        points = np.stack([f.landmarks68 if self.box_landmarks == "68" else f.points[:, :2] for f in faces])
        return square_box_from_landmarks(torch.from_numpy(points.astype(np.float64)), self.alpha).numpy()

    def __call__(self, image_bgr: np.ndarray, faces: list[FaceLandmarks], timestamp: float) -> list[FaceCrop]:
        """Crops of the (at most ``max_faces`` largest) ``faces`` in this frame at ``timestamp`` s."""
        faces = sorted(faces, key=lambda f: -f.size)[: self.max_faces]
        raw = self.boxes(faces)
        tracks = self._associate(raw)
        smoothed = np.stack([self._smooth(track, box, timestamp) for track, box in zip(tracks, raw)]) if faces else raw
        self._tracks = tracks
        images = self.crop(image_bgr, smoothed)
        crops = []
        for face, track, box, raw_box, image in zip(faces, tracks, smoothed, raw, images):
            scale = self.out_size / box[2]
            landmarks = face.points.astype(np.float64)
            landmarks[:, :2] -= box[:2]
            crops.append(FaceCrop(image, box, raw_box, (landmarks * scale).astype(np.float32), face, track.track_id))
        return crops

    def crop(self, image_bgr: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        """(H, W, 3) uint8 frame, (N, 3) boxes -> N (S, S, 3) uint8 crops, as ``crop_images``
        (bilinear, zeros outside the frame); only the frame window under each box is converted."""
        height, width = image_bgr.shape[:2]
        crops = []
        for x0, y0, side in np.asarray(boxes, dtype=np.float64).reshape(-1, 3):
            # the window of pixels the bilinear samples can touch, with a pixel of margin
            left = int(np.clip(np.floor(x0) - 1, 0, width))
            top = int(np.clip(np.floor(y0) - 1, 0, height))
            right = int(np.clip(np.ceil(x0 + side) + 1, left, width))
            bottom = int(np.clip(np.ceil(y0 + side) + 1, top, height))
            if right - left < 1 or bottom - top < 1:  # the box lies outside the frame
                crops.append(np.zeros((self.out_size, self.out_size, 3), np.uint8))
                continue
            window = torch.from_numpy(np.ascontiguousarray(image_bgr[top:bottom, left:right])).permute(2, 0, 1)[None].float()
            box = torch.tensor([[x0 - left, y0 - top, side]], dtype=torch.float32)
            out = crop_images(window, box, self.out_size)[0]
            crops.append(out.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy())
        return crops

    def _associate(self, raw: np.ndarray) -> list[_Track]:
        """One track per box (boxes in decreasing size): the free old track of highest IoU, or new."""
        free = list(self._tracks)
        tracks = []
        for box in raw:
            corners = square_corners(box)
            overlaps = [box_iou(corners, square_corners(track.box)) for track in free]
            best = int(np.argmax(overlaps)) if overlaps else -1
            if best >= 0 and overlaps[best] >= self.match_iou:
                tracks.append(free.pop(best))
            else:
                filt = self.smoothing.make() if self.smoothing is not None else None
                tracks.append(_Track(self._next_id, float(box[2]), filt))
                self._next_id += 1
        return tracks

    def _smooth(self, track: _Track, box: np.ndarray, timestamp: float) -> np.ndarray:
        state = np.array([box[0] + box[2] / 2, box[1] + box[2] / 2, box[2]]) / track.reference
        if track.filter is not None:
            state = np.asarray(track.filter(state, float(timestamp)))
        cx, cy, side = state * track.reference
        track.box = np.array([cx - side / 2, cy - side / 2, side])
        return track.box
