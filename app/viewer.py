"""The live viewer: video with the tracked mesh, an interactive 3D head, live plots, controls.

Threads: the pipeline runs in its own threads; its sink ``ResultBridge`` keeps only the newest
result (a one-slot ``tracker.live.mailbox.Mailbox``, O(1) under a lock) and the GUI thread takes
it on a display timer (every DISPLAY_INTERVAL_MS), so a slow GUI skips display frames and never
slows tracking, the GUI never waits on the pipeline, and drawing can never flood Qt's event
queue. Closing the window stops the pipeline (frames in flight finish, the recording is finalised).

Keys: R record on/off, V virtual camera on/off, K / U / O the VMC / Live Link / OSC avatar stream
on/off (``tracker.outputs.streaming``; configured with --vmc, --livelink, --osc), S smoothing on/off,
N neutral-face calibration (hold a neutral face for NEUTRAL_SECONDS; saved to --profile), M mesh style (shaded, wireframe, none), L landmarks on/off, P screenshot, Q / Esc quit. The 3D
view orbits with the left mouse button and zooms with the wheel. The status bar shows every
tracked face's identity state (calibrating, locked, given, network: ``identity_text``), the
streams that are on, and the virtual camera's failed frames, if any (tracking goes on).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyqtgraph as pg
import torch
from PyQt6 import QtCore, QtGui, QtWidgets

from tracker.errors import TrackerError
from tracker.fitting.arkit import ARKIT_INDEX
from tracker.geometry.camera import FLIP, camera_to_view
from tracker.geometry.rotations import euler_to_matrix, rotation_6d_to_matrix
from tracker.head_models.base import HeadModel
from tracker.live.mailbox import Mailbox
from tracker.live.pipeline import Pipeline
from tracker.live.results import FaceResult, TrackingResult
from tracker.live.sinks import RecordingSink, SwitchableSink
from tracker.outputs.overlay import (
    MESH_COLOUR,
    MESH_OPACITY,
    MESH_STYLES,
    SHADE_RESOLUTION,
    MeshTopology,
    draw_overlay,
    shade_colours,
    shade_mesh,
)
from tracker.outputs.streaming import LiveLinkSink, OscSink, VmcSink

PLOT_REFRESH_S = 0.2  # the plots are redrawn 5 times a second
DISPLAY_INTERVAL_MS = 15  # the GUI looks for a new result this often (up to ~66 displayed fps)
PLOT_SECONDS = 10.0
EXPRESSION_CURVES = 3  # plotted besides the jaw for a head model without ARKit weights: its first coefficients
PLOTTED_ARKIT = ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmileLeft")  # ARKit weights in the plots
NEUTRAL_SECONDS = 2.0  # the N key's neutral-face calibration
# the avatar streams the window switches: label -> (key, the command-line option that configures it)
STREAMS = {VmcSink.label: ("K", "--vmc"), LiveLinkSink.label: ("U", "--livelink"), OscSink.label: ("O", "--osc")}


class ResultBridge(Mailbox[TrackingResult]):
    """Pipeline sink -> GUI thread: the mailbox holding the newest result; the GUI ``take()``s it."""

    def __call__(self, result: TrackingResult) -> None:
        self.put(result)


def to_qimage(image_bgr: np.ndarray) -> QtGui.QImage:
    """(H, W, 3) uint8 BGR -> QImage (a deep copy, independent of the array)."""
    image = np.ascontiguousarray(image_bgr)
    height, width = image.shape[:2]
    return QtGui.QImage(image.data, width, height, image.strides[0], QtGui.QImage.Format.Format_BGR888).copy()


class VideoView(QtWidgets.QLabel):
    """The frame with the overlay, scaled to the widget keeping its aspect ratio."""

    def __init__(self) -> None:
        super().__init__("waiting for the first frame ...")
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(320, 180)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Ignored)
        self._image: QtGui.QImage | None = None

    def show_image(self, image_bgr: np.ndarray) -> None:
        self._image = to_qimage(image_bgr)
        self._rescale()

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._image is not None:
            pixmap = QtGui.QPixmap.fromImage(self._image)
            self.setPixmap(pixmap.scaled(self.size(), QtCore.Qt.AspectRatioMode.KeepAspectRatio, QtCore.Qt.TransformationMode.SmoothTransformation))


def head_centred_vertices(face: FaceResult) -> np.ndarray:
    """(V, 3) the posed head without its translation, in a y-up, z-towards-the-viewer frame
    (OpenCV camera axes flipped in y and z), metres."""
    return camera_to_view(face.vertices - face.translation).numpy()


class MeshView3D:
    """Common interface of the 3D views: ``set_mesh(vertices (V, 3) y-up, faces (F, 3))``."""

    widget: QtWidgets.QWidget
    kind: str

    def set_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        raise NotImplementedError


class GLMeshView(MeshView3D):
    """pyqtgraph.opengl GLViewWidget + GLMeshItem (orbit/zoom with the mouse).

    One MeshData and one GL item live across frames: a new frame replaces the vertex positions
    and normals, the faces are set once (again only when another face array comes). The normals
    are ``MeshTopology.vertex_normals`` (one sparse product; pyqtgraph's own loop over the
    vertices in Python, seconds per frame for a head)."""

    kind = "OpenGL"

    def __init__(self, colour: tuple[int, int, int] = MESH_COLOUR) -> None:
        import pyqtgraph.opengl as gl
        from pyqtgraph.opengl.MeshData import MeshData

        class GivenNormalsMeshData(MeshData):
            """MeshData whose vertex normals are set (``normals`` (V, 3) float32), not computed."""

            normals: np.ndarray

            def vertexNormals(self, indexed=None):
                return self.normals if indexed is None else self.normals[self._faces]

        self.widget = gl.GLViewWidget()
        self.widget.setCameraPosition(distance=0.9, elevation=5, azimuth=-90)  # in front of the face (-y)
        self.widget.setBackgroundColor((30, 30, 34))
        blue, green, red = (c / 255 for c in colour)
        self._item = gl.GLMeshItem(smooth=True, shader="shaded", color=(red, green, blue, 1.0), glOptions="opaque")
        self._mesh_data = GivenNormalsMeshData()
        self._faces: np.ndarray | None = None  # the face array the mesh data holds
        self._topology: MeshTopology | None = None

    def set_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        # pyqtgraph's view is z-up: x right, y into the screen, z up
        gl_vertices = np.stack([vertices[:, 0], -vertices[:, 2], vertices[:, 1]], axis=1).astype(np.float32)
        first = self._faces is None
        if faces is not self._faces or len(gl_vertices) != self._topology.num_vertices:
            self._faces, self._topology = faces, MeshTopology(faces, len(gl_vertices))
            self._mesh_data.setFaces(faces)
        self._mesh_data.setVertexes(gl_vertices)
        self._mesh_data.normals = self._topology.vertex_normals(gl_vertices)
        if first:  # an item without mesh data cannot paint: added with the first mesh
            self._item.setMeshData(meshdata=self._mesh_data)
            self.widget.addItem(self._item)
        else:
            self._item.meshDataChanged()


class SoftwareMeshView(MeshView3D):
    """The 3D view without OpenGL: the project's rasteriser renders the mesh from an orbit camera
    (drag to orbit, wheel to zoom), shaded as the overlay shades it."""

    kind = "software"

    def __init__(self, size: int = 360, colour: tuple[int, int, int] = MESH_COLOUR) -> None:
        self.widget = _OrbitLabel(self)
        self.size = size
        self.colour = colour
        self.yaw, self.pitch, self.distance = 0.0, 0.0, 0.6
        self._mesh: tuple[np.ndarray, np.ndarray] | None = None

    def set_mesh(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        self._mesh = (vertices, faces)
        self.redraw()

    def orbit(self, d_yaw: float, d_pitch: float) -> None:
        self.yaw += d_yaw
        self.pitch = float(np.clip(self.pitch + d_pitch, -80.0, 80.0))
        self.redraw()

    def zoom(self, factor: float) -> None:
        self.distance = float(np.clip(self.distance * factor, 0.2, 3.0))
        self.redraw()

    def render(self) -> np.ndarray | None:
        """(size, size, 3) uint8 BGR picture of the mesh, or None before the first mesh."""
        if self._mesh is None:
            return None
        vertices, faces = self._mesh
        orbit = euler_to_matrix(torch.tensor([[math.radians(self.pitch), math.radians(self.yaw), 0.0]]))[0].numpy()
        points = vertices @ orbit.T * np.asarray(FLIP) + np.array([0.0, 0.0, self.distance])  # y-up view -> camera
        focal = 1.2 * self.size
        shade, covered = shade_mesh(torch.from_numpy(points.astype(np.float32)), faces, (focal, focal), (self.size / 2, self.size / 2), (self.size, self.size))
        image = np.empty((self.size, self.size, 3), np.uint8)
        image[:] = (34, 30, 30)
        image[covered] = shade_colours(self.colour)[np.round(shade[covered] * 255).astype(np.intp), 0]
        return image

    def redraw(self) -> None:
        image = self.render()
        if image is not None:
            self.widget.setPixmap(QtGui.QPixmap.fromImage(to_qimage(image)))


class _OrbitLabel(QtWidgets.QLabel):
    def __init__(self, view: SoftwareMeshView) -> None:
        super().__init__("3D view (software)")
        self.view = view
        self.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(240, 240)
        self._last: QtCore.QPointF | None = None

    def mousePressEvent(self, event: QtGui.QMouseEvent) -> None:
        self._last = event.position()

    def mouseMoveEvent(self, event: QtGui.QMouseEvent) -> None:
        if self._last is not None:
            delta = event.position() - self._last
            self._last = event.position()
            self.view.orbit(delta.x() * 0.5, delta.y() * 0.5)

    def mouseReleaseEvent(self, event: QtGui.QMouseEvent) -> None:
        self._last = None

    def wheelEvent(self, event: QtGui.QWheelEvent) -> None:
        self.view.zoom(0.9 if event.angleDelta().y() > 0 else 1.1)


def create_mesh_view(software: bool, colour: tuple[int, int, int] = MESH_COLOUR) -> MeshView3D:
    """The OpenGL view, or the software one when asked or when OpenGL cannot be set up; the mesh
    in ``colour`` (B, G, R)."""
    if not software:
        try:
            return GLMeshView(colour)
        except Exception as error:  # no PyOpenGL, no GL context: fall back, say so
            print(f"OpenGL 3D view unavailable ({type(error).__name__}: {error}); using the software view")
    return SoftwareMeshView(colour=colour)


def jaw_opening(head: HeadModel, params: dict[str, torch.Tensor]) -> tuple[str, float]:
    """(label, value) of how open the jaw is, for a head model without ARKit weights: FLAME's jaw
    rotation angle in degrees."""
    if "jaw" in params:
        rotation = rotation_6d_to_matrix(params["jaw"][None])[0]
        cosine = ((rotation.trace() - 1) / 2).clamp(-1, 1)
        return "jaw (deg)", math.degrees(math.acos(float(cosine)))
    return "jaw", 0.0


def plotted_parameters(head: HeadModel, face: FaceResult) -> dict[str, float]:
    """{label: value} of the plotted curves: the ARKit weights PLOTTED_ARKIT (``face.avatar``), else
    the jaw opening and the first EXPRESSION_CURVES expression coefficients."""
    if face.avatar is not None:
        return {name: float(face.avatar.weights[ARKIT_INDEX[name]]) for name in PLOTTED_ARKIT}
    label, value = jaw_opening(head, face.params)
    values = {label: value}
    if "expression" in face.params:
        for i in range(min(EXPRESSION_CURVES, face.params["expression"].numel())):
            values[f"expression {i}"] = float(face.params["expression"][i])
    return values


def identity_text(faces: list[FaceResult]) -> str:
    """The identity state of every tracked face for the status bar: "identity: locked" (one face),
    "face 3 identity: locked, face 5 identity: calibrating" (several), "identity: -" (none).

    States (``FaceResult.identity_state``): calibrating (the track's identity is being pooled),
    locked, given (--identity), network (no refinement: the network's per-frame identity)."""
    if not faces:
        return "identity: -"
    if len(faces) == 1:
        return f"identity: {faces[0].identity_state}"
    return ", ".join(f"face {face.track_id} identity: {face.identity_state}" for face in faces)


class LivePlots(QtWidgets.QWidget):
    """FPS, latency (capture to result, p50) and a few parameters over the last PLOT_SECONDS
    seconds; the time axes count seconds since the window opened."""

    def __init__(self) -> None:
        super().__init__()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QtWidgets.QHBoxLayout()
        self.fps = pg.PlotWidget(title="tracking speed")
        self.latency = pg.PlotWidget(title="latency, capture to result (p50)")
        self.params = pg.PlotWidget(title="expression (ARKit weights)")
        self.params.addLegend(offset=(5, 5))
        self.fps.setLabel("left", "fps")
        self.latency.setLabel("left", "ms")
        for plot in (self.fps, self.latency, self.params):
            plot.setMinimumHeight(110)
            plot.setLabel("bottom", "time (s)")
            plot.showGrid(x=True, y=True, alpha=0.3)
        row.addWidget(self.fps)
        row.addWidget(self.latency)
        layout.addLayout(row)
        layout.addWidget(self.params)
        self._curves: dict[str, pg.PlotDataItem] = {
            "fps": self.fps.plot(pen=pg.mkPen("w", width=2)),
            "latency": self.latency.plot(pen=pg.mkPen((255, 160, 0), width=2)),
        }
        self._data: dict[str, deque] = {}
        self._times: deque[float] = deque()
        self._start = time.monotonic()
        self._colours = [(255, 90, 90), (90, 200, 255), (140, 255, 120), (255, 220, 80)]
        self._drawn_at = -math.inf

    def add(self, values: dict[str, float]) -> None:
        """Keep one frame's values; the curves are redrawn at most every PLOT_REFRESH_S (each
        redraw repaints every plot, tens of milliseconds of the GUI thread)."""
        now = time.monotonic() - self._start
        self._times.append(now)
        for name, value in values.items():
            if name not in self._curves:
                colour = self._colours[(len(self._curves) - 2) % len(self._colours)]
                self._curves[name] = self.params.plot(pen=pg.mkPen(colour, width=2), name=name)
            self._data.setdefault(name, deque()).append(value)
        while self._times and self._times[0] < now - PLOT_SECONDS:
            self._times.popleft()
            for series in self._data.values():
                if series:
                    series.popleft()
        if now - self._drawn_at >= PLOT_REFRESH_S:
            self.redraw()

    def redraw(self) -> None:
        """Show every value kept so far."""
        self._drawn_at = time.monotonic() - self._start
        times = np.array(self._times)
        for name, curve in self._curves.items():
            series = np.array(self._data.get(name, ()))
            curve.setData(times[-len(series):] if len(series) else [], series)


@dataclass
class ViewerOptions:
    """What the window starts with and where it writes."""

    source_name: str
    checkpoint: str
    device: str
    mesh_style: str = "shaded"
    mesh_colour: tuple[int, int, int] = MESH_COLOUR  # (B, G, R) of the mesh, over the video and in the 3D view
    mesh_opacity: float = MESH_OPACITY  # the mesh's opacity over the video, 0 to 1
    shade_resolution: int | None = SHADE_RESOLUTION  # the overlay's shading resolution (tracker.outputs.overlay.shade_face; None: full)
    landmarks: bool = True
    record_path: str | None = None  # recording on at start
    record_dir: str = "takes"
    overwrite: bool = False
    record_metadata: dict = field(default_factory=dict)  # the tracker's settings kept with every take (checkpoint, refine, ...)
    screenshot_dir: str = "screenshots"
    software_3d: bool = False
    screenshot_at_end: str | None = None  # save a screenshot when the source ends, then close
    virtualcam: Callable[[], object] | None = None  # makes the virtual camera sink (None: not configured)
    virtualcam_on: bool = False
    streams: dict[str, Callable[[], object]] = field(default_factory=dict)  # {STREAMS label: makes its sink}, the configured ones
    streams_on: tuple[str, ...] = ()  # streams switched on at start


class ViewerWindow(QtWidgets.QMainWindow):
    """The main window around a started ``Pipeline`` whose sinks include ``bridge``, ``recording``
    and ``virtualcam``, and ``streams`` ({STREAMS label: slot}): SwitchableSinks the window switches."""

    def __init__(
        self, pipeline: Pipeline, bridge: ResultBridge, recording: SwitchableSink, virtualcam: SwitchableSink, options: ViewerOptions,
        streams: dict[str, SwitchableSink] | None = None,
    ) -> None:
        super().__init__()
        self.pipeline, self.bridge, self.recording, self.virtualcam = pipeline, bridge, recording, virtualcam
        self.streams = dict(streams or {})
        self.options = options
        self.tracker = pipeline.tracker
        self.head = self.tracker.head
        self.mesh_style, self.show_landmarks = options.mesh_style, options.landmarks
        self.faces_overlay = self.head.render_faces
        self.faces_3d = self.head.render_faces.numpy()
        self.shown = 0
        self.error: BaseException | None = None
        self._last_result: TrackingResult | None = None
        self._closing = False

        self.setWindowTitle(f"N2F tracker - {options.source_name}")
        self.video = VideoView()
        self.mesh_view = create_mesh_view(options.software_3d, options.mesh_colour)
        self.plots = LivePlots()
        right = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        right.addWidget(self.mesh_view.widget)
        right.addWidget(self.plots)
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        splitter.addWidget(self.video)
        splitter.addWidget(right)
        splitter.setSizes([800, 600])
        self.setCentralWidget(splitter)
        self.status = QtWidgets.QLabel()
        self.statusBar().addWidget(self.status, 1)
        self._make_actions()
        self._display = QtCore.QTimer(self)
        self._display.timeout.connect(self.on_result)
        self._display.start(DISPLAY_INTERVAL_MS)
        self._watch = QtCore.QTimer(self)
        self._watch.timeout.connect(self._check_pipeline)
        self._watch.start(100)
        if options.record_path:
            self.start_recording(options.record_path)
        if options.virtualcam_on:
            self.toggle_virtualcam()
        for label in options.streams_on:
            self.toggle_stream(label)
        self._update_status()

    def fit_to_screen(self, width: int = 1400, height: int = 800, share: float = 0.92) -> None:
        """Resize to ``width`` x ``height`` or, on a smaller screen, to ``share`` of its free
        area (never below the layout's minimum), and centre the window there."""
        area = self.screen().availableGeometry()
        minimum = self.minimumSizeHint()
        size = QtCore.QSize(
            max(minimum.width(), min(width, int(area.width() * share))),
            max(minimum.height(), min(height, int(area.height() * share))),
        )
        self.resize(size)
        self.move(area.center() - QtCore.QPoint(size.width() // 2, size.height() // 2))

    # -- controls --------------------------------------------------------------------------------
    def _make_actions(self) -> None:
        toolbar = self.addToolBar("controls")
        toolbar.setMovable(False)
        entries = [
            ("Record", "R", self.toggle_recording),
            ("Virtual camera", "V", self.toggle_virtualcam),
            *((label, key, lambda checked=False, label=label: self.toggle_stream(label)) for label, (key, _) in STREAMS.items()),
            ("Smoothing", "S", self.toggle_smoothing),
            ("Neutral", "N", self.calibrate_neutral),
            ("Mesh style", "M", self.cycle_mesh_style),
            ("Landmarks", "L", self.toggle_landmarks),
            ("Screenshot", "P", self.screenshot),
            ("Quit", "Q", self.close),
        ]
        self.actions_by_name: dict[str, QtGui.QAction] = {}
        for text, key, slot in entries:
            action = QtGui.QAction(f"{text} ({key})", self)
            action.setShortcut(QtGui.QKeySequence(key))
            action.triggered.connect(slot)
            toolbar.addAction(action)
            self.actions_by_name[text] = action
        escape = QtGui.QShortcut(QtGui.QKeySequence("Esc"), self)
        escape.activated.connect(self.close)

    def start_recording(self, path: str | Path | None = None) -> None:
        if path is None:
            folder = Path(self.options.record_dir)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"take-{datetime.now():%Y%m%d-%H%M%S}.npz"
        metadata = {"checkpoint": self.options.checkpoint, **self.options.record_metadata}
        sink = RecordingSink(path, self.head, source=self.options.source_name, overwrite=self.options.overwrite, metadata=metadata)
        self.recording.set(sink)
        self._update_status()

    def toggle_recording(self) -> None:
        if self.recording.current is None:
            try:
                self.start_recording()
            except Exception as error:
                self._report(f"cannot record: {error}")
        else:
            try:
                self.recording.set(None)  # finalises the take
            except TrackerError as error:  # e.g. a full disk: the journal is kept, the message says how to recover it
                self._report(f"cannot finish the take: {error}")
        self._update_status()

    def toggle_virtualcam(self) -> None:
        if self.virtualcam.current is not None:
            self.virtualcam.set(None)
        elif self.options.virtualcam is None:
            self._report("virtual camera not configured: start with --virtualcam")
        else:
            try:
                self.virtualcam.set(self.options.virtualcam())
            except Exception as error:
                self._report(str(error))
        self._update_status()

    def toggle_stream(self, label: str) -> None:
        """Switch the avatar stream ``label`` (a STREAMS key) on or off."""
        slot, factory = self.streams.get(label), self.options.streams.get(label)
        if slot is not None and slot.current is not None:
            slot.set(None)  # the sender sends what it holds, then stops
        elif slot is None or factory is None:
            self._report(f"{label} stream not configured: start with {STREAMS[label][1]} HOST:PORT")
        else:
            try:
                slot.set(factory())
            except Exception as error:
                self._report(f"cannot start the {label} stream: {error}")
        self._update_status()

    def streams_text(self) -> str:
        """The status bar's "streams: VMC, OSC" (those on), or "streams off"."""
        on = [label for label, slot in self.streams.items() if slot.current is not None]
        return f"streams: {', '.join(on)}" if on else "streams off"

    def toggle_smoothing(self) -> None:
        self.tracker.smoothing = not self.tracker.smoothing
        self._update_status()

    def calibrate_neutral(self) -> None:
        """Start a neutral-face calibration of every face (``FaceTracker.calibrate_neutral``)."""
        self.tracker.calibrate_neutral(NEUTRAL_SECONDS)
        where = f"; saved to {self.tracker.profile_path}" if self.tracker.profile_path is not None else " (give --profile FILE to keep it)"
        self._report(f"neutral calibration: hold a neutral face for {NEUTRAL_SECONDS:g} s{where}")

    def cycle_mesh_style(self) -> None:
        self.mesh_style = MESH_STYLES[(MESH_STYLES.index(self.mesh_style) + 1) % len(MESH_STYLES)]
        self._redraw_last()

    def toggle_landmarks(self) -> None:
        self.show_landmarks = not self.show_landmarks
        self._redraw_last()

    def screenshot(self, path: str | Path | None = None) -> Path:
        if path is None:
            folder = Path(self.options.screenshot_dir)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"screenshot-{datetime.now():%Y%m%d-%H%M%S}.png"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.plots.redraw()
        if not self.grab().save(str(path)):
            self._report(f"cannot write screenshot {path}")
        else:
            self.statusBar().showMessage(f"screenshot saved: {path}", 4000)
        return path

    # -- results ---------------------------------------------------------------------------------
    def on_result(self) -> None:
        result = self.bridge.take()
        if result is None:
            return
        self.shown += 1
        self._last_result = result
        self._draw(result)
        stats = self.pipeline.stats.snapshot()
        values = {"fps": stats.fps, "latency": stats.latency_p50_ms}
        if result.faces:
            values.update(plotted_parameters(self.head, result.faces[0]))
        self.plots.add(values)
        self._update_status(stats)

    def _draw(self, result: TrackingResult) -> None:
        image = draw_overlay(
            result.frame.image, result, self.faces_overlay, self.mesh_style, landmarks=self.show_landmarks, resolution=self.options.shade_resolution,
            colour=self.options.mesh_colour, opacity=self.options.mesh_opacity,
        )
        self.video.show_image(image)
        if result.faces:
            self.mesh_view.set_mesh(head_centred_vertices(result.faces[0]), self.faces_3d)

    def _redraw_last(self) -> None:
        if self._last_result is not None:
            self._draw(self._last_result)

    def _update_status(self, stats=None) -> None:
        stats = stats or self.pipeline.stats.snapshot()
        recorder = self.recording.current
        rec = f"REC {recorder.path.name} ({recorder.recorder.frames} frames)" if recorder is not None else "not recording"
        camera = self.virtualcam.current
        cam = "virtual camera off" if camera is None else "virtual camera ON"
        if camera is not None and camera.frames_failed:
            cam += f" ({camera.frames_failed} frames failed)"
        identity = identity_text(self._last_result.faces if self._last_result is not None else [])
        self.status.setText(
            f"{self.options.source_name} | {self.head.name.upper()} | {Path(self.options.checkpoint).name} | {self.options.device} | "
            f"{stats.fps:.1f} fps, latency {stats.latency_p50_ms:.0f} ms | faces {stats.faces_found}/{stats.frames_out} | {identity} | "
            f"smoothing {'on' if self.tracker.smoothing else 'off'} | {rec} | {cam} | {self.streams_text()} | 3D: {self.mesh_view.kind}"
            + (" | CALIBRATING NEUTRAL" if self.tracker.calibrating_neutral else "")
        )

    def _report(self, message: str) -> None:
        print(message)
        self.statusBar().showMessage(message, 8000)

    def _check_pipeline(self) -> None:
        """Poll for the end of the source or a pipeline error (GUI thread)."""
        if self.pipeline.running:
            return
        self._watch.stop()
        try:
            self.pipeline.wait(0)
        except BaseException as error:  # shown, then the window closes and main() reports it
            self.error = error
            self._report(f"tracking stopped: {error}")
        self.on_result()  # the last result, if the GUI had not taken it yet
        if self.options.screenshot_at_end:
            self.screenshot(self.options.screenshot_at_end)
            self.close()
        elif self.error is None:
            self.statusBar().showMessage("source ended", 0)

    # -- shutdown --------------------------------------------------------------------------------
    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        if not self._closing:
            self._closing = True
            self._watch.stop()
            self._display.stop()
            self.pipeline.stop()  # frames in flight reach the sinks; recording finalised
        event.accept()
