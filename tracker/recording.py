"""Take recording: the tracker's per-frame output, written crash-safe and finalised into one npz.

    with Recorder("take.npz", "flame", {g: p.size for g, p in model.param_groups.items()},
                  focal=(fx, fy), principal=(cx, cy), source="camera 0") as recorder:
        recorder.append(t, i, params, rotation_6d=r6d, translation=t_cam, crop_box=box)  # per frame
        recorder.append(t, i, None)                                                   # no face
    take = read_take("take.npz")     # also loads an interrupted take (from take.npz.partial)

While recording, frames go to an append-only journal next to the output, ``take.npz.partial``;
``close()`` (also on leaving the ``with`` block, Ctrl-C included) turns it into ``take.npz`` and
removes it. A journal left behind by a crash loads with ``read_take`` and is finalised by
``python -m tracker.recording --recover take.npz.partial``.

Durability: ``append`` hands each frame to the operating system with one ``write`` before it
returns, so killing the process at any moment (Ctrl-C, SIGKILL, a crash, a closed window) loses
at most the frame being appended. The journal is fsync'ed when it is created, on ``close``, and by
the first ``append`` at least ``sync_interval`` seconds (default 1; 0: every frame) after the
previous fsync, so an OS crash or power cut loses at most the frames of that interval.

take.npz arrays (T frames; frames without a face: face_found False, NaN parameters, rotation,
translation and crop box):
    timestamp (T,) float64 s, frame_index (T,) int64, face_found (T,) bool,
    crop_box (T, 3) float32 (x0, y0, side) px, rotation_6d (T, 6) float32 head rotation in the
    camera frame, translation (T, 3) float32 m, focal (T, 2) float32 px, principal (T, 2) float32 px,
    params/<group> (T, n) float32 for every head-model parameter group,
    head_model () str, groups () str JSON {group: size} in order,
    metadata () str JSON {source, software_version, created, ... caller's entries}.

Journal format (little-endian):
    8 bytes   magic b"N2FTAKE1" (1: format version)
    4 bytes   uint32 header length H
    4 bytes   uint32 CRC-32 of the header
    H bytes   UTF-8 JSON {"head_model", "groups": {group: size}, "metadata": {...},
              "record_fields": [[name, numpy dtype, shape], ...], "record_size": R}
    records   R bytes each: the record_fields packed in order, then a uint32 CRC-32 of those bytes.
A reader keeps the records up to the first one that is cut short or fails its CRC.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np

from tracker.errors import TrackerError

MAGIC = b"N2FTAKE1"
JOURNAL_SUFFIX = ".partial"
_PREAMBLE = struct.Struct("<8sII")  # magic, header length, header CRC-32
_CRC = struct.Struct("<I")
# (name, dtype, shape) of every record field before the parameter groups
_FIXED_FIELDS = (
    ("timestamp", "<f8", ()),
    ("frame_index", "<i8", ()),
    ("face_found", "u1", ()),
    ("crop_box", "<f4", (3,)),
    ("rotation_6d", "<f4", (6,)),
    ("translation", "<f4", (3,)),
    ("focal", "<f4", (2,)),
    ("principal", "<f4", (2,)),
)
_VECTORS = ("crop_box", "rotation_6d", "translation", "focal", "principal")


def journal_path(path: str | Path) -> Path:
    """The journal of take ``path``: ``take.npz`` -> ``take.npz.partial``."""
    path = Path(path)
    return path.with_name(path.name + JOURNAL_SUFFIX)


@dataclass
class Take:
    """A recorded take of T frames (array layout: the take.npz arrays of the module docstring).

    ``params`` {group: (T, n)}; ``complete`` is False for a take read from an unfinished journal.
    """

    head_model: str
    groups: dict[str, int]
    timestamp: np.ndarray
    frame_index: np.ndarray
    face_found: np.ndarray
    crop_box: np.ndarray
    rotation_6d: np.ndarray
    translation: np.ndarray
    focal: np.ndarray
    principal: np.ndarray
    params: dict[str, np.ndarray]
    metadata: dict[str, Any]
    complete: bool = True

    def __len__(self) -> int:
        return len(self.timestamp)

    def arrays(self) -> dict[str, np.ndarray]:
        """The take.npz content."""
        out = {name: getattr(self, name) for name in ("timestamp", "frame_index", "face_found", *_VECTORS)}
        out.update({f"params/{group}": values for group, values in self.params.items()})
        out["head_model"] = np.array(self.head_model)
        out["groups"] = np.array(json.dumps(self.groups))
        out["metadata"] = np.array(json.dumps(self.metadata))
        return out


class Recorder:
    """Records a take to ``path`` (an .npz) through the journal ``path + '.partial'``.

    head_model     the head model's name ("flame", "ict", ...)
    groups         {group: size} of the parameters each frame carries, in order
    focal, principal   (2,) camera intrinsics in pixels, the default of every frame (None: NaN)
    source         what is tracked ("camera 0", a file, a URL), stored in the metadata
    metadata       more JSON-serialisable entries for the metadata
    sync_interval  seconds between fsyncs of the journal (0: every frame); see module docstring
    overwrite      replace an existing take at ``path`` (else TrackerError)

    ``append`` may be called from any thread; ``close`` is idempotent.
    """

    def __init__(
        self,
        path: str | Path,
        head_model: str,
        groups: Mapping[str, int],
        focal=None,
        principal=None,
        source: str = "",
        metadata: Mapping[str, Any] | None = None,
        sync_interval: float = 1.0,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.journal_path = journal_path(self.path)
        if self.path.exists() and not overwrite:
            raise TrackerError(f"take {self.path} exists already: record to another file or allow overwriting it")
        self.groups = {str(group): int(size) for group, size in groups.items()}
        if any(size < 1 for size in self.groups.values()):
            raise ValueError(f"group sizes must be positive, got {self.groups}")
        self.focal = _vector(focal, 2, "focal")
        self.principal = _vector(principal, 2, "principal")
        self.sync_interval = float(sync_interval)
        self._dtype = np.dtype([(name, dtype, shape) for name, dtype, shape in _record_fields(self.groups)])
        header = {
            "head_model": head_model,
            "groups": self.groups,
            "metadata": {
                "source": source,
                "software_version": _software_version(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **(metadata or {}),
            },
            "record_fields": [[name, dtype, list(shape)] for name, dtype, shape in _record_fields(self.groups)],
            "record_size": self._dtype.itemsize + _CRC.size,
        }
        header_bytes = json.dumps(header).encode("utf-8")
        self._lock = threading.Lock()
        self._closed = False
        self._frames = 0
        self._fd = _create_journal(self.journal_path)
        self._write(_PREAMBLE.pack(MAGIC, len(header_bytes), zlib.crc32(header_bytes)) + header_bytes)
        os.fsync(self._fd)
        _fsync_dir(self.journal_path.parent)
        self._last_sync = time.monotonic()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def frames(self) -> int:
        """Frames appended so far."""
        return self._frames

    @property
    def closed(self) -> bool:
        return self._closed

    def append(
        self,
        timestamp: float,
        frame_index: int,
        params: Mapping[str, Any] | None,
        rotation_6d=None,
        translation=None,
        crop_box=None,
        focal=None,
        principal=None,
    ) -> None:
        """Record one frame; ``params`` {group: (n,)} (arrays or tensors) or None when no face was found.

        rotation_6d (6,), translation (3,) m, crop_box (3,) px: None stores NaN; focal, principal
        (2,) px: None stores the recorder's. A leading batch dimension of 1 is accepted.
        """
        record = np.zeros((), dtype=self._dtype)
        record["timestamp"] = timestamp
        record["frame_index"] = frame_index
        record["face_found"] = params is not None
        for name, value in (("rotation_6d", rotation_6d), ("translation", translation), ("crop_box", crop_box)):
            record[name] = _vector(value, self._dtype[name].shape[0], name)
        record["focal"] = self.focal if focal is None else _vector(focal, 2, "focal")
        record["principal"] = self.principal if principal is None else _vector(principal, 2, "principal")
        if params is not None:
            if set(params) != set(self.groups):
                raise ValueError(f"frame parameters have groups {sorted(params)}, the take records {list(self.groups)}")
            for group, size in self.groups.items():
                record[f"params/{group}"] = _vector(params[group], size, f"group '{group}'")
        else:
            for group in self.groups:
                record[f"params/{group}"] = np.nan
        payload = record.tobytes()
        with self._lock:
            if self._closed:
                raise ValueError(f"recorder for {self.path} is closed")
            self._write(payload + _CRC.pack(zlib.crc32(payload)))
            self._frames += 1
            if time.monotonic() - self._last_sync >= self.sync_interval:
                self._sync()

    def close(self) -> Path:
        """Finish the take: write ``path`` from the journal, then remove the journal. Idempotent."""
        with self._lock:
            if self._closed:
                return self.path
            self._closed = True
            try:
                self._sync()
            finally:
                os.close(self._fd)
            return finalise_journal(self.journal_path, self.path)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            raise TrackerError(f"cannot write the recording journal {self.journal_path}: {err.strerror or err} (free disk space?)") from err

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._last_sync = time.monotonic()


def read_take(path: str | Path) -> Take:
    """Load a finished take (npz) or an unfinished one (its journal, given directly or found next
    to a missing ``path``). TrackerError when neither is there or the file is not a take."""
    path = Path(path)
    if not path.exists():
        if journal_path(path).exists():
            return _read_journal(journal_path(path))[0]
        raise TrackerError(f"take not found: {path}")
    try:
        with path.open("rb") as stream:
            magic = stream.read(len(MAGIC))
    except OSError as err:
        raise TrackerError(f"cannot read take {path}: {err.strerror or err}") from err
    if magic == MAGIC:
        return _read_journal(path)[0]
    return _read_npz(path)


def finalise_journal(journal: str | Path, out: str | Path | None = None) -> Path:
    """Write the take in ``journal`` to ``out`` (default: the journal's name without '.partial'),
    atomically, then delete the journal. Returns ``out``."""
    journal = Path(journal)
    out = _take_path(journal) if out is None else Path(out)
    _finalise(journal, out, _read_journal(journal)[0])
    return out


def write_take(take: Take, path: str | Path) -> Path:
    """Write ``take`` as npz to ``path`` via a temporary file, so ``path`` is always whole."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("wb") as stream:
            np.savez(stream, **take.arrays())
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as err:
        raise TrackerError(f"cannot write take {path}: {err.strerror or err}") from err
    _fsync_dir(path.parent)
    return path


def _finalise(journal: Path, out: Path, take: Take) -> None:
    take.complete = True
    write_take(take, out)
    journal.unlink()
    _fsync_dir(journal.parent)


def _take_path(journal: Path) -> Path:
    """take.npz.partial -> take.npz."""
    if not journal.name.endswith(JOURNAL_SUFFIX):
        raise TrackerError(f"{journal} is not named like a journal (*{JOURNAL_SUFFIX}): say where the take goes")
    return journal.with_name(journal.name[: -len(JOURNAL_SUFFIX)])


# -- reading ---------------------------------------------------------------------------------
def _read_npz(path: Path) -> Take:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise TrackerError(f"{path} is not a readable take (npz written by tracker.recording): {err}") from err
    needed = ("timestamp", "frame_index", "face_found", *_VECTORS, "head_model", "groups", "metadata")
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise TrackerError(f"{path} is not a take written by tracker.recording: it lacks {missing}")
    try:
        groups = {str(group): int(size) for group, size in json.loads(str(arrays["groups"])).items()}
        metadata = json.loads(str(arrays["metadata"]))
    except (ValueError, AttributeError) as err:
        raise TrackerError(f"take {path} has malformed metadata: {err}") from err
    frames = len(arrays["timestamp"])
    shapes = {name: (frames, *shape) for name, _, shape in _record_fields(groups)}
    params = {}
    for name, shape in shapes.items():
        if name not in arrays:
            raise TrackerError(f"take {path} lacks the array {name!r} of its group list {groups}")
        if arrays[name].shape != shape:
            raise TrackerError(f"take {path} is malformed: {name} is {arrays[name].shape}, expected {shape}")
        if name.startswith("params/"):
            params[name[len("params/") :]] = arrays[name]
    return Take(
        head_model=str(arrays["head_model"]),
        groups=groups,
        params=params,
        metadata=metadata,
        face_found=arrays["face_found"].astype(bool),
        **{name: arrays[name] for name in ("timestamp", "frame_index", *_VECTORS)},
    )


def _read_journal(path: Path) -> tuple[Take, int]:
    """(the take in journal ``path``, number of trailing bytes ignored: a cut or corrupt record)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TrackerError(f"cannot read recording journal {path}: {err.strerror or err}") from err
    if len(data) < _PREAMBLE.size or data[: len(MAGIC)] != MAGIC:
        raise TrackerError(f"{path} is not a recording journal (or its header was never written: nothing was recorded)")
    _, header_size, header_crc = _PREAMBLE.unpack_from(data)
    header_bytes = data[_PREAMBLE.size : _PREAMBLE.size + header_size]
    if len(header_bytes) != header_size or zlib.crc32(header_bytes) != header_crc:
        raise TrackerError(f"recording journal {path} has a cut or damaged header: no frames can be read from it")
    try:
        header = json.loads(header_bytes)
        groups = {str(group): int(size) for group, size in header["groups"].items()}
        fields = [(name, dtype, tuple(shape)) for name, dtype, shape in header["record_fields"]]
        dtype = np.dtype([*fields, ("crc32", "<u4")])
        if dtype.itemsize != header["record_size"] or fields != _record_fields(groups):
            raise ValueError("record layout does not match the group list")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise TrackerError(f"recording journal {path} has a header this version cannot read: {err}") from err
    body = data[_PREAMBLE.size + header_size :]
    records = np.frombuffer(body, dtype=dtype, count=len(body) // dtype.itemsize)
    payload = dtype.itemsize - _CRC.size
    good = 0
    while good < len(records):
        start = good * dtype.itemsize
        if zlib.crc32(body[start : start + payload]) != records["crc32"][good]:
            break
        good += 1
    records = records[:good]
    take = Take(
        head_model=header["head_model"],
        groups=groups,
        params={group: records[f"params/{group}"].copy() for group in groups},
        metadata=header["metadata"],
        face_found=records["face_found"].astype(bool),
        complete=False,
        **{name: records[name].copy() for name in ("timestamp", "frame_index", *_VECTORS)},
    )
    return take, len(body) - good * dtype.itemsize


# -- helpers ---------------------------------------------------------------------------------
def _record_fields(groups: Mapping[str, int]) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of a frame record's fields."""
    return [*_FIXED_FIELDS, *((f"params/{group}", "<f4", (size,)) for group, size in groups.items())]


def _vector(value, size: int, name: str) -> np.ndarray:
    """Array, tensor or sequence of ``size`` numbers (a leading batch of 1 allowed) -> (size,)
    float32; None -> NaN."""
    if value is None:
        return np.full(size, np.nan, dtype=np.float32)
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float32)
    if array.size != size or array.ndim > 2 or (array.ndim == 2 and array.shape[0] != 1):
        raise ValueError(f"{name} must hold {size} values ((n,) or (1, n)), got shape {array.shape}")
    return array.reshape(size)


def _create_journal(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_BINARY", 0)
    try:
        return os.open(path, flags, 0o644)
    except FileExistsError:
        raise TrackerError(
            f"an unfinished recording is in the way: {path}. Finalise it with "
            f"`python -m tracker.recording --recover {path}` (or delete it), then record again"
        ) from None
    except OSError as err:
        raise TrackerError(f"cannot create the recording journal {path}: {err.strerror or err}") from err


def _fsync_dir(folder: Path) -> None:
    """Make a file's creation, rename or removal in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _software_version() -> str:
    try:
        return package_metadata.version("n2f-tracker")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tracker.recording", description="Finalise the journal of an interrupted recording into its take npz."
    )
    parser.add_argument("--recover", type=Path, required=True, metavar="JOURNAL", help="the journal, e.g. take.npz.partial")
    parser.add_argument("--out", type=Path, default=None, help="the take to write (default: the journal's name without .partial)")
    parser.add_argument("--force", action="store_true", help="replace an existing take")
    args = parser.parse_args(argv)
    try:
        out = args.out or _take_path(args.recover)
        if out.exists() and not args.force:
            raise TrackerError(f"{out} exists already: choose another --out or pass --force to replace it")
        take, ignored = _read_journal(args.recover)
        _finalise(args.recover, out, take)
    except TrackerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    note = f"; ignored {ignored} trailing bytes (an incomplete last frame)" if ignored else ""
    print(f"wrote {out}: {len(take)} frames, {int(take.face_found.sum())} with a face{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
