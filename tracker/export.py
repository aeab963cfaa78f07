"""Export of a recorded take: per-frame meshes (OBJ, PLY), an animated glTF (GLB), a Live Link Face CSV
or a FLAME parameter sequence (npz).

    python -m tracker.export take.npz --out meshes/ [--format obj|ply] [--every N] [--posed]
                             [--head-model-path ICT_NPZ | --flame-dir FLAME_DIR]
    python -m tracker.export take.npz --format glb --out take.glb [--track N] [--gaps hold|hide]
    python -m tracker.export take.npz --format csv --out take.csv [--track N] [--timecode-fps 60]
    python -m tracker.export take.npz --format flame-npz --out seq.npz --flame-dir FLAME_DIR [--track N]

Meshes (``tracker.takes.meshes``): the head model named in the take is loaded (ICT:
``--head-model-path`` or the N2F_ICT_MODEL / shared-folder default; FLAME: ``--flame-dir``, with
the take's shape and expression sizes), and every exported frame's recorded parameter groups are
decoded to vertices in metres (groups the take lacks take their neutral values). Vertices are in
the head frame, or with ``--posed`` in the camera frame (OpenCV axes) through the recorded
rotation and translation. Files are named ``frame_<frame index, 6 digits>.<format>`` (in a take
with several faces in a frame, ``frame_<index>_track<track id>.<format>``: one file per face);
frames without a face are skipped and reported. A take interrupted before ``close()`` exports
from its journal (see ``tracker.takes.recording``). One mesh file holds the whole head (ICT: about
2 MB of OBJ text, 1 MB of PLY), so a take of a few minutes makes gigabytes: the export says how
many files and about how much space they take before writing, refuses when the disk holding
``--out`` has not that much free, shows its progress (a bar on a terminal, else a line every few
seconds on stderr), and on Ctrl-C stops after the files already written (each whole) and says how
many (exit code 130). For animation, ``--format glb`` or ``--format csv`` hold a whole take in one
small file.

GLB (``tracker.takes.gltf``, docs/gltf-export.md): one track's head with its identity baked in,
one morph target per expression shape, the head pose, FLAME's joints, animated at the take's own
timestamps; it opens in Blender, Unity (glTFast) and Unreal. CSV (``tracker.takes.livelink_csv``,
docs/livelink-csv.md): Live Link Face's CSV take layout (timecode, 52 ARKit weights, head and eye
angles) for Unreal's Live Link Face importer; no head model needed. Both export one track
(``--track``; default: the track with the most records).

FLAME npz (``tracker.takes.flame_npz``, docs/flame-npz.md): a FLAME take's parameters per frame in
VHAP's ``tracked_flame_params.npz`` layout (shape once; expr, rotation, neck_pose, jaw_pose,
eyes_pose, eyelids, translation per frame; the camera intrinsics), which GaussianAvatars loads as a
motion (``--motion_path``); one track (``--track``), frames without its face hold the previous one.
A take recorded with another head model is refused.

Refused with one ``error:`` line (exit code 2) before anything is written (``tracker.takes.checks``):
an output that is the take's own file (also through a link), a record with a face holding a value
that is not a finite number, and for glb, CSV and flame-npz a clock that is NaN or goes back. Every file is
written whole or not at all (``tracker.files.atomic_write``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tracker.console import interruptible
from tracker.errors import TrackerError
from tracker.takes.checks import refuse_overwriting
from tracker.takes.meshes import FORMATS, load_take_model, plan_meshes, readable_size
from tracker.takes.recording import read_take

PROGRESS_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal
INTERRUPTED = 130  # exit code after Ctrl-C (128 + SIGINT)
_SUFFIX = {"csv": ".csv", "glb": ".glb", "flame-npz": "_flame.npz"}  # an output's usual name, for the suggestion


def build_parser() -> argparse.ArgumentParser:
    """``python -m tracker.export``'s command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tracker.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("take", type=Path, help="the take (.npz, or its .partial journal)")
    parser.add_argument("--out", type=Path, required=True,
                        help="obj / ply: folder for the meshes (created if missing); glb / csv / flame-npz: the file to write")
    parser.add_argument("--format", choices=(*FORMATS, "glb", "csv", "flame-npz"), default="obj")
    parser.add_argument("--every", type=int, default=1, help="obj / ply: export every N-th frame of the take")
    parser.add_argument(
        "--head-model-path", "--flame-dir", dest="head_model_path", type=Path, default=None,
        help="ICT: the packed npz or an upstream checkout (default: found as python -m app.live finds it); FLAME: the folder with its files",
    )
    parser.add_argument(
        "--posed", action="store_true", help="obj / ply: camera-frame vertices (recorded rotation and translation) instead of head-frame"
    )
    parser.add_argument("--track", type=int, default=None, help="glb / csv / flame-npz: the track to export (default: the one with the most records)")
    parser.add_argument("--gaps", choices=("hold", "hide"), default="hold",
                        help="glb: frames where the track has no face keep the previous pose and weights (hold) or also hide the head (hide)")
    parser.add_argument("--timecode-fps", type=int, default=60, help="csv: the timecode's frame rate (default 60, Live Link Face's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    with interruptible():  # Ctrl-C and SIGTERM stop after whole files, also in a background job
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error("--every must be >= 1")
    if args.timecode_fps < 1:
        parser.error("--timecode-fps must be >= 1")
    plan = None
    try:
        refuse_overwriting(args.take, args.out, _SUFFIX.get(args.format, "_meshes"))  # also a take read from its journal
        take = read_take(args.take)
        state = "" if take.complete else " (an unfinished take, read from its journal)"
        if args.format == "csv":  # the csv and glb exporters import torch: imported here
            from tracker.takes.livelink_csv import export_csv

            written = export_csv(take, args.out, args.track, args.timecode_fps)
            print(f"wrote {written.path}: Live Link Face CSV, track {written.track}, {written.rows} rows{state}")
            _report_frames(written.skipped, "skipped {} frames without this track's face (no row)")
            return 0
        if args.format == "flame-npz":
            from tracker.takes.flame_npz import check_flame_take, export_flame_npz

            check_flame_take(take)  # before loading a head model
            written = export_flame_npz(take, load_take_model(take, args.head_model_path), args.out, args.track)
            print(f"wrote {written.path}: FLAME sequence (VHAP layout), track {written.track}, {written.frames} frames{state}")
            _report_frames(written.held, "{} frames without this track's face, holding the previous one")
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
              f"about {readable_size(plan.file_bytes)} each, {readable_size(plan.total_bytes)} in all{state}", flush=True)
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


def _report_frames(frames: list[int], what: str) -> None:
    """Print ``what`` (its {} the count) and the first frame indices, when there are any."""
    if frames:
        shown = ", ".join(map(str, frames[:20])) + (", ..." if len(frames) > 20 else "")
        print(f"{what.format(len(frames))}: {shown}")


if __name__ == "__main__":
    sys.exit(main())
