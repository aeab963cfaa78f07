"""Per-frame face tracking: frame -> faces found -> crops -> geometry cue -> N2FNet -> head mesh.

``FaceTracker`` holds the models and the per-face state (crop smoothing, parameter smoothing) and
splits the work of one frame into the three stages the pipeline overlaps:

    prepare(frame)          CPU: MediaPipe landmarks, smoothed DECA crop, geometry cue  -> Prepared
    run_network(inputs)     device: N2FNet on the stacked normal maps                   -> raw outputs
    finish(prepared, raw)   CPU: head-model decode, smoothing, projection to the frame  -> TrackingResult

A face whose network outputs, or whose refined parameters, hold a non-finite number (a damaged
network, a diverged fit) is left out of the result and named in ``TrackingResult.errors`` (a frame
error: the pipeline counts and reports it); nothing non-finite reaches the smoothing, the
refinement's memory of the track, or the sinks.

The frame's own camera is unknown for a webcam or a video: it is assumed to be a pinhole with the
principal point at the image centre and focal ``focal_ratio * max(W, H)`` pixels (default: the
checkpoint's synthetic focal mean, the camera the network was trained for; ``focal_px`` sets it
exactly). The crop camera follows by eqs. 6-9 (``crop_intrinsics``), and the network's rotation
and translation are then in that frame camera: X_cam = R diag(1,-1,-1) X_head + t (OpenCV axes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tracker.fitting.arkit_side_fit import ArkitFit
from tracker.fitting.arkit import IRIS_CENTRES, AvatarValues, EyeballDecoder, eye_gaze, gaze_weights, head_pose, ict_to_arkit_matrix
from tracker.face.cues import CueOutput, GeometryCue, create_cue
from tracker.errors import TrackerError
from tracker.face.detection import DEFAULT_BOX_SMOOTHING, FaceCrop, FaceCropper, FaceMeshDetector
from tracker.geometry import camera
from tracker.geometry.crop import crop_intrinsics
from tracker.geometry.rotations import matrix_to_rotation_6d, rotation_6d_to_matrix
from tracker.head_models import HeadModel, load_head_model
from tracker.n2fnet import N2FNet
from tracker.n2fnet.checkpoint import DeferredNetwork, load_checkpoint
from tracker.n2fnet.runtime import Runner, create_runner
from tracker.live.options import DETECTORS
from tracker.takes.recording import default_identity_group
from tracker.fitting.refinement import (
    DecodedEmbeddedHead,
    FrameFit,
    FrameProblem,
    IdentityPool,
    RefineSettings,
    Refiner,
    Solution,
    TrackState,
    embedded_head,
    initial_pose,
    refine_face,
    single_blas_thread,
)
from tracker.face.smoothing import FrameParameters, ParameterSmoother, live_smoother
from tracker.live.sources import Frame

log = logging.getLogger(__name__)


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


@dataclass
class FaceResult:
    """One tracked face in a frame (after smoothing).

    params        {group: (n,)} every group of the head model (non-regressed groups neutral)
    rotation_6d   (6,) and rotation (3, 3): head rotation in the frame camera
    translation   (3,) metres in the frame camera
    vertices      (V, 3) metres in the frame camera (OpenCV axes: x right, y down, z forward): a
                  property, decoded on first use (``mesh``: the vertices, or the function that
                  decodes them), so frames whose sinks never look at the mesh skip its decode
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

    @property
    def refined(self) -> bool:
        return self.identity_state != "network"

    @property
    def vertices(self) -> torch.Tensor:
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


def frame_intrinsics(width: int, height: int, focal_ratio: float = 1.0, focal_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Assumed pinhole of a (height, width) frame -> focal (2,), principal (2,) in pixels."""
    focal = float(focal_px) if focal_px is not None else focal_ratio * max(width, height)
    if focal <= 0:
        raise TrackerError(f"the focal length must be positive, got {focal} px")
    return np.array([focal, focal]), np.array([width / 2.0, height / 2.0])


class Stopwatch:
    """Accumulates named durations in milliseconds: ``with watch("cue"): ...``."""

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


class FaceTracker:
    """Models and per-face state of the tracker (see the module docstring).

    net, head     a trained N2FNet (eval mode) and the head model it regresses
    detector      MediaPipe landmarks; cropper  the smoothed crop (its alpha and out_size must be
                  the network's: the training crop rule and input size)
    cue           crop -> normal map + mask, in the frame the network was trained on
    smoother_factory  makes the One-Euro smoothing of one tracked face's parameters
    smoothing     smoothing on/off (switchable while running: the ``smoothing`` property)
    normal_frame  the normal-map frame the network was trained on (the cue must give it)
    device        where the network runs; decode and projection run on the CPU
    runtime       what runs the network there (``tracker.n2fnet.runtime``): "torch" (eager, the
                  default here), "onnxruntime", "openvino", "openvino-int8" (CPU only; the int8
                  copy shipped beside the checkpoint), "auto" (the fastest installed on the CPU,
                  torch on CUDA), or a ready ``Runner`` of ``net``
    focal_ratio / focal_px   the frame camera (module docstring)
    refine        fit the head to MediaPipe's landmarks after the network (``tracker.fitting.refinement``;
                  switchable while running); ``refine_settings`` its weights and iterations
    refine_start  "network": start from and pull towards N2FNet's prediction; "mean": start from
                  the mean face at a frontal pose and pull towards the neutral expression (the
                  no-network ablation of ``train.evaluate_real``)
    identity      (K,) a fixed identity for every track (state "given"); None: pooled per track
    photos        unrelated still images: no temporal term, several identity rounds per face
    embedding     the head model's MediaPipe embedding (None: its default, see ``embedded_head``)
    arkit_fit     for a head model without ARKit semantics (FLAME): the ICT-FaceKit fit beside it
                  that gives its ARKit weights and gaze (``tracker.fitting.arkit_side_fit``; None: no
                  ``FaceResult.avatar``). ICT's own come from its expression.
    """

    def __init__(
        self,
        net: N2FNet,
        head: HeadModel,
        detector: FaceMeshDetector,
        cropper: FaceCropper,
        cue: GeometryCue,
        *,
        normal_frame: str = "camera",
        smoother_factory=live_smoother,
        smoothing: bool = True,
        device: str | torch.device = "cpu",
        runtime: str | Runner = "torch",
        focal_ratio: float = 1.0,
        focal_px: float | None = None,
        refine: bool = True,
        refine_settings: RefineSettings | None = None,
        refine_start: str = "network",
        identity: torch.Tensor | np.ndarray | None = None,
        photos: bool = False,
        embedding=None,
        arkit_fit: ArkitFit | None = None,
    ) -> None:
        if net.config.head_model != head.name:
            raise TrackerError(f"the checkpoint regresses the {net.config.head_model!r} head model but {head.name!r} is loaded")
        if cropper.out_size != net.config.input_size:
            raise TrackerError(f"crop size {cropper.out_size} does not match the network's input size {net.config.input_size}")
        if cue.frame != normal_frame:
            raise TrackerError(f"the {cue.name} cue gives {cue.frame}-frame normals; the network was trained on {normal_frame}-frame normals")
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.runner = runtime if isinstance(runtime, Runner) else create_runner(self.net, runtime, self.device)
        log.debug("network runtime: %s", self.runner.describe())
        self.head = head.to("cpu")
        self.detector, self.cropper, self.cue = detector, cropper, cue
        self.focal_ratio, self.focal_px = focal_ratio, focal_px
        self._smoother_factory = smoother_factory
        self._smoothing = smoothing
        self._smoothers: dict[int, ParameterSmoother] = {}
        if refine_start not in ("network", "mean"):
            raise TrackerError(f"refine_start must be 'network' or 'mean', got {refine_start!r}")
        self.refine, self.refine_start, self.photos = bool(refine), refine_start, bool(photos)
        self._refine_settings, self._embedding = refine_settings or RefineSettings(), embedding
        self._refiner: Refiner | None = None
        if identity is not None:
            identity = np.asarray(identity.detach().cpu() if isinstance(identity, torch.Tensor) else identity, dtype=np.float64).reshape(-1)
            group = default_identity_group(head.param_groups)
            if group is None or identity.shape != (head.param_groups[group].size,):
                size = head.param_groups[group].size if group else 0
                raise TrackerError(f"the given identity has {identity.size} values; the {head.name} head model's identity group {group!r} has {size}")
        if self.refine:  # built now, so that a missing embedding fails at start-up, not at the first face
            self._refiner = self._make_refiner()
        self.identity = identity
        self._tracks: dict[int, TrackState] = {}
        self._arkit = ict_to_arkit_matrix(head.expression_names) if head.name == "ict" else None
        if self._arkit is not None:
            self._eyeballs = EyeballDecoder(head)
        self.arkit_fit = arkit_fit if self._arkit is None else None

    @property
    def refiner(self) -> Refiner:
        """The refinement of this head model (built on first use: it needs the head's MediaPipe
        embedding, computed once and cached)."""
        if self._refiner is None:
            self._refiner = self._make_refiner()
        return self._refiner

    def _make_refiner(self) -> Refiner:
        refiner = Refiner(embedded_head(self.head, self._embedding), self._refine_settings)
        if isinstance(refiner.model, DecodedEmbeddedHead):
            log.warning(
                "the %s head model is refined through autodiff Jacobians of its decode (tenths of a second per frame on a CPU, "
                "more while the identity calibrates): pass --refine-iters 1 or --no-refine where speed matters", self.head.name,
            )
        return refiner

    @property
    def input_size(self) -> int:
        return self.net.config.input_size

    @property
    def smoothing(self) -> bool:
        return self._smoothing

    @smoothing.setter
    def smoothing(self, value: bool) -> None:
        """Switch parameter smoothing; takes effect on the pipeline's thread at the next frame."""
        self._smoothing = bool(value)

    def reset(self) -> None:
        """Forget every tracked face (new clip, source switched)."""
        self.detector.reset()
        self.cropper.reset()
        self._smoothers.clear()
        self._tracks.clear()

    def intrinsics(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        return frame_intrinsics(width, height, self.focal_ratio, self.focal_px)

    # -- stage 1: CPU ---------------------------------------------------------------------------
    def prepare(self, frame: Frame) -> Prepared:
        """Landmarks, smoothed crops and geometry cues of ``frame``."""
        started = time.monotonic()
        timings: dict[str, float] = {}
        lap = Stopwatch(timings)
        with lap("detect"):
            faces = self.detector.detect(frame.image)
        with lap("crop"):
            crops = self.cropper(frame.image, faces, frame.timestamp)
        with lap("cue"):
            cues = [self.cue(c.image, c.landmarks) for c in crops]
        if not crops:
            return Prepared(frame, [], [], None, timings, started)
        focal, principal = self.intrinsics(frame.image)
        boxes = torch.from_numpy(np.stack([c.box for c in crops]))
        count = len(crops)
        focal_c, principal_c = crop_intrinsics(
            torch.from_numpy(focal)[None].expand(count, 2), torch.from_numpy(principal)[None].expand(count, 2), boxes, self.input_size
        )
        normals = torch.from_numpy(np.stack([c.normals for c in cues])).permute(0, 3, 1, 2)
        mask = torch.from_numpy(np.stack([c.mask for c in cues]))[:, None]
        inputs = NetworkInputs(normals.contiguous(), mask.contiguous(), focal_c.float(), principal_c.float())
        return Prepared(frame, crops, cues, inputs, timings, started)

    # -- stage 2: device -------------------------------------------------------------------------
    @torch.no_grad()
    def run_network(self, inputs: NetworkInputs) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Device-resident inputs -> (params {group: (F, n)}, rotation_6d (F, 6), translation (F, 3)),
        on the device (the caller copies them back when they are ready)."""
        return self.runner(inputs.normals, inputs.focal, inputs.principal, inputs.mask)

    # -- stage 3: CPU ---------------------------------------------------------------------------
    @torch.no_grad()
    def finish(self, prepared: Prepared, raw: RawOutput | None) -> TrackingResult:
        """Decode, smooth and project the network's outputs of ``prepared``; a face whose network
        or refined outputs are not finite is left out and named in ``errors``."""
        frame = prepared.frame
        timings = dict(prepared.timings)
        lap = Stopwatch(timings)
        focal, principal = self.intrinsics(frame.image)
        if raw is None or not prepared.crops:
            self._drop_lost_tracks(set())
            return TrackingResult(frame, [], focal, principal, timings)
        self._drop_lost_tracks({c.track_id for c in prepared.crops})  # a face left out below keeps its track
        errors: list[str] = []
        values: dict[int, FrameParameters] = {}  # crop index -> the face's parameters, finite ones only
        for i, crop in enumerate(prepared.crops):
            network = _network_values(raw, i)
            if bad := non_finite(network):
                errors.append(f"track {crop.track_id}: the network's outputs are not finite ({', '.join(bad)})")
            else:
                values[i] = network
        with lap("smooth"):
            values = {i: self._smooth(prepared.crops[i], v, frame.timestamp) for i, v in values.items()}
        fit_of: dict[int, FrameFit] = {}
        if self.refine:
            with lap("refine"), single_blas_thread():
                for i in list(values):
                    crop = prepared.crops[i]
                    values[i], fit_of[i] = self._refine(crop, values[i], focal, principal)
                    if bad := non_finite(values[i]):
                        errors.append(f"track {crop.track_id}: the refinement's result is not finite ({', '.join(bad)}); its track starts again")
                        del values[i], self._tracks[crop.track_id]  # its identity pool and last solution took the fit in
        if not values:
            return TrackingResult(frame, [], focal, principal, timings, errors=errors)
        kept = list(values)
        crops, cues, smoothed = [prepared.crops[i] for i in kept], [prepared.cues[i] for i in kept], [values[i] for i in kept]
        fits = [fit_of.get(i) for i in kept]
        faces = []
        with lap("decode"):
            params = {g: torch.stack([s.params[g] for s in smoothed]) for g in smoothed[0].params}
            params = self.head.complete_params(params)
            rotation_6d = torch.stack([s.rotation_6d for s in smoothed])
            rotation = rotation_6d_to_matrix(rotation_6d)
            translation = torch.stack([s.translation for s in smoothed])
            landmarks_3d = self.head.decode_landmarks(params, view_rotation=rotation)
            count = len(smoothed)
            focal_t = torch.from_numpy(focal).float()[None].expand(count, 2)
            principal_t = torch.from_numpy(principal).float()[None].expand(count, 2)
            landmarks = camera.project(camera.head_to_camera(landmarks_3d, rotation, translation), focal_t, principal_t)
        with lap("avatar"):
            avatars = [self._avatar_values(params, rotation[i], translation[i], crop, focal, principal, i) for i, crop in enumerate(crops)]
        for i, crop in enumerate(crops):
            faces.append(
                FaceResult(
                    params={g: v[i] for g, v in params.items()},
                    rotation_6d=rotation_6d[i],
                    rotation=rotation[i],
                    translation=translation[i],
                    mesh=self._mesh(params, rotation, translation, i),
                    landmarks68=landmarks[i].numpy(),
                    mesh_landmarks68=crop.face.landmarks68,
                    crop_box=crop.box,
                    track_id=crop.track_id,
                    crop=crop,
                    cue=cues[i],
                    identity_state=fits[i].state if fits[i] is not None else "network",
                    refine_iterations=fits[i].iterations if fits[i] is not None else 0,
                    avatar=avatars[i],
                )
            )
        return TrackingResult(frame, faces, focal, principal, timings, errors=errors)

    def _mesh(self, params: dict[str, torch.Tensor], rotation: torch.Tensor, translation: torch.Tensor, index: int) -> Callable[[], torch.Tensor]:
        """Face ``index``'s decode: () -> (V, 3) camera-frame vertices (``FaceResult.vertices``)."""
        one = {g: v[index : index + 1] for g, v in params.items()}
        return lambda: camera.head_to_camera(self.head.decode(one), rotation[index : index + 1], translation[index : index + 1])[0]

    def _avatar_values(self, params, rotation, translation, crop: FaceCrop, focal, principal, index: int) -> AvatarValues | None:
        """The face's ARKit weights, head pose and gaze: ICT's from its own expression and eyeballs,
        another head model's from the ICT fit beside it (``arkit_fit``); None without either."""
        if self._arkit is not None:
            expression = params["expression"][index].numpy()
            eyeballs = self._eyeballs({g: v[index] for g, v in params.items()})
            eye_rotation, eye_translation = rotation.numpy(), translation.numpy()
        elif self.arkit_fit is not None:
            expression, eyeballs, eye_rotation, eye_translation = self.arkit_fit.fit(
                crop, focal, principal, temporal=self._smoothing and not self.photos, photo=self.photos
            )
        else:
            return None
        matrix = self._arkit if self._arkit is not None else self.arkit_fit.matrix
        weights = np.clip(matrix @ expression, 0.0, 1.0)
        head_rotation, angles, position = head_pose(rotation.numpy(), translation.numpy())
        eyes = np.full((2, 2), np.nan, np.float32)
        points = crop.face.points
        if len(points) > max(IRIS_CENTRES):
            eyes = eye_gaze(eyeballs, eye_rotation, eye_translation, points[list(IRIS_CENTRES), :2], focal, principal)
        return AvatarValues(gaze_weights(weights, eyes), head_rotation, angles, position, eyes)

    def _smooth(self, crop: FaceCrop, values: FrameParameters, timestamp: float) -> FrameParameters:
        smoother = self._smoothers.get(crop.track_id)
        if smoother is None:
            smoother = self._smoothers[crop.track_id] = self._smoother_factory()
        smoother.enabled = self._smoothing
        return smoother(values, timestamp)

    def _refine(self, crop: FaceCrop, predicted: FrameParameters, focal: np.ndarray, principal: np.ndarray):
        """One face's network prediction -> (refined FrameParameters, FrameFit)."""
        model = self.refiner.model
        track = self._tracks.get(crop.track_id)
        if track is None:
            pool = IdentityPool(model.identity_size, self.refiner.identity_std, self.refiner.settings.calibration_frames, self.identity)
            track = self._tracks[crop.track_id] = TrackState(pool)
        observed = crop.face.points[model.mediapipe_ids, :2].astype(np.float64)
        if self.refine_start == "network":
            network = self.head.complete_params({g: v[None] for g, v in predicted.params.items()})
            identity, local = model.to_vectors({g: v[0] for g, v in network.items()})
            prior = local
        else:
            identity, prior = model.to_vectors({g: v[0] for g, v in self.head.neutral_params(1, device="cpu").items()})
            local = prior
        if track.last is not None:
            start = track.last
        elif self.refine_start == "network":
            rotation = rotation_6d_to_matrix(predicted.rotation_6d[None].double())[0].numpy()
            start = Solution(rotation, predicted.translation.double().numpy(), local, identity)
        else:
            start = initial_pose(model, observed, focal, principal, identity, local)
        temporal = self._smoothing and not self.photos
        problem = FrameProblem(observed, focal, principal, prior, track.last if temporal else None)
        fit = refine_face(self.refiner, track, problem, start, photo=self.photos)
        sol = fit.solution
        params = dict(predicted.params)
        params.update({g: v for g, v in model.to_params(sol.identity, sol.local).items()})
        rotation_6d = matrix_to_rotation_6d(torch.from_numpy(sol.rotation)[None])[0].float()
        return FrameParameters(params, rotation_6d, torch.from_numpy(sol.translation).float()), fit

    def _drop_lost_tracks(self, alive: set[int]) -> None:
        for per_track in (self._smoothers, self._tracks):
            for track_id in list(per_track):
                if track_id not in alive:
                    del per_track[track_id]
        if self.arkit_fit is not None:
            self.arkit_fit.drop_lost_tracks(alive)

    def close(self) -> None:
        self.detector.close()
        self.cue.close()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        head_model_path: str | Path | None = None,
        head_model: str | None = None,
        device: str | torch.device = "cpu",
        cue: str = "mediapipe",
        cue_options: dict | None = None,
        max_faces: int = 1,
        smoothing: bool = True,
        crop_smoothing: bool = True,
        focal_px: float | None = None,
        photos: bool = False,
        detector: str = "short-range",
        refine: bool = True,
        refine_iters: int | None = None,
        refine_start: str = "network",
        identity: torch.Tensor | np.ndarray | None = None,
        ict_model_path: str | Path | None = None,
        runtime: str = "torch",
    ) -> FaceTracker:
        """Everything the live tracker needs from an N2FNet checkpoint: its network, its head model
        (``head_model_path``: ICT npz / FLAME folder; None: the head model's default place), the
        crop rule and input size it was trained with, the frame camera it assumes. For a FLAME
        checkpoint also the ICT-FaceKit fit that gives its ARKit weights (``ict_model_path``, None:
        ICT's default place; without an ICT model a warning, and no ARKit weights).

        ``head_model``: the name the user asked for; a TrackerError when the checkpoint was
        trained for another one. ``cue``/``cue_options``: ``tracker.face.cues.create_cue``. ``photos``,
        ``detector``, ``refine``, ``refine_iters``, ``refine_start``, ``identity``, ``runtime``: see ``assemble``.
        """
        state = load_checkpoint(checkpoint)
        trained_for = state["n2fnet"]["head_model"]
        if head_model is not None and head_model != trained_for:
            raise TrackerError(
                f"checkpoint {checkpoint} was trained for the {trained_for!r} head model, not {head_model!r}: "
                f"pass a checkpoint trained for {head_model!r} (python -m train --head-model {head_model}) or --head-model {trained_for}"
            )
        sampler = state.get("sampler", {})
        if sampler.get("surface") == "mediapipe" and cue != "mediapipe":
            log.warning("checkpoint %s was trained on normal maps like the embedded MediaPipe cue's; with the %r cue its input looks different", checkpoint, cue)
        net = DeferredNetwork(state)  # built only when the runtime needs the PyTorch module (not the int8 copy)
        runner = create_runner(net, runtime, device, checkpoint=checkpoint)  # the checkpoint's int8 copy sits beside it
        return cls.assemble(
            net,
            load_head_model(trained_for, head_model_path),
            alpha=float(sampler.get("alpha", 1.4)),
            normal_frame=sampler.get("normal_frame", "camera"),
            focal_ratio=float(sampler.get("focal_mean", 1.0)),
            device=device,
            cue=cue,
            cue_options=cue_options,
            max_faces=max_faces,
            smoothing=smoothing,
            crop_smoothing=crop_smoothing,
            focal_px=focal_px,
            photos=photos,
            detector=detector,
            refine=refine,
            refine_iters=refine_iters,
            refine_start=refine_start,
            identity=identity,
            arkit_fit=None if trained_for == "ict" else _arkit_fit(ict_model_path, refine_iters),
            runtime=runner,
        )

    @classmethod
    def assemble(
        cls,
        net: N2FNet,
        head: HeadModel,
        *,
        alpha: float = 1.4,
        normal_frame: str = "camera",
        focal_ratio: float = 1.0,
        device: str | torch.device = "cpu",
        cue: str = "mediapipe",
        cue_options: dict | None = None,
        max_faces: int = 1,
        smoothing: bool = True,
        crop_smoothing: bool = True,
        focal_px: float | None = None,
        photos: bool = False,
        detector: str = "short-range",
        refine: bool = True,
        refine_iters: int | None = None,
        refine_start: str = "network",
        identity: torch.Tensor | np.ndarray | None = None,
        arkit_fit: ArkitFit | None = None,
        runtime: str | Runner = "torch",
    ) -> FaceTracker:
        """A tracker around ``net`` with the standard detector, cropper (``alpha``, the network's
        input size) and cue; the training settings (alpha, normal frame, focal) as given.

        ``photos``: for unrelated still images rather than video, MediaPipe's static-image mode
        with its full-range face detector (faces of any size, no tracking between frames).
        ``detector``: "short-range" (Face Mesh's own detector, then tracking between frames) or
        "full-range" (MediaPipe's full-range face detector on every frame, then a mesh per face:
        small and distant faces, at the detector's cost). ``refine``, ``refine_start``,
        ``identity``, ``arkit_fit``, ``runtime``: see the class; ``refine_iters``: the refinement's iterations per frame
        (None: ``tracker.fitting.refinement.DEFAULT_ITERATIONS``). TrackerError when the network regresses
        parameter groups (names, sizes) that ``head`` does not have."""
        if detector not in DETECTORS:
            raise TrackerError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
        misfits = {g: n for g, n in net.config.groups.items() if g not in head.param_groups or head.param_groups[g].size != n}
        if misfits:
            has = {g: p.size for g, p in head.param_groups.items()}
            raise TrackerError(
                f"the network (trained for the {net.config.head_model} head model) regresses parameter groups {misfits} that the loaded "
                f"{head.name} head model does not have (its groups: {has}): "
                f"load the head model the checkpoint was trained for, or use a checkpoint trained for this one (python -m train --head-model {head.name})"
            )
        full_range = photos or detector == "full-range"
        mesh_detector = FaceMeshDetector(max_faces=max_faces, static_images=photos, full_range=full_range)
        cropper = FaceCropper(alpha=alpha, out_size=net.config.input_size, max_faces=max_faces, smoothing=DEFAULT_BOX_SMOOTHING if crop_smoothing else None)
        geometry_cue = create_cue(cue, device=device if cue != "mediapipe" else None, **(cue_options or {}))
        settings = RefineSettings() if refine_iters is None else RefineSettings(iterations=int(refine_iters))
        return cls(
            net, head, mesh_detector, cropper, geometry_cue,
            normal_frame=normal_frame, smoothing=smoothing, device=device, focal_ratio=focal_ratio, focal_px=focal_px,
            refine=refine, refine_settings=settings, refine_start=refine_start, identity=identity, photos=photos,
            arkit_fit=arkit_fit, runtime=runtime,
        )


def _network_values(raw: RawOutput, index: int) -> FrameParameters:
    """Face ``index``'s network outputs: params {group: (n,)}, rotation_6d (6,), translation (3,)."""
    return FrameParameters({g: v[index] for g, v in raw.params.items()}, raw.rotation_6d[index], raw.translation[index])


def non_finite(values: FrameParameters) -> list[str]:
    """The outputs of one face's ``values`` that hold a NaN or an infinity: "params.GROUP",
    "rotation", "translation"; empty when all are finite."""
    named = [(f"params.{g}", v) for g, v in values.params.items()] + [("rotation", values.rotation_6d), ("translation", values.translation)]
    return [name for name, value in named if value is not None and not bool(torch.isfinite(value).all())]


def _arkit_fit(ict_model_path: str | Path | None, refine_iters: int | None) -> ArkitFit | None:
    """The ICT fit that gives a FLAME tracker its ARKit weights; None (with a warning) without an ICT model."""
    try:
        ict = load_head_model("ict", ict_model_path)
    except TrackerError as error:
        log.warning("no ARKit weights: they come from an ICT-FaceKit fit beside FLAME, and %s", error)
        return None
    return ArkitFit(ict, RefineSettings() if refine_iters is None else RefineSettings(iterations=int(refine_iters)))
