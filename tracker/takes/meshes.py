"""Export of a recorded take: per-frame meshes (OBJ, PLY), an animated glTF (GLB) or a Live Link Face CSV.

    python -m tracker.export take.npz --out meshes/ [--format obj|ply] [--every N] [--posed]
                             [--head-model-path ICT_NPZ | --flame-dir FLAME_DIR]
    python -m tracker.export take.npz --format glb --out take.glb [--track N] [--gaps hold|hide]
    python -m tracker.export take.npz --format csv --out take.csv [--track N] [--timecode-fps 60]

Meshes: the head model named in the take is loaded (ICT: ``--head-model-path`` or the N2F_ICT_MODEL /
shared-folder default; FLAME: ``--flame-dir``, with the take's shape and expression sizes), and
every exported frame's recorded parameter groups are decoded to vertices in metres (groups the
take lacks take their neutral values). Vertices are in the head frame, or with ``--posed`` in the
camera frame (OpenCV axes) through the recorded rotation and translation (``head_to_camera``).
Files are named ``frame_<frame index, 6 digits>.<format>`` (in a take with several faces in a
frame, ``frame_<index>_track<track id>.<format>``: one file per face); frames without a face are
skipped and reported. A take interrupted before ``close()`` exports from its journal (see ``tracker.takes.recording``).
One mesh file holds the whole head (ICT: about 2 MB of OBJ text, 1 MB of PLY), so a take of a few
minutes makes gigabytes: the export says how many files and about how much space they take before
writing, refuses when the disk holding ``--out`` has not that much free, shows its progress (a bar
on a terminal, else a line every few seconds on stderr), and on Ctrl-C stops after the files
already written (each whole) and says how many (exit code 130). For animation, ``--format glb`` or
``--format csv`` hold a whole take in one small file.

GLB (``tracker.takes.gltf``): one track's head with its identity baked in, one morph target per
expression shape, the head pose, FLAME's joints, animated at the take's own timestamps; it opens in
Blender, Unity (glTFast) and Unreal. CSV (``tracker.takes.livelink_csv``): Live Link Face's CSV take layout
(timecode, 52 ARKit weights, head and eye angles) for Unreal's Live Link Face importer; no head
model needed. Both export one track (``--track``; default: the track with the most records).

Refused with a TrackerError (the CLI: one ``error:`` line, exit code 2), before anything is written:
an output that is the take's own file (also through a symbolic or hard link; for meshes, the
``--out`` folder or any mesh file); a record with a face that holds a value that is not a finite
number (NaN, infinity) in a parameter group, or in part of its rotation, translation, ARKit
weights or an eye's angles (``check_records``: the error names the frame, the record and the
field; records without a face hold NaN by design, and a pose or ARKit weights may be absent as a
whole where the format does not need them); for glb and CSV, a clock (``Take.clock``) that is NaN
or goes back (``check_clock``). Every file is written whole or not at all (``tracker.files.atomic_write``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tracker.files.atomic_write import atomic_write, same_file
from tracker.console import interruptible
from tracker.errors import TrackerError
from tracker.files.mesh_io import encode_obj, encode_ply
from tracker.takes.recording import Take, read_take

if TYPE_CHECKING:  # the head models import torch: loaded only where a model is used (a fast --help)
    from tracker.head_models import HeadModel

FORMATS = ("obj", "ply")  # per-frame meshes (export_meshes)
CLI_FORMATS = (*FORMATS, "glb", "csv")
PROGRESS_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal
INTERRUPTED = 130  # exit code after Ctrl-C (128 + SIGINT)
_OPTIONAL_FIELDS = ("rotation_6d", "translation", "arkit", "eye_angles")  # record fields that may be absent (all NaN)
_CHECK_ROWS = 1 << 16  # records checked at a time (bounded memory on long takes)


@dataclass
class ExportResult:
    """Files written (in record order) and the frame indices skipped for having no face."""

    written: list[Path]
    skipped: list[int]


def select_track(take: Take, track: int | None = None) -> int:
    """``track`` if the take has it, else (None) the track with the most records (the lowest id
    among equals): the one track that a glb or CSV export holds. TrackerError for a take without
    faces or an unknown track."""
    tracks = take.tracks()
    if not len(tracks):
        raise TrackerError("the take has no frame with a face: there is nothing to export (record a take where a face is tracked)")
    if track is None:
        return int(tracks.track_id[np.argmax(tracks.records)])  # argmax: the first (lowest id) of equals
    if int(track) not in tracks.track_id.tolist():
        listed = ", ".join(f"{int(t)} ({int(n)} records)" for t, n in zip(tracks.track_id, tracks.records))
        raise TrackerError(f"the take has no track {track}; its tracks: {listed}")
    return int(track)


def check_output(take: Take, out: str | Path, suffix: str) -> None:
    """TrackerError when writing ``out`` would overwrite the file ``take`` was read from (the same
    file, also through a symbolic or hard link); ``suffix``: the output's usual one, for the suggestion."""
    if take.read_from is not None:
        _refuse_overwriting(take.read_from, out, suffix)


def _refuse_overwriting(source: Path, out: str | Path, suffix: str) -> None:
    """TrackerError when ``out`` names the take ``source`` (``check_output``)."""
    if same_file(out, source):
        suggestion = source.with_name(source.stem + suffix)
        if suggestion == source:
            suggestion = source.with_name(source.name + suffix)
        raise TrackerError(f"--out {out} is the take being exported ({source}): writing there would destroy the take. "
                           f"Give another output, e.g. --out {suggestion}")


def check_records(take: Take, rows: np.ndarray) -> None:
    """TrackerError naming the first of the records ``rows`` (records with a face) that holds a value
    that is not a finite number: in a parameter group, or in part of its rotation, translation,
    ARKit weights or an eye's angles (each of those may be absent as a whole, all NaN: recorded
    without it, or an iris not found; an export that needs one says so itself)."""
    for name in (*(f"params/{group}" for group in take.params), *_OPTIONAL_FIELDS):
        values = take.params[name[len("params/") :]] if name.startswith("params/") else getattr(take, name)
        damaged = np.concatenate([_damaged(values, rows[at : at + _CHECK_ROWS], name in _OPTIONAL_FIELDS)
                                  for at in range(0, len(rows), _CHECK_ROWS)] or [np.zeros(0, np.int64)])
        if len(damaged):
            row = int(damaged[0])
            record = values[row].reshape(-1)
            value = record[np.isinf(record)][0] if np.isinf(record).any() else np.nan  # a NaN may be an absent eye's
            more = f" (and {len(damaged) - 1} more records)" if len(damaged) > 1 else ""
            raise TrackerError(
                f"the take holds {value} in {name} at frame {int(take.frame_index[row])} (record {row}){more}, a record with a face: "
                "the take is damaged there and its export would be wrong, so nothing was written. Record the take again"
            )


def _damaged(values: np.ndarray, rows: np.ndarray, optional: bool) -> np.ndarray:
    """The records among ``rows`` whose ``values`` hold a non-finite number (``optional``: an
    all-NaN vector, e.g. one eye's angles, is absent, not damaged)."""
    block = values[rows].reshape(len(rows), -1, values.shape[-1])  # (records, vectors, values): an eye is one vector
    bad = ~np.isfinite(block)
    if optional:
        bad &= ~np.isnan(block).all(axis=2, keepdims=True)
    return rows[bad.any(axis=(1, 2))]


def check_clock(take: Take) -> np.ndarray:
    """``take.clock()`` when every record has a time and they never go back (in record order, which
    is frame order); TrackerError naming the first frame where not."""
    clock = take.clock()
    bad_frame = np.flatnonzero(np.diff(take.frame_index) < 0)
    if len(bad_frame):
        row = int(bad_frame[0]) + 1
        raise TrackerError(f"the take's records are not in frame order: record {row} is frame {int(take.frame_index[row])}, after frame "
                           f"{int(take.frame_index[row - 1])}; the take is damaged and cannot be animated")
    missing = np.flatnonzero(~np.isfinite(clock))
    if len(missing):
        row = int(missing[0])
        more = f" and {len(missing) - 1} more records" if len(missing) > 1 else ""
        raise TrackerError(f"the take has no time (NaN) for frame {int(take.frame_index[row])} (record {row}){more}: the take is damaged "
                           "there and cannot be animated at its own times (obj/ply meshes need no times)")
    back = np.flatnonzero(np.diff(clock) < 0)
    if len(back):
        row = int(back[0]) + 1
        raise TrackerError(f"the take's time goes back at frame {int(take.frame_index[row])} (record {row}): {clock[row]:.6f} s after "
                           f"{clock[row - 1]:.6f} s at frame {int(take.frame_index[row - 1])}; the take's clock is broken there and it cannot "
                           "be animated at its own times (obj/ply meshes need no times)")
    return clock


def load_take_model(take: Take, path: str | Path | None = None) -> HeadModel:
    """The head model ``take`` was recorded with, checked against the take's parameter groups.

    ``path``: the ICT npz (None: the configured default) or the FLAME folder (required).
    """
    from tracker.head_models import HEAD_MODELS, load_head_model

    if take.head_model not in HEAD_MODELS:
        raise TrackerError(f"the take was recorded with head model {take.head_model!r}; this version exports {HEAD_MODELS}")
    options = {}
    if take.head_model == "flame":
        sizes = {"shape": "n_shape", "expression": "n_expression"}
        options = {option: take.groups[group] for group, option in sizes.items() if group in take.groups}
    model = load_head_model(take.head_model, path, **options)
    for group, size in take.groups.items():
        if group not in model.param_groups:
            raise TrackerError(
                f"the take has parameter group {group!r}, which the loaded {model.name} model lacks "
                f"({list(model.param_groups)}): load the model the take was recorded with"
            )
        if model.param_groups[group].size != size:
            raise TrackerError(
                f"the take's group {group!r} has {size} values, the loaded {model.name} model "
                f"{model.param_groups[group].size}: load the model the take was recorded with"
            )
    return model


@dataclass
class MeshExport:
    """The per-frame meshes of a take, planned (``plan_meshes``) and then written (``write``).

    rows        the records exported (every ``every``-th row with a face), one file each at ``paths``
    file_bytes  the size of the first file (others differ a little in OBJ's text), for estimates
    skipped     frame indices of the exported rows without a face
    written     the files written so far, each whole (complete after an interrupt too)
    """

    take: Take
    model: HeadModel
    fmt: str
    posed: bool
    rows: np.ndarray
    paths: list[Path]
    file_bytes: int
    skipped: list[int]
    written: list[Path] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """About the space the files take."""
        return self.file_bytes * len(self.paths)

    def write(self, batch: int = 16) -> Iterator[Path]:
        """Decode ``batch`` frames at a time and write their files, yielding each once it is in place."""
        for start in range(0, len(self.rows), batch):
            chunk = self.rows[start : start + batch]
            for path, data in zip(self.paths[start : start + batch], self._encode(chunk)):
                replaced = _file_id(path)
                try:
                    _write_mesh(path, data)
                except KeyboardInterrupt:
                    if _file_id(path) not in (None, replaced):  # interrupted after the rename: the file is whole
                        self.written.append(path)
                    raise
                self.written.append(path)
                yield path

    def _encode(self, rows: np.ndarray) -> list[bytes]:
        """The file contents of records ``rows``."""
        import torch

        from tracker.geometry.camera import head_to_camera
        from tracker.geometry.rotations import rotation_6d_to_matrix

        model, take = self.model, self.take
        with torch.no_grad():
            params = {group: torch.from_numpy(values[rows]).to(model.device) for group, values in take.params.items()}
            vertices = model.decode(params)  # (B, V, 3)
            if self.posed:
                rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[rows]).to(vertices))
                vertices = head_to_camera(vertices, rotation, torch.from_numpy(take.translation[rows]).to(vertices))
        faces = model.faces.cpu()
        encode = encode_obj if self.fmt == "obj" else encode_ply
        return [encode(mesh, faces) for mesh in vertices.cpu()]


def plan_meshes(take: Take, model: HeadModel, out_dir: str | Path, fmt: str = "obj", every: int = 1, posed: bool = False) -> MeshExport:
    """Check and plan the export of every ``every``-th row of ``take`` with a face (rows 0, every,
    2 every, ...) to ``out_dir`` (created); ``posed``: camera frame instead of head frame.
    TrackerError (module docstring) before anything is written, also when the files would not fit
    on the disk."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    out_dir = Path(out_dir)
    if take.read_from is not None and same_file(out_dir, take.read_from):
        raise TrackerError(f"--out {out_dir} is the take being exported: for {fmt} meshes --out is the folder to write them to, "
                           f"e.g. --out {out_dir.with_name('meshes')}")
    rows = np.arange(0, len(take), every)
    found = rows[take.face_found[rows]]
    if posed:
        unposed = take.frame_index[found[np.isnan(take.rotation_6d[found]).all(axis=1) | np.isnan(take.translation[found]).all(axis=1)]]
        if len(unposed):
            raise TrackerError(f"--posed needs the camera rotation and translation; the take lacks them for frames {unposed[:10].tolist()}")
    check_records(take, found)
    indices = take.frame_index[take.face_found]
    per_face = len(np.unique(indices)) < len(indices)  # some frame holds several faces: one file per face
    paths = [out_dir / f"frame_{int(take.frame_index[row]):06d}{f'_track{int(take.track_id[row])}' if per_face else ''}.{fmt}" for row in found]
    if take.read_from is not None and (clash := next((path for path in paths if same_file(path, take.read_from)), None)):
        raise TrackerError(f"the mesh {clash} would overwrite the take being exported ({take.read_from}): give another --out folder")
    skipped = take.frame_index[rows[~take.face_found[rows]]].tolist()
    plan = MeshExport(take, model, fmt, posed, found, paths, 0, skipped)
    if len(found):
        plan.file_bytes = len(plan._encode(found[:1])[0])
        _check_free_space(plan, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackerError(f"cannot create the output folder {out_dir}: {err.strerror or err}") from err
    return plan


def export_meshes(
    take: Take,
    model: HeadModel,
    out_dir: str | Path,
    fmt: str = "obj",
    every: int = 1,
    posed: bool = False,
    batch: int = 16,
) -> ExportResult:
    """Write the meshes of every ``every``-th frame of ``take`` (rows 0, every, 2 every, ...) that has a
    face to ``out_dir``; ``posed``: camera frame instead of head frame. Decodes ``batch`` frames at once."""
    plan = plan_meshes(take, model, out_dir, fmt, every, posed)
    for _ in plan.write(batch):
        pass
    return ExportResult(plan.written, plan.skipped)


def _write_mesh(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as err:
        raise TrackerError(f"cannot write {path}: {err.strerror or err}") from err


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``, None when there is none."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _check_free_space(plan: MeshExport, out_dir: Path) -> None:
    """TrackerError when the files need more than the free space of the disk holding ``out_dir``
    (files they replace give theirs back)."""
    folder = next((parent for parent in (out_dir, *out_dir.parents) if parent.exists()), Path("."))
    replaced = sum(path.stat().st_size for path in plan.paths if path.is_file())
    needed, free = plan.total_bytes - replaced, shutil.disk_usage(folder).free
    if needed > free:
        raise TrackerError(
            f"the {len(plan.paths)} {plan.fmt.upper()} meshes need about {_size(needed)} and the disk holding {out_dir} has {_size(free)} free: "
            f"free space, export fewer frames (--every N), or export the animation as one file (--format glb or --format csv)"
        )


def _size(count: float) -> str:
    """A byte count in words, three digits: "850 kB", "2.14 MB", "10.4 GB"."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 999.5:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[], None]]:
    """A function to call per item done: a tqdm bar on a terminal, else a plain "what: n/total" line
    on stderr every ``PROGRESS_INTERVAL`` seconds."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, unit=" files", desc=what, file=sys.stderr) as bar:
            yield bar.update
        return
    done, last = 0, time.monotonic()

    def advance() -> None:
        nonlocal done, last
        done += 1
        if time.monotonic() - last >= PROGRESS_INTERVAL:
            last = time.monotonic()
            print(f"{what}: {done}/{total} files", file=sys.stderr, flush=True)

    yield advance


def main(argv: list[str] | None = None) -> int:
    with interruptible():  # Ctrl-C and SIGTERM stop after whole files, also in a background job
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tracker.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("take", type=Path, help="the take (.npz, or its .partial journal)")
    parser.add_argument("--out", type=Path, required=True,
                        help="obj / ply: folder for the meshes (created if missing); glb / csv: the file to write")
    parser.add_argument("--format", choices=CLI_FORMATS, default="obj")
    parser.add_argument("--every", type=int, default=1, help="obj / ply: export every N-th frame of the take")
    parser.add_argument(
        "--head-model-path", "--flame-dir", dest="head_model_path", type=Path, default=None,
        help="ICT: the packed npz or an upstream checkout (default: found as python -m app.live finds it); FLAME: the folder with its files",
    )
    parser.add_argument(
        "--posed", action="store_true", help="obj / ply: camera-frame vertices (recorded rotation and translation) instead of head-frame"
    )
    parser.add_argument("--track", type=int, default=None, help="glb / csv: the track to export (default: the one with the most records)")
    parser.add_argument("--gaps", choices=("hold", "hide"), default="hold",
                        help="glb: frames where the track has no face keep the previous pose and weights (hold) or also hide the head (hide)")
    parser.add_argument("--timecode-fps", type=int, default=60, help="csv: the timecode's frame rate (default 60, Live Link Face's)")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be >= 1")
    if args.timecode_fps < 1:
        parser.error("--timecode-fps must be >= 1")
    plan = None
    try:
        _refuse_overwriting(args.take, args.out, f".{args.format}" if args.format in ("csv", "glb") else "_meshes")  # also a take read from its journal
        take = read_take(args.take)
        state = "" if take.complete else " (an unfinished take, read from its journal)"
        if args.format == "csv":  # export_csv and export_gltf import this module, and torch: imported here
            from tracker.takes.livelink_csv import export_csv

            written = export_csv(take, args.out, args.track, args.timecode_fps)
            print(f"wrote {written.path}: Live Link Face CSV, track {written.track}, {written.rows} rows{state}")
            _report_frames(written.skipped, "skipped {} frames without this track's face (no row)")
            return 0
        model = load_take_model(take, args.head_model_path)
        if args.format == "glb":
            from tracker.takes.gltf import export_glb

            glb = export_glb(take, model, args.out, args.track, args.gaps)
            print(f"wrote {glb.path}: {model.name}, track {glb.track}, {glb.keyframes} keyframes, "
                  f"{len(glb.morph_targets)} morph targets, {len(glb.joints)} joints{state}")
            for note in glb.notes:
                print(f"note: {note}")
            _report_frames(glb.gaps, "{} frames without this track's face, " + ("holding the previous pose" if args.gaps == "hold" else "hidden"))
            return 0
        plan = plan_meshes(take, model, args.out, args.format, args.every, args.posed)
        print(f"writing {len(plan.paths)} {args.format.upper()} meshes ({model.name}, {model.num_vertices} vertices) to {args.out}: "
              f"about {_size(plan.file_bytes)} each, {_size(plan.total_bytes)} in all{state}", flush=True)
        with _progress(len(plan.paths), f"writing {args.format.upper()} meshes") as advance:
            for _ in plan.write():
                advance()
    except TrackerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        done = f"wrote {len(plan.written)} of {len(plan.paths)} meshes to {args.out} (each whole)" if plan is not None else "nothing written"
        print(f"interrupted: {done}", file=sys.stderr)
        return INTERRUPTED
    print(f"wrote {len(plan.written)} {args.format.upper()} meshes ({model.name}, {model.num_vertices} vertices) to {args.out}{state}")
    _report_frames(plan.skipped, "skipped {} frames without a face")
    return 0


def _report_frames(frames: list[int], what: str) -> None:
    """Print ``what`` (its {} the count) and the first frame indices, when there are any."""
    if frames:
        shown = ", ".join(map(str, frames[:20])) + (", ..." if len(frames) > 20 else "")
        print(f"{what.format(len(frames))}: {shown}")


if __name__ == "__main__":
    sys.exit(main())
