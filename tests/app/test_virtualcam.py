"""The virtual camera sink, checked through an in-memory pyvirtualcam backend.

The backend is registered with pyvirtualcam's public ``register_backend``; it decodes every frame
by the FourCC pyvirtualcam hands it (as a real device would), so a frame sent in the wrong colour
order shows up as the wrong colour here.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import pyvirtualcam
from pyvirtualcam.util import encode_fourcc

from app.virtualcam import VirtualCameraSink
from tests.outputs.test_overlay import (
    HEIGHT,
    WIDTH,
    analytic_sphere_view,
    sphere_result,
)
from tracker.errors import TrackerError
from tracker.live.results import TrackingResult
from tracker.live.sources import Frame
from tracker.outputs.overlay import AMBIENT

MEMORY, NO_DEVICE, FAILING_SEND, SLOW_SEND = "n2f-test-memory", "n2f-test-nodevice", "n2f-test-failsend", "n2f-test-slowsend"
BGR_FOURCC, RGB_FOURCC = encode_fourcc(pyvirtualcam.PixelFormat.BGR.value), encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
ORANGE_BGR = (20, 120, 240)  # three different channels: a swapped R/B changes it


class MemoryBackend:
    """Records every frame it receives, decoded to RGB as a viewer would see it, and when it came."""

    instances: list[MemoryBackend] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw) -> None:
        if fourcc not in (BGR_FOURCC, RGB_FOURCC):
            raise RuntimeError(f"unsupported fourcc {fourcc:#x}")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.raw: list[np.ndarray] = []  # what pyvirtualcam handed over: 1D uint8
        self.rgb: list[np.ndarray] = []  # (height, width, 3) uint8 RGB
        self.times: list[float] = []  # time.perf_counter() at arrival
        self.close_calls = 0
        self.sent_after_close = 0
        MemoryBackend.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        if self.close_calls:
            self.sent_after_close += 1
        pixels = frame.copy().reshape(self.height, self.width, 3)
        self.raw.append(frame.copy())
        self.rgb.append(pixels[..., ::-1] if self.fourcc == BGR_FOURCC else pixels)
        self.times.append(time.perf_counter())

    def close(self) -> None:
        self.close_calls += 1

    def device(self) -> str:
        return "memory"

    def native_fourcc(self) -> int:
        return self.fourcc


class NoDeviceBackend(MemoryBackend):
    def __init__(self, **kw) -> None:
        raise RuntimeError("no device")


class FailingSendBackend(MemoryBackend):
    """Fails every send from the third frame on while ``failing`` (set at first)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.failing = True
        self.failures = 0

    def send(self, frame: np.ndarray) -> None:
        if self.failing and len(self.raw) >= 2:
            self.failures += 1
            raise RuntimeError("device went away")
        super().send(frame)


class SlowSendBackend(MemoryBackend):
    def send(self, frame: np.ndarray) -> None:
        time.sleep(0.2)
        super().send(frame)


pyvirtualcam.register_backend(MEMORY, MemoryBackend)
pyvirtualcam.register_backend(NO_DEVICE, NoDeviceBackend)
pyvirtualcam.register_backend(FAILING_SEND, FailingSendBackend)
pyvirtualcam.register_backend(SLOW_SEND, SlowSendBackend)


def solid_result(colour_bgr: tuple[int, int, int], index: int = 0) -> TrackingResult:
    """A 320x240 frame of one colour, no face."""
    image = np.full((HEIGHT, WIDTH, 3), colour_bgr, np.uint8)
    return TrackingResult(Frame(image, index, time.monotonic(), None), [], np.array([300.0, 300.0]), np.array([150.0, 130.0]), {})


def open_sink(backend: str = MEMORY, **kw) -> tuple[VirtualCameraSink, MemoryBackend]:
    faces = sphere_result()[1]
    options = dict(width=160, height=120, fps=30.0) | kw
    sink = VirtualCameraSink(faces, backend=backend, **options)
    return sink, MemoryBackend.instances[-1]


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("size", [(160, 120), (400, 300), (WIDTH, HEIGHT)])
def test_frames_have_the_camera_size_and_colour_order(size: tuple[int, int]) -> None:
    width, height = size
    sink, backend = open_sink(width=width, height=height)
    try:
        assert backend.fourcc == BGR_FOURCC and (backend.width, backend.height) == (width, height)
        sink(solid_result(ORANGE_BGR))
        wait_for(lambda: len(backend.raw) >= 3)
    finally:
        sink.close()
    assert all(raw.dtype == np.uint8 and raw.shape == (height * width * 3,) for raw in backend.raw)
    for rgb in backend.rgb:
        assert rgb.shape == (height, width, 3)
        assert (rgb == ORANGE_BGR[::-1]).all(), "the viewer sees the frame's colour, not R and B swapped"


def test_key_mode_sends_the_mesh_alone_on_the_key_colour() -> None:
    result, faces = sphere_result()
    result.frame.image[:] = ORANGE_BGR  # the video must not show through
    sink = VirtualCameraSink(faces, 160, 120, 30.0, mode="key", key_colour_bgr=(0, 255, 0), backend=MEMORY)
    backend = MemoryBackend.instances[-1]
    try:
        sink(result)
        wait_for(lambda: len(backend.rgb) >= 2)
    finally:
        sink.close()
    image = backend.rgb[-1][..., ::-1]  # back to BGR
    covered, _ = analytic_sphere_view()
    covered = cv2.resize(covered.astype(np.uint8), (160, 120), interpolation=cv2.INTER_NEAREST)
    kernel = np.ones((5, 5), np.uint8)
    outside = ~cv2.dilate(covered, kernel).astype(bool)
    inside = cv2.erode(covered, kernel).astype(bool)
    is_key = (image == (0, 255, 0)).all(-1)
    assert is_key[outside].all(), "the key colour everywhere off the mesh"
    assert not is_key[inside].any(), "the mesh drawn opaque over the key colour"
    assert not (image == ORANGE_BGR).all(-1).any(), "no video"


def test_overlay_mode_draws_the_mesh_over_the_video() -> None:
    result, faces = sphere_result()
    sink = VirtualCameraSink(faces, WIDTH, HEIGHT, 30.0, mode="overlay", backend=MEMORY)
    backend = MemoryBackend.instances[-1]
    try:
        sink(result)
        wait_for(lambda: len(backend.rgb) >= 1)
    finally:
        sink.close()
    covered, _ = analytic_sphere_view()
    drawn = backend.rgb[-1].any(-1)  # the video is black
    assert drawn[cv2.erode(covered.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)].all()
    assert not drawn[~cv2.dilate(covered.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)].any()


@pytest.mark.parametrize("mode, opacity", [("overlay", 0.5), ("key", 1.0)])
def test_the_mesh_has_the_colour_and_opacity_asked(mode: str, opacity: float) -> None:
    """Red, at ``opacity`` over the black video in the overlay mode, opaque in the key mode."""
    result, faces = sphere_result()
    sink = VirtualCameraSink(faces, WIDTH, HEIGHT, 30.0, mode=mode, colour=(0, 0, 255), opacity=0.5, backend=MEMORY)
    backend = MemoryBackend.instances[-1]
    try:
        sink(result)
        wait_for(lambda: len(backend.rgb) >= 1)
    finally:
        sink.close()
    covered, cosine = analytic_sphere_view()
    inside = cv2.erode(covered.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    red, green, blue = (backend.rgb[-1][..., k][inside].astype(float) for k in range(3))
    assert not green.any() and not blue.any()
    expected = opacity * (AMBIENT + (1 - AMBIENT) * cosine[inside] ** 2) * 255
    assert np.abs(red - expected).mean() < 2.0


def test_rate_follows_fps_and_frames_are_resent_without_new_results() -> None:
    fps = 30.0
    sink, backend = open_sink(fps=fps)
    try:
        time.sleep(0.1)
        assert not backend.raw, "nothing is sent before the first result"
        start = time.perf_counter()
        for index in range(5):  # a short burst, then no more results
            sink(solid_result((index * 40, 0, 0), index))
            time.sleep(0.02)
        results_stopped = time.perf_counter()
        time.sleep(0.6)
        duration = time.perf_counter() - start
        sent = sink.frames_sent
    finally:
        sink.close()
    assert 0.4 * fps * duration <= sent <= 1.5 * fps * duration
    assert len(backend.raw) == sink.frames_sent
    intervals = np.diff(backend.times)
    assert 0.5 / fps <= statistics.median(intervals) <= 2.0 / fps
    resent = sum(t > results_stopped + 0.05 for t in backend.times)
    assert resent >= 0.4 * fps * 0.5, "the last frame keeps coming at the camera's rate"
    assert (backend.rgb[-1] == (0, 0, 160)).all(), "the newest result is what is re-sent"
    assert sink.results_received == 5 and 1 <= sink.frames_composed <= 5


def test_call_never_waits_for_the_camera() -> None:
    sink, backend = open_sink(SLOW_SEND)
    try:
        sink(solid_result(ORANGE_BGR))
        wait_for(lambda: sink.frames_composed >= 1)
        results = [solid_result(ORANGE_BGR, index) for index in range(1, 51)]
        start = time.perf_counter()
        for result in results:  # while the camera is busy sending
            sink(result)
        assert time.perf_counter() - start < 0.1
    finally:
        start = time.perf_counter()
        sink.close()
    assert time.perf_counter() - start < 1.0, "close waits at most for the frame being sent"
    assert backend.sent_after_close == 0


def test_missing_device_says_how_to_get_one() -> None:
    faces = sphere_result()[1]
    with pytest.raises(TrackerError) as error:
        VirtualCameraSink(faces, 160, 120, 30.0, backend=NO_DEVICE)
    message = str(error.value)
    assert "no device" in message and "v4l2loopback" in message and "OBS" in message and "--virtualcam-device" in message


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(mode="chroma"), "mode"),
        (dict(style="glow"), "style"),
        (dict(width=0), "size"),
        (dict(fps=0.0), "frame rate"),
        (dict(fps=float("nan")), "frame rate"),
        (dict(key_colour_bgr=(0, 300, 0)), "key colour"),
        (dict(colour=(0, 0, 256)), "mesh colour"),
        (dict(opacity=1.2), "mesh opacity"),
    ],
)
def test_bad_settings_are_reported(options: dict, words: str) -> None:
    count = len(MemoryBackend.instances)
    with pytest.raises(TrackerError, match=words):
        open_sink(**options)
    assert len(MemoryBackend.instances) == count, "no camera opened"


def test_close_is_idempotent_and_stops_sending() -> None:
    sink, backend = open_sink()
    sink(solid_result(ORANGE_BGR))
    wait_for(lambda: len(backend.raw) >= 2)
    sink.close()
    sent = len(backend.raw)
    time.sleep(0.15)
    sink.close()
    assert len(backend.raw) == sent == sink.frames_sent, "nothing sent after close"
    assert backend.close_calls == 1 and backend.sent_after_close == 0


def test_close_before_any_result_returns_at_once() -> None:
    sink, backend = open_sink()
    start = time.perf_counter()
    sink.close()
    assert time.perf_counter() - start < 0.5 and backend.close_calls == 1 and not backend.raw


def test_a_failing_camera_is_logged_once_counted_and_never_stops_the_sink(caplog) -> None:
    """The one error rule of tracker.live.mailbox (until the restructure of issue 23 the first
    error stopped the sender and was raised into the pipeline, stopping the tracking)."""
    caplog.set_level(logging.WARNING)
    before = set(threading.enumerate())
    sink, backend = open_sink(FAILING_SEND)
    (thread,) = set(threading.enumerate()) - before  # the sink's sender
    sink(solid_result(ORANGE_BGR))  # two frames sent, then the send fails
    wait_for(lambda: sink.frames_failed == 1)
    time.sleep(0.1)
    assert backend.failures == 1, "a failed frame is not re-sent: the sender waits for a newer result"
    for index in (1, 2):  # every result keeps failing; never raised here
        sink(solid_result(ORANGE_BGR, index))
        wait_for(lambda: sink.frames_failed == index + 1)
    backend.failing = False  # the device is back: the next result is sent, and kept coming at the rate
    sink(solid_result((200, 0, 0), 3))
    wait_for(lambda: len(backend.raw) >= 4)
    sink.close()
    assert not thread.is_alive() and backend.close_calls == 1
    assert sink.frames_failed == 3 and sink.results_received == 4 and len(backend.raw) == sink.frames_sent
    assert (backend.rgb[-1] == (0, 0, 200)).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("RuntimeError: device went away" in w and "goes on" in w for w in warnings) == 1, warnings  # logged once ...
    assert any("3 frames could not be sent" in w for w in warnings), warnings  # ... and summed up at close
    sink.close()  # idempotent
    assert backend.close_calls == 1


def test_close_sends_the_newest_result_not_sent_yet() -> None:
    sink, backend = open_sink(SLOW_SEND)
    sink(solid_result(ORANGE_BGR))
    wait_for(lambda: sink.frames_composed >= 1)  # the first frame is being sent (0.2 s)
    sink(solid_result((200, 0, 0), 1))
    sink.close()
    assert (backend.rgb[-1] == (0, 0, 200)).all() and sink.frames_composed == 2
