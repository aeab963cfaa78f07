"""The tracker end to end on real videos: ``python -m app.live --headless``, recording, Ctrl-C, the
live benchmark, and the geometry that ties the network's camera to the frame."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app import live
from tracker.bench.__main__ import main as bench_main
from tracker.errors import TrackerError
from tracker.fitting.refinement import DEFAULT_ITERATIONS
from tracker.geometry import camera
from tracker.live import options as tracker_options
from tracker.live.face_tracker import FaceTracker
from tracker.live.results import RawOutput
from tracker.live.sources import open_source
from tracker.takes.recording import IDENTITY_STATES, Recorder, journal_path, read_take

INPUT_SIZE = 64  # the untrained_checkpoint fixture's input size


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint: Path) -> Path:
    return untrained_checkpoint


@pytest.fixture(scope="module")
def videos(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos"


def test_headless_run_records_a_take_that_loads(checkpoint: Path, videos: Path, tmp_path: Path, capsys) -> None:
    take_path = tmp_path / "take.npz"
    code = live.main(["--video", str(videos / "single_face.mp4"), "--headless", "--record", str(take_path), "--max-frames", "8", "--checkpoint", str(checkpoint), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "faces found in 8 frames (100.0%)" in out
    take = read_take(take_path)
    assert take.complete and take.head_model == "ict" and len(take) == 8
    assert take.frame_index.tolist() == list(range(8)) and take.face_found.all()
    assert take.params["expression"].shape == (8, 53) and take.params["identity"].shape == (8, 100)
    assert np.isfinite(take.rotation_6d).all() and (take.translation[:, 2] > 0.2).all()
    assert np.allclose(take.focal, 640.0) and np.allclose(take.principal, [320.0, 180.0])  # 640x360, focal_mean 1.0
    # the crop box sits on the face: MediaPipe found it in the frame, so it lies inside the frame
    x0, y0, side = take.crop_box.T
    assert (side > 50).all() and (x0 + side / 2 > 0).all() and (x0 + side / 2 < 640).all()
    assert not journal_path(take_path).exists()
    # one face, one track, its identity pooled (calibrating for the first frames) and stored once
    assert take.metadata["refine"] is True and take.metadata["refine_iters"] == DEFAULT_ITERATIONS and take.metadata["detector"] == "short-range"
    assert take.metadata["checkpoint"] == str(checkpoint)
    assert (take.track_id == take.track_id[0]).all() and {IDENTITY_STATES[s] for s in take.identity_state} <= {"calibrating", "locked"}
    assert len(take.tracks()) == 1 and np.allclose(take.params["identity"], take.tracks().identity[0])


def test_demo_tracks_on_a_machine_with_no_camera_and_no_video(checkpoint: Path, tmp_path: Path, capsys) -> None:
    take_path = tmp_path / "demo.npz"
    code = live.main(["--demo", "--headless", "--record", str(take_path), "--max-frames", "12", "--checkpoint", str(checkpoint), "--quiet"])
    assert code == 0
    assert "faces found in 12 frames (100.0%)" in capsys.readouterr().out
    take = read_take(take_path)
    assert take.metadata["source"] == "demo" and len(take) == 12 and take.face_found.all()
    assert np.allclose(take.principal, [320.0, 240.0])  # the demo's 640x480 frames
    assert live.main(["--demo", "--camera", "0", "--headless", "--checkpoint", str(checkpoint)]) == 2
    assert "give exactly one source" in capsys.readouterr().err


def test_video_without_a_face_is_tracked_as_such(checkpoint: Path, videos: Path, tmp_path: Path) -> None:
    take_path = tmp_path / "none.npz"
    assert live.main(["--video", str(videos / "no_face.mp4"), "--headless", "--record", str(take_path), "--max-frames", "6", "--checkpoint", str(checkpoint), "--quiet"]) == 0
    take = read_take(take_path)
    assert len(take) == 6 and not take.face_found.any() and np.isnan(take.params["expression"]).all()


def test_missing_checkpoint_is_stated_not_replaced(monkeypatch, videos: Path, tmp_path: Path, capsys) -> None:
    monkeypatch.setattr(tracker_options, "DEFAULT_CHECKPOINT", tmp_path / "absent.pt")
    code = live.main(["--video", str(videos / "single_face.mp4"), "--headless", "--max-frames", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "No N2FNet checkpoint" in err and "will not run an untrained one" in err and "--checkpoint" in err


def test_identity_from_a_take_and_refinement_off(checkpoint: Path, videos: Path, tmp_path: Path, capsys) -> None:
    calibrated = tmp_path / "calibrated.npz"
    identity = np.random.default_rng(3).normal(0.0, 0.5, 100).astype(np.float32)
    with Recorder(calibrated, "ict", {"identity": 100, "expression": 53}) as recorder:
        recorder.append(0.0, 0, {"identity": identity, "expression": np.zeros(53)}, track_id=6, identity_state="locked")
    video = ["--video", str(videos / "single_face.mp4"), "--headless", "--max-frames", "3", "--checkpoint", str(checkpoint), "--quiet"]
    given = tmp_path / "given.npz"
    assert live.main([*video, "--identity", str(calibrated), "--refine-iters", "2", "--record", str(given)]) == 0
    take = read_take(given)
    assert [IDENTITY_STATES[s] for s in take.identity_state] == ["given"] * 3
    assert np.allclose(take.params["identity"], identity) and take.metadata["identity_take"] == str(calibrated)
    assert take.metadata["refine_iters"] == 2
    network = tmp_path / "network.npz"
    assert live.main([*video, "--no-refine", "--detector", "full-range", "--record", str(network)]) == 0
    take = read_take(network)
    assert [IDENTITY_STATES[s] for s in take.identity_state] == ["network"] * 3 and take.face_found.all()
    assert take.metadata["refine"] is False and take.metadata["refine_iters"] is None and take.metadata["detector"] == "full-range"
    capsys.readouterr()
    assert live.main([*video, "--identity", str(network)]) == 2  # refinement off: nothing was locked
    assert "has a locked identity" in capsys.readouterr().err
    assert live.main([*video, "--identity", str(tmp_path / "missing.npz")]) == 2
    assert "take not found" in capsys.readouterr().err


def test_another_head_model_needs_the_refinement_from_the_mean_face(checkpoint: Path) -> None:
    """FLAME with an ICT checkpoint is fitted from FLAME's mean face: refused without the
    refinement, or with the refinement starting from the network's (ICT) prediction."""
    for settings, message in (({"refine": False}, "which is off"), ({"refine_start": "network"}, "--refine-start network")):
        options = tracker_options.TrackerOptions(checkpoint=checkpoint, head_model="flame", runtime="torch", **settings)
        with pytest.raises(TrackerError, match=message):
            FaceTracker.from_options(options)


def interrupt_once_recording(process: subprocess.Popen, take_path: Path, records: int = 5) -> tuple[bytes, bytes]:
    """Send SIGINT to a running ``app.live`` once its journal for ``take_path`` holds ``records``
    records (within 120 s); -> its (stdout, stderr) after it exits."""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if journal_path(take_path).exists() and len(read_take(journal_path(take_path))) >= records:
                break
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=60)
    finally:
        process.kill()


def test_ctrl_c_finalises_the_recording(checkpoint: Path, videos: Path, tmp_path: Path) -> None:
    take_path = tmp_path / "interrupted.npz"
    command = [sys.executable, "-m", "app.live", "--video", str(videos / "single_face.mp4"), "--loop", "--headless",
               "--record", str(take_path), "--checkpoint", str(checkpoint), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out, err = interrupt_once_recording(process, take_path)
    assert process.returncode == 130, err.decode()[-2000:]
    assert take_path.exists() and not journal_path(take_path).exists()
    take = read_take(take_path)
    assert take.complete and len(take) >= 5 and take.face_found.all()
    assert np.all(np.diff(take.frame_index) == 1), "no frame lost or repeated before the interrupt"
    assert f"recorded: {take_path}" in out.decode()


def test_live_benchmark_prints_its_summary_line(videos: Path, capsys) -> None:
    bench_main(["live", "--video", str(videos / "single_face.mp4"), "--untrained", "resnet18", "--input-size", str(INPUT_SIZE), "--frames", "6"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"mediapipe_fps=\d+\.\d sequential_fps=\d+\.\d async_fps=\d+\.\d sequential_no_refine_fps=\d+\.\d async_no_refine_fps=\d+\.\d", last), last


def test_live_benchmark_rounds_report_the_median_run_and_the_range(videos: Path, capsys) -> None:
    """``--rounds 3``: every pipeline runs three times; its line gives the middle run's fps and
    the lowest and highest of the three around it."""
    bench_main(["live", "--video", str(videos / "single_face.mp4"), "--untrained", "resnet18", "--input-size", str(INPUT_SIZE), "--frames", "4",
                "--rounds", "3"])
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"(sequential|async) (no-refine|refine)", line)]
    assert len(lines) == 4, lines
    for line in lines:
        median, low, high = map(float, re.search(r"(\d+\.\d) fps \(rounds (\d+\.\d)-(\d+\.\d)\)", line).groups())
        assert low <= median <= high, line
    with pytest.raises(SystemExit, match="--rounds must be at least 1"):
        bench_main(["live", "--video", str(videos / "single_face.mp4"), "--untrained", "resnet18", "--frames", "2", "--rounds", "0"])


def test_network_camera_lands_on_the_crop_point_it_predicts(checkpoint: Path, videos: Path) -> None:
    """The camera module outputs where the head origin projects in the crop (u, v in [-1, 1]).
    Mapped through the crop box to frame pixels, that point must be where the frame camera
    projects the returned translation: checks crop intrinsics (eqs. 6-9), the translation
    parameterisation and the frame camera together, independently of the network's weights."""
    tracker = FaceTracker.from_options(tracker_options.TrackerOptions(checkpoint=checkpoint, runtime="torch", smoothing=False, crop_smoothing=True))
    bias = tracker.net.camera_module.mlp[-1].bias
    with torch.no_grad():
        bias[6:9] = torch.tensor([0.3, -0.2, 0.1])  # (u, v, log k): away from the crop centre
    with open_source(videos / "single_face.mp4") as source:
        frame = source.read(timeout=10)
    prepared = tracker.prepare(frame)
    params, rotation_6d, translation = tracker.run_network(prepared.inputs)
    focal, principal = tracker.intrinsics(frame.image)
    origin = camera.project(translation[:, None].double(), torch.from_numpy(focal)[None], torch.from_numpy(principal)[None])[0, 0].numpy()
    x0, y0, side = prepared.crops[0].box
    u_px, v_px = (np.array([0.3, -0.2]) * INPUT_SIZE / 2 + INPUT_SIZE / 2) * side / INPUT_SIZE
    assert np.allclose(origin, [x0 + u_px, y0 + v_px], atol=1e-3)
    result = tracker.finish(prepared, RawOutput(params, rotation_6d, translation))
    assert result.faces[0].vertices.shape == (tracker.head.num_vertices, 3)
    tracker.close()
