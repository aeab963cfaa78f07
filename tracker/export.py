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
skipped and reported. A take interrupted before ``close()`` exports from its journal (see ``tracker.recording``).

GLB (``tracker.export_gltf``): one track's head with its identity baked in, one morph target per
expression shape, the head pose, FLAME's joints, animated at the take's own timestamps; it opens in
Blender, Unity (glTFast) and Unreal. CSV (``tracker.export_csv``): Live Link Face's CSV take layout
(timecode, 52 ARKit weights, head and eye angles) for Unreal's Live Link Face importer; no head
model needed. Both export one track (``--track``; default: the track with the most records).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.geometry.camera import head_to_camera
from tracker.geometry.rotations import rotation_6d_to_matrix
from tracker.head_models import HEAD_MODELS, HeadModel, load_head_model
from tracker.mesh_io import write_obj, write_ply
from tracker.recording import Take, read_take

FORMATS = ("obj", "ply")  # per-frame meshes (export_meshes)
CLI_FORMATS = (*FORMATS, "glb", "csv")


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


def load_take_model(take: Take, path: str | Path | None = None) -> HeadModel:
    """The head model ``take`` was recorded with, checked against the take's parameter groups.

    ``path``: the ICT npz (None: the configured default) or the FLAME folder (required).
    """
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


@torch.no_grad()
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
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    rows = np.arange(0, len(take), every)
    found = rows[take.face_found[rows]]
    if posed:
        pose = np.concatenate((take.rotation_6d[found], take.translation[found]), axis=1)
        unposed = take.frame_index[found[~np.isfinite(pose).all(axis=1)]]
        if len(unposed):
            raise TrackerError(f"--posed needs the camera rotation and translation; the take lacks them for frames {unposed[:10].tolist()}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackerError(f"cannot create the output folder {out_dir}: {err.strerror or err}") from err
    faces = model.faces.cpu()
    indices = take.frame_index[take.face_found]
    per_face = len(np.unique(indices)) < len(indices)  # some frame holds several faces: one file per face
    written = []
    for start in range(0, len(found), batch):
        chunk = found[start : start + batch]
        params = {group: torch.from_numpy(values[chunk]).to(model.device) for group, values in take.params.items()}
        vertices = model.decode(params)  # (B, V, 3)
        if posed:
            rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[chunk]).to(vertices))
            vertices = head_to_camera(vertices, rotation, torch.from_numpy(take.translation[chunk]).to(vertices))
        for row, mesh in zip(chunk, vertices.cpu()):
            track = f"_track{int(take.track_id[row])}" if per_face else ""
            path = out_dir / f"frame_{int(take.frame_index[row]):06d}{track}.{fmt}"
            try:
                written.append(write_obj(path, mesh, faces) if fmt == "obj" else write_ply(path, mesh, faces))
            except OSError as err:
                raise TrackerError(f"cannot write {path}: {err.strerror or err}") from err
    skipped = take.frame_index[rows[~take.face_found[rows]]].tolist()
    return ExportResult(written, skipped)


def main(argv: list[str] | None = None) -> int:
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
    try:
        take = read_take(args.take)
        state = "" if take.complete else " (an unfinished take, read from its journal)"
        if args.format == "csv":  # export_csv and export_gltf import this module: imported here
            from tracker.export_csv import export_csv

            written = export_csv(take, args.out, args.track, args.timecode_fps)
            print(f"wrote {written.path}: Live Link Face CSV, track {written.track}, {written.rows} rows{state}")
            _report_frames(written.skipped, "skipped {} frames without this track's face (no row)")
            return 0
        model = load_take_model(take, args.head_model_path)
        if args.format == "glb":
            from tracker.export_gltf import export_glb

            glb = export_glb(take, model, args.out, args.track, args.gaps)
            print(f"wrote {glb.path}: {model.name}, track {glb.track}, {glb.keyframes} keyframes, "
                  f"{len(glb.morph_targets)} morph targets, {len(glb.joints)} joints{state}")
            for note in glb.notes:
                print(f"note: {note}")
            _report_frames(glb.gaps, "{} frames without this track's face, " + ("holding the previous pose" if args.gaps == "hold" else "hidden"))
            return 0
        result = export_meshes(take, model, args.out, args.format, args.every, args.posed)
    except TrackerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(result.written)} {args.format.upper()} meshes ({model.name}, {model.num_vertices} vertices) to {args.out}{state}")
    _report_frames(result.skipped, "skipped {} frames without a face")
    return 0


def _report_frames(frames: list[int], what: str) -> None:
    """Print ``what`` (its {} the count) and the first frame indices, when there are any."""
    if frames:
        shown = ", ".join(map(str, frames[:20])) + (", ..." if len(frames) > 20 else "")
        print(f"{what.format(len(frames))}: {shown}")


if __name__ == "__main__":
    sys.exit(main())
