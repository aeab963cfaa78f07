"""Take recorder: round trip, crash safety (SIGKILL, cut journals, Ctrl-C), concurrency, recovery CLI,
several faces per frame with the identity stored once per track, takes from before tracks."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from tracker.errors import TrackerError
from tracker.takes.__main__ import main
from tracker.takes.recording import (
    IDENTITY_STATES,
    Recorder,
    journal_path,
    read_take,
    write_take,
)

GROUPS = {"identity": 4, "expression": 3}
PROJECT = Path(__file__).resolve().parents[2]


def _frame(i: int) -> dict:
    """Frame i's recorded values; every 5th frame (4, 9, ...) has no face."""
    found = i % 5 != 4
    return {
        "timestamp": 100.0 + i / 30.0,
        "frame_index": i,
        "params": {"identity": np.arange(4.0) + i, "expression": np.array([i, -i, 0.5])} if found else None,
        "rotation_6d": np.array([1.0, 0, 0, 0, 1, 0]) if found else None,
        "translation": np.array([0.0, 0.01 * i, 1.0]) if found else None,
        "crop_box": np.array([10.0 + i, 20.0, 200.0]) if found else None,
    }


def _record(recorder: Recorder, frames: range) -> None:
    for i in frames:
        recorder.append(**_frame(i))


def _check(take, frames) -> None:
    """Row r of ``take`` holds ``_frame(frames[r])``; in a finished take, every record's identity is
    its track's (track 0: the last recorded face's)."""
    assert len(take) == len(frames)
    found = [i for i in frames if _frame(i)["params"] is not None]
    pooled = _frame(found[-1])["params"]["identity"] if found and take.complete else None
    for row, i in enumerate(frames):
        expected = _frame(i)
        assert take.timestamp[row] == expected["timestamp"] and take.frame_index[row] == i
        assert take.face_found[row] == (expected["params"] is not None)
        assert take.track_id[row] == (-1 if expected["params"] is None else 0)
        if expected["params"] is None:
            for values in (take.params["identity"], take.params["expression"], take.rotation_6d, take.translation, take.crop_box):
                assert np.isnan(values[row]).all()
        else:
            for group, values in expected["params"].items():
                if group == "identity" and pooled is not None:
                    values = pooled
                assert np.array_equal(take.params[group][row], values.astype(np.float32))
            assert np.array_equal(take.translation[row], expected["translation"].astype(np.float32))
            assert np.array_equal(take.crop_box[row], expected["crop_box"].astype(np.float32))
        assert np.array_equal(take.focal[row], [500.0, 510.0]) and np.array_equal(take.principal[row], [320.0, 240.0])


def _recorder(path: Path, **options) -> Recorder:
    return Recorder(path, "ict", GROUPS, focal=(500.0, 510.0), principal=(320.0, 240.0), source="test", **options)


def test_round_trip_npz_layout_and_idempotent_close(tmp_path):
    path = tmp_path / "take.npz"
    with _recorder(path, metadata={"note": "hello"}) as recorder:
        _record(recorder, range(12))
        assert journal_path(path).exists() and not path.exists()
    assert path.exists() and not journal_path(path).exists()
    assert recorder.close() == path  # second close: nothing more to do
    take = read_take(path)
    _check(take, range(12))
    assert take.complete and take.head_model == "ict" and take.groups == GROUPS
    assert take.metadata["source"] == "test" and take.metadata["note"] == "hello" and "software_version" in take.metadata
    with np.load(path, allow_pickle=False) as npz:
        assert {"params/expression", "rotation_6d", "focal", "head_model", "groups", "track_id", "tracks/identity"} <= set(npz.files)
        assert "params/identity" not in npz.files  # once per track
        assert npz["params/expression"].shape == (12, 3) and npz["face_found"].dtype == bool
    with pytest.raises(ValueError):
        recorder.append(**_frame(12))


def test_tensors_and_batch_of_one_accepted(tmp_path):
    import torch  # here only: the SIGKILL test's child process imports this module

    with _recorder(tmp_path / "t.npz") as recorder:
        recorder.append(0.0, 0, {"identity": torch.ones(1, 4), "expression": torch.zeros(3)}, rotation_6d=torch.ones(1, 6),
                        focal=torch.tensor([400.0, 400.0]))
        with pytest.raises(ValueError):
            recorder.append(0.1, 1, {"identity": torch.ones(5), "expression": torch.zeros(3)})
        with pytest.raises(ValueError):
            recorder.append(0.1, 1, {"identity": torch.ones(4)})  # a group missing
    take = read_take(tmp_path / "t.npz")
    assert len(take) == 1 and np.array_equal(take.focal[0], [400.0, 400.0]) and np.isnan(take.translation[0]).all()


def test_keyboard_interrupt_inside_with_finalises_the_take(tmp_path):
    path = tmp_path / "take.npz"
    with pytest.raises(KeyboardInterrupt):
        with _recorder(path) as recorder:
            _record(recorder, range(7))
            raise KeyboardInterrupt
    assert path.exists() and not journal_path(path).exists()
    _check(read_take(path), range(7))


CHILD = """
import sys
from tracker.takes.recording import Recorder
sys.path.insert(0, sys.argv[2])
from tests.takes.test_recording import GROUPS, _frame
recorder = Recorder(sys.argv[1], "ict", GROUPS, focal=(500.0, 510.0), principal=(320.0, 240.0), sync_interval=0.0)
i = 0
while True:
    recorder.append(**_frame(i))
    print(i, flush=True)
    i += 1
"""


def test_recording_killed_with_sigkill_still_loads(tmp_path):
    path = tmp_path / "take.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(PROJECT)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=PROJECT, env=env)
    try:
        reported = -1
        while reported < 25:
            line = child.stdout.readline()
            assert line, f"the recording child died: {child.stderr.read()}"
            reported = int(line)
        child.send_signal(signal.SIGKILL)  # mid-loop: maybe in the middle of writing a frame
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL and not path.exists()
    take = read_take(path)  # the missing npz: read from its journal
    assert not take.complete and len(take) >= reported + 1  # every reported frame is there
    _check(take, range(len(take)))


def test_cut_and_corrupt_journals(tmp_path):
    recorder = _recorder(tmp_path / "full.npz")
    _record(recorder, range(6))
    data = journal_path(recorder.path).read_bytes()  # the journal of a take still running
    recorder.close()
    _, header_size, _ = struct.unpack_from("<8sII", data)
    record_size = (len(data) - 16 - header_size) // 6
    cut = tmp_path / "cut.npz.partial"
    cut.write_bytes(data[: -record_size // 2])  # the last record cut in the middle
    _check(read_take(cut), range(5))
    flipped = bytearray(data)
    flipped[-record_size // 2] ^= 0xFF  # the last record damaged: its CRC fails
    cut.write_bytes(bytes(flipped))
    _check(read_take(cut), range(5))
    cut.write_bytes(data[: len(data) - 6 * record_size])  # header only
    assert len(read_take(cut)) == 0
    cut.write_bytes(data[:30])  # header cut: nothing to read
    with pytest.raises(TrackerError, match="header"):
        read_take(cut)


def test_recover_cli_finalises_a_journal(tmp_path, capsys):
    recorder = _recorder(tmp_path / "run.npz")
    _record(recorder, range(9))
    killed = recorder.journal_path.read_bytes()[:-7]  # as if the recorder had been killed mid-frame
    recorder.close()
    stray = tmp_path / "take.npz.partial"
    stray.write_bytes(killed)
    assert main(["recover", str(stray)]) == 0
    assert "8 frames, 7 with a face" in capsys.readouterr().out
    assert not stray.exists()
    take = read_take(tmp_path / "take.npz")
    assert take.complete
    _check(take, range(8))
    stray.write_bytes(killed)
    assert main(["recover", str(stray)]) == 2  # take.npz exists
    assert "--force" in capsys.readouterr().err
    assert main(["recover", str(stray), "--force"]) == 0
    stray.write_bytes(b"no journal")
    assert main(["recover", str(stray), "--out", str(tmp_path / "y.npz")]) == 2
    assert "not a recording journal" in capsys.readouterr().err


def test_concurrent_appends_from_threads(tmp_path):
    path = tmp_path / "take.npz"
    with _recorder(path, sync_interval=0.0) as recorder:
        threads = [threading.Thread(target=_record, args=(recorder, range(k, 60, 4))) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    take = read_take(path)
    assert np.array_equal(np.sort(take.frame_index), np.arange(60))
    _check(take, take.frame_index.tolist())  # every record whole: none interleaved with another


def test_user_errors(tmp_path):
    path = tmp_path / "take.npz"
    first = _recorder(path)
    with pytest.raises(TrackerError, match="another recording is writing"):
        _recorder(path)  # its journal is in the way, locked
    first.close()
    with pytest.raises(TrackerError, match="exists"):
        _recorder(path)
    _recorder(path, overwrite=True).close()
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(TrackerError, match="not a readable take"):
        read_take(tmp_path / "broken.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(TrackerError, match="not a take"):
        read_take(tmp_path / "other.npz")
    with pytest.raises(TrackerError, match="not found"):
        read_take(tmp_path / "missing.npz")


def test_export_writes_decoded_meshes_of_a_take(tmp_path, ict_npz_path, capsys):
    import torch  # here only: the SIGKILL test's child process imports this module

    from tracker.export import main as export_main
    from tracker.files.mesh_io import read_obj
    from tracker.geometry.camera import head_to_camera
    from tracker.geometry.rotations import euler_to_rotation_6d, rotation_6d_to_matrix
    from tracker.takes.meshes import export_meshes, load_take_model

    expression = np.random.default_rng(0).uniform(0.0, 1.0, size=(3, 53)).astype(np.float32)
    rotation = euler_to_rotation_6d(torch.tensor([[0.1, 0.3, -0.05], [0.0, 0.0, 0.0], [-0.2, 0.1, 0.0]]))
    translation = np.array([[0.01, 0.0, 0.6], [0.0, 0.0, 0.0], [-0.02, 0.01, 0.7]], dtype=np.float32)
    path = tmp_path / "take.npz"
    with Recorder(path, "ict", {"expression": 53}) as recorder:  # identity not recorded: neutral
        for i in range(3):
            recorder.append(i / 30, 10 + i, None if i == 1 else {"expression": expression[i]},
                            rotation_6d=rotation[i], translation=translation[i])
    out = tmp_path / "meshes"
    assert export_main([str(path), "--out", str(out), "--head-model-path", str(ict_npz_path)]) == 0
    assert "skipped 1 frames without a face: 11" in capsys.readouterr().out
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["frame_000010.obj", "frame_000012.obj"]
    take = read_take(path)
    model = load_take_model(take, ict_npz_path)
    expected = model.decode({"expression": torch.from_numpy(expression[[0, 2]])})
    for file, vertices in zip(files, expected):
        read_vertices, read_faces = read_obj(file)
        assert read_vertices.shape == (26719, 3)
        assert np.array_equal(read_vertices.astype(np.float32), vertices.numpy())
        assert np.array_equal(read_faces, model.faces.numpy())

    result = export_meshes(take, model, tmp_path / "posed", fmt="ply", every=2, posed=True)  # rows 0 and 2
    assert result.skipped == [] and [p.name for p in result.written] == ["frame_000010.ply", "frame_000012.ply"]
    posed = head_to_camera(expected, rotation_6d_to_matrix(rotation[[0, 2]]), torch.from_numpy(translation[[0, 2]]))
    for file, vertices in zip(result.written, posed):
        data = file.read_bytes()
        body = data.index(b"end_header\n") + len(b"end_header\n")
        assert b"element vertex 26719" in data[:body]
        assert np.array_equal(np.frombuffer(data, "<f4", count=26719 * 3, offset=body).reshape(-1, 3), vertices.numpy())

    take.rotation_6d[2] = np.nan  # a frame without a camera pose
    with pytest.raises(TrackerError, match="posed"):
        export_meshes(take, model, tmp_path / "none", posed=True)
    assert export_main([str(path), "--out", str(out), "--head-model-path", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz does not exist" in capsys.readouterr().err
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    assert export_main([str(tmp_path / "broken.npz"), "--out", str(out)]) == 2
    assert "not a readable take" in capsys.readouterr().err


# -- several faces per frame, the identity once per track --------------------------------------
LOCKED = np.array([0.5, -0.25, 1.0, 2.0])  # track 7's pooled identity from frame 4 on
GIVEN = np.array([-1.0, 0.0, 0.75, 3.0])  # track 9's identity, fixed by the caller


def _faces(i: int) -> list[dict]:
    """Frame i's records: track 7 in frames 0-6 (calibrating until frame 3, then locked), track 9 in
    frames 4-6 (given), no face in frame 7, track 12 in frame 8 (calibrating)."""
    def face(track: int, identity: np.ndarray, state: str) -> dict:
        return {
            "timestamp": 50.0 + i / 25.0, "frame_index": i, "track_id": track, "identity_state": state,
            "params": {"identity": identity, "expression": np.array([i, track, 0.25])},
            "rotation_6d": np.array([1.0, 0, 0, 0, 1, 0]), "translation": np.array([0.01 * track, 0.0, 1.0]),
            "crop_box": np.array([10.0 * track, 20.0 + i, 100.0]),
        }

    if i == 7:
        return [{"timestamp": 50.0 + i / 25.0, "frame_index": i, "params": None}]
    faces = [face(7, np.full(4, 0.1 * i) if i < 4 else LOCKED, "calibrating" if i < 4 else "locked")] if i < 7 else []
    if 4 <= i <= 6:
        faces.append(face(9, GIVEN, "given"))
    if i == 8:
        faces.append(face(12, np.full(4, 8.0), "calibrating"))
    return faces


MULTI = [record for i in range(9) for record in _faces(i)]  # 12 records in 9 frames
TRACK_IDENTITY = {7: LOCKED, 9: GIVEN, 12: np.full(4, 8.0)}


def _check_records(take, records: list[dict], pooled: bool) -> None:
    """``take`` holds ``records`` in order; ``pooled``: each record's identity is its track's (a finished take)."""
    assert len(take) == len(records)
    for row, expected in enumerate(records):
        assert take.frame_index[row] == expected["frame_index"] and take.timestamp[row] == expected["timestamp"]
        if expected["params"] is None:
            assert not take.face_found[row] and take.track_id[row] == -1 and take.identity_state[row] == 0
            assert np.isnan(take.params["identity"][row]).all() and np.isnan(take.crop_box[row]).all()
            continue
        assert take.face_found[row] and take.track_id[row] == expected["track_id"]
        assert IDENTITY_STATES[take.identity_state[row]] == expected["identity_state"]
        identity = TRACK_IDENTITY[expected["track_id"]] if pooled else expected["params"]["identity"]
        assert np.array_equal(take.params["identity"][row], identity.astype(np.float32))
        assert np.array_equal(take.params["expression"][row], expected["params"]["expression"].astype(np.float32))
        assert np.array_equal(take.crop_box[row], expected["crop_box"].astype(np.float32))


def test_several_faces_per_frame_through_journal_and_npz(tmp_path):
    path = tmp_path / "multi.npz"
    recorder = _recorder(path)
    for record in MULTI:
        recorder.append(**record)
    assert recorder.records == 12 and recorder.frames == 9 and recorder.identity_group == "identity"
    journal = tmp_path / "copy.npz.partial"
    journal.write_bytes(recorder.journal_path.read_bytes())  # the journal while recording
    recorder.close()

    running = read_take(journal)  # the journal keeps every record's own identity
    assert not running.complete and running.identity_group == "identity"
    _check_records(running, MULTI, pooled=False)

    with np.load(path, allow_pickle=False) as npz:
        assert "params/identity" not in npz.files and npz["params/expression"].shape == (12, 3)
        assert npz["tracks/track_id"].tolist() == [7, 9, 12] and npz["tracks/track_id"].dtype == np.int64
        assert npz["tracks/identity"].dtype == np.float32
        assert np.array_equal(npz["tracks/identity"], np.stack([LOCKED, GIVEN, np.full(4, 8.0)]).astype(np.float32))
        assert [IDENTITY_STATES[s] for s in npz["tracks/identity_state"]] == ["locked", "given", "calibrating"]
        assert npz["track_id"].dtype == np.int64 and npz["identity_state"].dtype == np.uint8 and str(npz["identity_group"]) == "identity"
    take = read_take(path)
    assert take.complete and take.frame_count == 9 and take.groups == GROUPS
    _check_records(take, MULTI, pooled=True)  # every record gets its track's identity back
    tracks = take.tracks()
    assert tracks.track_id.tolist() == [7, 9, 12] and tracks.records.tolist() == [7, 3, 1]
    assert np.array_equal(tracks.identity[0], LOCKED.astype(np.float32))
    write_take(take, tmp_path / "again.npz")  # a finished take read back writes the same track table
    again = read_take(tmp_path / "again.npz")
    assert np.array_equal(again.tracks().identity, tracks.identity) and np.array_equal(again.track_id, take.track_id)


def test_recovered_multi_face_journal(tmp_path, capsys):
    recorder = _recorder(tmp_path / "run.npz")
    for record in MULTI:
        recorder.append(**record)
    killed = recorder.journal_path.read_bytes()[:-5]  # killed while writing track 12's record
    recorder.close()
    stray = tmp_path / "take.npz.partial"
    stray.write_bytes(killed)
    assert main(["recover", str(stray)]) == 0
    assert "8 frames, 7 with a face, 10 face records in 2 tracks" in capsys.readouterr().out
    take = read_take(tmp_path / "take.npz")
    assert take.complete and take.tracks().track_id.tolist() == [7, 9]
    _check_records(take, MULTI[:-1], pooled=True)


def test_identity_group_follows_the_head_model(tmp_path):
    flame = Recorder(tmp_path / "flame.npz", "flame", {"shape": 3, "expression": 2})
    flame.append(0.0, 0, {"shape": np.ones(3), "expression": np.zeros(2)}, track_id=4, identity_state="network")
    flame.append(0.1, 1, {"shape": np.full(3, 2.0), "expression": np.zeros(2)}, track_id=4, identity_state="network")
    flame.close()
    assert flame.identity_group == "shape"
    with np.load(tmp_path / "flame.npz") as npz:
        assert "params/shape" not in npz.files and npz["tracks/identity"].tolist() == [[2.0, 2.0, 2.0]]
    assert read_take(tmp_path / "flame.npz").params["shape"].tolist() == [[2.0] * 3] * 2
    for name, options in (("none.npz", {}), ("per_record.npz", {"identity_group": None})):
        groups = {"expression": 2} if not options else GROUPS
        with Recorder(tmp_path / name, "ict", groups, **options) as recorder:
            recorder.append(0.0, 0, {g: np.full(n, 1.0) for g, n in groups.items()})
            recorder.append(0.1, 1, {g: np.full(n, 2.0) for g, n in groups.items()})
        with np.load(tmp_path / name) as npz:
            assert not any(key.startswith("tracks/") for key in npz.files) and str(npz["identity_group"]) == ""
        take = read_take(tmp_path / name)
        assert take.identity_group is None and take.tracks().identity is None
        assert all(values[:, 0].tolist() == [1.0, 2.0] for values in take.params.values())  # every group per record
    with pytest.raises(ValueError, match="identity group"):
        Recorder(tmp_path / "bad.npz", "ict", {"expression": 2}, identity_group="identity")
    with Recorder(tmp_path / "states.npz", "ict", GROUPS) as recorder, pytest.raises(ValueError, match="identity state"):
        recorder.append(0.0, 0, {g: np.zeros(n) for g, n in GROUPS.items()}, identity_state="frozen")


# the layout written before tracks: no track_id / identity_state / identity_group, every group per frame
LEGACY_FIELDS = [("timestamp", "<f8", ()), ("frame_index", "<i8", ()), ("face_found", "u1", ()), ("crop_box", "<f4", (3,)),
                 ("rotation_6d", "<f4", (6,)), ("translation", "<f4", (3,)), ("focal", "<f4", (2,)), ("principal", "<f4", (2,)),
                 ("params/identity", "<f4", (4,)), ("params/expression", "<f4", (3,))]


def _legacy_records(frames: range) -> np.ndarray:
    records = np.zeros(len(frames), dtype=np.dtype(LEGACY_FIELDS))
    for row, i in enumerate(frames):
        expected = _frame(i)
        records[row]["timestamp"], records[row]["frame_index"] = expected["timestamp"], i
        records[row]["face_found"] = expected["params"] is not None
        records[row]["focal"], records[row]["principal"] = (500.0, 510.0), (320.0, 240.0)
        for name in ("crop_box", "rotation_6d", "translation"):
            records[row][name] = np.nan if expected[name] is None else expected[name]
        for group in GROUPS:
            records[row][f"params/{group}"] = np.nan if expected["params"] is None else expected["params"][group]
    return records


def test_takes_from_before_tracks_still_read(tmp_path):
    records = _legacy_records(range(7))
    arrays = {name: records[name] for name, _, _ in LEGACY_FIELDS}
    arrays["face_found"] = arrays["face_found"].astype(bool)
    arrays.update(head_model=np.array("ict"), groups=np.array(json.dumps(GROUPS)), metadata=np.array(json.dumps({"source": "old"})))
    np.savez(tmp_path / "old.npz", **arrays)
    header = json.dumps({"head_model": "ict", "groups": GROUPS, "metadata": {"source": "old"},
                         "record_fields": [[n, d, list(s)] for n, d, s in LEGACY_FIELDS], "record_size": records.dtype.itemsize + 4}).encode()
    body = b"".join(r.tobytes() + struct.pack("<I", zlib.crc32(r.tobytes())) for r in records)
    (tmp_path / "old.npz.partial").write_bytes(struct.pack("<8sII", b"N2FTAKE1", len(header), zlib.crc32(header)) + header + body)
    for path in (tmp_path / "old.npz", tmp_path / "old.npz.partial"):
        take = read_take(path)
        assert take.identity_group is None and take.metadata["source"] == "old"
        assert take.track_id.tolist() == [0, 0, 0, 0, -1, 0, 0] and not take.identity_state.any()
        for row, i in enumerate(range(7)):  # every frame keeps its own identity
            if _frame(i)["params"] is not None:
                assert np.array_equal(take.params["identity"][row], _frame(i)["params"]["identity"].astype(np.float32))
        assert take.tracks().track_id.tolist() == [0]
    assert main(["recover", str(tmp_path / "old.npz.partial"), "--out", str(tmp_path / "recovered.npz")]) == 0
    assert read_take(tmp_path / "recovered.npz").params["identity"].shape == (7, 4)


def test_recording_sink_records_every_face(tmp_path):
    import torch  # here only: the SIGKILL test's child process imports this module

    from tracker.live.results import FaceResult, TrackingResult
    from tracker.live.sinks import RecordingSink
    from tracker.live.sources import Frame

    class Head:  # what RecordingSink reads of a head model
        name = "ict"
        param_groups = {group: type("Group", (), {"size": size})() for group, size in GROUPS.items()}

    def face(track: int, state: str, identity: float) -> FaceResult:
        return FaceResult(
            params={"identity": torch.full((4,), identity), "expression": torch.full((3,), float(track))},
            rotation_6d=torch.tensor([1.0, 0, 0, 0, 1, 0]), rotation=torch.eye(3), translation=torch.tensor([0.0, 0.0, 0.8]),
            mesh=torch.zeros(3, 3), landmarks68=np.zeros((68, 2)), mesh_landmarks68=np.zeros((68, 2)),
            crop_box=np.array([1.0, 2.0, 90.0]), track_id=track, crop=None, cue=None, identity_state=state,
        )

    def result(index: int, faces: list) -> TrackingResult:
        return TrackingResult(Frame(np.zeros((4, 4, 3), np.uint8), index, index / 30, None), faces, np.array([500.0, 500.0]), np.array([320.0, 240.0]), {})

    sink = RecordingSink(tmp_path / "sink.npz", Head(), source="test", metadata={"refine": True, "refine_iters": 3, "detector": "full-range"})
    sink(result(0, [face(3, "calibrating", 0.5), face(5, "given", 2.0)]))
    sink(result(1, []))
    sink(result(2, [face(3, "locked", 1.5)]))
    sink.close()
    take = read_take(tmp_path / "sink.npz")
    assert take.frame_index.tolist() == [0, 0, 1, 2] and take.track_id.tolist() == [3, 5, -1, 3]
    assert [IDENTITY_STATES[s] for s in take.identity_state] == ["calibrating", "given", "none", "locked"]
    assert take.params["identity"][[0, 1, 3], 0].tolist() == [1.5, 2.0, 1.5]  # track 3's last (locked) identity
    assert take.params["expression"][[0, 1, 3], 0].tolist() == [3.0, 5.0, 3.0]
    assert take.metadata["refine"] is True and take.metadata["refine_iters"] == 3 and take.metadata["detector"] == "full-range"


def test_export_writes_one_mesh_per_face_of_a_multi_face_take(tmp_path, ict_npz_path):
    from tracker.takes.meshes import export_meshes, load_take_model

    path = tmp_path / "two.npz"
    with Recorder(path, "ict", {"identity": 100, "expression": 53}) as recorder:
        for index, tracks in ((10, (1, 2)), (11, ()), (12, (1,))):
            if not tracks:
                recorder.append(index / 30, index, None)
            for track in tracks:
                recorder.append(index / 30, index, {"identity": np.full(100, 0.1 * track), "expression": np.zeros(53)}, track_id=track, identity_state="locked")
    take = read_take(path)
    result = export_meshes(take, load_take_model(take, ict_npz_path), tmp_path / "meshes")
    assert [p.name for p in result.written] == ["frame_000010_track1.obj", "frame_000010_track2.obj", "frame_000012_track1.obj"]
    assert result.skipped == [11]


def test_a_take_keeps_the_raw_arkit_weights_beside_the_profiled_ones(tmp_path):
    """``arkit`` holds the weights the streams sent (after the user's profile), ``arkit_raw`` the
    tracker's own: both survive the journal and the finished take; given none, the raw weights
    are the weights."""
    path = tmp_path / "raw.npz"
    profiled, raw = np.full(52, 0.25, np.float32), np.full(52, 0.5, np.float32)
    with Recorder(path, "ict", GROUPS) as recorder:
        recorder.append(0.0, 0, {g: np.zeros(n) for g, n in GROUPS.items()}, arkit=profiled, arkit_raw=raw)
        recorder.append(0.1, 1, {g: np.zeros(n) for g, n in GROUPS.items()}, arkit=profiled)
        recorder.append(0.2, 2, None)
        journal = read_take(journal_path(path))
    for take in (journal, read_take(path)):
        assert np.array_equal(take.arkit[0], profiled) and np.array_equal(take.arkit_raw[0], raw)
        assert np.array_equal(take.arkit_raw[1], profiled), "no raw weights given: the weights"
        assert np.isnan(take.arkit_raw[2]).all()


def test_takes_from_before_the_raw_weights_read_their_weights_as_raw(tmp_path):
    from tracker.takes.recording import _record_fields

    fields = _record_fields(GROUPS, "before raw weights")
    assert "arkit_raw" not in [name for name, _, _ in fields] and "arkit" in [name for name, _, _ in fields]
    records = np.zeros(3, dtype=np.dtype(fields))
    records["frame_index"], records["timestamp"], records["face_found"], records["track_id"] = range(3), (0.0, 0.1, 0.2), 1, 0
    records["arkit"] = np.linspace(0, 1, 52, dtype=np.float32)
    header = json.dumps({"head_model": "ict", "groups": GROUPS, "metadata": {}, "identity_group": None,
                         "record_fields": [[n, d, list(s)] for n, d, s in fields], "record_size": records.dtype.itemsize + 4}).encode()
    body = b"".join(r.tobytes() + struct.pack("<I", zlib.crc32(r.tobytes())) for r in records)
    (tmp_path / "old.npz.partial").write_bytes(struct.pack("<8sII", b"N2FTAKE1", len(header), zlib.crc32(header)) + header + body)
    journal = read_take(tmp_path / "old.npz.partial")
    assert np.array_equal(journal.arkit_raw, journal.arkit) and journal.arkit[0, -1] == 1.0
    arrays = {k: v for k, v in journal.arrays().items() if k != "arkit_raw"}  # a finished take of that version
    np.savez(tmp_path / "old.npz", **arrays)
    take = read_take(tmp_path / "old.npz")
    assert np.array_equal(take.arkit_raw, take.arkit) and np.array_equal(take.arkit, journal.arkit)
