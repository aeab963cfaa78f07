"""Per-frame face tracking: frame -> faces found -> crops -> geometry cue -> N2FNet -> head mesh.

``FaceTracker`` holds the models and the per-face state (crop smoothing, parameter smoothing) and
splits the work of one frame into the three stages the pipeline overlaps:

    prepare(frame)          CPU: MediaPipe landmarks, smoothed DECA crop, geometry cue  -> Prepared
    run_network(inputs)     device: N2FNet on the stacked normal maps                   -> raw outputs
    finish(prepared, raw)   CPU: head-model decode, smoothing, projection to the frame  -> TrackingResult

(the types they hand on: ``tracker.live.results``); ``track_image(image)`` runs the three on one
unrelated photo.

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.face.cues import GeometryCue, create_cue
from tracker.face.detection import (
    DEFAULT_BOX_SMOOTHING,
    FaceCrop,
    FaceCropper,
    FaceMeshDetector,
)
from tracker.face.smoothing import FrameParameters, ParameterSmoother, live_smoother
from tracker.fitting.arkit import (
    IRIS_CENTRES,
    AvatarValues,
    EyeballDecoder,
    WeightFilter,
    eye_gaze,
    gaze_weights,
    ict_to_arkit_matrix,
)
from tracker.fitting.arkit_profile import ArkitProfile, NeutralCalibration
from tracker.fitting.arkit_side_fit import ArkitFit
from tracker.fitting.refinement import (
    ARKIT_SETTINGS,
    FrameFit,
    Refiner,
    RefineSettings,
    Solution,
    embedded_head,
    settings_for,
    single_blas_thread,
)
from tracker.fitting.start_pose import HeadAlignment
from tracker.fitting.track_fitter import TrackFitter
from tracker.geometry import camera
from tracker.geometry.crop import crop_intrinsics
from tracker.geometry.rotations import matrix_to_rotation_6d, rotation_6d_to_matrix
from tracker.head_models import HeadModel, load_head_model
from tracker.head_models.base import default_identity_group
from tracker.live.feed import create_feeder
from tracker.live.options import REFINE_STARTS, TrackerOptions, take_identity
from tracker.live.results import (
    FaceResult,
    NetworkInputs,
    Prepared,
    RawOutput,
    Stopwatch,
    TrackingResult,
)
from tracker.live.sources import Frame
from tracker.n2fnet import N2FNet
from tracker.n2fnet.checkpoint import DeferredNetwork, load_checkpoint
from tracker.n2fnet.runtime import Runner, create_runner

log = logging.getLogger(__name__)


def frame_intrinsics(width: int, height: int, focal_ratio: float = 1.0, focal_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Assumed pinhole of a (height, width) frame -> focal (2,), principal (2,) in pixels."""
    focal = float(focal_px) if focal_px is not None else focal_ratio * max(width, height)
    if focal <= 0:
        raise TrackerError(f"the focal length must be positive, got {focal} px")
    return np.array([focal, focal]), np.array([width / 2.0, height / 2.0])


class FaceTracker:
    """Models and per-face state of the tracker (see the module docstring).

    ``FaceTracker.from_options(TrackerOptions(...))`` builds one from a checkpoint and the
    settings; the constructor takes the parts already built (tests give it fakes):

    net, head     a trained N2FNet (eval mode) and the head model fitted: the one the network
                  regresses, or another one (FLAME with the shipped ICT network) that the
                  refinement fits from its mean face, the network giving at most its head pose
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
                  switchable while running, the ``refine`` property, unless the network regresses
                  another head model); ``refine_settings`` its weights and iterations
    refine_start  a new track's start (later frames start from the previous solution):
                  "network": from N2FNet's prediction, the locals pulled towards it (the network
                  must regress ``head``); the others fit from the mean face, pulled towards the
                  neutral expression: "camera" at the network's head pose (carried into ``head``'s
                  frame by ``start_pose.HeadAlignment`` when the network regresses another head
                  model), "pnp" at a perspective-n-point pose of MediaPipe's points, "mean" frontal
                  (the no-network ablation of ``train.evaluate_real``)
    network_head  the head model the network regresses, when it is not ``head`` (the "camera"
                  start carries the network's pose from its frame)
    identity      (K,) a fixed identity for every track (state "given"); None: pooled per track
    photos        unrelated still images: no temporal term, several identity rounds per face
    embedding     the head model's MediaPipe embedding (None: its default, see ``embedded_head``)
    arkit_fit     the ICT-FaceKit fit beside the head model's that gives the ARKit weights and gaze
                  (``tracker.fitting.arkit_side_fit``): FLAME's (it has no ARKit semantics; None: no
                  ``FaceResult.avatar``), or ICT's own with ``TrackerOptions.arkit_from`` "network"
                  (None: ICT's come from the mesh's expression). With an ICT network it starts from
                  and is pulled towards the network's prediction.
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
        network_head: HeadModel | None = None,
        arkit_profile: ArkitProfile | None = None,
        profile_path: str | Path | None = None,
    ) -> None:
        if refine_start not in REFINE_STARTS:
            raise TrackerError(f"refine_start must be one of {', '.join(REFINE_STARTS)}, got {refine_start!r}")
        self.same_head = net.config.head_model == head.name
        if not self.same_head and (not refine or refine_start == "network"):
            raise TrackerError(
                f"the checkpoint regresses the {net.config.head_model!r} head model but {head.name!r} is loaded: {head.name} is then fitted "
                f"from its mean face by the refinement (refine_start 'pnp', 'camera' or 'mean'), "
                f"{'which is off' if not refine else 'not from the network'}; or pass a checkpoint trained for {head.name!r}"
            )
        self._alignment = None
        # the parameters a fit of another head model starts its frame's from: {group: (n,)}
        self._neutral = {} if self.same_head else {g: v[0] for g, v in head.neutral_params(1, device="cpu").items()}
        if not self.same_head and refine_start == "camera":
            if network_head is None or network_head.name != net.config.head_model:
                raise TrackerError(f"the 'camera' start needs the {net.config.head_model} head model the network regresses, to carry its head pose into {head.name}'s frame")
            self._alignment = HeadAlignment(network_head, head)
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
        self._image_feeder = None  # track_image's, made on first use
        self._refine_on, self.refine_start, self.photos = bool(refine), refine_start, bool(photos)
        self._refine_settings, self._embedding = refine_settings or settings_for(head.name), embedding
        self._fitter: TrackFitter | None = None
        if identity is not None:
            identity = np.asarray(identity.detach().cpu() if isinstance(identity, torch.Tensor) else identity, dtype=np.float64).reshape(-1)
            group = default_identity_group(head.param_groups)
            if group is None or identity.shape != (head.param_groups[group].size,):
                size = head.param_groups[group].size if group else 0
                raise TrackerError(f"the given identity has {identity.size} values; the {head.name} head model's identity group {group!r} has {size}")
        self.identity = identity
        if self.refine:  # built now, so that a missing embedding fails at start-up, not at the first face
            self._fitter = self._make_fitter()
        self._arkit = ict_to_arkit_matrix(head.expression_names) if head.name == "ict" else None
        if self._arkit is not None:
            self._eyeballs = EyeballDecoder(head)
        self.arkit_fit = arkit_fit
        # the user's ARKit profile (tracker.fitting.arkit_profile), saved to profile_path when a
        # neutral calibration ends; each calibrated track's own, and the calibrations under way
        self.arkit_profile = arkit_profile or ArkitProfile()
        self.profile_path = None if profile_path is None else Path(profile_path)
        self._track_profiles: dict[int, ArkitProfile] = {}
        self._calibrations: dict[int, NeutralCalibration] = {}
        self._weight_filters: dict[int, WeightFilter] = {}  # per track, live only (_steady_weights)
        self._calibration_request: float | None = None

    @property
    def fitter(self) -> TrackFitter:
        """The refinement of this head model and its tracks (built on first use: it needs the
        head's MediaPipe embedding, computed once and cached)."""
        if self._fitter is None:
            self._fitter = self._make_fitter()
        return self._fitter

    def _make_fitter(self) -> TrackFitter:
        return TrackFitter(self._make_refiner(), self.identity, first_pose="pnp" if self.refine_start == "pnp" else "frontal")

    def describe_start(self) -> str:
        """How a new track's fit starts, in words (the log line)."""
        network, head = self.net.config.head_model, self.head.name
        if not self.refine:
            return f"no refinement: the {network} network's prediction"
        start = {
            "network": f"the {network} network's prediction (start and prior)",
            "camera": f"{head}'s mean face at the {network} network's head pose"
            + (f" (carried into {head}'s frame; the mean faces' inner landmarks {self._alignment.residual_mm:.1f} mm apart)" if self._alignment else ""),
            "pnp": f"{head}'s mean face at a perspective-n-point pose of MediaPipe's points",
            "mean": f"{head}'s mean face, frontal",
        }[self.refine_start]
        return f"{start}, then the previous frame's solution"

    def fit_metadata(self) -> dict[str, str]:
        """What a take records of how its faces were fitted: the head model the network regresses,
        and a new face's start (``refine_start``; "none" without the refinement)."""
        return {"network_head_model": self.net.config.head_model, "fit_start": self.refine_start if self.refine else "none"}

    def _make_refiner(self) -> Refiner:
        refiner = Refiner(embedded_head(self.head, self._embedding), self._refine_settings)
        if refiner.model.autodiff:
            log.warning(
                "the %s head model is refined through autodiff Jacobians of its decode (tenths of a second per frame on a CPU, "
                "more while the identity calibrates): pass --refine-iters 1 or --no-refine where speed matters", self.head.name,
            )
        return refiner

    @property
    def refine(self) -> bool:
        return self._refine_on

    @refine.setter
    def refine(self, value: bool) -> None:
        """Switch the refinement; refused where it is what fits the head model (the network
        regresses another one)."""
        if not value and not self.same_head:
            raise TrackerError(f"the {self.head.name} head model is fitted by the refinement (the network regresses {self.net.config.head_model}): it stays on")
        self._refine_on = bool(value)

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
        """Forget every tracked face (new clip, source switched); the ARKit profile stays."""
        self.detector.reset()
        self.cropper.reset()
        self._smoothers.clear()
        self._track_profiles.clear()
        self._calibrations.clear()
        self._weight_filters.clear()
        if self._fitter is not None:
            self._fitter.reset()
        if self.arkit_fit is not None:
            self.arkit_fit.reset()

    def calibrate_neutral(self, seconds: float) -> None:
        """Measure the resting ARKit weights of every face of the next frame over ``seconds`` (the
        person holds a neutral face): each then reads 0 at rest (``tracker.fitting.arkit_profile``);
        the profile takes the last neutral measured and is saved to ``profile_path``. Any thread."""
        NeutralCalibration(seconds)  # a bad duration fails here, not on the pipeline's thread
        self._calibration_request = float(seconds)

    @property
    def calibrating_neutral(self) -> bool:
        """A neutral calibration asked for or under way."""
        return self._calibration_request is not None or bool(self._calibrations)

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
            crops = self.cropper(frame.image, faces, smoothing_clock(frame))
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
        unsmoothed = dict(values)
        with lap("smooth"):
            values = {i: self._smooth(prepared.crops[i], v, smoothing_clock(frame)) for i, v in values.items()}
        # an ICT network's prediction starts the ARKit fit and pulls it (_avatar_values; ArkitFit.network_prior)
        ict_network = {}
        if self.arkit_fit is not None and self.net.config.head_model == "ict" and self.refine_start != "mean":
            ict_network = {i: self.arkit_fit.network_prior(unsmoothed[i], v) for i, v in values.items()}
        fit_of: dict[int, FrameFit] = {}
        if self.refine:
            with lap("refine"), single_blas_thread():
                for i in list(values):
                    crop = prepared.crops[i]
                    values[i], fit_of[i] = self._refine(crop, values[i], focal, principal)
                    if bad := non_finite(values[i]):
                        errors.append(f"track {crop.track_id}: the refinement's result is not finite ({', '.join(bad)}); its track starts again")
                        del values[i]
                        self.fitter.forget(crop.track_id)  # its identity pool and last solution took the fit in
        if not values:
            return TrackingResult(frame, [], focal, principal, timings, errors=errors)
        kept = list(values)
        networks = [ict_network.get(i) for i in kept]
        crops, smoothed = [prepared.crops[i] for i in kept], [values[i] for i in kept]
        with lap("decode"):
            decoded = self._decode(smoothed, focal, principal)
        with lap("avatar"):
            if (seconds := self._calibration_request) is not None:
                self._calibration_request = None
                self._calibrations.update({crop.track_id: NeutralCalibration(seconds) for crop in crops})
            clock = smoothing_clock(frame)
            avatars = [self._avatar_values(decoded.params, decoded.rotation[i], decoded.translation[i], crop, focal, principal, i, networks[i], clock)
                       for i, crop in enumerate(crops)]
        fits = [fit_of.get(i) for i in kept]
        faces = self._face_results(
            decoded, crops, [prepared.cues[i] for i in kept], avatars,
            states=[fit.state if fit is not None else "network" for fit in fits],
            iterations=[fit.iterations if fit is not None else 0 for fit in fits],
            networks=[unsmoothed[i] for i in kept],
        )
        return TrackingResult(frame, faces, focal, principal, timings, errors=errors)

    def replay(self, frame: Frame, focal: np.ndarray, principal: np.ndarray, crops: list[FaceCrop], values: list[FrameParameters],
               raw_weights: list[np.ndarray | None], eye_angles: list[np.ndarray | None], states: list[str], iterations: list[int]) -> TrackingResult:
        """A frame's result from values fitted and smoothed elsewhere (the offline tracker,
        ``tracker.offline``): per face its crop, parameters, raw ARKit weights (52,) and eye angles
        (2, 2) (None: no avatar), identity state and refinement iterations. The head is decoded and
        projected as ``finish`` does, the weights go through the track's ARKit profile and the
        avatar's head pose is the mesh's."""
        timings: dict[str, float] = {}
        with Stopwatch(timings)("decode"):
            decoded = self._decode(values, focal, principal)
        avatars = []
        for i, crop in enumerate(crops):
            if raw_weights[i] is None:
                avatars.append(None)
                continue
            head_rotation, angles, position = camera.head_pose(decoded.rotation[i].numpy(), decoded.translation[i].numpy())
            profile = self._track_profiles.get(crop.track_id, self.arkit_profile)
            raw = np.asarray(raw_weights[i], np.float32)
            avatars.append(AvatarValues(profile.apply(raw), head_rotation, angles, position, np.asarray(eye_angles[i], np.float32), raw_weights=raw))
        faces = self._face_results(decoded, crops, [None] * len(crops), avatars, states, iterations, [None] * len(crops))
        return TrackingResult(frame, faces, focal, principal, timings)

    def _decode(self, values: list[FrameParameters], focal: np.ndarray, principal: np.ndarray) -> _Decoded:
        """F faces' parameters -> every head-model group, the rotation and the projected landmarks."""
        batch = RawOutput.stacked(values)
        params = self.head.complete_params(batch.params)
        rotation_6d, translation = batch.rotation_6d, batch.translation
        rotation = rotation_6d_to_matrix(rotation_6d)
        landmarks_3d = self.head.decode_landmarks(params, view_rotation=rotation)
        count = len(values)
        focal_t = torch.from_numpy(np.asarray(focal)).float()[None].expand(count, 2)
        principal_t = torch.from_numpy(np.asarray(principal)).float()[None].expand(count, 2)
        landmarks = camera.project_head(landmarks_3d, rotation, translation, focal_t, principal_t)
        return _Decoded(params, rotation_6d, rotation, translation, landmarks)

    def _face_results(self, decoded: _Decoded, crops: list[FaceCrop], cues: list, avatars: list[AvatarValues | None],
                      states: list[str], iterations: list[int], networks: list[FrameParameters | None]) -> list[FaceResult]:
        """The FaceResults of decoded faces (``_decode``) with what each face carries besides."""
        return [
            FaceResult(
                params={g: v[i] for g, v in decoded.params.items()},
                rotation_6d=decoded.rotation_6d[i],
                rotation=decoded.rotation[i],
                translation=decoded.translation[i],
                mesh=self._mesh(decoded.params, decoded.rotation, decoded.translation, i),
                landmarks68=decoded.landmarks[i].numpy(),
                mesh_landmarks68=crop.face.landmarks68,
                crop_box=crop.box,
                track_id=crop.track_id,
                crop=crop,
                cue=cues[i],
                identity_state=states[i],
                refine_iterations=iterations[i],
                avatar=avatars[i],
                network=networks[i],
            )
            for i, crop in enumerate(crops)
        ]

    def track_image(self, image: np.ndarray) -> TrackingResult:
        """One (H, W, 3) uint8 BGR image through every stage, from a fresh state (``reset``): an
        unrelated photo, frame 0 at time 0. The network runs through this tracker's own feeder
        (``tracker.live.feed``, made on first use), as the pipeline's would."""
        if self._image_feeder is None:
            self._image_feeder = create_feeder(self.run_network, self.device)
        self.reset()
        prepared = self.prepare(Frame(image, 0, 0.0, None))
        raw = self._image_feeder.submit(prepared.inputs).result() if prepared.inputs is not None else None
        return self.finish(prepared, raw)

    def _mesh(self, params: dict[str, torch.Tensor], rotation: torch.Tensor, translation: torch.Tensor, index: int) -> Callable[[], torch.Tensor]:
        """Face ``index``'s decode: () -> (V, 3) camera-frame vertices (``FaceResult.vertices``)."""
        one = {g: v[index : index + 1] for g, v in params.items()}
        return lambda: camera.head_to_camera(self.head.decode(one), rotation[index : index + 1], translation[index : index + 1])[0]

    def _avatar_values(self, params, rotation, translation, crop: FaceCrop, focal, principal, index: int,
                       ict_network: FrameParameters | None = None, clock: float = 0.0) -> AvatarValues | None:
        """The face's ARKit weights, head pose and gaze: from the ICT fit beside the head model's
        (``arkit_fit``; ``ict_network``: an ICT network's prediction of the face, its start and
        prior), else ICT's own expression and eyeballs; None for another head model without the
        fit. The weights go through the track's ARKit profile (``_profiled``; the raw ones are
        kept beside them)."""
        if self.arkit_fit is not None:
            predicted = None if ict_network is None else self.arkit_fit.network_solution(ict_network.params, ict_network.rotation_6d, ict_network.translation)
            expression, eyeballs, eye_rotation, eye_translation = self.arkit_fit.fit(
                crop, focal, principal, temporal=self._smoothing and not self.photos, photo=self.photos, predicted=predicted
            )
        elif self._arkit is not None:
            expression = params["expression"][index].numpy()
            eyeballs = self._eyeballs({g: v[index] for g, v in params.items()})
            eye_rotation, eye_translation = rotation.numpy(), translation.numpy()
        else:
            return None
        matrix = self.arkit_fit.matrix if self.arkit_fit is not None else self._arkit
        weights = self._steady_weights(crop.track_id, np.clip(matrix @ expression, 0.0, 1.0), clock)
        head_rotation, angles, position = camera.head_pose(rotation.numpy(), translation.numpy())
        eyes = np.full((2, 2), np.nan, np.float32)
        points = crop.face.points
        if len(points) > max(IRIS_CENTRES):
            eyes = eye_gaze(eyeballs, eye_rotation, eye_translation, points[list(IRIS_CENTRES), :2], focal, principal)
        raw = gaze_weights(weights, eyes)
        return AvatarValues(self._profiled(crop.track_id, raw, clock), head_rotation, angles, position, eyes, raw_weights=raw)

    def _steady_weights(self, track_id: int, weights: np.ndarray, clock: float) -> np.ndarray:
        """(52,) ARKit weights of track ``track_id`` at ``clock`` seconds -> through the track's
        ``WeightFilter``; unchanged without smoothing and for photos."""
        if not self._smoothing or self.photos:
            self._weight_filters.pop(track_id, None)
            return weights
        filt = self._weight_filters.get(track_id)
        if filt is None:
            filt = self._weight_filters[track_id] = WeightFilter()
        return filt(weights, clock)

    def _profiled(self, track_id: int, raw: np.ndarray, clock: float) -> np.ndarray:
        """(52,) raw ARKit weights of track ``track_id`` at ``clock`` seconds (a file's media time, else
        the capture time) -> its profile's; a neutral calibration of the track takes the raw weights
        in, and when it ends the track's profile (and the tracker's, saved to ``profile_path``) gets
        its neutral."""
        calibration = self._calibrations.get(track_id)
        if calibration is not None and calibration.add(raw, clock):
            del self._calibrations[track_id]
            profile = self._track_profiles[track_id] = self.arkit_profile = self.arkit_profile.with_neutral(calibration.neutral())
            log.info("track %d: neutral face calibrated over %d frames", track_id, len(calibration.samples))
            if self.profile_path is not None:
                try:
                    log.info("ARKit profile saved to %s", profile.save(self.profile_path))
                except OSError as error:
                    log.error("the ARKit profile could not be saved to %s (%s): tracking goes on with it", self.profile_path, error)
        return self._track_profiles.get(track_id, self.arkit_profile).apply(raw)

    def _smooth(self, crop: FaceCrop, values: FrameParameters, timestamp: float) -> FrameParameters:
        smoother = self._smoothers.get(crop.track_id)
        if smoother is None:
            smoother = self._smoothers[crop.track_id] = self._smoother_factory()
        smoother.enabled = self._smoothing
        return smoother(values, timestamp)

    def _refine(self, crop: FaceCrop, predicted: FrameParameters, focal: np.ndarray, principal: np.ndarray):
        """One face's network prediction -> (refined FrameParameters, FrameFit). ``refine_start``
        "network": from and towards the prediction; "camera": its head pose (carried into the fitted
        head's frame when the network regresses another head model) and the neutral locals; "pnp",
        "mean": nothing from the network. Groups the fit does not touch come from the prediction,
        or for another head model from its neutral parameters."""
        fitter = self.fitter
        model = fitter.refiner.model
        network = None
        if self.refine_start == "network":
            network = model.solution(predicted.params, predicted.rotation_6d, predicted.translation)
        elif self.refine_start == "camera":
            rotation = rotation_6d_to_matrix(predicted.rotation_6d[None].double())[0].numpy()
            translation = predicted.translation.double().numpy()
            if self._alignment is not None:
                rotation, translation = self._alignment.pose(rotation, translation)
            network = Solution(rotation, translation, fitter.neutral_local.copy(), fitter.neutral_identity.copy())
        fit = fitter.fit(crop.track_id, crop.face.points, focal, principal, network, temporal=self._smoothing, photo=self.photos)
        sol = fit.solution
        params = dict(predicted.params if self.same_head else self._neutral)
        params.update(model.to_params(sol.identity, sol.local))
        rotation_6d = matrix_to_rotation_6d(torch.from_numpy(sol.rotation)[None])[0].float()
        return FrameParameters(params, rotation_6d, torch.from_numpy(sol.translation).float()), fit

    def _drop_lost_tracks(self, alive: set[int]) -> None:
        for track_id in list(self._smoothers):
            if track_id not in alive:
                del self._smoothers[track_id]
        for lost in (set(self._track_profiles) | set(self._calibrations) | set(self._weight_filters)) - alive:
            self._track_profiles.pop(lost, None)
            self._calibrations.pop(lost, None)
            self._weight_filters.pop(lost, None)
        if self._fitter is not None:
            self._fitter.drop_lost(alive)
        if self.arkit_fit is not None:
            self.arkit_fit.drop_lost(alive)

    def close(self) -> None:
        self.detector.close()
        self.cue.close()

    @classmethod
    def from_options(cls, options: TrackerOptions) -> FaceTracker:
        """The tracker ``options`` describe (``tracker.live.options``), from its N2FNet checkpoint
        (read once): the network, the head model fitted (``options.fitted_head_model``: the
        checkpoint's unless ``head_model`` or ``flame_dir`` say FLAME; its files: ``flame_dir`` for
        FLAME, ``ict_model`` for ICT; None: the head model's default place), the crop rule (alpha),
        input size, normal frame and frame camera (focal mean) it was trained with; MediaPipe's
        detector (``photos``: static-image mode with the full-range face detector; ``detector``
        "full-range": that detector on every frame, then a mesh per face), the smoothed cropper and
        the cue. For FLAME also the ICT-FaceKit fit that gives its ARKit weights (``ict_model``;
        without an ICT model a warning, and no ARKit weights).

        A head model the checkpoint does not regress (FLAME with the shipped ICT network) is fitted
        from its mean face (``options.resolved_refine_start``: by default from a PnP pose of
        MediaPipe's points); an ICT network beside FLAME starts the ARKit fit.

        TrackerError when the identity take does not fit (``take_identity``), when the refinement is
        off or starts from the network for a head model the checkpoint does not regress, or when the
        network regresses parameter groups (names, sizes) that its head model does not have."""
        checkpoint = options.checkpoint_path()
        state = load_checkpoint(checkpoint)
        config = state["n2fnet"]
        trained_for = str(config["head_model"])
        fitted = options.fitted_head_model(trained_for)
        start = options.resolved_refine_start(trained_for)
        if fitted != trained_for and not options.refine:
            raise TrackerError(
                f"the checkpoint {checkpoint} regresses the {trained_for.upper()} head model, and {fitted.upper()} is fitted from its mean face "
                f"by the refinement, which is off: leave out --no-refine, or pass a checkpoint trained for {fitted} with --checkpoint"
            )
        if options.flame_dir and "flame" not in (fitted, trained_for):
            raise TrackerError(
                f"--flame-dir {options.flame_dir} gives FLAME files, but the {fitted.upper()} head model is fitted and the checkpoint regresses "
                f"{trained_for.upper()}: leave out --head-model {fitted} to track FLAME, or leave out --flame-dir"
            )
        if fitted != trained_for and start == "network":
            raise TrackerError(
                f"--refine-start network: the checkpoint {checkpoint} regresses the {trained_for.upper()} head model, not {fitted.upper()}; "
                "start from its head pose (camera), a PnP pose (pnp) or the frontal mean face (mean), or pass a checkpoint trained for "
                f"{fitted} with --checkpoint"
            )
        sampler = state.get("sampler", {})
        if sampler.get("surface") == "mediapipe" and options.cue != "mediapipe":
            log.warning("checkpoint %s was trained on normal maps like the embedded MediaPipe cue's; with the %r cue its input looks different", checkpoint, options.cue)
        net = DeferredNetwork(state)  # built only when the runtime needs the PyTorch module (not the int8 copy)
        runner = create_runner(net, options.runtime, options.device, checkpoint=checkpoint)  # the checkpoint's int8 copy sits beside it
        head = _load_head(fitted, options)
        network_head = None if fitted == trained_for or start != "camera" else _load_head(trained_for, options)
        identity = None
        if options.identity_take is not None:
            group = default_identity_group(head.param_groups)
            size = head.param_groups[group].size if group is not None else None
            identity = torch.from_numpy(take_identity(options.identity_take, fitted, size, options.identity_track))
        settings = options.refinement_settings(fitted)
        # the ARKit weights' own ICT fit: FLAME's always; ICT's where the options ask for it. An ICT
        # network's prediction guides it (the "mean" start is the no-network ablation)
        guided = trained_for == "ict" and start != "mean" and options.refine and options.arkit_from == "network"
        arkit_fit = None
        if fitted != "ict" or guided:
            ict = head if fitted == "ict" else network_head if network_head is not None and network_head.name == "ict" else None
            arkit_fit = _arkit_fit(options.ict_model, replace(ARKIT_SETTINGS if guided else settings_for("ict"), iterations=settings.iterations), ict)
        # the network's own head model as loaded (the fitted one, the camera start's, or the ARKit fit's ICT)
        regressed = head if fitted == trained_for else network_head
        if regressed is None and trained_for == "ict" and arkit_fit is not None:
            regressed = arkit_fit.fitter.refiner.model.head
        groups = regressed.param_groups if regressed is not None else {}
        misfits = {g: n for g, n in net.config.groups.items() if g not in groups or groups[g].size != n} if regressed is not None else {}
        if misfits:
            has = {g: p.size for g, p in groups.items()}
            raise TrackerError(
                f"the network (trained for the {net.config.head_model} head model) regresses parameter groups {misfits} that the loaded "
                f"{regressed.name} head model does not have (its groups: {has}): "
                f"load the head model the checkpoint was trained for, or use a checkpoint trained for this one (python -m train --head-model {head.name})"
            )
        full_range = options.photos or options.detector == "full-range"
        detector = FaceMeshDetector(max_faces=options.max_faces, static_images=options.photos, full_range=full_range)
        crop_smoothing = options.smoothing if options.crop_smoothing is None else options.crop_smoothing
        cropper = FaceCropper(alpha=float(sampler.get("alpha", 1.4)), out_size=net.config.input_size, max_faces=options.max_faces,
                              smoothing=DEFAULT_BOX_SMOOTHING if crop_smoothing else None)
        cue_options = {} if options.cue == "mediapipe" else {"pixel3dmm_weights": options.pixel3dmm_weights, "farl_weights": options.farl_weights}
        cue = create_cue(options.cue, device=options.device if options.cue != "mediapipe" else None, **cue_options)
        tracker = cls(
            net, head, detector, cropper, cue,
            normal_frame=sampler.get("normal_frame", "camera"), smoothing=options.smoothing, device=options.device,
            focal_ratio=float(sampler.get("focal_mean", 1.0)), focal_px=options.focal, refine=options.refine, refine_settings=settings,
            refine_start=start, identity=identity, photos=options.photos, arkit_fit=arkit_fit, runtime=runner, network_head=network_head,
            arkit_profile=_arkit_profile(options), profile_path=options.arkit_profile,
        )
        if options.calibrate_neutral is not None:
            tracker.calibrate_neutral(options.calibrate_neutral)
        log.info(
            "checkpoint %s: %s network, %s backbone, %d px input, on %s (%s); %s head model, refinement %s; a new face starts from %s",
            checkpoint, trained_for, tracker.net.config.backbone, tracker.input_size, options.device, tracker.runner.describe(), head.name,
            f"{options.resolved_refine_iters()} iterations" if options.refine else "off", tracker.describe_start(),
        )
        return tracker


@dataclass
class _Decoded:
    """F faces decoded: params {group: (F, n)} (every group), rotation_6d (F, 6), rotation (F, 3, 3),
    translation (F, 3), landmarks (F, 68, 2) frame pixels."""

    params: dict[str, torch.Tensor]
    rotation_6d: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    landmarks: torch.Tensor


def smoothing_clock(frame: Frame) -> float:
    """The time, in seconds, by which the tracker smooths ``frame`` (the crop box, the parameters,
    the ARKit weights): a file's own media time where the frame has one, so that a file gives the
    same take however fast it is tracked; a live frame's capture time otherwise."""
    return frame.timestamp if frame.source_time is None else frame.source_time


def _arkit_profile(options: TrackerOptions) -> ArkitProfile | None:
    """The profile in ``options.arkit_profile`` when that file exists (None: none yet; a neutral
    calibration writes it, and without one asked for a warning says so)."""
    path = options.arkit_profile
    if path is None:
        return None
    if Path(path).exists():
        return ArkitProfile.load(path)
    if options.calibrate_neutral is None:
        log.warning("the ARKit profile %s does not exist yet: a neutral calibration (--calibrate-neutral SECONDS, or the viewer's N key) "
                    "writes it; until then the weights are the raw ones", path)
    return None


def _network_values(raw: RawOutput, index: int) -> FrameParameters:
    """Face ``index``'s network outputs: params {group: (n,)}, rotation_6d (6,), translation (3,)."""
    return FrameParameters({g: v[index] for g, v in raw.params.items()}, raw.rotation_6d[index], raw.translation[index])


def non_finite(values: FrameParameters) -> list[str]:
    """The outputs of one face's ``values`` that hold a NaN or an infinity: "params.GROUP",
    "rotation", "translation"; empty when all are finite."""
    named = [(f"params.{g}", v) for g, v in values.params.items()] + [("rotation", values.rotation_6d), ("translation", values.translation)]
    return [name for name, value in named if value is not None and not bool(torch.isfinite(value).all())]


def _load_head(name: str, options: TrackerOptions) -> HeadModel:
    """Head model ``name`` from the files ``options`` name (``flame_dir``, ``ict_model``)."""
    return load_head_model(name, options.flame_dir if name == "flame" else options.ict_model)


def _arkit_fit(ict_model_path: str | Path | None, settings: RefineSettings, ict: HeadModel | None = None) -> ArkitFit | None:
    """The ICT fit that gives the ARKit weights (``settings``: its refinement's; ``ict``: the ICT
    model when already loaded); None (with a warning) without an ICT model."""
    try:
        ict = ict if ict is not None else load_head_model("ict", ict_model_path)
    except TrackerError as error:
        log.warning("no ARKit weights: they come from an ICT-FaceKit fit beside FLAME, and %s", error)
        return None
    return ArkitFit(ict, settings)
