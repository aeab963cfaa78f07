"""``python -m app.live`` when things go wrong: bad frames, failed set-ups, bad options, signals,
full disks. Every case ends with one clear message, and nothing tracked is lost."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app import live
from tests.app.test_live_app import interrupt_once_recording
from tests.takes.test_recording_safety import small_disk  # noqa: F401  (a fixture)
from tracker.files.atomic_write import temporary_files
from tracker.takes.recording import journal_path, read_take

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint: Path) -> Path:
    return untrained_checkpoint


@pytest.fixture(scope="module")
def video(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos" / "single_face.mp4"


@pytest.fixture(scope="module")
def folder_with_a_bad_image(video: Path, tmp_path_factory) -> Path:
    """15 frames of the video as PNGs, frame 11 replaced by bytes that are no image."""
    folder = tmp_path_factory.mktemp("frames")
    capture = cv2.VideoCapture(str(video))
    for i in range(15):
        ok, image = capture.read()
        assert ok
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    capture.release()
    (folder / "011.png").write_bytes(b"\x89PNG but damaged")
    return folder


def _headless(checkpoint: Path, *extra: str) -> list[str]:
    return ["--headless", "--checkpoint", str(checkpoint), "--quiet", *extra]


def test_bad_image_in_a_folder_is_skipped_and_every_tracked_frame_recorded(checkpoint, folder_with_a_bad_image, tmp_path, capsys):
    take_path = tmp_path / "take.npz"
    assert live.main(_headless(checkpoint, "--video", str(folder_with_a_bad_image), "--record", str(take_path))) == 0
    out = capsys.readouterr().out
    assert "frames: 14 tracked of 14 read" in out and "1 bad frames skipped" in out
    assert read_take(take_path).frame_index.tolist() == [i for i in range(15) if i != 11]


@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_on_bad_frame_stop_keeps_the_frames_before_it(checkpoint, folder_with_a_bad_image, tmp_path, capsys, mode):
    take_path = tmp_path / "take.npz"
    code = live.main(_headless(checkpoint, "--video", str(folder_with_a_bad_image), "--record", str(take_path), "--on-bad-frame", "stop", "--mode", mode))
    out, err = capsys.readouterr()
    assert code == 2 and "011.png" in err and "Traceback" not in err
    assert "frames: 11 tracked of 11 read" in out and f"recorded: {take_path}" in out  # the figures, then the error
    assert read_take(take_path).frame_index.tolist() == list(range(11))


def test_failed_set_up_leaves_no_journal_behind(checkpoint, video, tmp_path, capsys):
    take_path = tmp_path / "take.npz"
    no_driver = _headless(checkpoint, "--video", str(video), "--record", str(take_path), "--virtualcam", "--virtualcam-backend", "v4l2loopback")
    assert live.main(no_driver) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not journal_path(take_path).exists() and not take_path.exists()
    assert live.main(_headless(checkpoint, "--video", str(video), "--record", str(take_path), "--max-frames", "3")) == 0
    assert len(read_take(take_path)) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--record", "{tmp}"], "is a folder"),
        (["--record", "{tmp}", "--overwrite"], "is a folder"),
        (["--record", "{tmp}/a_file/sub/take.npz"], "is a file, not a folder"),
        (["--flame-dir", "{tmp}"], "FLAME files are missing or malformed"),
        (["--flame-dir", "{tmp}", "--no-refine"], "which is off: leave out --no-refine"),
        (["--head-model", "flame", "--refine-start", "network"], "--refine-start network: the checkpoint"),
        (["--head-model", "ict", "--flame-dir", "{tmp}"], "gives FLAME files, but the ICT head model is fitted"),
    ],
)
def test_bad_settings_give_one_clear_error(checkpoint, video, tmp_path, capsys, argv, message):
    (tmp_path / "a_file").write_text("x")
    argv = [value.replace("{tmp}", str(tmp_path)) for value in argv]
    assert live.main(_headless(checkpoint, "--video", str(video), *argv)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and "Traceback" not in err
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(checkpoint, video, capsys):
    assert live.main(_headless(checkpoint, "--video", str(video), "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU is usable on this machine" in err and "--device cpu" in err


@pytest.mark.parametrize("frames", ["0", "-3"])
def test_max_frames_must_be_positive(checkpoint, video, capsys, frames):
    with pytest.raises(SystemExit) as exit_:
        live.main(_headless(checkpoint, "--video", str(video), "--max-frames", frames))
    assert exit_.value.code == 2 and "must be a positive whole number" in capsys.readouterr().err


_SIGNALLED_WHILE_LOADING = """
import os, signal, sys, time
from tracker.live.face_tracker import FaceTracker

def loading(options):  # the signal arrives while the model loads
    os.kill(os.getpid(), signal.{how})
    time.sleep(5)
    raise AssertionError("the signal did not interrupt the start-up")

FaceTracker.from_options = staticmethod(loading)
from app import live
sys.exit(live.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_interrupt_during_start_up(checkpoint, video, tmp_path, how):
    """In a fresh process, as a user's run is: in this long test process, a signal sent to itself
    after many native libraries have started threads and handlers crashed the interpreter now and
    then (SIGSEGV), which no real run showed (Ctrl-C at 1.6-2.5 s into the set-up: rc 2 each time)."""
    take_path = tmp_path / "take.npz"
    script = _SIGNALLED_WHILE_LOADING.replace("{how}", how)
    done = subprocess.run([sys.executable, "-c", script, *_headless(checkpoint, "--video", str(video), "--record", str(take_path))],
                          capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "interrupted during start-up" in done.stderr and "Traceback" not in done.stderr
    assert not journal_path(take_path).exists() and not take_path.exists()


def test_video_that_ends_early_is_tracked_with_a_warning(checkpoint, video, tmp_path, caplog):
    data = bytearray(video.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 20000] = bytes(b ^ 0xA5 for b in data[middle : middle + 20000])
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    take_path = tmp_path / "take.npz"
    assert live.main(_headless(checkpoint, "--video", str(damaged), "--record", str(take_path))) == 0
    frames = len(read_take(take_path))
    assert 0 < frames < 72 and f"ended after {frames} frames, before the 72 its header declares" in caplog.text


def test_full_disk_keeps_the_journal_and_says_how_to_recover(checkpoint, video, small_disk, capsys):  # noqa: F811
    mount, fill = small_disk
    take_path = mount / "take.npz"
    fill(room=8192)  # the journal of 3 frames fits, the take beside it does not
    code = live.main(_headless(checkpoint, "--video", str(video), "--record", str(take_path), "--max-frames", "3"))
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err and "ZipFile" not in err
    assert f"python -m tracker.takes recover {journal_path(take_path)}" in err and "No space left on device" in err
    assert "frames: 3 tracked" in out and "recording kept in its journal" in out
    assert not take_path.exists() and not temporary_files(take_path)
    assert len(read_take(journal_path(take_path))) == 3


# -- subprocess runs: what a terminal, a pipe and a shell's background job see ---------------------
def _command(checkpoint: Path, video: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "app.live", "--video", str(video), "--headless", "--checkpoint", str(checkpoint), *extra]


def test_headless_progress_on_a_pipe_and_on_a_terminal(checkpoint, video):
    piped = subprocess.run(_command(checkpoint, video, "--max-frames", "20"), capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert "tracking: first frame done" in piped.stderr and "\r" not in piped.stderr  # plain lines on a pipe
    quiet = subprocess.run(_command(checkpoint, video, "--max-frames", "5", "--quiet"), capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert quiet.returncode == 0 and "tracking:" not in quiet.stderr
    leader, follower = pty.openpty()  # stderr on a terminal of 120 columns: a progress bar
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(_command(checkpoint, video, "--max-frames", "20"), stdout=subprocess.DEVNULL, stderr=follower, cwd=PROJECT)
    os.close(follower)
    shown = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 300)
        try:
            chunk = os.read(leader, 4096) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    text = shown.decode(errors="replace")
    assert "20/20" in text and "frame/s" in text and "fps" in text, text[-2000:]


def test_ctrl_c_works_in_a_background_job_that_inherited_ignored_sigint(checkpoint, video, tmp_path):
    take_path = tmp_path / "take.npz"
    command = _command(checkpoint, video, "--loop", "--record", str(take_path), "--quiet")
    # what `cmd &` in a non-interactive shell does: the job starts with SIGINT ignored
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PROJECT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    _, err = interrupt_once_recording(process, take_path)
    assert process.returncode == 130, err.decode()[-2000:]
    take = read_take(take_path)
    assert take.complete and len(take) >= 5 and np.all(np.diff(take.frame_index) == 1)
