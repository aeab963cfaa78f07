"""``summary.csv``: one line per video of a batch, finished or not.

Columns (``COLUMNS``):
    video        the input as given (a file, or what a folder, pattern or manifest named)
    take         the take's path ("" for an input that names no video)
    status       done | failed | rejected (bad input, never tracked) | interrupted (Ctrl-C)
    frames       frames tracked ("" when none were)
    faces_found  frames with at least one face
    fps          frames per second of the tracking itself
    wall_s       seconds the video took, from opening it to its take written
    reason       why it failed or was rejected; "finished by an earlier run" for a take the batch
                 found done

The file is rewritten whole after each video (``tracker.files.atomic_write``): a killed batch
leaves the summary of every video finished before it.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, fields
from pathlib import Path

from tracker.files.atomic_write import atomic_write

SUMMARY_NAME = "summary.csv"
STATUSES = ("done", "failed", "rejected", "interrupted")
EARLIER = "finished by an earlier run"

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One line of the summary (module docstring)."""

    video: str
    take: str
    status: str
    frames: int | None = None
    faces_found: int | None = None
    fps: float | None = None
    wall_s: float | None = None
    reason: str = ""


COLUMNS = tuple(f.name for f in fields(Row))


def write_summary(path: Path, rows: list[Row]) -> Path:
    """Write ``rows`` to ``path`` whole (atomic)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in COLUMNS])
    return atomic_write(path, text.getvalue().encode("utf-8"))


def read_summary(path: Path) -> dict[str, Row]:
    """{take path: Row} of an earlier batch's summary at ``path`` ({} when there is none; a file
    that cannot be read is left out with a warning: the takes themselves say what is done)."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = [_row(record) for record in csv.DictReader(stream)]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError) as error:
        log.warning("the earlier summary %s cannot be read (%s): the takes on disk decide what is done", path, error)
        return {}
    return {row.take: row for row in rows if row.take}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _row(record: dict[str, str]) -> Row:
    return Row(record["video"], record["take"], record["status"], _number(record["frames"], int), _number(record["faces_found"], int),
               _number(record["fps"], float), _number(record["wall_s"], float), record["reason"])


def _number(text: str, kind: type):
    return kind(text) if text else None
