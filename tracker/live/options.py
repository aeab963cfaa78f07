"""The tracker's settings as one object, and the tracker built from them.

    options = TrackerOptions(checkpoint="runs/ict/best_stage2.pt", device="cuda", refine_iters=5)
    tracker = build_tracker(options)            # a FaceTracker, ready for a Pipeline

``python -m app.live`` maps its command line onto a ``TrackerOptions`` and so does
``train.evaluate_real``, so both build exactly the same tracker from the same settings.

This module is light to import (no torch, no MediaPipe): command lines build their parsers from
the names below and check their settings before the heavy imports, which ``build_tracker`` does.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.errors import TrackerError
from tracker.files.paths import PROJECT_ROOT
from tracker.takes.recording import IDENTITY_STATES, default_identity_group, read_take

if TYPE_CHECKING:
    import torch

    from tracker.live.tracker import FaceTracker

log = logging.getLogger(__name__)

# the names the settings take (their meanings: TrackerOptions)
DETECTORS = ("short-range", "full-range")
# what runs the network (tracker.n2fnet.runtime); PREFERENCE: fastest first on this project's CPU
# (python -m tracker.bench network; README "Network runtime")
RUNTIMES = ("torch", "onnxruntime", "openvino", "openvino-int8")
PREFERENCE = ("openvino-int8", "openvino", "onnxruntime", "torch")
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
    """Everything that decides how the tracker is built (``build_tracker``).

    checkpoint      N2FNet checkpoint; None: the shipped DEFAULT_CHECKPOINT
    head_model      "ict" | "flame" | None (the checkpoint's); a TrackerError when it is not the checkpoint's
    ict_model       ICT-FaceKit npz or upstream checkout (None: found as ``tracker.files.paths`` finds it);
                    with a FLAME checkpoint, the model of the ICT fit that gives FLAME its ARKit weights
    flame_dir       folder with the FLAME files
    device          where the network runs ("cpu", "cuda", "cuda:N")
    runtime         what runs it (``tracker.n2fnet.runtime``): "auto" (the fastest installed on the CPU,
                    torch on CUDA), "torch", "onnxruntime", "openvino", "openvino-int8" (the last
                    three: CPU only; a TrackerError on CUDA, or when not installed, with the pip
                    command; "openvino-int8": the int8 copy shipped beside the shipped checkpoint,
                    refused for another network)
    cue             geometry cue (``tracker.face.cues.create_cue``); pixel3dmm_weights, farl_weights its weights
    max_faces       faces tracked per frame
    smoothing       One-Euro smoothing of the parameters and the crop box
    focal           the frame camera's focal length in pixels (None: the training camera's)
    detector        "short-range" (Face Mesh's own) | "full-range" (MediaPipe's full-range face detector, small faces)
    refine          the Gauss-Newton refinement against MediaPipe's landmarks after the network
    refine_iters    its iterations (None: ``tracker.fitting.refinement.DEFAULT_ITERATIONS``)
    refine_start    "network" (from and towards N2FNet's prediction) | "mean" (the no-network ablation)
    identity_take   a take (npz or journal) whose calibrated identity every track uses, fixed
    identity_track  the track of ``identity_take`` to take it from (None: the first locked, else given, one)
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
    focal: float | None = None
    detector: str = "short-range"
    refine: bool = True
    refine_iters: int | None = None
    refine_start: str = "network"
    identity_take: str | Path | None = None
    identity_track: int | None = None

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise TrackerError(f"the detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        iters = self.refine_iters
        if iters is not None and (isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 1):
            raise TrackerError(f"the refinement iterations must be a positive whole number, got {self.refine_iters!r}")
        if self.max_faces < 1:
            raise TrackerError(f"max_faces must be at least 1, got {self.max_faces}")
        if self.identity_track is not None and self.identity_take is None:
            raise TrackerError("an identity track was given without the take to take it from: add --identity TAKE.npz")
        if self.identity_take is not None and not self.refine:
            raise TrackerError("a given identity (--identity) is used by the refinement, which is off: leave out --no-refine")
        if self.focal is not None and not (isinstance(self.focal, (int, float)) and math.isfinite(self.focal) and self.focal > 0):
            raise TrackerError(f"the focal length must be a positive number of pixels, got {self.focal!r}: give --focal PX, or leave it out")
        from tracker.n2fnet.runtime import check_runtime

        check_device(self.device)
        check_runtime(self.runtime, self.device)

    def checkpoint_path(self) -> Path:
        """``checkpoint``, else the shipped default; a TrackerError saying how to get one when neither exists."""
        if self.checkpoint:
            return Path(self.checkpoint)
        if DEFAULT_CHECKPOINT.is_file():
            return DEFAULT_CHECKPOINT
        raise TrackerError(NO_CHECKPOINT.format(path=DEFAULT_CHECKPOINT))

    def resolved_refine_iters(self) -> int | None:
        """The refinement's iteration count (the library default for None); None when refinement is off."""
        if not self.refine:
            return None
        if self.refine_iters is not None:
            return int(self.refine_iters)
        from tracker.fitting.refinement import DEFAULT_ITERATIONS

        return int(DEFAULT_ITERATIONS)

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
        return metadata


def build_tracker(options: TrackerOptions, photos: bool = False) -> FaceTracker:
    """The tracker of ``options`` (``photos``: unrelated still images, see ``FaceTracker.assemble``)."""
    import torch

    from tracker.live.tracker import FaceTracker

    checkpoint = options.checkpoint_path()
    cue_options = {}
    if options.cue != "mediapipe":
        cue_options = {"pixel3dmm_weights": options.pixel3dmm_weights, "farl_weights": options.farl_weights}
    head_name = options.head_model
    identity = None
    if options.flame_dir or options.ict_model or options.identity_take is not None:
        head_name, size = _checkpoint_identity(checkpoint)
        if options.flame_dir and head_name != "flame":
            raise TrackerError(
                f"--flame-dir {options.flame_dir} gives FLAME files, but the checkpoint {checkpoint} regresses the {head_name.upper()} head model: "
                "leave out --flame-dir, or pass a FLAME checkpoint with --checkpoint"
            )
    head_path = options.flame_dir if (head_name == "flame" or options.flame_dir) else options.ict_model
    if options.identity_take is not None:
        identity = torch.from_numpy(take_identity(options.identity_take, head_name, size, options.identity_track))
    tracker = FaceTracker.from_checkpoint(
        checkpoint,
        head_model=options.head_model,
        head_model_path=head_path,
        device=options.device,
        cue=options.cue,
        cue_options=cue_options,
        max_faces=options.max_faces,
        smoothing=options.smoothing,
        crop_smoothing=options.smoothing,
        focal_px=options.focal,
        photos=photos,
        detector=options.detector,
        refine=options.refine,
        refine_iters=options.refine_iters,
        refine_start=options.refine_start,
        identity=identity,
        ict_model_path=options.ict_model,
        runtime=options.runtime,
    )
    log.info(
        "checkpoint %s: %s, %s backbone, %d px input, on %s (%s); refinement %s",
        checkpoint, tracker.head.name, tracker.net.config.backbone, tracker.input_size, options.device, tracker.runner.describe(),
        f"{options.resolved_refine_iters()} iterations" if options.refine else "off",
    )
    return tracker


def take_identity(path: str | Path, head_model: str, size: int | None = None, track: int | None = None) -> np.ndarray:
    """(K,) float32 identity of track ``track`` of the take at ``path`` (None: its first track whose
    identity is locked, else given); TrackerError when the take has none, was recorded with
    another head model than ``head_model``, or its identity does not have ``size`` values."""
    take = read_take(path)
    if take.head_model != head_model:
        raise TrackerError(
            f"the identity take {path} was recorded with the {take.head_model!r} head model, the checkpoint regresses {head_model!r}: "
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


def _checkpoint_identity(checkpoint: Path) -> tuple[str, int | None]:
    """(the head model ``checkpoint`` was trained for, the size of its identity group when the network regresses it)."""
    from tracker.n2fnet.checkpoint import load_checkpoint

    config = load_checkpoint(checkpoint)["n2fnet"]
    groups = {str(g): int(s) for g, s in config.get("groups", {}).items()}
    group = default_identity_group(groups)
    return str(config["head_model"]), (groups[group] if group is not None else None)


def check_device(device: str) -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N") as a torch.device this machine has; TrackerError otherwise."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise TrackerError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise TrackerError(f"the tracker runs on cpu or cuda, not {device!r}: use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"a build for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise TrackerError(
                f"--device {device}: no CUDA GPU is usable on this machine (PyTorch {torch.__version__} is {build}; "
                "no NVIDIA driver or GPU answered). Run with --device cpu, or check the driver with nvidia-smi"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise TrackerError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return parsed


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
