"""Take recording: the tracker's per-frame output, written crash-safe and finalised into one npz.

    with Recorder("take.npz", "ict", {g: p.size for g, p in model.param_groups.items()},
                  focal=(fx, fy), principal=(cx, cy), source="camera 0") as recorder:
        recorder.append(t, i, params, rotation_6d=r6d, translation=t_cam, crop_box=box,
                        track_id=3, identity_state="locked")                     # per face
        recorder.append(t, i, None)                                              # no face
    take = read_take("take.npz")     # also loads an interrupted take (from take.npz.partial)
    scan = finalise_journal("take.npz.partial")   # python -m tracker.takes recover take.npz.partial

A take holds T records, one per tracked face per frame and one per frame without a face. Records
go to an append-only, CRC-checked, locked journal (``take.npz.partial``) that ``close()`` turns
into ``take.npz``; ``read_take`` reads either, as untrusted input. The journal, the npz arrays,
the identity per track, locking, damage, durability and the reader's limits: docs/take-format.md.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import socket
import struct
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
from tracker.files.atomic_write import atomic_write, fsync_dir, same_file

try:
    import fcntl
except ImportError:  # Windows: journals are not locked
    fcntl = None

log = logging.getLogger(__name__)

MAGIC = b"N2FTAKE1"
JOURNAL_SUFFIX = ".partial"
_PREAMBLE = struct.Struct("<8sII")  # magic, header length, header CRC-32
_CRC = struct.Struct("<I")
# (name, dtype, shape) of every record field before the parameter groups
_FIXED_FIELDS = (
    ("timestamp", "<f8", ()),
    ("media_time", "<f8", ()),
    ("frame_index", "<i8", ()),
    ("face_found", "u1", ()),
    ("track_id", "<i8", ()),
    ("identity_state", "u1", ()),
    ("crop_box", "<f4", (3,)),
    ("rotation_6d", "<f4", (6,)),
    ("translation", "<f4", (3,)),
    ("focal", "<f4", (2,)),
    ("principal", "<f4", (2,)),
    ("arkit", "<f4", (52,)),
    ("eye_angles", "<f4", (2, 2)),
    ("arkit_raw", "<f4", (52,)),
)
_TRACK_FIELDS = ("track_id", "identity_state")
_TRACK_TABLE = ("tracks/track_id", "tracks/identity", "tracks/identity_state")  # a finished take's per-track arrays
_ANIMATION_FIELDS = ("media_time", "arkit", "eye_angles")
_RAW_FIELDS = ("arkit_raw",)  # the ARKit weights before the user's profile (tracker.fitting.arkit_profile)
# the fixed fields each layout leaves out: this version's, takes before the raw weights, before the
# animation fields, before tracks
_LAYOUTS = {
    "current": (),
    "before raw weights": _RAW_FIELDS,
    "before animation": (*_ANIMATION_FIELDS, *_RAW_FIELDS),
    "before tracks": (*_TRACK_FIELDS, *_ANIMATION_FIELDS, *_RAW_FIELDS),
}
_VECTORS = ("crop_box", "rotation_6d", "translation", "focal", "principal")
# identity_state codes (docs/take-format.md); the tracker's FaceResult.identity_state is one of these names
IDENTITY_STATES = ("none", "calibrating", "locked", "given", "network")
# what a take or journal may declare (docs/take-format.md, "Reading"): far above any real take, low
# enough that a damaged or forged file is refused before memory is allocated for it
_MAX_GROUPS = 64  # parameter groups (ICT has 2, FLAME 6)
_MAX_GROUP_SIZE = 10_000  # values in one group (FLAME's shape has up to 300, ICT's identity 100)
_MAX_TEXT_BYTES = 1 << 20  # a take's head model, group list, metadata, identity group
_MAX_EXPANSION = 16  # an npz take's arrays may declare this many times the file's size ...
_EXPANSION_ALLOWANCE = 64 << 20  # ... or this many bytes, whichever is more
_COPY_ROWS = 1 << 16  # records per block when a take's per-track identity is given to each record
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
AUTO = "auto"


def identity_state_code(state: int | str | None) -> int:
    """An identity state (name, code, or None: "none") -> its uint8 code."""
    if state is None:
        return 0
    if isinstance(state, str):
        if state not in IDENTITY_STATES:
            raise ValueError(f"identity state must be one of {IDENTITY_STATES}, got {state!r}")
        return IDENTITY_STATES.index(state)
    code = int(state)
    if not 0 <= code < len(IDENTITY_STATES):
        raise ValueError(f"identity state code must be 0-{len(IDENTITY_STATES) - 1}, got {state!r}")
    return code


def check_take_path(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a Path, when a take can be recorded there: not a folder, not an existing take
    unless ``overwrite``, in a folder that exists or can be made. TrackerError otherwise. Cheap:
    call it before a long set-up, so a bad path fails at once."""
    path = Path(path)
    if path.is_dir():
        raise TrackerError(f"the take {path} is a folder: give the take's file name, e.g. {path / 'take.npz'}")
    if path.exists() and not overwrite:
        raise TrackerError(f"take {path} exists already: record to another file or allow overwriting it")
    folder = next((parent for parent in path.parents if parent.exists()), Path("."))
    if not folder.is_dir():
        raise TrackerError(f"cannot record to {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrackerError(f"cannot record to {path}: the folder {folder} is not writable")
    return path


def journal_path(path: str | Path) -> Path:
    """The journal of take ``path``: ``take.npz`` -> ``take.npz.partial``."""
    path = Path(path)
    return path.with_name(path.name + JOURNAL_SUFFIX)


def discard_abandoned_journal(take: str | Path) -> bool:
    """Delete the journal of take ``take`` when no recording holds it: one a killed run left
    behind, before its video is recorded again from the start (``app.batch``). True when one was
    deleted. A journal that a running recording holds is a TrackerError naming its process."""
    journal = journal_path(take)
    try:
        fd = os.open(journal, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return False
    except OSError as err:
        raise TrackerError(f"the unfinished journal {journal} cannot be opened: {err.strerror or err}; remove it by hand") from err
    try:
        if not _lock(fd):
            raise TrackerError(f"another recording is writing {journal} right now{_journal_writer(journal)}")
        journal.unlink()
    finally:
        os.close(fd)
    log.info("deleted %s, the journal of an unfinished recording: its video is recorded again from the start", journal)
    return True


@dataclass
class Tracks:
    """The tracks of a take, in increasing id (N tracks).

    track_id (N,) int64; identity (N, K) float32 each track's last identity (None: the take has
    no identity group); identity_state (N,) uint8 its last state (IDENTITY_STATES codes);
    records (N,) int64 how many records (frames) the track has.
    """

    track_id: np.ndarray
    identity: np.ndarray | None
    identity_state: np.ndarray
    records: np.ndarray

    def __len__(self) -> int:
        return len(self.track_id)


@dataclass
class Take:
    """A recorded take of T records (array layout: the take.npz arrays of docs/take-format.md).

    ``params`` {group: (T, n)} (the identity group too: in a finished take, each record's track's
    identity); ``track_id`` (T,) int64 and ``identity_state`` (T,) uint8 (None: as a take from
    before tracks, track 0 where a face was found, -1 elsewhere, state 0); ``identity_group`` the
    group stored once per track in the npz (None: every group per record); ``complete`` is False
    for a take read from an unfinished journal; ``read_from`` the file ``read_take`` read it from
    (None: made in memory), which exports refuse to overwrite.
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
    track_id: np.ndarray | None = None
    identity_state: np.ndarray | None = None
    identity_group: str | None = None
    arkit: np.ndarray | None = None
    eye_angles: np.ndarray | None = None
    media_time: np.ndarray | None = None
    arkit_raw: np.ndarray | None = None
    read_from: Path | None = None

    def __post_init__(self) -> None:
        if self.media_time is None:
            self.media_time = np.full(len(self.face_found), np.nan)
        if self.track_id is None:
            self.track_id = np.where(self.face_found, 0, -1).astype(np.int64)
        if self.identity_state is None:
            self.identity_state = np.zeros(len(self.face_found), np.uint8)
        if self.arkit is None:
            self.arkit = np.full((len(self.face_found), 52), np.nan, np.float32)
        if self.arkit_raw is None:  # a take from before profiles: its weights are the raw ones
            self.arkit_raw = self.arkit.copy()
        if self.eye_angles is None:
            self.eye_angles = np.full((len(self.face_found), 2, 2), np.nan, np.float32)
        if self.identity_group is not None and self.identity_group not in self.groups:
            raise ValueError(f"identity group {self.identity_group!r} is not one of the take's groups {list(self.groups)}")

    def __len__(self) -> int:
        return len(self.timestamp)

    def clock(self) -> np.ndarray:
        """(T,) float64 seconds to animate the take at: each record's media time (its frame's position
        in the file) when every record has one and they never decrease, else its capture timestamp
        (a live source, or a take recorded with ``--loop`` before media time kept counting across loops)."""
        media = self.media_time
        return media if len(self) and np.isfinite(media).all() and (np.diff(media) >= 0).all() else self.timestamp

    @property
    def frame_count(self) -> int:
        """Frames in the take (records of one frame index count once)."""
        return len(np.unique(self.frame_index))

    def tracks(self) -> Tracks:
        """The take's tracks, each with its last record's identity and identity state."""
        rows = np.flatnonzero(self.face_found & (self.track_id >= 0))[::-1]  # last record first
        ids, first, counts = np.unique(self.track_id[rows], return_index=True, return_counts=True)
        last = rows[first]
        identity = None
        if self.identity_group is not None:
            size = self.groups[self.identity_group]
            identity = self.params[self.identity_group][last].astype(np.float32).reshape(len(ids), size)
        return Tracks(ids.astype(np.int64), identity, self.identity_state[last].astype(np.uint8), counts.astype(np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        """The take.npz content."""
        out = {name: getattr(self, name) for name in ("timestamp", "frame_index", "face_found", *_TRACK_FIELDS, *_VECTORS, *_ANIMATION_FIELDS, *_RAW_FIELDS)}
        out.update({f"params/{group}": values for group, values in self.params.items() if group != self.identity_group})
        out["identity_group"] = np.array(self.identity_group or "")
        if self.identity_group is not None:
            tracks = self.tracks()
            out.update({"tracks/track_id": tracks.track_id, "tracks/identity": tracks.identity, "tracks/identity_state": tracks.identity_state})
        out["head_model"] = np.array(self.head_model)
        out["groups"] = np.array(json.dumps(self.groups))
        out["metadata"] = np.array(json.dumps(self.metadata))
        return out


class Recorder:
    """Records a take to ``path`` (an .npz) through the journal ``path + '.partial'``.

    head_model     the head model's name ("flame", "ict", ...)
    groups         {group: size} of the parameters each record carries, in order
    identity_group the group stored once per track in the finished take (docs/take-format.md);
                   "auto": "identity" if in ``groups``, else "shape" if there, else None (none)
    focal, principal   (2,) camera intrinsics in pixels, the default of every frame (None: NaN)
    source         what is tracked ("camera 0", a file, a URL), stored in the metadata
    metadata       more JSON-serialisable entries for the metadata
    sync_interval  seconds between fsyncs of the journal (0: every frame); see docs/take-format.md
    overwrite      replace an existing take at ``path`` (else TrackerError)

    ``append`` (one record: one face of a frame, or a frame without a face) may be called from
    any thread; ``close`` is idempotent.
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
        identity_group: str | None = AUTO,
    ) -> None:
        self.path = check_take_path(path, overwrite)
        self.journal_path = journal_path(self.path)
        self.groups = {str(group): int(size) for group, size in groups.items()}
        if any(size < 1 for size in self.groups.values()):
            raise ValueError(f"group sizes must be positive, got {self.groups}")
        if identity_group == AUTO:
            from tracker.head_models.base import (
                default_identity_group,  # imported here: the take commands stay light (no torch)
            )

            identity_group = default_identity_group(self.groups)
        self.identity_group = identity_group
        if self.identity_group is not None and self.identity_group not in self.groups:
            raise ValueError(f"identity group {self.identity_group!r} is not one of the recorded groups {list(self.groups)}")
        self.focal = _vector(focal, 2, "focal")
        self.principal = _vector(principal, 2, "principal")
        self.sync_interval = float(sync_interval)
        self._dtype = np.dtype([(name, dtype, shape) for name, dtype, shape in _record_fields(self.groups)])
        header = {
            "head_model": head_model,
            "groups": self.groups,
            "identity_group": self.identity_group,
            "metadata": {
                "source": source,
                "software_version": _software_version(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **(metadata or {}),
            },
            "record_fields": [[name, dtype, list(shape)] for name, dtype, shape in _record_fields(self.groups)],
            "record_size": self._dtype.itemsize + _CRC.size,
            "writer": {"pid": os.getpid(), "host": socket.gethostname()},
        }
        header_bytes = json.dumps(header).encode("utf-8")
        self._lock = threading.Lock()
        self._closed = False
        self._frames = 0
        self._records = 0
        self._last_frame: int | None = None
        self._size = 0  # bytes of whole records (and the header) in the journal
        self._fd = _create_journal(self.journal_path)
        try:
            self._write(_PREAMBLE.pack(MAGIC, len(header_bytes), zlib.crc32(header_bytes)) + header_bytes)
            os.fsync(self._fd)
            fsync_dir(self.journal_path.parent)
        except BaseException:
            os.close(self._fd)
            self.journal_path.unlink(missing_ok=True)
            raise
        self._last_sync = time.monotonic()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def frames(self) -> int:
        """Frames appended so far (consecutive records of one frame index count once)."""
        return self._frames

    @property
    def records(self) -> int:
        """Records appended so far (one per face, or one for a frame without a face)."""
        return self._records

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
        track_id: int | None = None,
        identity_state: int | str | None = None,
        arkit=None,
        eye_angles=None,
        media_time: float | None = None,
        arkit_raw=None,
    ) -> None:
        """Record one face of a frame; ``params`` {group: (n,)} (arrays or tensors), or None for a
        frame without a face (its one record).

        rotation_6d (6,), translation (3,) m, crop_box (3,) px: None stores NaN; focal, principal
        (2,) px: None stores the recorder's. A leading batch dimension of 1 is accepted.
        track_id: the face's track (None: 0; always -1 without a face); identity_state: a name of
        IDENTITY_STATES or its code (None: "none"); arkit (52,) ARKit weights, eye_angles (2, 2)
        (``tracker.fitting.arkit.AvatarValues``; None stores NaN), arkit_raw (52,) the weights before
        the user's profile (None: ``arkit``); media_time: the frame's position in its file, seconds
        (None: NaN, a live source).
        """
        record = np.zeros((), dtype=self._dtype)
        record["timestamp"] = timestamp
        record["media_time"] = np.nan if media_time is None else media_time
        record["frame_index"] = frame_index
        record["face_found"] = params is not None
        if params is None:
            record["track_id"] = -1
        else:
            record["track_id"] = 0 if track_id is None else int(track_id)
            if record["track_id"] < 0:
                raise ValueError(f"a face's track id must be >= 0, got {track_id}")
            record["identity_state"] = identity_state_code(identity_state)
        arkit_raw = arkit if arkit_raw is None else arkit_raw
        for name, value in (("rotation_6d", rotation_6d), ("translation", translation), ("crop_box", crop_box), ("arkit", arkit), ("arkit_raw", arkit_raw)):
            record[name] = _vector(value, self._dtype[name].shape[0], name)
        record["eye_angles"] = _vector(None if eye_angles is None else np.asarray(eye_angles).reshape(-1), 4, "eye_angles").reshape(2, 2)
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
            self._records += 1
            if frame_index != self._last_frame:
                self._frames += 1
                self._last_frame = frame_index
            if time.monotonic() - self._last_sync >= self.sync_interval:
                self._sync()

    def close(self) -> Path:
        """Finish the take: write ``path`` from the journal, then remove the journal (kept when it
        was damaged, or when the take cannot be written: the TrackerError says how to recover it).
        The journal stays locked until the take is written. Idempotent."""
        with self._lock:
            if self._closed:
                return self.path
            self._closed = True
            try:
                self._sync()
                scan = _finalise(self.journal_path, self.path)
            finally:
                os.close(self._fd)
            if not scan.whole:
                log.warning("%s: %s; the take %s has every intact record, the journal was kept", self.journal_path, scan.damage(), self.path)
            return self.path

    def discard(self) -> None:
        """Abandon a recording before anything was recorded (a setup step after opening it failed):
        remove its journal. With records in it, the same as ``close()``: nothing recorded is lost."""
        with self._lock:
            if not self._closed and not self._records:
                self._closed = True
                os.close(self._fd)
                self.journal_path.unlink(missing_ok=True)
                return
        self.close()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as err:
            try:  # drop a partly written record, so the journal ends on a whole one
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise TrackerError(
                f"cannot write the recording journal {self.journal_path}: {err.strerror or err}. The frames recorded so far are in it: "
                f"free disk space, then run `python -m tracker.takes recover {self.journal_path}`"
            ) from err
        self._size += len(data)

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._last_sync = time.monotonic()


def read_take(path: str | Path) -> Take:
    """Load a finished take (npz) or an unfinished one (its journal, given directly or found next
    to a missing ``path``; every intact record, see ``scan_journal``). TrackerError when neither
    is there or the file is not a take."""
    path = Path(path)
    if not path.exists():
        if journal_path(path).exists():
            return scan_journal(journal_path(path)).take
        raise TrackerError(f"take not found: {path}")
    try:
        with path.open("rb") as stream:
            magic = stream.read(len(MAGIC))
    except OSError as err:
        raise TrackerError(f"cannot read take {path}: {err.strerror or err}") from err
    if magic == MAGIC:
        return scan_journal(path).take
    return _read_npz(path)


@dataclass
class JournalScan:
    """What reading a journal found.

    take         every intact record (``complete`` False)
    offsets      (T,) int64 byte offset in the journal of each of the take's records
    damaged      (byte offset in the journal, length) of each damaged stretch skipped between or
                 after intact records
    cut          bytes of a last record cut short (a write the recording process never finished)
    record_size  bytes per record
    """

    take: Take
    offsets: np.ndarray
    damaged: list[tuple[int, int]]
    cut: int
    record_size: int

    @property
    def whole(self) -> bool:
        """No damaged record: everything ever fully written was read."""
        return not self.damaged

    @property
    def damaged_records(self) -> int:
        """Records lost to damage (a stretch of n bytes held at most ceil(n / record_size))."""
        return sum(-(-length // self.record_size) for _, length in self.damaged)

    def damage(self) -> str:
        """The damage in words ("" when whole)."""
        if self.whole:
            return ""
        where = ", ".join(f"byte {offset} ({length} bytes{self._between(offset)})" for offset, length in self.damaged[:5])
        more = f" and {len(self.damaged) - 5} more stretches" if len(self.damaged) > 5 else ""
        return f"{self.damaged_records} damaged record(s) skipped, at {where}{more}"

    def _between(self, offset: int) -> str:
        """", after frame a, before frame b" for a damaged stretch at ``offset``."""
        row = int(np.searchsorted(self.offsets, offset))
        frames = self.take.frame_index
        after = f", after frame {int(frames[row - 1])}" if row > 0 else ", before any intact record"
        before = f", before frame {int(frames[row])}" if row < len(frames) else ""
        return after + before


def finalise_journal(journal: str | Path, out: str | Path | None = None, delete_damaged: bool = False) -> JournalScan:
    """Write the take in ``journal`` to ``out`` (default: the journal's name without '.partial'),
    atomically, then delete the journal unless it was damaged (``delete_damaged``: delete it
    anyway). TrackerError when a live recording still holds the journal's lock."""
    journal = Path(journal)
    out = recovered_take_path(journal) if out is None else Path(out)
    try:
        fd = os.open(journal, os.O_RDONLY)
    except OSError as err:
        raise TrackerError(f"cannot open recording journal {journal}: {err.strerror or err}") from err
    try:
        if not _lock(fd):
            writer = _journal_writer(journal)
            raise TrackerError(
                f"{journal} is still being written by a running recording{writer}: stop that run instead (it finalises "
                "its take when it ends). Only a journal whose recording has ended can be recovered"
            )
        return _finalise(journal, out, delete_damaged)
    finally:
        os.close(fd)  # releases the lock


def write_take(take: Take, path: str | Path) -> Path:
    """Write ``take`` as npz to ``path`` atomically (``tracker.files.atomic_write``): ``path`` is always whole."""
    path = Path(path)
    stream = io.BytesIO()  # built in memory: a failed disk write cannot leave a half-made zip behind
    np.savez(stream, **take.arrays())
    try:
        return atomic_write(path, stream.getbuffer())
    except OSError as err:
        raise TrackerError(f"cannot write take {path}: {err.strerror or err}") from err


def check_recovery_target(journal: str | Path, out: str | Path) -> None:
    """TrackerError when ``out`` is the journal itself (the same file, through links too): the take
    would be written over the journal, which would then be deleted as finalised."""
    if same_file(out, journal):
        raise TrackerError(f"the take to write, {out}, is the journal being recovered ({journal}): writing it there would destroy "
                           f"the journal. Write the take to another file (--out), e.g. {_suggested_take(Path(journal))}")


def _suggested_take(journal: Path) -> Path:
    """Where a recovered take could go: take.npz.partial -> take.npz, else beside it as <name>.npz."""
    if journal.name.endswith(JOURNAL_SUFFIX) and journal.name != JOURNAL_SUFFIX:
        return recovered_take_path(journal)
    return journal.with_name(journal.name + ".npz")


def _finalise(journal: Path, out: Path, delete_damaged: bool = False) -> JournalScan:
    """Write the take of ``journal`` to ``out``, then delete the journal when it was read whole (or
    ``delete_damaged``). The caller holds the journal's lock."""
    check_recovery_target(journal, out)
    scan = scan_journal(journal)
    scan.take.complete = True
    try:
        write_take(scan.take, out)
    except TrackerError as err:
        raise TrackerError(
            f"{err}. Nothing is lost: the recording journal {journal} was kept; free space (or fix the folder), then run "
            f"`python -m tracker.takes recover {journal}`"
        ) from err
    if scan.whole or delete_damaged:
        journal.unlink()
        fsync_dir(journal.parent)
    return scan


def recovered_take_path(journal: Path) -> Path:
    """take.npz.partial -> take.npz."""
    if not journal.name.endswith(JOURNAL_SUFFIX):
        raise TrackerError(f"{journal} is not named like a journal (*{JOURNAL_SUFFIX}): say where the take goes")
    return journal.with_name(journal.name[: -len(JOURNAL_SUFFIX)])


# -- reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Member:
    """An array of an npz as its .npy header declares it, before it is read."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype


def _read_npz(path: Path) -> Take:
    """Read a take.npz, every member's declared shape checked against the take's layout and the
    file's real size before any array is allocated (docs/take-format.md, "Reading")."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_npz_members(path, archive, _npz_members(path, archive))
    except TrackerError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as err:  # RuntimeError: an encrypted member
        raise TrackerError(f"{path} is not a readable take (npz written by tracker.takes.recording): {err}") from err


def _read_npz_members(path: Path, archive: zipfile.ZipFile, members: dict[str, _Member]) -> Take:
    needed = ("timestamp", "frame_index", "face_found", *_VECTORS, "head_model", "groups", "metadata")
    missing = [key for key in needed if key not in members]
    if missing:
        raise TrackerError(f"{path} is not a take written by tracker.takes.recording: it lacks {missing}")
    text = {key: _read_text(path, archive, members[key]) for key in ("head_model", "groups", "metadata", "identity_group") if key in members}
    try:
        head_model, groups, metadata = _head_model(text["head_model"]), _groups(json.loads(text["groups"])), _metadata(json.loads(text["metadata"]))
    except ValueError as err:
        raise TrackerError(f"take {path} has malformed metadata: {err}") from err
    identity_group = text.get("identity_group") or None
    if identity_group is not None and identity_group not in groups:
        raise TrackerError(f"take {path} is malformed: its identity group {identity_group!r} is not in its group list {groups}")
    layout = ("before tracks" if "track_id" not in members else "before animation" if "arkit" not in members
              else "before raw weights" if "arkit_raw" not in members else "current")
    legacy = layout == "before tracks"
    if len(members["timestamp"].shape) != 1:
        raise TrackerError(f"take {path} is malformed: timestamp is {members['timestamp'].shape}, expected one value per record")
    frames = members["timestamp"].shape[0]
    shapes = {name: (frames, *shape) for name, _, shape in _record_fields(groups, layout) if name != f"params/{identity_group}"}
    if identity_group is not None:
        if legacy or any(name not in members for name in _TRACK_TABLE):
            raise TrackerError(f"take {path} is malformed: it names an identity group but lacks its track arrays ({', '.join(_TRACK_TABLE)})")
        ids = members["tracks/track_id"].shape
        if len(ids) != 1 or ids[0] > frames:
            raise TrackerError(f"take {path} is malformed: tracks/track_id is {ids}, expected at most one track per record ({frames})")
        shapes.update(dict(zip(_TRACK_TABLE, (ids, (*ids, groups[identity_group]), ids))))
    for name, shape in shapes.items():
        if name not in members:
            raise TrackerError(f"take {path} lacks the array {name!r} of its group list {groups}")
        if members[name].shape != shape:
            raise TrackerError(f"take {path} is malformed: {name} is {members[name].shape}, expected {shape}")
        if members[name].dtype.kind not in "biuf":
            raise TrackerError(f"take {path} is malformed: {name} holds {members[name].dtype}, not numbers")
    _check_npz_size(path, [members[name] for name in shapes])
    arrays = {name: np.lib.format.read_array(archive.open(members[name].info), allow_pickle=False) for name in shapes}
    face_found = arrays["face_found"].astype(bool)
    track_id = None if legacy else arrays["track_id"].astype(np.int64)
    params = {}
    for group in groups:
        if group == identity_group:
            params[group] = _identity_per_record(path, arrays, face_found, track_id)
        else:
            params[group] = arrays[f"params/{group}"]
    return Take(
        head_model=head_model,
        groups=groups,
        params=params,
        metadata=metadata,
        face_found=face_found,
        track_id=track_id,
        identity_state=None if legacy else arrays["identity_state"].astype(np.uint8),
        identity_group=identity_group,
        read_from=path,
        **{name: arrays[name] for name in ("timestamp", "frame_index", *_VECTORS)},
        **{name: arrays[name] for name in (*_ANIMATION_FIELDS, *_RAW_FIELDS) if name not in _LAYOUTS[layout]},
    )


def _npz_members(path: Path, archive: zipfile.ZipFile) -> dict[str, _Member]:
    """{name: its declared shape and dtype} of the .npy members, each checked to fit its zip entry
    (header + shape x itemsize = the entry's size) and the entries to fit the file."""
    infos = [info for info in archive.infolist() if info.filename.endswith(".npy")]
    if sum(info.compress_size for info in archive.infolist()) > path.stat().st_size:
        raise TrackerError(f"take {path} is damaged: its zip directory declares more data than the file holds")
    members = {}
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise TrackerError(f"take {path} is damaged: the stored member {info.filename} declares {info.file_size} bytes in {info.compress_size}")
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f"{info.filename} is in .npy format {version}, which this version does not read")
            shape, _, dtype = _NPY_HEADER_READERS[version](stream)
            declared = stream.tell() + math.prod(shape) * dtype.itemsize
        if declared != info.file_size:
            raise TrackerError(f"take {path} is malformed: its member {info.filename} declares {shape} x {dtype} "
                               f"({declared} bytes with its header) but holds {info.file_size} bytes")
        members[info.filename[: -len(".npy")]] = _Member(info, tuple(shape), dtype)
    return members


def _check_npz_size(path: Path, members: list[_Member]) -> None:
    """TrackerError when the arrays to read declare more than ``_MAX_EXPANSION`` times the file's size
    (and more than ``_EXPANSION_ALLOWANCE``): a compressed file this version never writes (its takes
    are stored uncompressed) that would take far more memory than its size suggests."""
    declared, size = sum(member.info.file_size for member in members), path.stat().st_size
    if declared > max(_MAX_EXPANSION * size, _EXPANSION_ALLOWANCE):
        raise TrackerError(
            f"take {path} declares {declared / 1e6:.0f} MB of arrays in a {size / 1e6:.1f} MB file (compressed {declared / size:.0f}:1; "
            f"at most {_MAX_EXPANSION}:1 is read): tracker.takes.recording writes takes uncompressed, so this one was compressed elsewhere or is "
            "damaged or forged. If you trust it, store it uncompressed (numpy.savez) and read that"
        )


def _read_text(path: Path, archive: zipfile.ZipFile, member: _Member) -> str:
    """A 0-d string member (head_model, groups, metadata, identity_group), at most ``_MAX_TEXT_BYTES``."""
    name = member.info.filename[: -len(".npy")]
    if member.shape != () or member.dtype.kind != "U" or member.info.file_size > _MAX_TEXT_BYTES:
        raise TrackerError(f"take {path} is malformed: {name} must be one string of at most {_MAX_TEXT_BYTES} bytes, "
                           f"got {member.shape} x {member.dtype} ({member.info.file_size} bytes)")
    return str(np.lib.format.read_array(archive.open(member.info), allow_pickle=False))


def _head_model(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"the head model must be a name, got {value!r:.80}")
    return value


def _groups(value: Any) -> dict[str, int]:
    """The group list {group: size} of a take or journal header, checked: at most ``_MAX_GROUPS``
    groups, each a whole number of values in 1..``_MAX_GROUP_SIZE``."""
    if not isinstance(value, dict):
        raise ValueError(f"the group list must be a JSON object {{group: size}}, got a JSON {type(value).__name__}")
    if len(value) > _MAX_GROUPS:
        raise ValueError(f"the group list names {len(value)} groups, more than the {_MAX_GROUPS} any head model has")
    bad = {group: size for group, size in value.items() if type(size) is not int or not 1 <= size <= _MAX_GROUP_SIZE}
    if bad:
        raise ValueError(f"group sizes must be whole numbers from 1 to {_MAX_GROUP_SIZE}, got {str(bad)[:200]}")
    return dict(value)


def _metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"the metadata must be a JSON object, got a JSON {type(value).__name__}")
    return value


def _identity_per_record(path: Path, arrays: dict[str, np.ndarray], face_found: np.ndarray, track_id: np.ndarray) -> np.ndarray:
    """(T, K) float32: every record's track identity from the take's (checked) track table (NaN without a face)."""
    ids, identity = arrays["tracks/track_id"].astype(np.int64), arrays["tracks/identity"]
    values = np.full((len(face_found), identity.shape[1]), np.nan, dtype=np.float32)
    rows = np.flatnonzero(face_found)
    order = np.argsort(ids, kind="stable")
    position = np.minimum(np.searchsorted(ids[order], track_id[rows]), max(len(ids) - 1, 0))
    known = (ids[order][position] == track_id[rows]) if len(ids) else np.zeros(len(rows), bool)
    if not known.all():
        unknown = sorted(set(track_id[rows[~known]].tolist()))
        raise TrackerError(f"take {path} is malformed: tracks {unknown[:10]} have records but no entry in its track table")
    source = order[position]
    for start in range(0, len(rows), _COPY_ROWS):  # in blocks: no second (T, K) array at any time
        values[rows[start : start + _COPY_ROWS]] = identity[source[start : start + _COPY_ROWS]]
    return values


def scan_journal(path: str | Path) -> JournalScan:
    """Read journal ``path``: every record that passes its CRC, resynchronising past damaged ones
    (docs/take-format.md, "Damage"). TrackerError when the file is no journal or its header is damaged."""
    path = Path(path)
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
        if not isinstance(header, dict):
            raise ValueError(f"it is a JSON {type(header).__name__}, not an object")
        head_model, groups, metadata = _head_model(header["head_model"]), _groups(header["groups"]), _metadata(header["metadata"])
        fields = [(name, dtype, tuple(shape)) for name, dtype, shape in header["record_fields"]]
        layout = next((name for name in _LAYOUTS if fields == _record_fields(groups, name)), None)
        if layout is None:
            raise ValueError("record layout does not match the group list")
        dtype = np.dtype([*_record_fields(groups, layout), ("crc32", "<u4")])  # from the checked group list: bounded
        if dtype.itemsize != header["record_size"]:
            raise ValueError(f"record size {header['record_size']!r} does not match the record layout ({dtype.itemsize} bytes)")
        legacy = layout == "before tracks"
        identity_group = header.get("identity_group")
        if identity_group is not None and identity_group not in groups:
            raise ValueError(f"identity group {identity_group!r} is not in the group list")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise TrackerError(f"recording journal {path} has a header this version cannot read: {err}") from err
    start = _PREAMBLE.size + header_size
    starts, damaged, cut = _intact_records(memoryview(data)[start:], dtype.itemsize)
    if starts and starts[-1] - starts[0] == (len(starts) - 1) * dtype.itemsize:  # one unbroken run: read in place
        records = np.frombuffer(data, dtype=dtype, count=len(starts), offset=start + starts[0])
    else:
        records = np.frombuffer(b"".join(data[start + at : start + at + dtype.itemsize] for at in starts), dtype=dtype)
    take = Take(
        head_model=head_model,
        groups=groups,
        params={group: records[f"params/{group}"].copy() for group in groups},
        metadata=metadata,
        face_found=records["face_found"].astype(bool),
        complete=False,
        track_id=None if legacy else records["track_id"].astype(np.int64),
        identity_state=None if legacy else records["identity_state"].astype(np.uint8),
        identity_group=identity_group,
        read_from=path,
        **{name: records[name].copy() for name in ("timestamp", "frame_index", *_VECTORS)},
        **{name: records[name].copy() for name in (*_ANIMATION_FIELDS, *_RAW_FIELDS) if name not in _LAYOUTS[layout]},
    )
    offsets = start + np.asarray(starts, dtype=np.int64)
    return JournalScan(take, offsets, [(start + at, length) for at, length in damaged], cut, dtype.itemsize)


def _intact_records(body: memoryview, size: int) -> tuple[list[int], list[tuple[int, int]], int]:
    """Offsets of the intact ``size``-byte records in ``body`` (each ends with the CRC-32 of the
    rest), the (offset, length) of every damaged stretch between or after them, and the length of
    a last record cut short. After a damaged record the next intact one is searched byte by byte
    (a chance CRC match: 1 in 2**32 per position)."""
    payload = size - _CRC.size

    def intact(at: int) -> bool:
        return zlib.crc32(body[at : at + payload]) == _CRC.unpack_from(body, at + payload)[0]

    starts, damaged, at, end = [], [], 0, len(body)
    while at + size <= end:
        if intact(at):
            starts.append(at)
            at += size
            continue
        following = next((candidate for candidate in range(at + 1, end - size + 1) if intact(candidate)), None)
        if following is None:
            damaged.append((at, end - at))
            return starts, damaged, 0
        damaged.append((at, following - at))
        at = following
    return starts, damaged, end - at


# -- helpers ---------------------------------------------------------------------------------
def _record_fields(groups: Mapping[str, int], layout: str = "current") -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of a record's fields in ``layout`` (a ``_LAYOUTS`` name: older takes
    lack the raw weights, older ones the avatar fields too, the oldest the track fields too)."""
    fixed = tuple(field for field in _FIXED_FIELDS if field[0] not in _LAYOUTS[layout])
    return [*fixed, *((f"params/{group}", "<f4", (size,)) for group, size in groups.items())]


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
    """Create and lock the journal ``path`` (fd, write-only, appending). An unlocked journal in the
    way that holds no record (a run that failed while setting up) is replaced; one with records,
    or a locked one, is a TrackerError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrackerError(f"cannot create the folder {path.parent} for the recording: {err.strerror or err}") from err
    if path.is_symlink():
        raise TrackerError(f"{path} is a symbolic link, not a recording journal: remove it (the recording never writes through a link), then record again")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_BINARY", 0)  # O_EXCL: never an existing file or link
    for attempt in range(2):
        try:
            fd = os.open(path, flags, 0o644)
            break
        except FileExistsError:
            state = "kept" if attempt else _remove_if_empty(path)
            if state == "locked":
                raise TrackerError(f"another recording is writing {path} right now{_journal_writer(path)}: record to another file") from None
            if state == "kept":
                raise TrackerError(
                    f"an unfinished recording is in the way: {path}. Finalise it with "
                    f"`python -m tracker.takes recover {path}` (or delete it), then record again"
                ) from None
        except OSError as err:
            raise TrackerError(f"cannot create the recording journal {path}: {err.strerror or err}") from err
    if not _lock(fd) or not _same_file(fd, path):  # a recovery took it between the create and the lock
        os.close(fd)
        raise TrackerError(f"the recording journal {path} was taken by another process while it was being created: record again")
    return fd


def _remove_if_empty(path: Path) -> str:
    """Remove the journal ``path`` if no recording holds it and it has no record: "removed", else
    "locked" (a recording holds it) or "kept"."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # a link put there since: kept, not followed
    except FileNotFoundError:
        return "removed"
    except OSError:
        return "kept"
    try:
        if not _lock(fd):
            return "locked"
        try:
            scan = scan_journal(path)
        except TrackerError:  # no header at all (nothing was written), else a damaged one: keep it
            empty = os.fstat(fd).st_size < _PREAMBLE.size
        else:
            empty = len(scan.take) == 0 and scan.whole
        if not empty:
            return "kept"
        path.unlink()
        log.info("removed %s: an empty journal left by a run that recorded nothing", path)
        return "removed"
    finally:
        os.close(fd)


def _lock(fd: int) -> bool:
    """Take the exclusive lock of an open journal without waiting; False when another open file
    holds it (True where the OS or file system has no such locks)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:  # e.g. a network file system without flock
        log.warning("recording journals cannot be locked here (%s): do not recover a journal while its recording runs", err.strerror or err)
    return True


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the open file ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _journal_writer(path: Path) -> str:
    """" (process N on HOST)" from the journal's header, "" when it does not say."""
    try:
        data = path.read_bytes()[:65536]
        _, size, _ = _PREAMBLE.unpack_from(data)
        writer = json.loads(data[_PREAMBLE.size : _PREAMBLE.size + size])["writer"]
        return f" (process {int(writer['pid'])} on {writer['host']})"
    except (OSError, struct.error, ValueError, KeyError, TypeError):
        return ""


def _software_version() -> str:
    try:
        return package_metadata.version("n2f-tracker")
    except package_metadata.PackageNotFoundError:
        return "unknown"
