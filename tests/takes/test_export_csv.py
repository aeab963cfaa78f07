"""Live Link Face CSV export of takes (``tracker.takes.livelink_csv``): the layout (63 columns: Timecode,
BlendShapeCount, 52 weights, 9 angles), the values under their names, timecodes at the take's own
timestamps, and the errors a user can cause."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.takes.readers import parse_timecode
from tracker.errors import TrackerError
from tracker.export import main as export_main
from tracker.fitting.arkit import ARKIT_NAMES
from tracker.geometry.camera import head_pose
from tracker.geometry.rotations import euler_to_rotation_6d, rotation_6d_to_matrix
from tracker.takes.livelink_csv import (
    ANGLE_COLUMNS,
    BLENDSHAPE_COUNT,
    HEADER,
    LLF_BLENDSHAPES,
    export_csv,
    format_timecode,
)
from tracker.takes.recording import Recorder, read_take

GROUPS = {"identity": 3, "expression": 4}
# frame 4 was dropped by the source (no record, its time skipped), frame 3 has no face; track 2
# (fewer records) appears in frames 1 and 2
FRAMES = (0, 1, 2, 3, 5, 6)


def _time(frame: int) -> float:
    return 4000.25 + frame / 30.0 + (0.004 if frame == 2 else 0.0)  # frame 2 a little late, as live frames are


def _values(frame: int, track: int = 0) -> dict:
    rng = np.random.default_rng(frame + 10 * track)
    euler = torch.tensor([[0.2 * math.sin(frame), 0.3 - 0.1 * frame, 0.05 * frame]], dtype=torch.float64)
    eyes = rng.uniform(-0.3, 0.3, (2, 2))
    if frame == 5:
        eyes[1] = np.nan  # an iris not found
    return {"params": {"identity": rng.normal(size=3), "expression": rng.uniform(size=4)},
            "rotation_6d": euler_to_rotation_6d(euler)[0].numpy(), "translation": np.array([0.01 * frame, 0.0, 0.7]),
            "arkit": rng.uniform(size=52), "eye_angles": eyes, "track_id": track}


@pytest.fixture
def take_path(tmp_path) -> Path:
    path = tmp_path / "take.npz"
    with Recorder(path, "ict", GROUPS) as recorder:
        for frame in FRAMES:
            if frame == 3:
                recorder.append(_time(frame), frame, None)
                continue
            recorder.append(_time(frame), frame, **_values(frame))
            if frame in (1, 2):
                recorder.append(_time(frame), frame, **_values(frame, track=2))
    return path


def _read(path: Path) -> list[list[str]]:
    with open(path, newline="") as stream:
        return list(csv.reader(stream))


def test_layout_names_and_values(take_path, tmp_path):
    take = read_take(take_path)
    result = export_csv(take, tmp_path / "take.csv")
    assert result.track == 0 and result.rows == 5 and result.skipped == [3]
    rows = _read(result.path)
    header, body = rows[0], rows[1:]
    assert len(header) == 2 + 61 == len(HEADER) and tuple(header) == HEADER
    assert header[:2] == ["Timecode", "BlendShapeCount"] and header[-9:] == list(ANGLE_COLUMNS)
    assert header[2:4] == ["EyeBlinkLeft", "EyeLookDownLeft"] and header[16:20] == ["JawForward", "JawRight", "JawLeft", "JawOpen"]
    assert header[23:25] == ["MouthRight", "MouthLeft"] and header[53] == "TongueOut"
    assert sorted(name[0].lower() + name[1:] for name in LLF_BLENDSHAPES) == sorted(ARKIT_NAMES)
    assert len(body) == 5 and all(len(row) == 63 for row in body)
    assert {row[1] for row in body} == {str(BLENDSHAPE_COUNT)} == {"61"}
    for row, frame in zip(body, (0, 1, 2, 5, 6)):
        expected = _values(frame)
        record = int(np.flatnonzero((take.frame_index == frame) & (take.track_id == 0))[0])
        for column, name in enumerate(header[2:54], start=2):  # each weight under its own name
            assert float(row[column]) == pytest.approx(expected["arkit"][ARKIT_NAMES.index(name[0].lower() + name[1:])], abs=1e-7)
        rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[record]).double()).numpy()
        # angles in Live Link's -1..1 (radians / pi)
        np.testing.assert_allclose([float(v) * math.pi for v in row[54:57]], head_pose(rotation, take.translation[record])[1], atol=1e-6)
        eyes = np.nan_to_num(expected["eye_angles"], nan=0.0)
        np.testing.assert_allclose([float(v) * math.pi for v in row[57:63]], [eyes[0, 0], eyes[0, 1], 0.0, eyes[1, 0], eyes[1, 1], 0.0], atol=1e-6)


def test_values_match_the_live_link_stream(take_path, tmp_path):
    """A row carries the 61 values the live Live Link Face stream sends for the same face."""
    streaming = pytest.importorskip("tracker.outputs.streaming")
    if not hasattr(streaming, "livelink_values"):
        pytest.skip("tracker.outputs.streaming has no livelink_values")
    from tracker.fitting.arkit import AvatarValues

    take = read_take(take_path)
    body = _read(export_csv(take, tmp_path / "take.csv").path)[1:]
    header = list(HEADER)
    for row, frame in zip(body, (0, 1, 2, 5, 6)):
        record = int(np.flatnonzero((take.frame_index == frame) & (take.track_id == 0))[0])
        rotation = rotation_6d_to_matrix(torch.from_numpy(take.rotation_6d[record]).double()).numpy()
        avatar_rotation, angles, position = head_pose(rotation, take.translation[record])
        values = AvatarValues(take.arkit[record], avatar_rotation, angles, position, take.eye_angles[record])
        stream = streaming.livelink_values(values)  # Apple's order, then the 9 angles
        by_name = {name[0].upper() + name[1:]: stream[i] for i, name in enumerate(ARKIT_NAMES)}
        np.testing.assert_allclose([float(v) for v in row[2:54]], [by_name[n] for n in header[2:54]], atol=1e-6)
        np.testing.assert_allclose([float(v) for v in row[54:]], stream[52:], atol=1e-6)


def test_timecodes_are_the_take_timestamps(take_path, tmp_path):
    take = read_take(take_path)
    for fps in (60, 30):
        body = _read(export_csv(take, tmp_path / f"take{fps}.csv", fps=fps).path)[1:]
        seconds = np.array([parse_timecode(row[0], fps) for row in body])
        assert np.all(np.diff(seconds) > 0)  # monotonic
        expected = np.array([_time(f) - _time(0) for f in (0, 1, 2, 5, 6)])  # dropped and faceless frames keep their times
        np.testing.assert_allclose(seconds, expected, atol=0.5e-3 / fps + 1e-9)
    assert body[0][0] == "00:00:00:00.000" and body[1][0] == "00:00:00:01.000"


def test_format_timecode():
    assert format_timecode(0.0) == "00:00:00:00.000"
    assert format_timecode(1.0 + 7.5 / 60) == "00:00:01:07.500"
    assert format_timecode(3661.0, 30) == "01:01:01:00.000"
    assert format_timecode(59.99999999, 60) == "00:01:00:00.000"  # the fraction rounds into the next second
    assert parse_timecode(format_timecode(123.456789), 60) == pytest.approx(123.456789, abs=1e-5)
    with pytest.raises(ValueError):
        format_timecode(1.0, 29.97)


def test_other_track_and_errors(take_path, tmp_path, capsys):
    take = read_take(take_path)
    other = export_csv(take, tmp_path / "two.csv", track=2)
    assert other.rows == 2 and other.skipped == [0, 3, 5, 6]
    with pytest.raises(TrackerError, match="no track 9"):
        export_csv(take, tmp_path / "nine.csv", track=9)
    with pytest.raises(TrackerError, match="is a folder"):
        export_csv(take, tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(TrackerError, match="cannot write"):
        export_csv(take, tmp_path / "file" / "take.csv")
    flame = tmp_path / "flame.npz"
    with Recorder(flame, "flame", {"shape": 2, "expression": 2}) as recorder:
        recorder.append(0.0, 0, {"shape": np.zeros(2), "expression": np.ones(2)}, rotation_6d=np.array([1.0, 0, 0, 0, 1, 0]),
                        translation=np.array([0.0, 0, 1]))
    with pytest.raises(TrackerError, match="FLAME take has no ARKit weights: they come from an ICT-FaceKit fit"):
        export_csv(read_take(flame), tmp_path / "flame.csv")
    assert export_main([str(flame), "--format", "csv", "--out", str(tmp_path / "f.csv")]) == 2
    assert "no ARKit weights" in capsys.readouterr().err
    assert export_main([str(take_path), "--format", "csv", "--out", str(tmp_path / "cli.csv"), "--timecode-fps", "30"]) == 0
    printed = capsys.readouterr().out
    assert "track 0, 5 rows" in printed and "skipped 1 frames without this track's face (no row): 3" in printed
    assert len(_read(tmp_path / "cli.csv")) == 6 and not list(tmp_path.glob("*.tmp"))
