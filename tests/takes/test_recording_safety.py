"""Nothing recorded is lost: the journal lock, damaged journals, empty journals, full disks, bad paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.takes.test_recording import PROJECT, _check, _record, _recorder
from tracker.errors import TrackerError
from tracker.files.atomic_write import temporary_files
from tracker.files.mesh_io import write_obj
from tracker.takes.__main__ import main
from tracker.takes.recording import journal_path, read_take, scan_journal

RECORDING_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from tests.takes.test_recording import _recorder, _record
recorder = _recorder(sys.argv[1], sync_interval=0.0)
_record(recorder, range(40))
print("recorded", flush=True)
sys.stdin.readline()  # still recording until told to go on
_record(recorder, range(40, 60))
recorder.close()
print("closed", flush=True)
"""


def _child(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", RECORDING_CHILD, str(path), str(PROJECT)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT, env=env)
    assert child.stdout.readline().strip() == "recorded", child.stderr.read()
    return child


def test_recovery_refuses_the_journal_of_a_live_recording(tmp_path, capsys):
    path = tmp_path / "take.npz"
    child = _child(path)
    try:
        assert main(["recover", str(journal_path(path))]) == 2
        err = capsys.readouterr().err
        assert "still being written by a running recording" in err and f"process {child.pid}" in err
        assert journal_path(path).exists() and not path.exists()
        with pytest.raises(TrackerError, match="another recording is writing"):
            _recorder(path, overwrite=True)  # a second recorder on the same take is refused too
        child.stdin.write("go on\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "closed", child.stderr.read()
    finally:
        child.kill()
        child.wait()
    _check(read_take(path), range(60))  # the live run lost nothing


def test_a_killed_recording_is_recoverable_at_once(tmp_path, capsys):
    path = tmp_path / "take.npz"
    child = _child(path)
    child.kill()  # the kernel drops its lock
    child.wait()
    assert main(["recover", str(journal_path(path))]) == 0, capsys.readouterr().err
    _check(read_take(path), range(40))
    assert not journal_path(path).exists()


def _journal(tmp_path: Path, frames: int = 100) -> tuple[bytes, int, int]:
    """(the journal bytes of ``frames`` recorded frames, the byte offset of record 0, record size)."""
    recorder = _recorder(tmp_path / "source.npz")
    _record(recorder, range(frames))
    data = recorder.journal_path.read_bytes()
    recorder.close()
    size = recorder._dtype.itemsize + 4
    return data, len(data) - frames * size, size


def test_one_damaged_record_loses_only_itself(tmp_path, capsys):
    data, first, size = _journal(tmp_path)
    damaged = bytearray(data)
    damaged[first + 46 * size + 17] ^= 0x5A  # one flipped byte inside record 46
    stray = tmp_path / "take.npz.partial"
    stray.write_bytes(bytes(damaged))
    scan = scan_journal(stray)
    assert scan.damaged == [(first + 46 * size, size)] and scan.damaged_records == 1 and scan.cut == 0
    _check(scan.take, [i for i in range(100) if i != 46])
    assert main(["recover", str(stray)]) == 0
    out, err = capsys.readouterr()
    assert "99 frames" in out
    assert "1 damaged record(s) skipped" in err and "after frame 45, before frame 47" in err and "kept" in err
    assert stray.exists(), "a journal that did not recover whole is kept"
    _check(read_take(tmp_path / "take.npz"), [i for i in range(100) if i != 46])
    assert main(["recover", str(stray), "--force", "--delete-damaged"]) == 0
    assert not stray.exists()


def test_reader_resynchronises_after_a_torn_write(tmp_path):
    data, first, size = _journal(tmp_path)
    record = lambda i: data[first + i * size : first + (i + 1) * size]  # noqa: E731
    junk = bytes(range(256)) * 3  # garbage longer than a record
    body = b"".join(record(i) for i in range(10)) + record(10)[: size // 3]  # record 10 torn: a third written
    body += b"".join(record(i) for i in range(11, 60)) + record(60)[:5] + junk + record(60)[5:]  # garbage inside record 60
    body += b"".join(record(i) for i in range(61, 100)) + record(0)[: size // 2]  # and a last record cut short
    stray = tmp_path / "take.npz.partial"
    stray.write_bytes(data[:first] + body)
    scan = scan_journal(stray)
    _check(scan.take, [i for i in range(100) if i not in (10, 60)])
    assert scan.damaged == [(first + 10 * size, size // 3), (first + 59 * size + size // 3, size + len(junk))]
    assert scan.cut == size // 2


def test_an_empty_journal_left_by_a_failed_setup_does_not_block_the_next_take(tmp_path):
    path = tmp_path / "take.npz"
    recorder = _recorder(path)
    os.close(recorder._fd)  # a run that died after opening the recorder and before any frame
    assert journal_path(path).exists()
    with _recorder(path) as again:
        _record(again, range(3))
    _check(read_take(path), range(3))
    recorder = _recorder(tmp_path / "other.npz")
    recorder.discard()  # the way a failed setup gives it up
    assert not journal_path(tmp_path / "other.npz").exists() and not (tmp_path / "other.npz").exists()
    recorder = _recorder(tmp_path / "kept.npz")
    _record(recorder, range(2))
    recorder.discard()  # with records, discarding keeps them
    _check(read_take(tmp_path / "kept.npz"), range(2))
    with_records = _recorder(tmp_path / "crashed.npz")
    _record(with_records, range(2))
    os.close(with_records._fd)
    with pytest.raises(TrackerError, match="unfinished recording is in the way"):
        _recorder(tmp_path / "crashed.npz", overwrite=True)  # a journal with frames is never replaced


def test_take_paths_that_cannot_work_fail_before_recording(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(TrackerError, match="is a folder"):
        _recorder(tmp_path / "folder", overwrite=True)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrackerError, match="is a file, not a folder"):
        _recorder(blocker / "sub" / "take.npz")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount; skipped elsewhere) and a function filling it but ``room`` bytes."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"a small disk needs a tmpfs mount (root): {result.stderr.strip()}")

    def fill(room: int) -> Path:
        ballast = mount / "ballast"
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        with ballast.open("ab") as stream:
            stream.write(b"\0" * max(0, free - room))
        return ballast

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_at_the_end_keeps_the_journal_and_says_how_to_recover(small_disk):
    mount, fill = small_disk
    path = mount / "take.npz"
    recorder = _recorder(path)
    _record(recorder, range(300))
    ballast = fill(room=4096)
    with pytest.raises(TrackerError) as error:
        recorder.close()
    message = str(error.value)
    assert "No space left on device" in message and f"python -m tracker.takes recover {journal_path(path)}" in message
    assert not path.exists() and not temporary_files(path), "no half-written take left behind"
    ballast.unlink()
    assert main(["recover", str(journal_path(path))]) == 0
    _check(read_take(path), range(300))


def test_full_disk_while_recording_keeps_every_whole_record(small_disk):
    mount, fill = small_disk
    path = mount / "take.npz"
    recorder = _recorder(path, sync_interval=0.0)
    _record(recorder, range(5))
    fill(room=0)
    with pytest.raises(TrackerError, match="frames recorded so far are in it"):
        _record(recorder, range(5, 100000))
    scan = scan_journal(journal_path(path))
    assert scan.whole and scan.cut == 0  # the journal ends on its last whole record
    assert len(scan.take) >= 5
    _check(scan.take, range(len(scan.take)))


def test_meshes_are_written_whole_or_not_at_all(small_disk):
    mount, fill = small_disk
    vertices, faces = np.random.default_rng(0).normal(size=(20000, 3)), np.zeros((100, 3), np.int64)
    old = write_obj(mount / "mesh.obj", vertices[:3], faces[:1])
    before = old.read_bytes()
    fill(room=64 * 1024)
    with pytest.raises(OSError):
        write_obj(mount / "mesh.obj", vertices, faces)  # ~1 MB of text does not fit
    assert old.read_bytes() == before and not temporary_files(old)
