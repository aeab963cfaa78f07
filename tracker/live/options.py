"""The tracker's settings as one object, and the command-line options that fill it.

    options = TrackerOptions(checkpoint="runs/ict/best_stage2.pt", device="cuda", refine_iters=5)
    tracker = FaceTracker.from_options(options)     # tracker.live.face_tracker: ready for a Pipeline

``python -m app.live`` and ``train.evaluate_real`` add the same options to their command lines
(``add_tracker_arguments``) and map them onto a ``TrackerOptions`` (``options_from_args``), so
both build exactly the same tracker from the same settings.

This module is light to import (no torch, no MediaPipe): command lines build their parsers from
the names below and check their settings before the heavy imports, which
``FaceTracker.from_options`` does.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.errors import TrackerError
from tracker.files.paths import PROJECT_ROOT
from tracker.n2fnet import PREFERENCE, RUNTIMES
from tracker.takes.recording import IDENTITY_STATES, read_take

if TYPE_CHECKING:
    from tracker.fitting.refinement import RefineSettings

log = logging.getLogger(__name__)

# the names the settings take (their meanings: TrackerOptions)
DETECTORS = ("short-range", "full-range")
# where a new track's fit starts (tracker.live.face_tracker.FaceTracker's refine_start)
REFINE_STARTS = ("network", "camera", "pnp", "mean")
ARKIT_FROM = ("network", "mesh")  # TrackerOptions.arkit_from
# the start of a head model the checkpoint does not regress (FLAME with the shipped ICT network),
# chosen by measurement on the real videos (README, "FLAME quick start")
OTHER_HEAD_START = "pnp"
# how the pipeline runs its stages (tracker.live.pipeline)
MODES = ("async", "sequential")

# the checkpoint used when none is given (shipped under assets/)
DEFAULT_CHECKPOINT = PROJECT_ROOT / "assets" / "n2fnet_ict_resnet18.pt"

NO_CHECKPOINT = """\
No N2FNet checkpoint: {path} does not exist and --checkpoint was not given.
The tracker regresses the head mesh with a trained N2FNet and will not run an untrained one.
  - train one:  python -m train --head-model ict --out-dir runs/ict   (then --checkpoint runs/ict/best_stage2.pt)
  - or pass a checkpoint you have:  --checkpoint PATH
(The project ships assets/n2fnet_ict_resnet18.pt: restore it from the repository if it was deleted.)"""


@dataclass
class TrackerOptions:
    """Everything that decides how the tracker is built (``FaceTracker.from_options``).

    checkpoint      N2FNet checkpoint; None: the shipped DEFAULT_CHECKPOINT
    head_model      "ict" | "flame" | None: the head model fitted (None: FLAME when ``flame_dir`` is
                    given, else the checkpoint's); one the checkpoint does not regress is fitted from
                    its mean face by the refinement (``resolved_refine_start``)
    ict_model       ICT-FaceKit npz or upstream checkout (None: found as ``tracker.files.paths`` finds it);
                    when FLAME is fitted, also the model of the ICT fit that gives FLAME its ARKit weights
    flame_dir       folder with the FLAME files
    device          where the network runs ("cpu", "cuda", "cuda:N")
    runtime         what runs it (``tracker.n2fnet.runtime``): "auto" (the fastest installed on the CPU,
                    torch on CUDA), "torch", "onnxruntime", "openvino", "openvino-int8" (the last
                    three: CPU only; a TrackerError on CUDA, or when not installed, with the pip
                    command; "openvino-int8": the int8 copy shipped beside the shipped checkpoint,
                    refused for another network)
    cue             geometry cue (``tracker.face.cues.create_cue``); pixel3dmm_weights, farl_weights its weights
    max_faces       faces tracked per frame
    smoothing       One-Euro smoothing of the parameters (and of the crop box, unless ``crop_smoothing`` says otherwise)
    crop_smoothing  the crop box's smoothing (None: as ``smoothing``)
    focal           the frame camera's focal length in pixels (None: the training camera's)
    detector        "short-range" (Face Mesh's own) | "full-range" (MediaPipe's full-range face detector, small faces)
    photos          unrelated still images rather than video: MediaPipe's static-image mode with its
                    full-range face detector (faces of any size, no tracking between frames), no
                    temporal term in the refinement, several identity rounds per face
    refine          the Gauss-Newton refinement against MediaPipe's landmarks after the network
    refine_iters    its iterations (None: ``refine_settings``'s, by default ``tracker.fitting.refinement.DEFAULT_ITERATIONS``)
    refine_settings its weights and schedule (``tracker.fitting.refinement.RefineSettings``; None: the
                    library's); ``refine_iters``, when given, replaces its iterations (``refinement_settings``)
    refine_start    a new track's start: "network" (from and towards N2FNet's prediction), "camera"
                    (the mean face at the network's head pose), "pnp" (the mean face at a PnP pose of
                    MediaPipe's points), "mean" (the frontal mean face: the no-network ablation);
                    None: "network" when the checkpoint regresses the fitted head model, else
                    OTHER_HEAD_START
    identity_take   a take (npz or journal) whose calibrated identity every track uses, fixed
    identity_track  the track of ``identity_take`` to take it from (None: the first locked, else given, one)
    arkit_profile   the user's ARKit profile file (``tracker.fitting.arkit_profile``): read when it
                    exists, written when a neutral calibration ends
    calibrate_neutral  seconds of neutral face to calibrate from the first face on (None: none)
    arkit_from      where the ARKit weights come from (``ARKIT_FROM``): "network" (default): an ICT
                    fit that follows an ICT network's expression closely
                    (``tracker.fitting.refinement.ARKIT_SETTINGS``: blinks that follow the lids
                    better), for ICT a fit of its own beside the mesh's (2.4-3 ms more per face on a 2-core CPU);
                    "mesh": ICT's from the mesh's own expression, FLAME's from its ICT fit at the
                    mesh fit's settings. Without an ICT network's prediction (a FLAME network, the
                    "mean" start, no refinement) both are "mesh"
    """

    checkpoint: str | Path | None = None
    head_model: str | None = None
    ict_model: str | Path | None = None
    flame_dir: str | Path | None = None
    device: str = "cpu"
    runtime: str = "auto"
    cue: str = "mediapipe"
    pixel3dmm_weights: str | Path | None = None
    farl_weights: str | Path | None = None
    max_faces: int = 1
    smoothing: bool = True
    crop_smoothing: bool | None = None
    focal: float | None = None
    detector: str = "short-range"
    photos: bool = False
    refine: bool = True
    refine_iters: int | None = None
    refine_settings: RefineSettings | None = None
    refine_start: str | None = None
    identity_take: str | Path | None = None
    identity_track: int | None = None
    arkit_profile: str | Path | None = None
    calibrate_neutral: float | None = None
    arkit_from: str = "network"

    def __post_init__(self) -> None:
        if self.arkit_from not in ARKIT_FROM:
            raise TrackerError(f"arkit_from must be one of {', '.join(ARKIT_FROM)}, got {self.arkit_from!r}")
        if self.detector not in DETECTORS:
            raise TrackerError(f"the detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.refine_start is not None and self.refine_start not in REFINE_STARTS:
            raise TrackerError(f"refine_start must be one of {', '.join(REFINE_STARTS)}, got {self.refine_start!r}")
        iters = self.refine_iters
        if iters is not None and (isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1):
            raise TrackerError(f"the refinement iterations must be a positive whole number, got {self.refine_iters!r}")
        if self.max_faces < 1:
            raise TrackerError(f"max_faces must be at least 1, got {self.max_faces}")
        if self.identity_track is not None and self.identity_take is None:
            raise TrackerError("an identity track was given without the take to take it from: add --identity TAKE.npz")
        if self.refine_start is not None and not self.refine:
            raise TrackerError(f"--refine-start {self.refine_start} sets where the refinement starts, and the refinement is off: leave out --no-refine or --refine-start")
        if self.identity_take is not None and not self.refine:
            raise TrackerError("a given identity (--identity) is used by the refinement, which is off: leave out --no-refine")
        seconds = self.calibrate_neutral
        if seconds is not None and not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds) and seconds > 0):
            raise TrackerError(f"the neutral calibration needs a positive number of seconds, got {seconds!r}")
        if self.focal is not None and not (isinstance(self.focal, (int, float)) and math.isfinite(self.focal) and self.focal > 0):
            raise TrackerError(f"the focal length must be a positive number of pixels, got {self.focal!r}: give --focal PX, or leave it out")
        from tracker.n2fnet.runtime import check_device, check_runtime

        check_device(self.device)
        check_runtime(self.runtime, self.device)

    def checkpoint_path(self) -> Path:
        """``checkpoint``, else the shipped default; a TrackerError saying how to get one when neither exists."""
        if self.checkpoint:
            return Path(self.checkpoint)
        if DEFAULT_CHECKPOINT.is_file():
            return DEFAULT_CHECKPOINT
        raise TrackerError(NO_CHECKPOINT.format(path=DEFAULT_CHECKPOINT))

    def fitted_head_model(self, trained_for: str) -> str:
        """The head model fitted, for a checkpoint that regresses ``trained_for``: ``head_model``,
        else FLAME when ``flame_dir`` is given, else ``trained_for``."""
        return self.head_model or ("flame" if self.flame_dir else trained_for)

    def resolved_refine_start(self, trained_for: str) -> str:
        """``refine_start``, else "network" when the checkpoint (regressing ``trained_for``) regresses
        the fitted head model, else OTHER_HEAD_START."""
        if self.refine_start is not None:
            return self.refine_start
        return "network" if self.fitted_head_model(trained_for) == trained_for else OTHER_HEAD_START

    def refinement_settings(self, head_model: str | None = None) -> RefineSettings:
        """The refinement's settings: ``refine_settings`` (None: the library's for ``head_model``,
        ``tracker.fitting.refinement.settings_for``), with ``refine_iters``'s iterations when that is given."""
        from tracker.fitting.refinement import RefineSettings, settings_for

        library = settings_for(head_model) if head_model is not None else RefineSettings()
        settings = self.refine_settings if self.refine_settings is not None else library
        return settings if self.refine_iters is None else replace(settings, iterations=int(self.refine_iters))

    def resolved_refine_iters(self) -> int | None:
        """The refinement's iteration count (``refinement_settings``); None when refinement is off."""
        return int(self.refinement_settings().iterations) if self.refine else None

    def recording_metadata(self) -> dict[str, Any]:
        """The settings a take records in its metadata (``tracker.takes.recording``)."""
        metadata: dict[str, Any] = {
            "checkpoint": str(self.checkpoint_path()),
            "refine": bool(self.refine),
            "refine_iters": self.resolved_refine_iters(),
            "detector": self.detector,
        }
        if self.identity_take is not None:
            metadata["identity_take"] = str(self.identity_take)
            metadata["identity_track"] = self.identity_track
        if self.arkit_profile is not None:
            metadata["arkit_profile"] = str(self.arkit_profile)
        metadata["arkit_from"] = self.arkit_from
        return metadata


def take_identity(path: str | Path, head_model: str, size: int | None = None, track: int | None = None) -> np.ndarray:
    """(K,) float32 identity of track ``track`` of the take at ``path`` (None: its first track whose
    identity is locked, else given); TrackerError when the take has none, was recorded with
    another head model than ``head_model``, or its identity does not have ``size`` values."""
    take = read_take(path)
    if take.head_model != head_model:
        raise TrackerError(
            f"the identity take {path} was recorded with the {take.head_model!r} head model, this tracker fits {head_model!r}: "
            f"pass a take recorded with {head_model!r}"
        )
    tracks = take.tracks()
    if tracks.identity is None or not len(tracks.track_id):
        raise TrackerError(f"the take {path} holds no identity (no tracked face, or a head model without an identity group): record one with refinement on")
    if track is None:
        chosen = np.flatnonzero(np.isin(tracks.identity_state, (IDENTITY_STATES.index("locked"), IDENTITY_STATES.index("given"))))
        if not len(chosen):
            states = ", ".join(f"{t}: {IDENTITY_STATES[s]}" for t, s in zip(tracks.track_id.tolist(), tracks.identity_state.tolist()))
            raise TrackerError(
                f"no track of the take {path} has a locked identity ({states}): record a longer take with refinement on, "
                "or pick a track with --identity-track N"
            )
        row = int(chosen[0])
    else:
        rows = np.flatnonzero(tracks.track_id == track)
        if not len(rows):
            raise TrackerError(f"the take {path} has no track {track}; its tracks are {tracks.track_id.tolist()}")
        row = int(rows[0])
        state = IDENTITY_STATES[tracks.identity_state[row]]
        if state not in ("locked", "given"):
            log.warning("track %d of %s was not locked (its identity is %s): using its last identity", track, path, state)
    identity = tracks.identity[row].astype(np.float32)
    if size is not None and identity.shape != (size,):
        raise TrackerError(
            f"the identity in {path} has {identity.shape[0]} values, the head model's {take.identity_group!r} group {size}: "
            "pass a take recorded with the same head model files"
        )
    if not np.isfinite(identity).all():
        raise TrackerError(f"the identity of track {int(tracks.track_id[row])} in {path} is not finite: pick another track with --identity-track N")
    return identity


def add_tracker_arguments(model: argparse._ActionsContainer, refinement: argparse._ActionsContainer, *, checkpoint_required: bool = False,
                          detector_note: str = "") -> None:
    """Add the tracker's command-line options that every tracking program shares (``app.live``,
    ``train.evaluate_real``) to a parser or its groups: the checkpoint, head model, device, runtime
    and detector to ``model``, the refinement's to ``refinement``; ``options_from_args`` reads them.
    ``detector_note``: what the program adds to the detector's help."""
    checkpoint_help = "N2FNet checkpoint (.pt)" if checkpoint_required else "N2FNet checkpoint (default: assets/n2fnet_ict_resnet18.pt, when present)"
    model.add_argument("--checkpoint", required=checkpoint_required, help=checkpoint_help)
    model.add_argument("--head-model", choices=("flame", "ict"),
                       help="head model fitted (default: flame with --flame-dir, else the checkpoint's); with a checkpoint of another head model "
                       "(FLAME with the shipped ICT network) it is fitted from its mean face by the refinement")
    model.add_argument("--ict-model", help="ICT-FaceKit npz or upstream checkout (default, first found: $N2F_ICT_MODEL, "
                       "$N2F_SHARED_DIR/ict-facekit/ict_face_model.npz, the cache ~/.cache/n2f-tracker, $N2F_ICT_FACEKIT, "
                       "else a download of the pinned upstream archive unless N2F_OFFLINE=1); when FLAME is tracked, also the ICT model fitted "
                       "beside FLAME for its ARKit weights")
    model.add_argument("--flame-dir", help="folder with the FLAME files: tracks FLAME (with the shipped ICT network: fitted from FLAME's mean face)")
    model.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    model.add_argument("--runtime", choices=("auto", *RUNTIMES), default="auto",
                       help=f"what runs the network: auto (default: on the CPU the first installed of {', '.join(PREFERENCE)}, the fastest first; "
                       "torch on CUDA), or one of them; onnxruntime and openvino run on the CPU only, with --threads threads, and export the "
                       "network at first use into the cache (~/.cache/n2f-tracker/networks); openvino-int8 (CPU only) runs the int8 copy "
                       "shipped beside the shipped checkpoint (assets/*.int8.xml), refused for another network")
    model.add_argument("--detector", choices=DETECTORS, default="short-range",
                       help="face detector: short-range (Face Mesh's own, faces near the camera; default) or full-range "
                       "(MediaPipe's full-range detector, then a mesh per face: small and distant faces, slower)" + detector_note)
    refinement.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                            help="fit the head model to MediaPipe's landmarks after the network (Gauss-Newton, from the network's prediction) "
                            "and pool one identity per tracked person (default: on)")
    refinement.add_argument("--refine-iters", type=positive_int, metavar="N",
                            help="refinement iterations per frame (default: the library's, tracker.fitting.refinement.DEFAULT_ITERATIONS)")
    refinement.add_argument("--arkit-from", choices=ARKIT_FROM, default="network",
                            help="the ARKit weights: network (default) from an ICT fit of their own that follows the network's expression "
                            "closely (blinks follow the lids better; 2.4-3 ms more per face on a 2-core CPU), or mesh: the mesh's own expression")
    refinement.add_argument("--refine-start", choices=REFINE_STARTS,
                            help="a new face's start: network (its prediction, start and prior), camera (the mean face at the network's head pose), "
                            "pnp (the mean face at a perspective-n-point pose of MediaPipe's points), mean (the frontal mean face); default: network "
                            f"when the checkpoint regresses the head model fitted, else {OTHER_HEAD_START}")


def options_from_args(args: argparse.Namespace, **fields: Any) -> TrackerOptions:
    """The TrackerOptions of the options ``add_tracker_arguments`` added to a command line, with
    ``fields`` (other TrackerOptions fields, or these set otherwise) on top; checked (imports torch)."""
    values = {
        "checkpoint": args.checkpoint,
        "head_model": args.head_model,
        "ict_model": args.ict_model,
        "flame_dir": args.flame_dir,
        "device": args.device,
        "runtime": args.runtime,
        "detector": args.detector,
        "refine": args.refine,
        "refine_iters": args.refine_iters,
        "refine_start": args.refine_start,
        "arkit_from": args.arkit_from,
    }
    return TrackerOptions(**{**values, **fields})


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value
