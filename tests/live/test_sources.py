"""Frame sources: files, folders, loopback HTTP MJPEG streams, delivery policies, errors, stopping;
a file's frames stamped with their media time."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from tracker.errors import TrackerError
from tracker.live.sources import Frame, FrameSource, MediaClockSource, open_source

WIDTH, HEIGHT = 64, 48
GREY_STEP = 8  # frame i has grey level i * GREY_STEP (mod 256)


def grey(frame: Frame) -> int:
    return int(round(float(frame.image.mean())))


def write_video(path: Path, frames: int, fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((HEIGHT, WIDTH, 3), i * GREY_STEP, np.uint8))
    writer.release()
    return path


def capture_threads(source: FrameSource) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"capture {source.name}"]


def read_until(
    source: FrameSource, condition: Callable[[list[Frame]], bool], deadline_s: float = 10.0
) -> list[Frame]:
    """Read frames until condition(frames) holds; fails instead of hanging."""
    frames: list[Frame] = []
    deadline = time.monotonic() + deadline_s
    while not condition(frames):
        assert time.monotonic() < deadline, f"gave up after {len(frames)} frames"
        frame = source.read(timeout=0.5)
        if frame is not None:
            frames.append(frame)
    return frames


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi", 30, 30.0)


def test_file_delivers_every_frame_in_order(video: Path) -> None:
    source = open_source(video, queue_size=2)
    assert (source.fps, source.size, source.realtime) == (30.0, (WIDTH, HEIGHT), False)
    with source:
        frames = list(source)
    assert [f.index for f in frames] == list(range(30))
    assert [abs(grey(f) - f.index * GREY_STEP) <= 2 for f in frames] == [True] * 30
    assert frames[0].image.shape == (HEIGHT, WIDTH, 3) and frames[0].image.dtype == np.uint8
    assert [f.source_time for f in frames] == pytest.approx([i / 30 for i in range(30)], abs=1e-3)
    assert source.frames_dropped == 0 and source.finished
    assert source.read(timeout=0) is None


def test_realtime_file_is_paced_at_its_frame_rate(tmp_path: Path) -> None:
    video = write_video(tmp_path / "short.avi", 12, 30.0)
    source = open_source(video, realtime=True)
    started = time.monotonic()
    with source:
        frames = list(source)
    assert frames[-1].index == 11 and frames[-1].source_time == pytest.approx(11 / 30, abs=1e-3)
    assert all(b.index > a.index and b.source_time > a.source_time for a, b in zip(frames, frames[1:]))
    assert frames[-1].timestamp - started >= 11 / 30 - 1e-3  # no frame comes before its media time
    assert len(frames) + source.frames_dropped == 12


def test_media_clock_stamps_frames_with_their_media_time(tmp_path: Path) -> None:
    """Every frame of a file, in order, at index / the file's frame rate whatever the reading
    speed; the transform applied to every image; the file's own rate, else 30 fps."""
    video = write_video(tmp_path / "clip.avi", 6, 25.0)
    source = MediaClockSource(open_source(video), transform=lambda image: image[:, ::-1])
    assert not source.realtime
    with open_source(video) as plain:
        images = [f.image for f in plain]
    frames = []
    source.start()
    try:
        while (frame := source.read(timeout=5)) is not None:
            frames.append(frame)
            time.sleep(0.02)  # slower than the file's 25 fps: the timestamps do not follow the clock
    finally:
        source.stop()
    assert [f.index for f in frames] == list(range(6)) and source.finished and source.frames_dropped == 0
    assert [f.timestamp for f in frames] == pytest.approx([i / 25 for i in range(6)])
    assert all(np.array_equal(f.image, image[:, ::-1]) for f, image in zip(frames, images))

    class NoRate:
        fps = None

    assert MediaClockSource(NoRate()).period == pytest.approx(1 / 30)


def test_slow_consumer_gets_only_newest_frames(video: Path) -> None:
    with open_source(video, realtime=True) as source:
        frames = []
        for frame in source:
            frames.append(frame)
            time.sleep(0.1)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)), "indices must strictly increase (no frame twice)"
    assert all(abs(grey(f) - f.index * GREY_STEP) <= 2 for f in frames)
    assert source.frames_dropped > 0
    assert len(frames) + source.frames_dropped == 30


def test_loop_restarts_the_file(tmp_path: Path) -> None:
    video = write_video(tmp_path / "loop.avi", 5, 30.0)
    with open_source(video, loop=True) as source:
        frames = [source.read(timeout=5) for _ in range(12)]
    assert [f.index for f in frames] == list(range(12))
    assert [round(grey(f) / GREY_STEP) for f in frames] == [i % 5 for i in range(12)]
    assert frames[5].source_time == pytest.approx(5 / 30, abs=1e-3)  # media time keeps counting across loops


def test_image_folder_in_name_order(tmp_path: Path) -> None:
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"frame_{i:03d}.png"), np.full((HEIGHT, WIDTH, 3), i * 10, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_source(tmp_path, fps=10)
    assert (source.fps, source.size, source.realtime) == (10, (WIDTH, HEIGHT), False)
    with source:
        frames = list(source)
    assert [grey(f) for f in frames] == [0, 10, 20, 30, 40]
    assert [f.source_time for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_damaged_image_in_folder_is_skipped_or_stops(tmp_path: Path, caplog) -> None:
    for name in ("a.png", "c.png", "d.png"):
        cv2.imwrite(str(tmp_path / name), np.full((HEIGHT, WIDTH, 3), ord(name[0]), np.uint8))
    (tmp_path / "b.png").write_bytes(b"not a png")
    with open_source(tmp_path) as source:  # skip (default): a gap in the index, a warning, a count
        frames = list(source)
    assert [f.index for f in frames] == [0, 2, 3] and [f.image[0, 0, 0] for f in frames] == [ord("a"), ord("c"), ord("d")]
    assert [f.source_time for f in frames] == [0.0, 2 / 30, 3 / 30]
    assert source.frames_skipped == 1 and "skipped frame 1: cannot decode image" in caplog.text and "b.png" in caplog.text
    with open_source(tmp_path, on_bad_frame="stop") as source:
        assert source.read(timeout=5).index == 0
        with pytest.raises(TrackerError, match="b.png"):
            source.read(timeout=5)
    with pytest.raises(TrackerError, match="on_bad_frame must be one of skip, stop"):
        open_source(tmp_path, on_bad_frame="ignore")


def test_video_that_ends_before_its_declared_length_warns(tmp_path: Path, shared_path: Path, caplog) -> None:
    data = bytearray((shared_path / "real-faces" / "videos" / "single_face.mp4").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 20000] = bytes(b ^ 0xA5 for b in data[middle : middle + 20000])  # damaged from mid-file on
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with open_source(damaged) as source:
        declared = source.frame_count
        frames = list(source)
    assert declared == 72 and 0 < len(frames) < declared
    assert f"ended after {len(frames)} frames, before the {declared} its header declares" in caplog.text
    caplog.clear()
    with open_source(shared_path / "real-faces" / "videos" / "single_face.mp4") as source:
        assert len(list(source)) == source.frame_count == 72
    with open_source(shared_path / "real-faces" / "videos" / "no_face.mp4") as source:
        assert (len(list(source)), source.frame_count) == (95, 98)  # a container's count a few frames off is no damage
    assert "header declares" not in caplog.text


def test_stop_while_capture_waits_on_a_full_queue(video: Path) -> None:
    source = open_source(video, queue_size=2).start()
    time.sleep(0.2)  # the capture thread is now blocked on the full queue
    source.stop()
    assert not capture_threads(source)
    assert source.read(timeout=0) is None and source.finished


# --- network streams: multipart/x-mixed-replace MJPEG over loopback HTTP ---------------------


class MjpegServer:
    """A tiny HTTP MJPEG server; each connection streams `per_connection` frames, then either closes
    or (stall=True) keeps the connection open sending nothing."""

    def __init__(
        self, port: int = 0, *, first_grey: int = 0, per_connection: int = 10_000, stall: bool = False
    ) -> None:
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for i in range(per_connection):
                        if server.closing.is_set():
                            return
                        image = np.full((HEIGHT, WIDTH, 3), (first_grey + i * GREY_STEP) % 256, np.uint8)
                        jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                        # Content-Length lets FFmpeg's mpjpeg demuxer hand out each frame at once
                        part_header = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                        self.wfile.write(part_header % len(jpeg))
                        self.wfile.write(jpeg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(0.02)
                    if stall:
                        server.closing.wait(30)
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/stream.mjpg"
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def mjpeg_server() -> Iterator[MjpegServer]:
    server = MjpegServer()
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_mjpeg_stream_keeps_only_newest_frames(mjpeg_server: MjpegServer) -> None:
    source = open_source(mjpeg_server.url, timeout=3)
    assert source.realtime and source.size == (WIDTH, HEIGHT)
    with source:
        frames = read_until(source, lambda got: len(got) >= 2)
        for _ in range(4):  # slow consumer: the stream runs at ~50 fps
            time.sleep(0.1)
            frames.append(source.read(timeout=5))
    assert all(f.source_time is None for f in frames)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))
    assert all(abs(grey(f) - (f.index * GREY_STEP) % 256) <= 2 for f in frames)
    assert source.frames_dropped >= indices[-1] + 1 - len(frames) > 0
    assert not capture_threads(source)


def test_http_stream_reconnects_after_the_server_goes_away(
    mjpeg_server: MjpegServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tracker.live.sources")
    with open_source(mjpeg_server.url, timeout=2) as source:
        before = read_until(source, lambda got: len(got) >= 3)
        mjpeg_server.close()  # drops the connection and stops listening: reconnects are refused
        time.sleep(0.8)
        revived = MjpegServer(mjpeg_server.port, first_grey=200)
        try:
            after = read_until(source, lambda got: bool(got) and grey(got[-1]) >= 196)
        finally:
            revived.close()
        assert source.reconnects == 1
    assert "reconnect failed" in caplog.text, "the first attempt meets a closed port and backs off"
    indices = [f.index for f in before + after]
    assert indices == sorted(set(indices)), "indices keep counting across the reconnect"


def test_stop_returns_promptly_while_stream_read_is_blocked() -> None:
    server = MjpegServer(per_connection=6, stall=True)  # FFmpeg needs 3 frames to open an MJPEG stream
    try:
        source = open_source(server.url, timeout=3).start()
        read_until(source, lambda got: len(got) >= 1)
        time.sleep(0.3)  # all 6 frames sent: the capture thread now waits inside the stream read
        started = time.monotonic()
        source.stop(timeout=0.2)  # the read itself only gives up after the 3 s stream timeout
        assert time.monotonic() - started < 2.0
        assert capture_threads(source), "the capture thread was still inside the read"
    finally:
        server.close()  # ends the stalled response, so the capture thread finishes too
    for thread in capture_threads(source):
        thread.join(5)
    assert not capture_threads(source)


def test_stop_during_reconnect_backoff_ends_the_thread(mjpeg_server: MjpegServer) -> None:
    source = open_source(mjpeg_server.url, timeout=2).start()
    read_until(source, lambda got: len(got) >= 1)
    mjpeg_server.close()
    time.sleep(0.3)  # dropped, now waiting to reconnect
    source.stop()
    assert not capture_threads(source)
    assert source.read(timeout=0) is None


# --- errors ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TrackerError, match="not found"):
        open_source(tmp_path / "nope.mp4")


def test_file_that_is_not_a_video(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 1000)
    with pytest.raises(TrackerError, match="codec"):
        open_source(junk)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(TrackerError, match="no .jpg"):
        open_source(tmp_path)


def test_unreachable_url_hides_credentials() -> None:
    with pytest.raises(TrackerError, match="cannot open stream") as error:
        open_source(f"http://user:secret@127.0.0.1:{free_port()}/live", timeout=1)
    assert "secret" not in str(error.value) and "127.0.0.1" in str(error.value)


def test_unknown_url_scheme() -> None:
    with pytest.raises(TrackerError, match="rtsp://"):
        open_source("ftp://example.invalid/clip.mp4")


def test_absent_camera() -> None:
    with pytest.raises(TrackerError, match="camera 99.*index"):
        open_source(99)


def test_options_that_do_not_fit_the_source(video: Path) -> None:
    with pytest.raises(TrackerError, match="realtime=False"):
        open_source("rtsp://127.0.0.1:1/live", realtime=False)
    with pytest.raises(TrackerError, match="width/height"):
        open_source(video, width=640)
    with pytest.raises(TrackerError, match="fps"):
        open_source(video, fps=60)
