"""A face without a camera: an ICT head, rendered by the project's rasteriser, performing a scripted
sequence with known ARKit weights per frame (``python -m app.live --demo``; the ground truth of
``train.evaluate_real --synthetic-arkit``).

    script = demo_script()                       # DemoScript: weights (T, 52), head angles (T, 3), segments
    performer = DemoPerformer(head, script)      # ICT head model -> frames
    image = performer.frame(t)                   # (480, 640, 3) uint8 BGR
    source = open_demo_source(head)              # a FrameSource, as tracker.live.sources.open_source gives

The script, at DEMO_FPS:
  - a neutral face (``NEUTRAL_FRAMES``);
  - each ARKit shape alone, 0 to 1 to 0 (a raised cosine over ``shape_frames``), a neutral gap
    after each (tongueOut is left out: ICT has no tongue);
  - blinks of both eyes, then a wink of each eye;
  - head turns (yaw, pitch, roll, each way) with a neutral face;
  - speech-like jaw motion: syllables of random depth, lips rounding and spreading now and then.
Weights map to ICT's expression one to one (``tracker.fitting.arkit.arkit_to_ict``). ICT's eyeLook shapes move the lids
only; the performer also turns the eyeballs, by ``EYE_LOOK_FULL`` at weight 1 (the tracker's own
mapping from gaze to eyeLook, ``tracker.fitting.arkit.gaze_weights``), so the irises show the gaze.
The head's identity is the mean face.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from tracker.errors import TrackerError
from tracker.fitting.arkit import ARKIT_INDEX, ARKIT_NAMES, EYE_LOOK_FULL, arkit_to_ict
from tracker.geometry.camera import FLIP_MATRIX, project_head
from tracker.head_models.base import HeadModel
from tracker.render.face_image import FacePainter

DEMO_FPS = 30.0
DEMO_SIZE = (480, 640)  # (H, W)
DEMO_FOCAL = 600.0  # pixels: about a webcam's 56 degrees across 640 pixels
DEMO_DISTANCE = 0.42  # metres from the camera to the face's centre
NEUTRAL_FRAMES = 20
SHAPE_FRAMES = 24
GAP_FRAMES = 6
SCRIPTED_SHAPES = tuple(name for name in ARKIT_NAMES if name != "tongueOut")


@dataclass(frozen=True)
class Segment:
    """Frames [start, stop) of the script; ``shape``: the one ARKit shape active in them (None:
    several or none)."""

    label: str
    start: int
    stop: int
    shape: str | None = None


@dataclass
class DemoScript:
    """The performance: weights (T, 52) ARKit weights in ARKIT_NAMES order, angles (T, 3) head yaw,
    pitch, roll in radians (``tracker.geometry.camera.head_pose``'s signs), the segments in order."""

    weights: np.ndarray
    angles: np.ndarray
    segments: list[Segment]
    fps: float = DEMO_FPS

    def __len__(self) -> int:
        return len(self.weights)


def bump(frames: int) -> np.ndarray:
    """(frames,) a raised cosine 0 -> 1 -> 0 (its first and last values 0, its middle 1 for odd frames)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frames) / max(frames - 1, 1))


def demo_script(shapes: tuple[str, ...] = SCRIPTED_SHAPES, shape_frames: int = SHAPE_FRAMES, gap_frames: int = GAP_FRAMES,
                turns: bool = True, speech_frames: int = 120, seed: int = 0) -> DemoScript:
    """The script of the module docstring (``shapes``: the shapes performed alone, in order)."""
    unknown = sorted(set(shapes) - set(SCRIPTED_SHAPES))
    if unknown:
        raise TrackerError(f"the demo cannot perform {', '.join(unknown)} (ICT has no such shape)")
    weights: list[np.ndarray] = []
    angles: list[np.ndarray] = []
    segments: list[Segment] = []

    def add(label: str, w: np.ndarray, a: np.ndarray | None = None, shape: str | None = None) -> None:
        start = sum(len(x) for x in weights)
        weights.append(w.astype(np.float32))
        angles.append(np.zeros((len(w), 3), np.float32) if a is None else a.astype(np.float32))
        segments.append(Segment(label, start, start + len(w), shape))

    def still(frames: int) -> np.ndarray:
        return np.zeros((frames, len(ARKIT_NAMES)))

    add("neutral", still(NEUTRAL_FRAMES))
    for name in shapes:
        w = still(shape_frames)
        w[:, ARKIT_INDEX[name]] = bump(shape_frames)
        add(name, w, shape=name)
        add("gap", still(gap_frames))
    blink = bump(9)
    for label, sides in (("blink", ("Left", "Right")),) * 3 + (("wink left", ("Left",)), ("wink right", ("Right",))):
        w = still(len(blink) + 12)
        for side in sides:
            w[:len(blink), ARKIT_INDEX[f"eyeBlink{side}"]] = blink
        add(label, w)
    if turns:
        for axis, degrees in ((0, 30.0), (0, -30.0), (1, 15.0), (1, -15.0), (2, 12.0), (2, -12.0)):
            a = np.zeros((30, 3))
            a[:, axis] = math.radians(degrees) * bump(30)
            add("head turn", still(30), a)
    if speech_frames:
        add("speech", _speech(speech_frames, np.random.default_rng(seed)))
    return DemoScript(np.concatenate(weights), np.concatenate(angles), segments)


def _speech(frames: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, 52) weights of speech: syllables of 5-9 frames, jawOpen 0.15-0.6 each, some with
    lips rounding (mouthFunnel, mouthPucker) or spreading (mouthStretch)."""
    w = np.zeros((frames, len(ARKIT_NAMES)))
    t = 0
    while t < frames:
        length = int(rng.integers(5, 10))
        shape = bump(min(length, frames - t))
        w[t : t + len(shape), ARKIT_INDEX["jawOpen"]] = rng.uniform(0.15, 0.6) * shape
        kind = rng.integers(4)
        if kind == 1:
            w[t : t + len(shape), ARKIT_INDEX["mouthFunnel"]] = 0.5 * shape
        elif kind == 2:
            w[t : t + len(shape), ARKIT_INDEX["mouthPucker"]] = 0.5 * shape
        elif kind == 3:
            for side in ("Left", "Right"):
                w[t : t + len(shape), ARKIT_INDEX[f"mouthStretch{side}"]] = 0.4 * shape
        t += length
    return w


def eye_rotations(weights: np.ndarray) -> np.ndarray:
    """(52,) ARKit weights -> (2, 3, 3) rotations of the (left, right) eyeball in the head frame:
    yaw = (out - in) x EYE_LOOK_FULL towards the face's own left for the left eye (its right for
    the right eye), pitch = (down - up) x EYE_LOOK_FULL, composed Ry(yaw) Rx(pitch)."""
    out = np.zeros((2, 3, 3))
    for eye, side in enumerate(("Left", "Right")):
        look = {d: float(weights[ARKIT_INDEX[f"eyeLook{d}{side}"]]) for d in ("Out", "In", "Up", "Down")}
        yaw = (look["Out"] - look["In"]) * EYE_LOOK_FULL * (1.0 if side == "Left" else -1.0)
        pitch = (look["Down"] - look["Up"]) * EYE_LOOK_FULL
        out[eye] = Rotation.from_euler("YX", [yaw, pitch]).as_matrix()  # intrinsic: Ry(yaw) Rx(pitch)
    return out


class DemoPerformer:
    """Renders the frames of a ``DemoScript`` with an ICT head model (module docstring)."""

    def __init__(self, head: HeadModel, script: DemoScript, size: tuple[int, int] = DEMO_SIZE, focal: float = DEMO_FOCAL) -> None:
        names = getattr(head, "expression_names", None)
        if names is None or "eyeball_left" not in head.region_masks:
            raise TrackerError(f"the demo performs ICT-FaceKit's ARKit-named shapes; the {head.name} head model has none")
        self.head, self.script, self.size = head, script, size
        self.painter = FacePainter(head)
        self.expression = torch.from_numpy(arkit_to_ict(script.weights, names))
        self.identity = head.neutral_params(1)["identity"]
        neutral = head.decode(head.neutral_params(1))[0]
        self.centre = neutral[head.region_masks["face"]].mean(0)
        self.eyeballs = [torch.nonzero(head.region_masks[f"eyeball_{side}"]).squeeze(1) for side in ("left", "right")]
        if neutral[self.eyeballs[0], 0].mean() < neutral[self.eyeballs[1], 0].mean():  # the face's left eye is on +x
            self.eyeballs.reverse()
        self.focal = torch.tensor([focal, focal])
        self.principal = torch.tensor([size[1] / 2.0, size[0] / 2.0])

    @torch.no_grad()
    def vertices(self, t: int) -> torch.Tensor:
        """(V, 3) head-frame vertices of frame ``t``, the face's centre at the origin, eyeballs turned."""
        vertices = self.head.decode({"identity": self.identity, "expression": self.expression[t : t + 1]})[0] - self.centre
        for ids, rotation in zip(self.eyeballs, eye_rotations(self.script.weights[t])):
            eye = vertices[ids]
            centre = eye.mean(0)
            vertices[ids] = (eye - centre) @ torch.from_numpy(rotation).to(eye).T + centre
        return vertices

    def pose(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """The head's pose in frame ``t``: rotation (3, 3) and translation (3,) with ``X_cam = R FLIP X_head + t``
        (the script's yaw, pitch, roll through ``head_pose``'s inverse)."""
        avatar = Rotation.from_euler("YXZ", self.script.angles[t]).as_matrix()  # Ry(yaw) Rx(pitch) Rz(roll)
        return FLIP_MATRIX @ avatar @ FLIP_MATRIX, np.array([0.0, 0.0, DEMO_DISTANCE])

    def project(self, points: np.ndarray, t: int) -> np.ndarray:
        """(N, 3) head-frame points (``vertices``' frame) in frame ``t`` -> (N, 2) float64 pixels."""
        rotation, translation = (torch.from_numpy(x)[None] for x in self.pose(t))
        pixels = project_head(torch.as_tensor(points, dtype=torch.float64)[None], rotation, translation, self.focal.double()[None], self.principal.double()[None])
        return pixels[0].numpy()

    def frame(self, t: int) -> np.ndarray:
        """(H, W, 3) uint8 BGR image of frame ``t``."""
        rotation, translation = (torch.from_numpy(x) for x in self.pose(t))
        return self.painter.render(self.vertices(t), rotation, translation, self.focal, self.principal, self.size)


class _DemoReader:
    """A ``tracker.live.sources`` reader of a performer's frames (media time t / fps); ``loop``: again
    from the start at the end."""

    def __init__(self, performer: DemoPerformer, loop: bool) -> None:
        self.performer, self.loop = performer, loop
        self.next = 0
        self.lock = threading.Lock()

    @property
    def fps(self) -> float:
        return self.performer.script.fps

    @property
    def size(self) -> tuple[int, int]:
        return self.performer.size[1], self.performer.size[0]

    @property
    def frame_count(self) -> int | None:
        return None if self.loop else len(self.performer.script)

    def read(self):
        with self.lock:
            t, length = self.next, len(self.performer.script)
            if t >= length and not self.loop:
                return None
            self.next += 1
        return self.performer.frame(t % length), t / self.fps

    def close(self) -> None:
        pass


def open_demo_source(head: HeadModel, script: DemoScript | None = None, realtime: bool = False, loop: bool = False):
    """A ``FrameSource`` (not started) of the demo: every frame as fast as it is read, or with
    ``realtime`` paced at DEMO_FPS keeping the newest; ``loop``: the performance starts over."""
    from tracker.live.sources import FrameSource

    performer = DemoPerformer(head, demo_script() if script is None else script)
    return FrameSource(_DemoReader(performer, loop), name="demo", live=False, paced=realtime, stop=threading.Event())
