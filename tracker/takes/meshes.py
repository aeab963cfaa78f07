"""Per-frame meshes (OBJ, PLY) of a recorded take, and the head model a take was recorded with.

    model = load_take_model(take, path)       # ICT npz (None: the default) or FLAME folder, checked against the take
    plan = plan_meshes(take, model, "meshes/", "obj", every=1, posed=False)   # checked, sized, before writing
    for path in plan.write(): ...             # each file whole when yielded
    export_meshes(take, model, "meshes/") -> ExportResult

The head model named in the take is loaded (ICT: the packed npz or the N2F_ICT_MODEL /
shared-folder default; FLAME: its folder, with the take's shape and expression sizes), and every
exported frame's recorded parameter groups are decoded to (V, 3) vertices in metres (groups the
take lacks take their neutral values). Vertices are in the head frame, or with ``posed`` in the
camera frame (OpenCV axes) through the recorded rotation and translation (``head_to_camera``).
Files are named ``frame_<frame index, 6 digits>.<format>`` (in a take with several faces in a
frame, ``frame_<index>_track<track id>.<format>``: one file per face); frames without a face are
skipped and reported. One mesh file holds the whole head (ICT: about 2 MB of OBJ text, 1 MB of
PLY), so the plan says how many files and about how much space they take, and is refused when the
disk holding the output folder has not that much free. Refused also (``tracker.takes.checks``):
an output folder or mesh file that is the take itself, a record with a face holding a value that
is not a finite number. The command line: ``python -m tracker.export`` (``tracker.export``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write, same_file
from tracker.files.mesh_io import encode_obj, encode_ply
from tracker.takes.checks import check_records
from tracker.takes.recording import Take

if TYPE_CHECKING:  # the head models import torch: loaded only where a model is used (a fast --help)
    from tracker.head_models import HeadModel

FORMATS = ("obj", "ply")  # per-frame meshes (export_meshes)


@dataclass
class ExportResult:
    """Files written (in record order) and the frame indices skipped for having no face."""

    written: list[Path]
    skipped: list[int]


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
            f"the {len(plan.paths)} {plan.fmt.upper()} meshes need about {readable_size(needed)} and the disk holding {out_dir} has {readable_size(free)} free: "
            f"free space, export fewer frames (--every N), or export the animation as one file (--format glb or --format csv)"
        )


def readable_size(count: float) -> str:
    """A byte count in words, three digits: "850 kB", "2.14 MB", "10.4 GB"."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 999.5:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"
