"""The first seconds of a run: help and bad options before the heavy imports, signals from the
first moment, third-party lines silent unless --verbose, progress with percent and ETA, and the
inputs that used to misbehave at start-up (--focal nan, --vmc ':²', /dev/zero, a 0.05 fps file)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tracker.errors import TrackerError
from tracker.live import sinks, sources
from tracker.live.options import TrackerOptions
from tracker.live.sources import MAX_PACED_GAP, camera_index, open_source
from tracker.outputs.streaming import parse_endpoint

PROJECT = Path(__file__).resolve().parents[2]

# every program of the project that is not a training CLI (tests/train/test_train_cli_safety.py has those)
PROGRAMS = (
    "app.live",
    "app.bench_viewer",
    "app.bench_startup",
    "tracker.export",
    "tracker.takes recover",
    "tracker.bench",
    "tracker.render grid",
    "tracker.n2fnet checkpoint",
    "tracker.n2fnet runtime",
    "tracker.n2fnet quantize",
    "tracker.head_models ict-source",
    "tracker.head_models ict-convert",
)
HEAVY = ("torch", "mediapipe", "openvino", "timm")


def _imported(argv: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime ARGV``: the process (its stderr without the import lines) and the
    top-level modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, cwd=PROJECT, timeout=120)
    lines = done.stderr.splitlines()
    timings = [line for line in lines if line.startswith("import time:")]
    modules = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in timings[1:]}
    done.stderr = "\n".join(line for line in lines if not line.startswith("import time:"))
    return done, modules


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_answers_before_the_heavy_imports(program):
    done, modules = _imported(["-m", *program.split(), "--help"])
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-1500:]
    assert not modules & set(HEAVY), f"python -m {program} --help imported {sorted(modules & set(HEAVY))}"


@pytest.mark.parametrize("focal", ["nan", "inf", "-inf", "0", "-5", "abc"])
def test_bad_focal_is_refused_before_the_set_up(focal):
    done, modules = _imported(["-m", "app.live", "--video", "clip.mp4", "--headless", f"--focal={focal}"])
    assert done.returncode == 2 and "--focal: must be a finite number above 0" in done.stderr
    assert "Traceback" not in done.stderr and not modules & set(HEAVY)


@pytest.mark.parametrize("focal", [float("nan"), float("inf"), 0.0, -1.0])
def test_tracker_options_refuse_a_focal_that_is_no_length(focal):
    with pytest.raises(TrackerError, match="focal length must be a positive number"):
        TrackerOptions(focal=focal)


def test_a_port_of_other_digits_is_a_clear_error():
    with pytest.raises(TrackerError, match="the port must be a whole number from 1 to 65535"):
        parse_endpoint(":²", 39539, "--vmc")
    done, modules = _imported(["-m", "app.live", "--video", "clip.mp4", "--headless", "--vmc", ":²"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["error: --vmc: the port must be a whole number from 1 to 65535, got '²' in ':²'"]
    assert not modules & set(HEAVY)


def test_camera_indexes_are_ascii_digits():
    assert camera_index(0) == 0 and camera_index("2") == 2
    assert camera_index("²") is None and camera_index("clip.mp4") is None and camera_index("١") is None


def test_a_device_file_is_not_a_video_file():
    with pytest.raises(TrackerError, match="is not a video file"):
        open_source("/dev/zero")
    with pytest.raises(TrackerError, match="not found"):
        open_source("/nowhere/clip.mp4")


def test_an_implausible_frame_rate_is_ignored_and_never_paces_for_long(tmp_path, caplog):
    path = tmp_path / "slow.avi"  # 20 s between frames: what a damaged or forged header declares
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 0.05, (64, 48))
    for value in range(4):
        writer.write(np.full((48, 64, 3), 40 * value, np.uint8))
    writer.release()
    with caplog.at_level(logging.WARNING, logger="tracker.live.sources"), open_source(path, realtime=True) as source:
        assert source.fps is None
        assert "declares 0.05 frames per second" in caplog.text

    class Stop:  # the pacer's stop event, recording how long it is asked to wait
        waits: list[float] = []

        def wait(self, seconds: float) -> bool:
            self.waits.append(seconds)
            return False

    stop = Stop()
    pacer = sources._Pacer(stop)
    for media_time in (0.0, 20.0, 40.0, 1e5, 0.0, 0.5):
        pacer.wait(media_time)
    assert max(stop.waits) <= 0.5 + 1e-3 and len(stop.waits) == 6
    pacer.wait(0.5 + MAX_PACED_GAP)  # a gap it may honour
    assert stop.waits[-1] > MAX_PACED_GAP - 0.1


class _Stats:
    def __init__(self) -> None:
        self.frames_out = 0

    def snapshot(self):
        from types import SimpleNamespace

        return SimpleNamespace(fps=25.0, latency_p50_ms=40.0, latency_p95_ms=60.0, faces_found=self.frames_out, frames_out=self.frames_out, dropped=0)


def test_progress_lines_give_percent_fps_and_eta_for_files_and_fps_alone_for_live(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(sinks.time, "monotonic", lambda: clock[0])

    class Pipe:
        def isatty(self) -> bool:
            return False

    def run(total):
        stats = _Stats()
        progress = sinks.ProgressLog(stats, total=total, interval=2.0, stream=Pipe(), launch=97.5, startup="Python and imports 2.0 s, tracker set-up 0.4 s")
        for _ in range(100):
            clock[0] += 0.04
            stats.frames_out += 1
            progress(None)
        progress.close()

    with caplog.at_level(logging.INFO, logger="tracker.live.sinks"):
        run(total=400)
    lines = caplog.messages
    assert lines[0] == "tracking: first frame done 2.5 s after launch (Python and imports 2.0 s, tracker set-up 0.4 s, first frame 0.0 s)"
    assert "frame 51/400 (13 %): 25.0 fps, ETA 0:13, latency p50 40 ms" in lines[1]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tracker.live.sinks"):
        run(total=None)
    assert caplog.messages[1].startswith("frame 51: 25.0 fps, latency p50 40 ms") and "ETA" not in caplog.messages[1]


@pytest.fixture(scope="module")
def video(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos" / "single_face.mp4"


def test_third_party_lines_are_silent_unless_verbose(untrained_checkpoint, video):
    command = [sys.executable, "-m", "app.live", "--video", str(video), "--headless", "--checkpoint", str(untrained_checkpoint), "--max-frames", "4"]
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=300)
    verbose = subprocess.run([*command, "--verbose"], capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr[-2000:] + verbose.stderr[-2000:]
    noise = ("TensorFlow Lite", "absl::InitializeLog", "inference_feedback_manager", "W0000")
    assert not [line for line in quiet.stderr.splitlines() if any(n in line for n in noise)], quiet.stderr
    assert any(n in verbose.stderr for n in noise), verbose.stderr  # --verbose: MediaPipe's lines are there
    assert "tracking: first frame done" in quiet.stderr and "after launch" in quiet.stderr  # our own lines stay


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_imports_stops_a_background_run_with_one_line(untrained_checkpoint, video, how):
    """A script's background job starts with SIGINT ignored; the run's own handlers go in before
    the heavy imports, so a signal during them still stops it (rc 2, one line, no traceback)."""
    command = [sys.executable, "-m", "app.live", "--video", str(video), "--headless", "--checkpoint", str(untrained_checkpoint), "--loop"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PROJECT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    status = Path(f"/proc/{process.pid}/status")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the run has its handler for the signal (SigCgt), still importing
        caught = next(int(line.split()[1], 16) for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        if caught & (1 << (how - 1)):
            break
        time.sleep(0.005)
    process.send_signal(how)
    out, err = process.communicate(timeout=120)
    err = err.decode()
    assert process.returncode == 2, err[-2000:]
    assert "interrupted during start-up" in err and "Traceback" not in err and "tracking:" not in err


def test_the_training_commands_and_the_benchmark_mute_mediapipe_too(video):
    checkpoint = str(PROJECT / "assets" / "n2fnet_ict_resnet18.pt")
    commands = {
        "train.evaluate_real": ["-m", "train.evaluate_real", "--checkpoint", checkpoint, "--videos-only", "--videos", str(video), "--max-frames", "3"],
        "tracker.bench": ["-m", "tracker.bench", "live", "--video", str(video), "--checkpoint", checkpoint, "--frames", "3"],
    }
    noise = ("TensorFlow Lite", "absl::InitializeLog", "inference_feedback_manager")
    for name, argv in commands.items():
        verbose = ["-m", "tracker.bench", "--verbose", *argv[2:]] if name == "tracker.bench" else [*argv, "--verbose"]
        quiet_run = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=PROJECT, timeout=300)
        verbose_run = subprocess.run([sys.executable, *verbose], capture_output=True, text=True, cwd=PROJECT, timeout=300)
        assert quiet_run.returncode == 0 and verbose_run.returncode == 0, name + quiet_run.stderr[-1500:] + verbose_run.stderr[-1500:]
        assert not any(n in quiet_run.stderr for n in noise), f"{name}: {quiet_run.stderr}"
        assert any(n in verbose_run.stderr for n in noise), f"{name} --verbose: {verbose_run.stderr}"
