"""A batch's inputs -> jobs: files, folders, globs and CSV manifests, every video checked before
any tracking starts.

    jobs, rejected = plan(["videos/", "a.mp4", "clips/*.mov", "list.csv"], out=Path("takes"))

A video's take is ``OUT/<name>.npz``. Its name is the file's stem (a manifest may give another),
so a batch run again finds the same takes. Folders are searched with their subfolders for files
with a video suffix (``VIDEO_SUFFIXES``); a file named on the command line is tried whatever its
suffix. A ``.csv`` input is a manifest, a CSV file with a header:
    path         the video (required; relative to the manifest's folder)
    name         the take's name (default: the video's stem)
    max_frames   track at most this many frames
    out          another output folder for this video (relative to the manifest's folder)
A manifest with another column, no ``path`` column or a bad value is a TrackerError naming the
file, the line and the field: the whole batch stops before it starts.

Checked per video, before tracking; each problem is a ``Rejected`` line with its reason:
    missing       no such file (or a pattern that matches nothing, a folder without videos)
    empty         a file of 0 bytes
    not a video   OpenCV cannot open it (a text file, a damaged file)
    no frames     it opens but gives no frame (a clip of zero length)
    duplicate     another video of the batch has the same output name
    unwritable    its output folder cannot be made or written
"""

from __future__ import annotations

import csv
import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tracker.errors import TrackerError

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MANIFEST_COLUMNS = ("path", "name", "max_frames", "out")
TAKE_SUFFIX = ".npz"


@dataclass(frozen=True)
class Job:
    """One video to track: ``video`` the file, ``name`` its take's name, ``take`` the take's path,
    ``max_frames`` a limit (None: every frame), ``frames`` the file's declared frame count (0:
    unknown), ``fps`` its frame rate (0: unknown), ``offline`` tracked in two passes
    (``tracker.offline``; False: as ``app.live`` tracks a file)."""

    video: Path
    name: str
    take: Path
    max_frames: int | None = None
    frames: int = 0
    fps: float = 0.0
    offline: bool = True

    @property
    def expected_frames(self) -> int:
        """Frames the job will track, as far as known (0: unknown)."""
        if self.max_frames is not None:
            return min(self.max_frames, self.frames) if self.frames else self.max_frames
        return self.frames


@dataclass(frozen=True)
class Rejected:
    """An input that is not tracked: ``video`` as given, ``take`` its take's path where one was
    named, ``reason`` one line."""

    video: str
    reason: str
    take: Path | None = None


@dataclass(frozen=True)
class _Wanted:
    video: Path
    name: str | None = None
    max_frames: int | None = None
    out: Path | None = None


def plan(inputs: list[str], out: Path) -> tuple[list[Job], list[Rejected]]:
    """Command-line ``inputs`` and the output folder ``out`` -> (jobs in input order, rejected
    inputs). A manifest that cannot be read is a TrackerError."""
    wanted: list[_Wanted] = []
    rejected: list[Rejected] = []
    for spec in inputs:
        path = Path(spec)
        if path.suffix.lower() == ".csv" and path.is_file():
            wanted.extend(read_manifest(path))
        elif path.is_dir():
            videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            wanted.extend(_Wanted(v) for v in videos)
            if not videos:
                rejected.append(Rejected(spec, f"missing: the folder has no video ({', '.join(VIDEO_SUFFIXES)})"))
        elif not path.exists() and glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            wanted.extend(_Wanted(m) for m in matches)
            if not matches:
                rejected.append(Rejected(spec, "missing: no file matches the pattern"))
        else:
            wanted.append(_Wanted(path))
    jobs: list[Job] = []
    owners: dict[Path, str] = {}
    for item in wanted:
        take = (item.out or out) / f"{item.name or item.video.stem}{TAKE_SUFFIX}"
        problem, frames, fps = _probe(item.video)
        if problem is None and take.resolve() in owners:
            problem = f"duplicate: {owners[take.resolve()]} has the same output {take}; give one a name of its own in a manifest"
        if problem is None:
            problem = folder_problem(take.parent)
            problem = None if problem is None else f"unwritable: {problem}"
        if problem is not None:
            rejected.append(Rejected(str(item.video), problem, take))
            continue
        owners[take.resolve()] = str(item.video)
        jobs.append(Job(item.video, take.stem, take, item.max_frames, frames, fps))
    return jobs, rejected


def read_manifest(path: Path) -> list[_Wanted]:
    """The videos of the manifest ``path`` (module docstring); TrackerError naming the line and
    the field for anything it cannot take."""
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            columns = [c.strip() for c in reader.fieldnames or []]
            unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
            if "path" not in columns or unknown:
                what = f"unknown columns {', '.join(map(repr, unknown))}" if unknown else "no 'path' column"
                raise TrackerError(f"manifest {path}: {what}; its header names path (required), and name, max_frames, out (optional)")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TrackerError(f"manifest {path} cannot be read: {error}") from error
    base = path.parent
    wanted = []
    for line, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise TrackerError(f"manifest {path}, line {line}: the path is empty")
        name = row.get("name") or None
        if name is not None and (Path(name).name != name or name in (".", "..")):
            raise TrackerError(f"manifest {path}, line {line}: name {name!r} must be a plain file name, without folders")
        max_frames = None
        if row.get("max_frames"):
            try:
                max_frames = int(row["max_frames"])
            except ValueError:
                max_frames = 0
            if max_frames < 1:
                raise TrackerError(f"manifest {path}, line {line}: max_frames must be a whole number >= 1, got {row['max_frames']!r}")
        out = base / row["out"] if row.get("out") else None
        wanted.append(_Wanted(base / row["path"], name, max_frames, out))
    return wanted


def _probe(video: Path) -> tuple[str | None, int, float]:
    """(why ``video`` cannot be tracked (module docstring) or None, the frame count and frame rate
    it declares (0 where it does not)). Reads its first frame."""
    import cv2

    if not video.exists():
        return "missing: no such file", 0, 0.0
    if not video.is_file():
        return "not a video: it is not a file", 0, 0.0
    if video.stat().st_size == 0:
        return "empty: the file has 0 bytes", 0, 0.0
    capture = cv2.VideoCapture(str(video))
    try:
        if not capture.isOpened():
            return "not a video: OpenCV cannot open it", 0, 0.0
        frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
        frames = int(frames) if math.isfinite(frames) and frames > 0 else 0
        fps = float(fps) if math.isfinite(fps) and fps > 0 else 0.0
        if not capture.read()[0]:
            return "no frames: the file opens but gives no frame", frames, fps
    finally:
        capture.release()
    return None, frames, fps


def folder_problem(folder: Path) -> str | None:
    """Why nothing can be written into ``folder`` (made when missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"the output folder {folder} cannot be made ({error.strerror or error})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the output folder {folder} is not writable"
    return None
