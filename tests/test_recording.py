"""Take recorder: round trip, crash safety (SIGKILL, cut journals, Ctrl-C), concurrency, recovery CLI."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tracker.errors import TrackerError
from tracker.recording import Recorder, journal_path, main, read_take

GROUPS = {"identity": 4, "expression": 3}
PROJECT = Path(__file__).resolve().parent.parent


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
    """Row r of ``take`` holds ``_frame(frames[r])``."""
    assert len(take) == len(frames)
    for row, i in enumerate(frames):
        expected = _frame(i)
        assert take.timestamp[row] == expected["timestamp"] and take.frame_index[row] == i
        assert take.face_found[row] == (expected["params"] is not None)
        if expected["params"] is None:
            for values in (take.params["identity"], take.params["expression"], take.rotation_6d, take.translation, take.crop_box):
                assert np.isnan(values[row]).all()
        else:
            for group, values in expected["params"].items():
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
        assert {"params/identity", "params/expression", "rotation_6d", "focal", "head_model", "groups"} <= set(npz.files)
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
from tracker.recording import Recorder
sys.path.insert(0, sys.argv[2])
from tests.test_recording import GROUPS, _frame
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
    assert main(["--recover", str(stray)]) == 0
    assert "8 frames, 7 with a face" in capsys.readouterr().out
    assert not stray.exists()
    take = read_take(tmp_path / "take.npz")
    assert take.complete
    _check(take, range(8))
    stray.write_bytes(killed)
    assert main(["--recover", str(stray)]) == 2  # take.npz exists
    assert "--force" in capsys.readouterr().err
    assert main(["--recover", str(stray), "--force"]) == 0
    stray.write_bytes(b"no journal")
    assert main(["--recover", str(stray), "--out", str(tmp_path / "y.npz")]) == 2
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
    with pytest.raises(TrackerError, match="unfinished recording"):
        _recorder(path)  # its journal is in the way
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

    from tracker.export import export_meshes, load_take_model
    from tracker.export import main as export_main
    from tracker.geometry.camera import head_to_camera
    from tracker.geometry.rotations import euler_to_rotation_6d, rotation_6d_to_matrix
    from tracker.mesh_io import read_obj

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
