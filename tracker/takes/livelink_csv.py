"""Live Link Face CSV of a recorded take: ARKit's 52 weights with the head and eye angles, one row per
frame, in the layout of the CSV takes Epic's Live Link Face app records (Unreal's importer reads it).

    export_csv(take, "take.csv", track=None, fps=60) -> CsvExport   # one track, a row per face frame
    format_timecode(seconds, fps=60) -> "HH:MM:SS:FF.fff"

Columns: Timecode, BlendShapeCount (61), the 52 weights in the app's order (``LLF_BLENDSHAPES``),
then the head and eye angles over pi (``ANGLE_COLUMNS``), as the live Live Link Face stream sends
them. Format, sources and angle signs: docs/livelink-csv.md.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write
from tracker.fitting.arkit import ARKIT_NAMES
from tracker.geometry.camera import head_pose
from tracker.geometry.rotations import rotation_6d_to_matrix
from tracker.takes.checks import check_clock, check_output, check_records, select_track
from tracker.takes.recording import Take

# the app's column order of the 52 weights (ARKit's names with a capital first letter)
LLF_BLENDSHAPES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft", "EyeWideLeft",
    "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight", "EyeSquintRight", "EyeWideRight",
    "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose", "MouthFunnel", "MouthPucker", "MouthRight", "MouthLeft",
    "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight",
    "MouthStretchLeft", "MouthStretchRight", "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight",
    "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight",
    "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)  # fmt: skip
ANGLE_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
HEADER = ("Timecode", "BlendShapeCount", *LLF_BLENDSHAPES, *ANGLE_COLUMNS)
BLENDSHAPE_COUNT = len(LLF_BLENDSHAPES) + len(ANGLE_COLUMNS)  # 61
# ARKIT_NAMES index of each LLF column
_ARKIT_COLUMN = [ARKIT_NAMES.index(name[0].lower() + name[1:]) for name in LLF_BLENDSHAPES]
DEFAULT_FPS = 60


@dataclass
class CsvExport:
    """What ``export_csv`` wrote: the file, the track, its rows, and the frame indices left out
    (frames where the track has no face)."""

    path: Path
    track: int
    rows: int
    skipped: list[int]


def format_timecode(seconds: float, fps: int = DEFAULT_FPS) -> str:
    """``seconds`` >= 0 -> ``HH:MM:SS:FF.fff`` at ``fps`` (an integer rate), the frame field with
    its fraction to a thousandth of a frame."""
    if fps < 1 or int(fps) != fps:
        raise ValueError(f"the timecode rate must be a whole number of frames per second, got {fps}")
    fps = int(fps)
    millis = int(round(float(seconds) * fps * 1000.0))  # thousandths of a frame since the start
    if millis < 0:
        raise ValueError(f"a timecode cannot be negative ({seconds} s)")
    frames, fraction = divmod(millis, 1000)
    total_seconds, frame = divmod(frames, fps)
    minutes, second = divmod(total_seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{second:02d}:{frame:02d}.{fraction:03d}"


def export_csv(take: Take, out: str | Path, track: int | None = None, fps: int = DEFAULT_FPS) -> CsvExport:
    """Write ``take``'s ``track`` (None: the default track) as a Live Link Face CSV at ``out``
    (atomically). Layout, units, signs: docs/livelink-csv.md; what is refused: ``tracker.takes.checks``."""
    out = Path(out)
    if out.is_dir():
        raise TrackerError(f"{out} is a folder: give the CSV's file name, e.g. {out / 'take.csv'}")
    check_output(take, out, ".csv")
    if fps < 1 or int(fps) != fps:
        raise TrackerError(f"--timecode-fps must be a whole number of frames per second, got {fps}")
    track = select_track(take, track)
    rows = np.flatnonzero(take.face_found & (take.track_id == track))
    arkit = take.arkit[rows].astype(np.float64)
    unweighted = np.isnan(arkit).all(axis=1)  # recorded without ARKit weights
    if unweighted.any():
        if take.head_model == "flame":
            raise TrackerError("this FLAME take has no ARKit weights: they come from an ICT-FaceKit fit beside FLAME, which needs the ICT "
                               "model while recording (--ict-model, or the shared ict-facekit folder); export it with --format glb, or record it again")
        frames = take.frame_index[rows[unweighted]]
        raise TrackerError(f"the take has no ARKit weights for frames {frames[:10].tolist()} (recorded before this version "
                           "stored them?): record it again to export a Live Link Face CSV")
    r6d, t = take.rotation_6d[rows].astype(np.float64), take.translation[rows].astype(np.float64)
    unposed = np.isnan(r6d).all(axis=1) | np.isnan(t).all(axis=1)
    if unposed.any():
        raise TrackerError(f"the take lacks the head pose for frames {take.frame_index[rows[unposed]][:10].tolist()}")
    check_records(take, rows)
    clock = check_clock(take)  # the frames' times in the video for a file, else their capture times
    rotations = rotation_6d_to_matrix(torch.from_numpy(r6d)).numpy()
    head = np.stack([head_pose(r, p)[1] for r, p in zip(rotations, t)]).astype(np.float64) if len(rows) else np.zeros((0, 3))
    eyes = np.nan_to_num(take.eye_angles[rows].astype(np.float64), nan=0.0)  # (N, 2, 2) (left, right) x (yaw, pitch)
    start = float(clock[np.argmin(take.frame_index)])  # the take's first frame, as the glb's time 0
    times = clock[rows] - start
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    previous = None
    for k in range(len(rows)):
        timecode = format_timecode(times[k], fps)
        if timecode == previous:
            raise TrackerError(f"frames {int(take.frame_index[rows[k - 1]])} and {int(take.frame_index[rows[k]])} fall on the same "
                               f"timecode {timecode} at {fps} fps: export with a higher --timecode-fps")
        previous = timecode
        angles = np.array([*head[k], eyes[k, 0, 0], eyes[k, 0, 1], 0.0, eyes[k, 1, 0], eyes[k, 1, 1], 0.0]) / math.pi
        writer.writerow([timecode, BLENDSHAPE_COUNT, *(_number(v) for v in arkit[k, _ARKIT_COLUMN]), *(_number(v) for v in angles)])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, text.getvalue().encode("utf-8"))
    except OSError as err:
        raise TrackerError(f"cannot write {out}: {err.strerror or err}") from err
    found = set(take.frame_index[rows].tolist())
    skipped = [int(f) for f in np.unique(take.frame_index) if int(f) not in found]
    return CsvExport(out, track, len(rows), skipped)


def _number(value: float) -> str:
    """A value as the app writes them: plain decimals (no exponent), 8 places."""
    value = 0.0 if math.isclose(value, 0.0, abs_tol=5e-9) else float(value)
    return f"{value:.8f}"
