"""What the tracker's stages hand on: the network inputs and outputs of a frame, the prepared frame,
the tracked faces and the frame's result that sinks receive; and the stopwatch that fills their
``timings``.

    FaceTracker.prepare(frame)        -> Prepared (its NetworkInputs)
    the feeder (tracker.live.feed)    -> RawOutput
    FaceTracker.finish(prepared, raw) -> TrackingResult of FaceResults

Light to import (numpy and the standard library; torch only for type checking).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from tracker.face.cues import CueOutput
    from tracker.face.detection import FaceCrop
    from tracker.face.smoothing import FrameParameters
    from tracker.fitting.arkit import AvatarValues
    from tracker.live.sources import Frame


@dataclass
class NetworkInputs:
    """Stacked network inputs of the faces of one frame (F faces, crop size S).

    normals (F, 3, S, S) float32 masked unit normals; mask (F, 1, S, S) float32;
    focal, principal (F, 2) float32 crop intrinsics in crop pixels.
    """

    normals: torch.Tensor
    mask: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor


@dataclass
class Prepared:
    """A frame after the CPU stage: its face crops, their cues and the stacked network inputs
    (None when no face was found)."""

    frame: Frame
    crops: list[FaceCrop]
    cues: list[CueOutput]
    inputs: NetworkInputs | None
    timings: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds
    started: float = field(default_factory=time.monotonic)  # when the pipeline took the frame


@dataclass
class RawOutput:
    """N2FNet outputs for the F faces of a frame, on the CPU: params {group: (F, n)},
    rotation_6d (F, 6), translation (F, 3)."""

    params: dict[str, torch.Tensor]
    rotation_6d: torch.Tensor
    translation: torch.Tensor

    @classmethod
    def stacked(cls, faces: list[FrameParameters]) -> RawOutput:
        """F faces' parameters ({group: (n,)}, (6,), (3,) each) as one frame's batch."""
        import torch  # this module stays light to import

        return cls({g: torch.stack([f.params[g] for f in faces]) for g in faces[0].params},
                   torch.stack([f.rotation_6d for f in faces]), torch.stack([f.translation for f in faces]))


@dataclass
class FaceResult:
    """One tracked face in a frame (after smoothing).

    params        {group: (n,)} every group of the head model (non-regressed groups neutral)
    rotation_6d   (6,) and rotation (3, 3): head rotation in the frame camera
    translation   (3,) metres in the frame camera
    vertices      (V, 3) metres in the frame camera (OpenCV axes: x right, y down, z forward): a
                  property, decoded on first use (``mesh``: the vertices, or the function that
                  decodes them), so frames whose sinks never look at the mesh skip its decode.
                  Sinks on other threads (the viewer's GUI thread, a recording) may ask at once:
                  the decode runs under the face's own lock, once, and every caller gets its
                  vertices
    landmarks68   (68, 2) frame pixels, the head model's landmarks projected
    mesh_landmarks68 (68, 2) frame pixels, MediaPipe's 68-point subset (what the crop used)
    crop_box      (3,) (x0, y0, side) frame pixels of the crop fed to the network
    track_id      the face's identity across frames
    identity_state  "calibrating" / "locked" (the track's pooled identity), "given" (fixed by the
                  caller), "network" (refinement off: the network's per-frame identity)
    refined       whether the landmark refinement ran on this face (derived: the state is not "network")
    refine_iterations  its Levenberg-Marquardt iterations in this frame (0: not refined)
    avatar        ARKit-52 weights, head pose and gaze (``tracker.fitting.arkit``); None for a head model
                  without ARKit semantics
    network       the network's own prediction of this face in this frame, before smoothing and
                  refinement (``FrameParameters``; None where the face was not tracked from this
                  frame's network outputs: the offline tracker's smoothed result)
    """

    params: dict[str, torch.Tensor]
    rotation_6d: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    mesh: torch.Tensor | Callable[[], torch.Tensor]
    landmarks68: np.ndarray
    mesh_landmarks68: np.ndarray
    crop_box: np.ndarray
    track_id: int
    crop: FaceCrop
    cue: CueOutput
    identity_state: str = "network"
    refine_iterations: int = 0
    avatar: AvatarValues | None = None
    network: FrameParameters | None = None
    _mesh_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def refined(self) -> bool:
        return self.identity_state != "network"

    @property
    def vertices(self) -> torch.Tensor:
        with self._mesh_lock:
            if callable(self.mesh):
                self.mesh = self.mesh()
            return self.mesh


@dataclass
class TrackingResult:
    """Everything the tracker knows about one frame; what sinks receive.

    faces      tracked faces, largest first (empty: no face in this frame)
    focal, principal  (2,) the frame camera's assumed intrinsics, pixels
    timings    {stage: ms} time spent in each stage of this frame (detect, crop, cue, upload,
               network, smooth, refine, decode; queue waits are not counted)
    latency_ms capture -> result ready (includes queue waits; a file read as fast as possible
               is decoded ahead, so there it includes the source's read-ahead queue)
    processing_ms  the pipeline taking the frame -> result ready
    dropped    frames the source had dropped (never processed) up to this frame
    errors     why faces found in this frame were left out of ``faces`` (a frame error each: the
               network's or the refinement's outputs not finite); empty for a clean frame
    """

    frame: Frame
    faces: list[FaceResult]
    focal: np.ndarray
    principal: np.ndarray
    timings: dict[str, float]
    latency_ms: float = 0.0
    processing_ms: float = 0.0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def face_found(self) -> bool:
        return bool(self.faces)


class Stopwatch:
    """Accumulates named durations in milliseconds into a ``timings`` dict: ``with watch("cue"): ...``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, name: str):
        return _Lap(self.timings, name)


class _Lap:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + (time.perf_counter() - self.start) * 1000.0
