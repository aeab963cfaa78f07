"""FLAME parameter sequence of a recorded FLAME take, in VHAP's npz layout ("vhap"), the file that
FLAME-based avatar pipelines load: GaussianAvatars' ``--motion_path`` and VHAP's own tracker.

    export_flame_npz(take, model, "seq.npz", track=None) -> FlameNpzExport   # one track, a row per frame

The layout is VHAP's ``tracked_flame_params.npz``, written by ``FlameTracker.save_result`` in
github.com/ShenhanQian/VHAP ``vhap/model/tracker.py`` (read back by ``load_from_tracked_flame_params``
there), and read by GaussianAvatars (github.com/ShenhanQian/GaussianAvatars) in
``scene/flame_gaussian_model.py`` ``FlameGaussianModel.load_ply(motion_path=...)``: it keeps the
float32 arrays and takes ``rotation``, ``translation``, ``neck_pose``, ``jaw_pose``, ``eyes_pose``,
``expr`` per frame (``shape`` from the avatar); both feed ``FlameHead.forward(shape, expr, rotation,
neck, jaw, eyes, translation)`` (GaussianAvatars ``flame_model/flame.py``): smplx-style FLAME LBS with
axis-angle joints (global, neck, jaw, left eye, right eye), ``translation`` added after skinning.

Conventions (docs/flame-npz.md): the parameters are re-expressed so that FLAME (smplx's FLAME, or
VHAP's ``FlameHead``) gives the take's posed head in VHAP's monocular world: OpenGL camera axes (+y
up, +z towards the camera), the camera at (0, 0, 1) looking down -z (VHAP's uncalibrated ``RT``,
stored as ``extrinsic``). The take's head pose (``rotation_6d``, ``translation``: ``X_cam = R FLIP
X_head + t``, OpenCV axes) is folded into FLAME's global rotation and translation about the root
joint. One row per frame of the take; frames without the track's face hold the previous face
(before the first one: the first), flagged in ``face_found``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write
from tracker.geometry.camera import FLIP_MATRIX
from tracker.geometry.rotations import matrix_to_axis_angle, rotation_6d_to_matrix
from tracker.takes.checks import check_clock, check_output, check_records, select_track
from tracker.takes.recording import Take

LAYOUT = "vhap"
CAMERA_DISTANCE = 1.0  # m: VHAP's uncalibrated camera sits at (0, 0, 1) in its world (RT[2, 3] = -1)
# VHAP's uniform SH lighting, its tracker's initial value: VHAP's loader reads "lights" unconditionally
UNIFORM_LIGHTS = np.zeros((9, 3), np.float32)
UNIFORM_LIGHTS[0] = np.sqrt(4 * np.pi)
# the per-frame parameter arrays, one row per frame of the take
PER_FRAME = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation", "eyelids")


@dataclass
class FlameNpzExport:
    """What ``export_flame_npz`` wrote: the file, the track, its rows (one per frame of the take),
    the frames without this track's face (held), and the arrays written {name: shape}."""

    path: Path
    track: int
    frames: int
    held: list[int]
    arrays: dict[str, tuple[int, ...]] = field(default_factory=dict)


def check_flame_take(take: Take) -> None:
    """TrackerError unless ``take`` was recorded with FLAME."""
    if take.head_model != "flame":
        raise TrackerError(f"--format flame-npz writes FLAME parameters; this take was recorded with the {take.head_model!r} head model, "
                           "not FLAME (record with the FLAME head model, or export it with --format glb, csv, obj or ply)")


def flame_sequence(take: Take, model, track: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of the "vhap" layout for ``take``'s ``track`` (None: the default), float64 before
    the file's dtypes; see docs/flame-npz.md. Checks the take as every export does."""
    check_flame_take(take)
    track = select_track(take, track)
    rows = np.flatnonzero(take.face_found & (take.track_id == track))
    r6d, t = take.rotation_6d[rows].astype(np.float64), take.translation[rows].astype(np.float64)
    unposed = np.isnan(r6d).all(axis=1) | np.isnan(t).all(axis=1)
    if unposed.any():
        raise TrackerError(f"the take lacks the head pose for frames {take.frame_index[rows[unposed]][:10].tolist()}: "
                           "a FLAME sequence places the head in front of its camera")
    check_records(take, rows)
    clock = check_clock(take)
    frames, first = np.unique(take.frame_index, return_index=True)
    row = np.full(len(frames), -1, np.int64)
    row[np.searchsorted(frames, take.frame_index[rows])] = rows
    last = np.maximum.accumulate(np.where(row >= 0, np.arange(len(frames)), -1))
    source = np.where(last >= 0, row[np.maximum(last, 0)], rows[0])  # hold the previous face, else the first

    p = model.complete_params({g: torch.from_numpy(take.params[g][source].astype(np.float64)) for g in take.params
                               if g in model.param_groups})
    p = {k: v.double() for k, v in p.items()}
    rotations = model.joint_rotations(p)  # (K, 5, 3, 3) global, neck, jaw, left eye, right eye
    # the root joint (FLAME rotates about it), regressed from the shaped and expressed template as in LBS
    coeffs = torch.cat([p["shape"], p["expression"]], dim=1)
    j_root = model.J_regressor[0].double()
    root = j_root @ model.v_template.double() + torch.einsum("v,vck,bk->bc", j_root, model.shapedirs.double(), coeffs)
    flip = torch.from_numpy(FLIP_MATRIX.astype(np.float64))
    view = flip @ rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[source].astype(np.float64))) @ flip  # A = FLIP R FLIP
    shift = (flip @ torch.from_numpy(take.translation[source].astype(np.float64))[..., None])[..., 0]
    shift = shift + torch.tensor([0.0, 0.0, CAMERA_DISTANCE], dtype=torch.float64)  # a = FLIP t + camera position
    rotation = view @ rotations[:, 0]
    translation = ((view @ (root + p["translation"])[..., None])[..., 0] + shift - root)
    eyelids = p["eyelids"] if "eyelids" in p else torch.zeros(len(source), 2, dtype=torch.float64)
    focal, principal = take.focal[source].astype(np.float64), take.principal[source].astype(np.float64)
    height, width = (round(2 * float(np.nanmedian(principal[:, k]))) for k in (1, 0))
    extrinsic = np.eye(3, 4)
    extrinsic[2, 3] = -CAMERA_DISTANCE

    def aa(matrices: torch.Tensor) -> np.ndarray:
        return matrix_to_axis_angle(matrices).numpy()

    return {
        "shape": p["shape"][0].numpy(),
        "expr": p["expression"].numpy(),
        "rotation": aa(rotation),
        "neck_pose": aa(rotations[:, 1]),
        "jaw_pose": aa(rotations[:, 2]),
        "eyes_pose": np.concatenate([aa(rotations[:, 3]), aa(rotations[:, 4])], axis=1),
        "translation": translation.numpy(),
        "eyelids": eyelids.numpy(),
        "focal_length": np.array([np.median(focal[:, 0]) / max(height, width)]),
        "image_size": np.array([height, width], np.int64),
        "intrinsic": np.concatenate([focal, principal], axis=1),
        "extrinsic": extrinsic,
        "lights": UNIFORM_LIGHTS.astype(np.float64),
        "timestep_id": frames.astype(np.int64),
        "n_processed_frames": np.array(len(frames), np.int64),
        "frame_index": frames.astype(np.int64),
        "timestamp": clock[first] - clock[first[0]],
        "face_found": row >= 0,
        "head_rotation": view.numpy(),  # A: rotates the head frame's eyelid offsets into this world
    }


def export_flame_npz(take: Take, model, out: str | Path, track: int | None = None) -> FlameNpzExport:
    """Write ``take``'s ``track`` (None: the default track) as a FLAME sequence in the "vhap" layout
    at ``out`` (atomically). ``model``: the take's FLAME (``load_take_model``). Layout: docs/flame-npz.md."""
    out = Path(out)
    check_flame_take(take)
    if out.is_dir():
        raise TrackerError(f"{out} is a folder: give the npz's file name, e.g. {out / 'flame_params.npz'}")
    check_output(take, out, "_flame.npz")
    arrays = flame_sequence(take, model, track)
    arrays = {k: v.astype(np.float32) if v.dtype == np.float64 and k != "timestamp" else v for k, v in arrays.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, buffer.getvalue())
    except OSError as err:
        raise TrackerError(f"cannot write {out}: {err.strerror or err}") from err
    held = arrays["frame_index"][~arrays["face_found"]].tolist()
    return FlameNpzExport(out, select_track(take, track), len(arrays["frame_index"]), [int(f) for f in held],
                          {k: tuple(v.shape) for k, v in arrays.items()})
