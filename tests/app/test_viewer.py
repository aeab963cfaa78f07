"""The Qt viewer under Xvfb on a real video: screenshot from the command line, the OpenGL and the
software 3D views, controls, the mesh colour and opacity, the plots' axes, the GUI/pipeline
hand-over, the virtual camera from the CLI, and clean shutdown. Every test that needs Qt's GUI
asks for ``qt_gui`` (tests/conftest.py; ``qapp`` does), so they skip with the reason where Qt
cannot start.

The OpenGL view is tested in its own process (the CLI test): pyqtgraph keeps its shader programs
per process, and a second GL window in the same process fails to draw (GLError), so the
in-process window tests use the software view."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import pyvirtualcam
import torch
from PyQt6 import QtCore

from tests.app.test_virtualcam import FailingSendBackend, MemoryBackend

MEMORY_BACKEND, FAILING_BACKEND = "n2f-viewer-test-memory", "n2f-viewer-test-failsend"
pyvirtualcam.register_backend(MEMORY_BACKEND, MemoryBackend)
pyvirtualcam.register_backend(FAILING_BACKEND, FailingSendBackend)


@pytest.fixture(scope="session")
def display() -> str:
    """An X display: the session's own Xvfb (as `.ci/run` installs), or the one already set."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.skip("no X display and no Xvfb: install xvfb (Debian: apt install xvfb) to test the viewer")
    for number in range(90, 110):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            pytest.skip(f"Xvfb :{number} did not start")
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{number}"
    yield os.environ["DISPLAY"]
    server.terminate()
    server.wait(5)
    del os.environ["DISPLAY"]


@pytest.fixture(scope="session")
def qapp(qt_gui: str):
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    from PyQt6 import QtWidgets

    torch.set_num_threads(1)  # as the live app: GUI and pipeline threads share torch's pool otherwise

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["n2f-tests"])
    yield app


@pytest.fixture(scope="module")
def video(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos" / "single_face.mp4"


def process_events_until(qapp, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        qapp.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.01)


def make_window(qapp, checkpoint: Path, video: Path, tmp_path: Path, max_frames: int | None = 12, **options):
    from app.viewer import ResultBridge, ViewerOptions, ViewerWindow
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.options import TrackerOptions
    from tracker.live.pipeline import Pipeline
    from tracker.live.sinks import SwitchableSink
    from tracker.live.sources import open_source

    tracker = FaceTracker.from_options(TrackerOptions(checkpoint=checkpoint, runtime="torch"))
    source = open_source(video, loop=max_frames is None)  # open-ended windows: the clip repeats
    bridge, recording, virtualcam = ResultBridge(), SwitchableSink(), SwitchableSink()
    pipeline = Pipeline(source, tracker, [recording, virtualcam, bridge], max_frames=max_frames)
    settings = dict(source_name=str(video), checkpoint=str(checkpoint), device="cpu", record_dir=str(tmp_path / "takes"), screenshot_dir=str(tmp_path / "shots"))
    window = ViewerWindow(pipeline, bridge, recording, virtualcam, ViewerOptions(**{**settings, **options}))
    window.resize(1200, 700)
    window.show()
    pipeline.start()
    return window, pipeline, tracker


def test_cli_screenshot_of_a_tracked_real_video(qt_gui: str, untrained_checkpoint: Path, video: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    command = [sys.executable, "-m", "app.live", "--video", str(video), "--checkpoint", str(untrained_checkpoint), "--screenshot", str(shot), "--max-frames", "10", "--quiet",
               "--mesh-color", "lime", "--mesh-opacity", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "DISPLAY": qt_gui, "QT_QPA_PLATFORM": "xcb", "PYTHONFAULTHANDLER": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "faces found in 10 frames (100.0%)" in done.stdout
    assert "3D view: OpenGL" in done.stdout, "Xvfb's Mesa gives the OpenGL view (in-process tests use the software one: one GL window per process)"
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[0] >= 600 and image.shape[1] >= 1000
    assert image.std() > 20, "the screenshot shows the window's content, not a blank"
    blue, green, red = (image[..., k].astype(int) for k in range(3))
    assert ((green > 60) & (blue < 30) & (red < 30)).mean() > 0.02, "the shaded mesh in lime (#00ff00), opaque"


@pytest.mark.shared
def test_cli_screenshot_of_flame_tracked_with_the_ict_network(qt_gui: str, ict_as_flame_dir: Path, video: Path, tmp_path: Path) -> None:
    """FLAME files and no FLAME network (the ICT-as-FLAME model): the viewer shows the fitted FLAME mesh."""
    shot = tmp_path / "shot.png"
    command = [sys.executable, "-m", "app.live", "--video", str(video), "--flame-dir", str(ict_as_flame_dir), "--screenshot", str(shot),
               "--max-frames", "10", "--quiet", "--mesh-color", "lime", "--mesh-opacity", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DISPLAY": qt_gui, "QT_QPA_PLATFORM": "xcb", "PYTHONFAULTHANDLER": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "faces found in 10 frames (100.0%)" in done.stdout
    image = cv2.imread(str(shot))
    blue, green, red = (image[..., k].astype(int) for k in range(3))
    assert ((green > 60) & (blue < 30) & (red < 30)).mean() > 0.02, "the FLAME mesh, shaded in lime, over the video"


GL_REUSE_SCRIPT = """
import sys
import numpy as np
from PyQt6 import QtWidgets
from app.viewer import GLMeshView
from tests.meshes import icosphere

app = QtWidgets.QApplication(["n2f-tests"])
view = GLMeshView()
view.widget.resize(320, 320)
view.widget.show()
points, faces = icosphere(3)
points, faces = points.numpy().astype(np.float32) * 0.12, faces.numpy()
held = []
for index, stretch in enumerate((1.0, 1.8)):
    view.set_mesh(points * np.array([stretch, 1.0, 1.0], np.float32), faces)
    app.processEvents()
    held.append((view._mesh_data, view._item.opts["meshdata"], view._mesh_data.vertexNormals()))
    assert view.widget.grabFramebuffer().save(f"{sys.argv[1]}/shot{index}.png")
(first, item_first, normals_first), (second, item_second, normals_second) = held
print("reused", first is second is item_first is item_second, "faces", np.array_equal(second.faces(), faces))
print("normals", np.abs(np.linalg.norm(normals_second, axis=1) - 1).max() < 1e-5, not np.allclose(normals_first, normals_second))
"""


def test_opengl_view_reuses_its_mesh_data_and_shows_each_new_mesh(qt_gui: str, tmp_path: Path) -> None:
    """In its own process (one GL window per process): a second mesh updates the same MeshData
    (positions and normals), and the view shows it."""
    done = subprocess.run([sys.executable, "-c", GL_REUSE_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "DISPLAY": qt_gui, "QT_QPA_PLATFORM": "xcb"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reused True faces True" in done.stdout and "normals True True" in done.stdout, done.stdout
    shots = [cv2.imread(str(tmp_path / f"shot{index}.png")) for index in (0, 1)]
    covered = [(shot.astype(int) - shot[0, 0]).any(-1) for shot in shots]
    assert 0.03 < covered[0].mean() < 0.6, "the sphere is drawn"
    assert covered[1].sum() > 1.4 * covered[0].sum(), "the stretched sphere replaced it"
    assert len(np.unique(shots[1][covered[1]].reshape(-1, 3), axis=0)) > 20, "shaded by its normals, not flat"


def test_window_tracks_records_and_closes_cleanly(qapp, untrained_checkpoint: Path, video: Path, tmp_path: Path) -> None:
    from tracker.takes.recording import read_take

    take = tmp_path / "take.npz"
    window, pipeline, tracker = make_window(qapp, untrained_checkpoint, video, tmp_path, max_frames=None, record_path=str(take), software_3d=True)
    process_events_until(qapp, lambda: window.shown >= 5)
    assert window.video.pixmap() is not None and not window.video.pixmap().isNull()
    window.close()  # while the pipeline is running
    assert not pipeline.running
    loaded = read_take(take)
    assert loaded.complete and len(loaded) == pipeline.stats.frames_out >= 5
    assert np.all(np.diff(loaded.frame_index) == 1)
    tracker.close()


def test_a_failing_virtual_camera_is_shown_and_tracking_goes_on(qapp, untrained_checkpoint: Path, video: Path, tmp_path: Path) -> None:
    from app.virtualcam import VirtualCameraSink

    def open_camera() -> VirtualCameraSink:
        return VirtualCameraSink(window.head.render_faces, 160, 120, 30.0, backend=FAILING_BACKEND)

    window, pipeline, tracker = make_window(qapp, untrained_checkpoint, video, tmp_path, max_frames=None, software_3d=True, virtualcam=open_camera)
    window.actions_by_name["Virtual camera"].trigger()  # V: on; its device fails from the third frame
    camera, backend = window.virtualcam.current, MemoryBackend.instances[-1]
    process_events_until(qapp, lambda: camera.frames_failed >= 1 and window.shown >= 3)
    shown = window.shown
    process_events_until(qapp, lambda: window.shown >= shown + 3)
    assert pipeline.running and window.error is None, "the failing camera does not stop the tracking"
    assert re.search(r"virtual camera ON \(\d+ frames failed\)", window.status.text()), window.status.text()
    window.actions_by_name["Virtual camera"].trigger()  # V: off
    assert window.virtualcam.current is None and "virtual camera off" in window.status.text() and backend.close_calls == 1
    window.close()
    tracker.close()


def test_window_fits_the_screen(qapp, untrained_checkpoint: Path, video: Path, tmp_path: Path) -> None:
    window, pipeline, tracker = make_window(qapp, untrained_checkpoint, video, tmp_path, max_frames=2, software_3d=True)
    area = window.screen().availableGeometry()  # the test Xvfb's 1600 x 1000
    window.fit_to_screen(4000, 3000)  # a preferred size larger than the screen
    qapp.processEvents()
    assert area.contains(window.frameGeometry()), (area, window.frameGeometry())
    assert window.width() >= 0.9 * area.width() and window.height() >= 0.9 * area.height()
    window.fit_to_screen(900, 600)  # a size that fits is taken as asked, centred
    qapp.processEvents()
    assert (window.width(), window.height()) == (900, 600)
    assert abs(window.frameGeometry().center().x() - area.center().x()) <= 2
    window.close()
    tracker.close()


def test_controls_switch_recording_smoothing_style_and_screenshot(qapp, untrained_checkpoint: Path, video: Path, tmp_path: Path) -> None:
    from tracker.takes.recording import read_take

    window, pipeline, tracker = make_window(qapp, untrained_checkpoint, video, tmp_path, max_frames=None, software_3d=True)
    process_events_until(qapp, lambda: window.shown >= 2)
    window.actions_by_name["Record"].trigger()
    path = window.recording.current.path
    process_events_until(qapp, lambda: window.recording.current.recorder.frames >= 3)
    window.actions_by_name["Record"].trigger()  # stop: the take is finalised now
    assert window.recording.current is None and read_take(path).complete and len(read_take(path)) >= 3
    assert path.parent == tmp_path / "takes"
    window.actions_by_name["Smoothing"].trigger()
    assert tracker.smoothing is False
    styles = []
    for _ in range(3):
        window.actions_by_name["Mesh style"].trigger()
        styles.append(window.mesh_style)
    assert styles == ["wireframe", "none", "shaded"]
    shot = window.screenshot()
    assert shot.is_file() and shot.parent == tmp_path / "shots"
    window.actions_by_name["Virtual camera"].trigger()  # not configured: reported, nothing breaks
    assert window.virtualcam.current is None
    tracker.profile_path = tmp_path / "profile.json"
    window.actions_by_name["Neutral"].trigger()  # N: a neutral calibration, NEUTRAL_SECONDS of the looping clip
    assert tracker.calibrating_neutral
    window._update_status()
    assert "CALIBRATING NEUTRAL" in window.status.text()
    process_events_until(qapp, lambda: tracker.profile_path.is_file(), timeout=60)
    assert not tracker.arkit_profile.is_default and not tracker.calibrating_neutral
    window.close()
    tracker.close()


def test_window_draws_the_mesh_in_its_colour_and_opacity(qapp, untrained_checkpoint: Path, video: Path, tmp_path: Path) -> None:
    from PyQt6 import QtGui

    red = (0, 0, 255)
    window, pipeline, tracker = make_window(qapp, untrained_checkpoint, video, tmp_path, max_frames=2, software_3d=True, mesh_colour=red, mesh_opacity=1.0,
                                            landmarks=False)
    process_events_until(qapp, lambda: not pipeline.running and window.shown >= 1)
    shown = window.video._image.convertToFormat(QtGui.QImage.Format.Format_BGR888)
    pixels = np.frombuffer(shown.constBits().asstring(shown.sizeInBytes()), np.uint8).reshape(shown.height(), shown.bytesPerLine())
    drawn = pixels[:, : 3 * shown.width()].reshape(shown.height(), shown.width(), 3)
    changed = (drawn != window._last_result.frame.image).any(-1)
    assert changed.mean() > 0.05, "the mesh is drawn over the frame"
    assert (drawn[changed][:, :2] == 0).all(-1).mean() > 0.9, "opaque red: no blue or green but at its soft edge"
    software = window.mesh_view.render()
    covered = (software != software[0, 0]).any(-1)
    assert (software[covered][:, :2] == 0).all(), "the 3D view's mesh in the same colour"
    window.close()
    tracker.close()


def test_plots_label_their_axes_with_units(qapp) -> None:
    from app.viewer import LivePlots

    plots = LivePlots()
    for plot in (plots.fps, plots.latency, plots.params):
        assert plot.getAxis("bottom").labelText == "time (s)"
    assert plots.fps.getAxis("left").labelText == "fps" and plots.latency.getAxis("left").labelText == "ms"


def test_mesh_options_on_the_command_line(capsys) -> None:
    from app.live import build_parser
    from tracker.outputs.overlay import MESH_COLOUR, MESH_OPACITY

    source = ["--video", "clip.mp4"]
    defaults = build_parser().parse_args(source)
    assert (defaults.mesh_color, defaults.mesh_opacity) == (MESH_COLOUR, MESH_OPACITY)
    given = build_parser().parse_args([*source, "--mesh-color", "#ff8000", "--mesh-opacity", "0.5"])
    assert (given.mesh_color, given.mesh_opacity) == ((0, 128, 255), 0.5)
    for option, value, message in (("--mesh-color", "nope", "must be a CSS colour name"), ("--mesh-opacity", "2", "must be a number from 0")):
        with pytest.raises(SystemExit) as stopped:
            build_parser().parse_args([*source, option, value])
        assert stopped.value.code == 2 and f"argument {option}: {message}" in capsys.readouterr().err


def test_software_3d_view_renders_and_orbits(qapp, untrained_checkpoint: Path, video: Path, tmp_path: Path) -> None:
    window, pipeline, tracker = make_window(qapp, untrained_checkpoint, video, tmp_path, software_3d=True)
    process_events_until(qapp, lambda: window.shown >= 3)
    view = window.mesh_view
    assert view.kind == "software"
    front = view.render()
    covered = (front != front[0, 0]).any(-1)
    assert 0.05 < covered.mean() < 0.9, "the head fills part of the view"
    view.orbit(90.0, 0.0)
    side = view.render()
    assert (side != front).any(-1).mean() > 0.02, "orbiting changes the picture"
    window.close()
    tracker.close()


IDENTITY_STATES = ("calibrating", "locked", "given", "network")


def hand_made_face(track_id: int, state: str):
    from tracker.live.results import FaceResult

    return FaceResult(
        params={}, rotation_6d=torch.zeros(6), rotation=torch.eye(3), translation=torch.tensor([0.0, 0.0, 0.6]), mesh=torch.zeros(3, 3),
        landmarks68=np.zeros((68, 2)), mesh_landmarks68=np.zeros((68, 2)), crop_box=np.array([0.0, 0.0, 50.0]), track_id=track_id,
        crop=None, cue=None, identity_state=state,
    )


def test_identity_text_names_every_face_state() -> None:
    from app.viewer import identity_text

    for state in IDENTITY_STATES:
        assert identity_text([hand_made_face(0, state)]) == f"identity: {state}"
    assert identity_text([hand_made_face(3, "locked"), hand_made_face(8, "calibrating")]) == "face 3 identity: locked, face 8 identity: calibrating"
    assert identity_text([]) == "identity: -"


def test_status_bar_shows_the_identity_state(qapp, untrained_checkpoint: Path, video: Path, tmp_path: Path) -> None:
    import dataclasses

    window, pipeline, tracker = make_window(qapp, untrained_checkpoint, video, tmp_path, max_frames=2, software_3d=True)
    process_events_until(qapp, lambda: not pipeline.running and window.shown >= 1)
    tracked = window._last_result
    assert tracked.faces and f"identity: {tracked.faces[0].identity_state}" in window.status.text()
    assert tracked.faces[0].identity_state == "calibrating"  # refinement on (default): a new track pools its identity
    for state in IDENTITY_STATES:  # the tracked face with each state, through the GUI's own path
        window.bridge(dataclasses.replace(tracked, faces=[dataclasses.replace(tracked.faces[0], identity_state=state)]))
        window.on_result()
        assert f"identity: {state} |" in window.status.text(), window.status.text()
    second = dataclasses.replace(tracked.faces[0], track_id=9, identity_state="given")
    window.bridge(dataclasses.replace(tracked, faces=[tracked.faces[0], second]))
    window.on_result()
    assert f"face {tracked.faces[0].track_id} identity: calibrating, face 9 identity: given" in window.status.text()
    window.close()
    tracker.close()


def test_opengl_failure_falls_back_to_software(qapp, monkeypatch) -> None:
    import app.viewer as viewer

    def broken():
        raise RuntimeError("no OpenGL context")

    monkeypatch.setattr(viewer, "GLMeshView", broken)
    assert isinstance(viewer.create_mesh_view(software=False), viewer.SoftwareMeshView)


def test_bridge_never_blocks_the_pipeline_and_keeps_the_newest() -> None:
    """A GUI that does not take results (busy) must not slow the sink thread: 10,000 results
    handed over from another thread, none taken, then only the newest is there."""
    from app.viewer import ResultBridge

    bridge = ResultBridge()

    def push() -> None:
        for index in range(10_000):
            bridge(index)

    thread = threading.Thread(target=push)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert bridge.received == 10_000
    assert bridge.take() == 9_999 and bridge.take() is None


def test_headless_virtual_camera_gets_the_tracked_frames(untrained_checkpoint: Path, video: Path, monkeypatch) -> None:
    from app import live

    opened: list = []
    monkeypatch.setattr(MemoryBackend, "instances", opened)
    code = live.main(["--video", str(video), "--headless", "--max-frames", "15", "--checkpoint", str(untrained_checkpoint), "--quiet",
                      "--virtualcam", "--virtualcam-backend", MEMORY_BACKEND, "--virtualcam-size", "320x180", "--virtualcam-mode", "key"])
    assert code == 0
    assert len(opened) == 1 and opened[0].close_calls == 1
    frames = opened[0].rgb
    assert frames and all(frame.shape == (180, 320, 3) for frame in frames)
    last = frames[-1]
    assert tuple(last[0, 0]) == (0, 255, 0), "key mode: the key colour (green) around the mesh"
    assert ((last != (0, 255, 0)).any(-1)).mean() > 0.05, "and the tracked mesh on it"


def test_plots_keep_every_value_but_redraw_at_most_at_their_refresh_rate(qapp, monkeypatch) -> None:
    from app import viewer

    monkeypatch.setattr(viewer, "PLOT_REFRESH_S", 1e9)  # after the first frame, no redraw falls due
    plots = viewer.LivePlots()
    for k in range(10):
        plots.add({"fps": float(k), "latency": 2.0 * k})
    assert list(plots._curves["fps"].getData()[1]) == [0.0]  # drawn once, at the first frame
    plots.redraw()
    assert list(plots._curves["fps"].getData()[1]) == [float(k) for k in range(10)]
    assert list(plots._curves["latency"].getData()[1]) == [2.0 * k for k in range(10)]
