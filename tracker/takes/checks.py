"""What every export of a take checks before it writes anything (mesh, glb and CSV exporters alike).

    track = select_track(take, track)        # the one track a glb or CSV holds
    check_output(take, out, ".glb")          # never write over the take itself
    check_records(take, rows)                # no NaN / infinity in the records with a face
    clock = check_clock(take)                # (T,) float64 s: present and never going back

Refused with a TrackerError (the command line: one ``error:`` line, exit code 2), before anything
is written: an output that is the take's own file (also through a symbolic or hard link; for
meshes, the ``--out`` folder or any mesh file); a record with a face that holds a value that is
not a finite number (NaN, infinity) in a parameter group, or in part of its rotation, translation,
ARKit weights or an eye's angles (``check_records``: the error names the frame, the record and the
field; records without a face hold NaN by design, and a pose or ARKit weights may be absent as a
whole where the format does not need them); for glb and CSV, a clock (``Take.clock``) that is NaN
or goes back (``check_clock``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.files.atomic_write import same_file
from tracker.takes.recording import Take

_OPTIONAL_FIELDS = ("rotation_6d", "translation", "arkit", "eye_angles", "arkit_raw")  # record fields that may be absent (all NaN)
_CHECK_ROWS = 1 << 16  # records checked at a time (bounded memory on long takes)


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
        refuse_overwriting(take.read_from, out, suffix)


def refuse_overwriting(source: Path, out: str | Path, suffix: str) -> None:
    """TrackerError when ``out`` names the take ``source`` (``check_output``; the command line also
    checks the path it was given, before a take read from its journal forgets it)."""
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
