"""Takes and their exports in hostile hands: an output naming the input, planted links, damaged
values and clocks, looped sources, forged headers, huge mesh exports and Ctrl-C. Every case ends
with one clear error line (rc 2) or a clean stop (rc 130), and nothing is lost: the inputs stay
byte for byte, no temporary file is left, every file written is whole."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.live.test_sources import write_video
from tests.takes.readers import parse_timecode
from tracker.errors import TrackerError
from tracker.export import main as export_main
from tracker.live.sources import open_source
from tracker.n2fnet.checkpoint import save_checkpoint
from tracker.takes.__main__ import main as takes_main
from tracker.takes.recording import Recorder, journal_path, read_take, write_take

PROJECT = Path(__file__).resolve().parents[2]
GROUPS = {"identity": 100, "expression": 53}
NO_FACE = 3  # the frame of the take without a face (its record holds NaN by design)
FACE_RECORD = 4  # a record with a face (frame 4, record 4)
NAN, INF = float("nan"), float("inf")


def _record_take(path: Path, frames: int = 6, times=None) -> Path:
    """A finished ICT take of ``frames`` frames (frame NO_FACE without a face), every field recorded;
    ``times`` (frame -> (timestamp, media_time)); default 10 + i / 30 and i / 30."""
    rng = np.random.default_rng(0)
    with Recorder(path, "ict", GROUPS, focal=(500.0, 500.0), principal=(320.0, 240.0), source="test") as recorder:
        for i in range(frames):
            timestamp, media_time = times(i) if times else (10.0 + i / 30.0, i / 30.0)
            if i == NO_FACE:
                recorder.append(timestamp, i, None, media_time=media_time)
                continue
            angle = 0.1 * np.sin(i)
            recorder.append(timestamp, i, {"identity": np.full(100, 0.05), "expression": rng.uniform(0.0, 1.0, 53)},
                            rotation_6d=[np.cos(angle), 0.0, -np.sin(angle), 0.0, 1.0, 0.0], translation=[0.01 * i, 0.0, 0.6],
                            arkit=rng.uniform(0.0, 1.0, 52), eye_angles=rng.uniform(-0.2, 0.2, (2, 2)), media_time=media_time)
    return path


@pytest.fixture
def take(tmp_path: Path) -> Path:
    return _record_take(tmp_path / "take.npz")


@pytest.fixture(scope="module")
def ict_model(ict_npz_path: Path):
    from tracker.head_models import load_head_model

    return load_head_model("ict", ict_npz_path)


@pytest.fixture
def model(monkeypatch, ict_model, ict_npz_path: Path) -> Path:
    """The ICT model's path for --head-model-path; the model is loaded once per module."""
    import tracker.head_models

    monkeypatch.setattr(tracker.head_models, "load_head_model", lambda name, path=None, **options: ict_model)
    return ict_npz_path


def _export(capsys, *args) -> tuple[int, str, str]:
    rc = export_main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error(err: str) -> str:
    """The one line a refused command prints."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files in ``folder`` (and below)."""
    return [path for path in folder.rglob("*") if ".tmp" in path.name]


# -- 1. an output that is the take ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "glb", "obj", "ply"])
@pytest.mark.parametrize("link", ["itself", "symlink", "hardlink"])
def test_export_refuses_an_output_that_is_the_take(take, tmp_path, capsys, model, fmt, link):
    before = take.read_bytes()
    out = take if link == "itself" else tmp_path / f"{link}.{fmt}"
    if link == "symlink":
        out.symlink_to(take)
    elif link == "hardlink":
        os.link(take, out)
    rc, _, err = _export(capsys, take, "--format", fmt, "--out", out, "--head-model-path", model)
    assert rc == 2 and "is the take being exported" in _one_error(err)
    assert take.read_bytes() == before and not _leftovers(tmp_path)


def test_mesh_export_refuses_a_mesh_that_would_be_the_take(tmp_path, capsys, model):
    folder = tmp_path / "meshes"
    folder.mkdir()
    take = _record_take(folder / "frame_000000.obj")  # the take carries the first mesh's name
    before = take.read_bytes()
    rc, _, err = _export(capsys, take, "--out", folder, "--head-model-path", model)
    assert rc == 2 and "would overwrite the take being exported" in _one_error(err)
    assert take.read_bytes() == before and sorted(folder.iterdir()) == [take]


def test_export_refuses_the_take_s_name_when_it_reads_the_take_from_its_journal(tmp_path, capsys):
    journal = _journal(tmp_path)  # take.npz is missing: the export reads take.npz.partial
    before = journal.read_bytes()
    for fmt in ("csv", "obj"):
        rc, _, err = _export(capsys, tmp_path / "take.npz", "--format", fmt, "--out", tmp_path / "take.npz")
        assert rc == 2 and "is the take being exported" in _one_error(err)
    assert journal.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["take.npz.partial"]


# -- 2. recovery onto its own journal -------------------------------------------------------------
def _journal(tmp_path: Path) -> Path:
    """An unfinished take's journal (as a crash leaves it) at tmp_path/take.npz.partial."""
    path = tmp_path / "take.npz"
    recorder = Recorder(path, "ict", {"identity": 4, "expression": 3})
    for i in range(50):
        recorder.append(i / 30, i, {"identity": np.arange(4.0), "expression": np.full(3, i)}, rotation_6d=[1, 0, 0, 0, 1, 0], translation=[0, 0, 1])
    data = recorder.journal_path.read_bytes()
    recorder.close()
    path.unlink()
    journal_path(path).write_bytes(data)
    return journal_path(path)


@pytest.mark.parametrize("link", ["itself", "symlink", "hardlink"])
def test_recovery_refuses_to_write_the_take_over_its_journal(tmp_path, capsys, link):
    journal = _journal(tmp_path)
    before = journal.read_bytes()
    out = journal if link == "itself" else tmp_path / "out.npz"
    if link == "symlink":
        out.symlink_to(journal)
    elif link == "hardlink":
        os.link(journal, out)
    for force in (["--force"], []):  # never the "exists: pass --force" advice: that would destroy it
        assert takes_main(["recover", str(journal), "--out", str(out), *force]) == 2
        assert "is the journal being recovered" in _one_error(capsys.readouterr().err)
    assert journal.read_bytes() == before and not (tmp_path / "take.npz").exists() and not _leftovers(tmp_path)
    assert takes_main(["recover", str(journal)]) == 0  # and it is still recoverable
    assert len(read_take(tmp_path / "take.npz")) == 50


# -- 3. planted links ------------------------------------------------------------------------------
def test_no_write_follows_a_link_planted_at_the_old_temporary_names(take, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("out.csv.tmp", "rec.npz.tmp", "net.pt.tmp"):
        (tmp_path / name).symlink_to(victim)
    rc, out, err = _export(capsys, take, "--format", "csv", "--out", tmp_path / "out.csv")
    assert rc == 0, err
    recorded = _record_take(tmp_path / "rec.npz")  # a finished recording
    save_checkpoint(tmp_path / "net.pt", {"model": {}})
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.csv").read_text().startswith("Timecode,") and not (tmp_path / "out.csv").is_symlink()
    assert len(read_take(recorded)) == 6 and not recorded.is_symlink() and not (tmp_path / "net.pt").is_symlink()


def test_staging_never_writes_through_a_link_even_at_the_name_it_draws(tmp_path, monkeypatch):
    from tracker.files import atomic_write as module

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    draws = iter(["0badc0de", "12345678", "0badc0de", "9abcdef0"])
    monkeypatch.setattr(module.secrets, "token_hex", lambda count: next(draws))
    (tmp_path / ".mesh.obj.0badc0de.tmp.obj").symlink_to(victim)  # planted at the first name drawn
    module.atomic_write(tmp_path / "mesh.obj", b"v 0 0 0\n")
    (tmp_path / ".net.xml.0badc0de.tmp.bin").symlink_to(victim)  # OpenVINO's .bin, beside a free .xml name
    with module.staged(tmp_path / "net.xml", companions=(".bin",)) as temporary:
        temporary.write_bytes(b"<xml/>")
        temporary.with_suffix(".bin").write_bytes(b"weights")  # what openvino.save_model does
    assert victim.read_text() == "precious"
    assert (tmp_path / "mesh.obj").read_bytes() == b"v 0 0 0\n"
    assert (tmp_path / "net.xml").read_bytes() == b"<xml/>" and (tmp_path / "net.bin").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp" in p.name) == [".mesh.obj.0badc0de.tmp.obj", ".net.xml.0badc0de.tmp.bin"]


@pytest.mark.parametrize("failure", [OSError, KeyboardInterrupt])
def test_a_failed_staged_write_leaves_the_old_files_and_no_temporary(tmp_path, failure):
    from tracker.files.atomic_write import staged, temporary_files

    target = tmp_path / "net.xml"
    target.write_bytes(b"old xml")
    target.with_suffix(".bin").write_bytes(b"old weights")
    with pytest.raises(failure):
        with staged(target, companions=(".bin",)) as temporary:
            temporary.write_bytes(b"half")
            raise failure()
    assert target.read_bytes() == b"old xml" and target.with_suffix(".bin").read_bytes() == b"old weights"
    assert not temporary_files(target) and sorted(p.name for p in tmp_path.iterdir()) == ["net.bin", "net.xml"]


@pytest.mark.parametrize("moment", ["the main file just created", "the companion just created", "staging just returned"])
def test_an_interrupt_while_the_staged_files_are_created_leaves_none(tmp_path, monkeypatch, moment):
    """Ctrl-C arrives between any two steps (a signal handler runs between bytecodes): right after a
    staged file's creation, before the staging had recorded it, it used to leave that file behind
    (seen in the suite: a background mesh export left .frame_000005.ply.*.tmp.ply)."""
    from tracker.files import atomic_write as module

    target = tmp_path / "net.xml"
    target.write_bytes(b"old xml")
    real_open, real_create = module.os.open, module._create_staged
    opened = []

    def open_then_interrupt(path, flags, *mode):
        fd = real_open(path, flags, *mode)
        opened.append(path)
        if flags & os.O_EXCL and len(opened) == (1 if moment == "the main file just created" else 2):
            os.close(fd)
            raise KeyboardInterrupt  # the file exists, and the staging has not seen it yet
        return fd

    def create_then_interrupt(*args):
        real_create(*args)
        raise KeyboardInterrupt  # after the files are created, before the staging could clean up after its body

    if moment == "staging just returned":
        monkeypatch.setattr(module, "_create_staged", create_then_interrupt)
    else:
        monkeypatch.setattr(module.os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with module.staged(target, companions=(".bin",)) as temporary:
            temporary.write_bytes(b"new")
    assert target.read_bytes() == b"old xml" and not module.temporary_files(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.xml"]


def test_a_link_planted_at_the_journal_name_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data, not a journal")
    path = tmp_path / "take.npz"
    journal_path(path).symlink_to(victim)
    with pytest.raises(TrackerError, match="is a symbolic link, not a recording journal"):
        Recorder(path, "ict", GROUPS)
    assert victim.read_text() == "precious data, not a journal" and journal_path(path).is_symlink() and not path.exists()


# -- 4. values that are not finite numbers ----------------------------------------------------------
@pytest.mark.parametrize("fmt", ["obj", "ply", "glb", "csv"])
@pytest.mark.parametrize("field, value", [("params/expression", NAN), ("params/identity", NAN), ("rotation_6d", INF), ("translation", NAN)])
def test_export_refuses_values_that_are_not_finite_in_a_record_with_a_face(take, tmp_path, capsys, model, fmt, field, value):
    damaged = read_take(take)
    if field == "params/identity":  # stored once per track: every record of the track gets it
        damaged.params["identity"][damaged.face_found, 7] = value
        frame = 0
    else:
        values = damaged.params[field[len("params/") :]] if field.startswith("params/") else getattr(damaged, field)
        values[FACE_RECORD, 1] = value  # one value: the rest of the record is fine
        frame = FACE_RECORD
    path = write_take(damaged, tmp_path / "damaged.npz")
    before = path.read_bytes()
    out = tmp_path / f"out.{fmt}"
    rc, _, err = _export(capsys, path, "--format", fmt, "--out", out, "--head-model-path", model)
    line = _one_error(err)
    assert rc == 2 and f"holds {value} in {field} at frame {frame} (record {frame})" in line, line
    assert path.read_bytes() == before and not out.exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize("field, value", [("arkit", NAN), ("eye_angles", INF)])
def test_csv_refuses_damaged_arkit_weights_and_eye_angles(take, tmp_path, capsys, field, value):
    damaged = read_take(take)
    getattr(damaged, field).reshape(len(damaged), -1)[FACE_RECORD, 1] = value  # one eye's pitch, one weight
    path = write_take(damaged, tmp_path / "damaged.npz")
    rc, _, err = _export(capsys, path, "--format", "csv", "--out", tmp_path / "out.csv")
    assert rc == 2 and f"holds {value} in {field} at frame {FACE_RECORD} (record {FACE_RECORD})" in _one_error(err)
    assert not (tmp_path / "out.csv").exists()


def test_a_record_without_a_face_holds_nan_by_design(take, tmp_path, capsys, model):
    taken = read_take(take)
    assert not taken.face_found[NO_FACE] and np.isnan(taken.params["expression"][NO_FACE]).all()
    for fmt, out in (("csv", tmp_path / "t.csv"), ("glb", tmp_path / "t.glb"), ("ply", tmp_path / "meshes")):
        rc, printed, err = _export(capsys, take, "--format", fmt, "--out", out, "--head-model-path", model)
        assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "meshes").iterdir()) == [f"frame_{i:06d}.ply" for i in (0, 1, 2, 4, 5)]


# -- 5. clocks that are NaN or go back -------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "glb"])
@pytest.mark.parametrize("fault", ["nan", "back"])
def test_export_refuses_a_clock_that_is_nan_or_goes_back(take, tmp_path, capsys, model, fmt, fault):
    damaged = read_take(take)
    damaged.media_time[FACE_RECORD] = NAN if fault == "nan" else damaged.media_time[1]  # media time unusable: the timestamps count
    damaged.timestamp[FACE_RECORD] = NAN if fault == "nan" else damaged.timestamp[1]
    path = write_take(damaged, tmp_path / "damaged.npz")
    before = path.read_bytes()
    rc, _, err = _export(capsys, path, "--format", fmt, "--out", tmp_path / f"out.{fmt}", "--head-model-path", model)
    line = _one_error(err)
    assert rc == 2 and f"frame {FACE_RECORD} (record {FACE_RECORD})" in line, line
    assert ("no time (NaN)" if fault == "nan" else "time goes back") in line
    assert path.read_bytes() == before and not (tmp_path / f"out.{fmt}").exists()


# -- 6. looped sources ------------------------------------------------------------------------------
def test_a_looped_file_or_folder_keeps_counting_media_time(tmp_path):
    video = write_video(tmp_path / "loop.avi", 5, 30.0)
    with open_source(video, loop=True) as source:
        frames = [source.read(timeout=5) for _ in range(12)]
    assert [f.index for f in frames] == list(range(12))
    assert [f.source_time for f in frames] == pytest.approx([i / 30 for i in range(12)], abs=1e-3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    with open_source(folder, loop=True, fps=10) as source:
        times = [source.read(timeout=5).source_time for _ in range(7)]
    assert times == pytest.approx([i / 10 for i in range(7)])


def test_a_take_recorded_from_a_looped_file_exports_a_csv_whose_time_keeps_going(tmp_path, capsys):
    video = write_video(tmp_path / "loop.avi", 5, 30.0)
    path = tmp_path / "looped.npz"
    rng = np.random.default_rng(1)
    with open_source(video, loop=True) as source, Recorder(path, "ict", GROUPS) as recorder:
        for _ in range(12):  # 2.4 loops, recorded as tracker.live.sinks records each frame
            frame = source.read(timeout=5)
            recorder.append(frame.timestamp, frame.index, {"identity": np.zeros(100), "expression": rng.uniform(size=53)},
                            rotation_6d=[1, 0, 0, 0, 1, 0], translation=[0, 0, 0.6], arkit=rng.uniform(size=52), media_time=frame.source_time)
    rc, _, err = _export(capsys, path, "--format", "csv", "--out", tmp_path / "looped.csv", "--timecode-fps", "60")
    assert rc == 0, err
    rows = (tmp_path / "looped.csv").read_text().splitlines()[1:]
    assert [parse_timecode(row.split(",")[0], 60) for row in rows] == pytest.approx([i / 30 for i in range(12)], abs=1e-3)


def test_a_take_looped_before_media_time_kept_counting_exports_at_its_capture_times(tmp_path, capsys):
    path = _record_take(tmp_path / "old_loop.npz", frames=8, times=lambda i: (100.0 + i / 25.0, (i % 4) / 30.0))  # media time restarts
    assert read_take(path).clock() == pytest.approx(100.0 + np.arange(8) / 25.0)
    rc, _, err = _export(capsys, path, "--format", "csv", "--out", tmp_path / "old.csv", "--timecode-fps", "50")
    assert rc == 0, err
    rows = (tmp_path / "old.csv").read_text().splitlines()[1:]
    assert [parse_timecode(row.split(",")[0], 50) for row in rows] == pytest.approx([i / 25 for i in range(8) if i != NO_FACE])


# -- 7. forged or damaged headers, and the memory a take may take ----------------------------------
def _rewrite_npz(source: Path, out: Path, change: dict) -> Path:
    """``source`` with members changed: {member name: its .npy bytes -> new bytes}."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            new.writestr(info.filename, change.get(info.filename[: -len(".npy")], lambda same: same)(data))
    return out


def _npy(text: str):
    """A change that replaces a member by the 0-d string ``text``."""
    stream = io.BytesIO()
    np.save(stream, np.array(text))
    return lambda _: stream.getvalue()


def _huge_shape(data: bytes) -> bytes:
    """The .npy ``data`` (float64, format 1.0) with a header that declares 10**12 values."""
    assert np.lib.format.read_magic(io.BytesIO(data)) == (1, 0)
    size = struct.unpack_from("<H", data, 8)[0]
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    return data[:10] + header.ljust(size - 1).encode() + b"\n" + data[10 + size :]


def _rewrite_journal(source: Path, out: Path, change) -> Path:
    data = source.read_bytes()
    size = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(data[16 : 16 + size])
    change(header)
    body = json.dumps(header).encode()
    out.write_bytes(data[:8] + struct.pack("<II", len(body), zlib.crc32(body)) + body + data[16 + size :])
    return out


NPZ_CASES = {
    "metadata a list": ({"metadata": _npy("[1, 2]")}, "the metadata must be a JSON object, got a JSON list"),
    "groups a list": ({"groups": _npy("[100, 53]")}, "the group list must be a JSON object"),
    "a group of 10**12 values": ({"groups": _npy(json.dumps({"identity": 100, "expression": 10**12}))}, "group sizes must be whole numbers"),
    "a shape of 10**12": ({"timestamp": _huge_shape}, "declares (1000000000000,)"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_read_take_refuses_a_forged_npz_with_one_clear_error(take, tmp_path, capsys, case):
    change, message = NPZ_CASES[case]
    forged = _rewrite_npz(take, tmp_path / "forged.npz", change)
    before = forged.read_bytes()
    with pytest.raises(TrackerError, match=re.escape(message)):
        read_take(forged)
    rc, _, err = _export(capsys, forged, "--format", "csv", "--out", tmp_path / "out.csv")
    assert rc == 2 and message in _one_error(err) and forged.read_bytes() == before


JOURNAL_CASES = {
    "metadata a list": (lambda h: h.update(metadata=[1]), "the metadata must be a JSON object, got a JSON list"),
    "groups a list": (lambda h: h.update(groups=[4, 3]), "the group list must be a JSON object"),
    "a group of 10**12 values": (lambda h: (h["groups"].update(expression=10**12), h["record_fields"][-1].__setitem__(2, [10**12])),
                                 "group sizes must be whole numbers"),
}


@pytest.mark.parametrize("case", list(JOURNAL_CASES))
def test_read_take_refuses_a_forged_journal_with_one_clear_error(tmp_path, capsys, case):
    change, message = JOURNAL_CASES[case]
    forged = _rewrite_journal(_journal(tmp_path), tmp_path / "forged.npz.partial", change)
    before = forged.read_bytes()
    with pytest.raises(TrackerError, match=re.escape(message)):
        read_take(forged)
    rc, _, err = _export(capsys, forged, "--format", "csv", "--out", tmp_path / "out.csv")
    assert rc == 2 and message in _one_error(err) and forged.read_bytes() == before


MEASURE_READ = """
import resource, sys
from tracker.errors import TrackerError
from tracker.takes.recording import read_take
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_take(sys.argv[1])
    outcome = "read"
except TrackerError as error:
    outcome = str(error)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
print(outcome)
"""


def test_a_compressed_take_that_would_take_far_more_memory_than_its_size_is_refused_first(take, tmp_path):
    records = 200_000  # about 107 MB of arrays (and 80 MB more for the identity of every record)
    with np.load(take) as small:
        arrays = {key: np.resize(small[key], (records, *small[key].shape[1:])) if small[key].ndim and key.split("/")[0] != "tracks"
                  else small[key] for key in small.files}
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, **arrays)
    del arrays
    assert bomb.stat().st_size < 8e6
    result = subprocess.run([sys.executable, "-c", MEASURE_READ, str(bomb)], capture_output=True, text=True, cwd=PROJECT, check=True)
    grown_mb, outcome = result.stdout.splitlines()
    assert "MB of arrays in a" in outcome and "at most 16:1 is read" in outcome, outcome
    assert int(grown_mb) < 40, f"reading the refused take took {grown_mb} MB"


# -- 8. per-frame mesh exports: the size first, progress, free space, Ctrl-C -------------------------
def test_mesh_export_says_how_many_files_and_how_much_space_before_writing(take, tmp_path, capsys, model, monkeypatch):
    import tracker.export

    monkeypatch.setattr(tracker.export, "PROGRESS_INTERVAL", 0.0)  # a progress line per file (stderr is no terminal here)
    rc, out, err = _export(capsys, take, "--out", tmp_path / "meshes", "--head-model-path", model)
    assert rc == 0, err
    first = out.splitlines()[0]
    match = re.fullmatch(r"writing 5 OBJ meshes \(ict, 26719 vertices\) to .*meshes: about ([\d.]+) MB each, ([\d.]+) MB in all", first)
    assert match, first
    written = sum(path.stat().st_size for path in (tmp_path / "meshes").iterdir())
    assert float(match.group(2)) == pytest.approx(written / 1e6, rel=0.02)
    assert err.splitlines() == [f"writing OBJ meshes: {n}/5 files" for n in range(1, 6)]


def test_mesh_export_refuses_when_the_disk_has_not_the_space(take, tmp_path, capsys, model, monkeypatch):
    import tracker.takes.meshes

    monkeypatch.setattr(tracker.takes.meshes.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 3_000_000})())
    rc, _, err = _export(capsys, take, "--out", tmp_path / "meshes", "--head-model-path", model)
    line = _one_error(err)
    assert rc == 2 and re.search(r"the 5 OBJ meshes need about 10\.\d MB and the disk holding .*meshes has 3 MB free", line), line
    assert "--format glb" in line and not (tmp_path / "meshes").exists()


@pytest.mark.parametrize("job", ["foreground", "background job with SIGINT ignored"])
def test_ctrl_c_stops_a_mesh_export_after_whole_files(tmp_path, ict_npz_path, job):
    take = _record_take(tmp_path / "long.npz", frames=300)
    before = take.read_bytes()
    out = tmp_path / "meshes"
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if job != "foreground" else None
    process = subprocess.Popen([sys.executable, "-m", "tracker.export", str(take), "--format", "ply", "--out", str(out),
                                "--head-model-path", str(ict_npz_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=PROJECT, preexec_fn=ignore)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and len(list(out.glob("*.ply"))) < 3:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        printed, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert printed.startswith("writing 299 PLY meshes") and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"interrupted: wrote (\d+) of 299 meshes to {re.escape(str(out))} \(each whole\)", last)
    assert match, err
    files = sorted(out.iterdir())
    assert len(files) == int(match.group(1)) and 3 <= len(files) < 299 and not _leftovers(out)
    size = len(b"".join(open(files[0], "rb").read().partition(b"end_header\n")[:2])) + 26719 * 12 + 52220 * 13
    for file in files:  # every file whole: its header, 26719 vertices, 52220 triangles
        data = file.read_bytes()
        assert len(data) == size and b"element vertex 26719\n" in data and b"element face 52220\n" in data, file
    assert take.read_bytes() == before


# -- 9. --help without the heavy imports ------------------------------------------------------------
@pytest.mark.parametrize("module", ["tracker.export", "tracker.takes"])
def test_help_imports_no_heavy_module(module):
    code = (f"import runpy, sys\nsys.argv = ['{module}', '--help']\ntry:\n    runpy.run_module('{module}', run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'pygltflib', 'tqdm', 'tracker.head_models') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, check=True)
    assert "usage: python -m" in result.stdout and result.stdout.splitlines()[-1] == "[]", result.stdout[-500:]
