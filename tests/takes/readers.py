"""Independent readers of the export formats, for the tests: a glb's JSON chunk and a Live Link
Face timecode (the exporters only write them)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def read_glb_header(path: str | Path) -> dict:
    """The JSON chunk of a glTF 2.0 binary (its first chunk, after the 12-byte header)."""
    data = Path(path).read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data)
    assert magic == b"glTF" and version == 2, f"{path} is not a glTF 2.0 binary"
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON", f"{path} does not start with a JSON chunk"
    return json.loads(data[20 : 20 + length])


def parse_timecode(timecode: str, fps: int) -> float:
    """``HH:MM:SS:FF.fff`` at ``fps`` -> seconds (``tracker.takes.livelink_csv.format_timecode``'s inverse)."""
    hours, minutes, seconds, frames = timecode.split(":")
    return (int(hours) * 60 + int(minutes)) * 60 + int(seconds) + float(frames) / fps
