"""Frame sources: cameras, video files, network streams and image folders, each read on its own thread.

``open_source(spec)`` works out what kind of source ``spec`` names, opens it (a ``TrackerError`` says
why and what to do when it cannot) and returns a ``FrameSource``, which runs the capture thread.

Delivery policies:
- live sources (camera, network URL) keep only the newest frame: a one-slot buffer the capture
  thread overwrites, so there is never a backlog; overwritten frames count as dropped and show up
  as gaps in ``Frame.index``; each frame is delivered at most once;
- files and folders deliver every frame as fast as the consumer reads (a bounded queue; the
  capture thread waits while it is full), or with ``realtime=True`` are paced at their own frame
  rate and then behave like a live source.
Network streams reopen after a drop, waiting 0.5 s, doubling to at most 5 s between attempts.

Bad frames: an image of a folder that cannot be decoded is skipped with a warning (``on_bad_frame``
"skip", the default; it leaves a gap in ``Frame.index``, counted in ``frames_skipped``) or ends
the source with a TrackerError ("stop") after the frames before it. A video file that ends before
the frame count its header declares (damaged or cut short) is tracked to where it ends, with a
warning.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np

from tracker.errors import TrackerError

__all__ = ["Frame", "FrameSource", "MediaClockSource", "open_source", "NETWORK_SCHEMES", "IMAGE_SUFFIXES", "BAD_FRAME_POLICIES"]

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
BAD_FRAME_POLICIES = ("skip", "stop")
# declared frame rates outside this range are not believed (_plausible_fps)
FPS_RANGE = (0.1, 1000.0)
# the longest a paced source holds one frame back (s): a larger jump in media time is not waited for
MAX_PACED_GAP = 2.0
SKIPPED = object()  # what a reader returns for a frame it skipped (a gap in the frame index)
_SCHEME_HINTS = {
    "srt": " The FFmpeg inside the pip opencv wheels is built without libsrt, so srt:// needs an "
    "OpenCV built against an FFmpeg with --enable-libsrt (or relay the stream as rtsp/udp).",
}


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured frame.

    image: (H, W, 3) uint8 BGR, as OpenCV decodes it.
    index: 0-based count of frames read from the source; gaps are frames that were dropped.
    timestamp: ``time.monotonic()`` when the frame was captured.
    source_time: position in the media in seconds (files, folders); None for live sources.
    """

    image: np.ndarray
    index: int
    timestamp: float
    source_time: float | None


class _Reader(Protocol):
    """Reads raw frames from one opened medium; used only by the capture thread."""

    @property
    def fps(self) -> float | None: ...

    @property
    def size(self) -> tuple[int, int]: ...

    @property
    def frame_count(self) -> int | None:
        """Frames the medium declares (None: unknown, live or endless)."""

    def read(self) -> tuple[np.ndarray, float | None] | object | None:
        """The next (image, source_time), SKIPPED for a bad frame skipped, or None at the end."""

    def close(self) -> None: ...


class _CaptureReader:
    """A ``cv2.VideoCapture`` checked at opening to deliver a first frame."""

    def __init__(self, capture: cv2.VideoCapture, *, live: bool, error: str, name: str = "") -> None:
        ok, image = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            capture.release()
            raise TrackerError(error)
        self._capture = capture
        self._live = live
        self._name = name
        self._first: tuple[np.ndarray, float | None] | None = (image, self._position())
        self._delivered = 0
        self.fps = _plausible_fps(capture.get(cv2.CAP_PROP_FPS), name)
        self.size = (image.shape[1], image.shape[0])
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        self.frame_count = declared if declared > 0 else None

    def read(self) -> tuple[np.ndarray, float | None] | None:
        if self._first is not None:
            first, self._first = self._first, None
        else:
            ok, image = self._capture.read()
            if not ok:
                self._warn_if_early()
                return None
            first = (image, self._position())
        self._delivered += 1
        return first

    def _warn_if_early(self) -> None:
        """Warn when a file ends clearly short of its declared frame count (a container's count, often derived
        from its duration, may be a few frames off: 5 % or 2 frames are allowed)."""
        declared = self.frame_count
        if declared is not None and self._delivered < declared - max(2, declared // 20):
            log.warning(
                "%s ended after %d frames, before the %d its header declares: the file is damaged or cut short "
                "(the frames up to there are tracked; re-encode or re-copy it to get the rest)",
                self._name, self._delivered, declared,
            )

    def close(self) -> None:
        self._capture.release()

    def _position(self) -> float | None:
        return None if self._live else self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0


class _FolderReader:
    """The images of a folder in name order, as a sequence at a fixed frame rate; an image that
    cannot be decoded is skipped (SKIPPED, with a warning) or raises (``on_bad_frame`` "stop")."""

    def __init__(self, paths: list[Path], fps: float, on_bad_frame: str = "skip") -> None:
        self._paths = paths
        self._next = 0
        self._on_bad_frame = on_bad_frame
        self.fps = fps
        self.frame_count = len(paths)
        first = next((image for path in paths if (image := _load_image(path, required=False)) is not None), None)
        if first is None:
            raise TrackerError(f"no image of the folder {paths[0].parent} can be decoded: they are damaged or not images")
        self.size = (first.shape[1], first.shape[0])

    def read(self) -> tuple[np.ndarray, float | None] | object | None:
        if self._next >= len(self._paths):
            return None
        index = self._next
        self._next += 1
        path = self._paths[index]
        image = _load_image(path, required=self._on_bad_frame == "stop", hint=" (or skip such images: on_bad_frame \"skip\", --on-bad-frame skip)")
        if image is None:
            log.warning("skipped frame %d: cannot decode image %s (damaged or not an image)", index, path)
            return SKIPPED
        return image, index / self.fps

    def close(self) -> None:
        """Nothing to release: images are read one at a time."""


class _LoopingReader:
    """Starts a file or folder over whenever it ends. Its media time keeps counting across loops: a
    loop's first frame comes one frame interval (1 / fps; without a rate, the last step between
    frames) after the previous loop's last, so a looped source's times never go back (a recorded
    take's clock, ``tracker.takes.recording.Take.clock``, stays the time since the source started)."""

    def __init__(self, open_reader: Callable[[], _Reader]) -> None:
        self._open = open_reader
        self._reader = open_reader()
        self.fps, self.size = self._reader.fps, self._reader.size
        self.frame_count = None  # endless
        self._offset = 0.0  # added to the current loop's own media times
        self._last: float | None = None  # the last media time delivered (offset included)
        self._step = 1.0 / self.fps if self.fps else 0.0  # between two frames' media times
        self._restarted = False  # the next timed frame is a new loop's first

    def read(self) -> tuple[np.ndarray, float | None] | object | None:
        item = self._reader.read()
        if item is None:
            self._reader.close()
            self._reader = self._open()
            self._restarted = True
            item = self._reader.read()
        if item is None or item is SKIPPED or item[1] is None:
            return item
        image, own_time = item
        if self._restarted and self._last is not None:
            self._offset = self._last + self._step - own_time
        self._restarted = False
        media_time = self._offset + own_time
        if not self.fps and self._last is not None and media_time > self._last:
            self._step = media_time - self._last
        self._last = media_time
        return image, media_time

    def close(self) -> None:
        self._reader.close()


class _ReconnectingReader:
    """A network stream that reopens itself after a drop, backing off between failed attempts."""

    def __init__(
        self,
        open_reader: Callable[[], _Reader],
        stop: threading.Event,
        name: str,
        first_delay: float = 0.5,
        max_delay: float = 5.0,
    ) -> None:
        self._open = open_reader
        self._stop = stop
        self._name = name
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._reader = open_reader()
        self.fps, self.size = self._reader.fps, self._reader.size
        self.frame_count = None  # live
        self.reconnects = 0

    def read(self) -> tuple[np.ndarray, float | None] | None:
        item = self._reader.read()
        while item is None:
            self._reader.close()
            reader = self._reopen()
            if reader is None:
                return None
            self._reader = reader
            item = reader.read()
        return item

    def close(self) -> None:
        self._reader.close()

    def _reopen(self) -> _Reader | None:
        """A freshly opened stream, or None once the source is stopped."""
        delay = self._first_delay
        log.warning("%s: stream dropped, reconnecting in %.1f s", self._name, delay)
        while not self._stop.wait(delay):
            try:
                reader = self._open()
            except TrackerError as error:
                delay = min(2.0 * delay, self._max_delay)
                log.warning("%s: reconnect failed, retrying in %.1f s (%s)", self._name, delay, error)
                continue
            self.reconnects += 1
            log.warning("%s: reconnected", self._name)
            return reader
        return None


class _FrameBuffer:
    """Hands frames from the capture thread to the consumer.

    overwrite=True: a new frame replaces the oldest unread one when full, which counts as dropped.
    overwrite=False: ``put`` waits while full, so every frame is delivered.
    """

    def __init__(self, capacity: int, *, overwrite: bool) -> None:
        self._frames: deque[Frame] = deque(maxlen=capacity)
        self._overwrite = overwrite
        self._closed = False
        self._changed = threading.Condition()
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Store a frame; False once the buffer is closed."""
        with self._changed:
            if not self._overwrite:
                self._changed.wait_for(lambda: len(self._frames) < self._frames.maxlen or self._closed)
            if self._closed:
                return False
            if len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(frame)
            self._changed.notify_all()
            return True

    def get(self, timeout: float | None) -> Frame | None:
        """The oldest unread frame; None after ``timeout`` seconds or once closed and empty."""
        with self._changed:
            self._changed.wait_for(lambda: self._frames or self._closed, timeout)
            if not self._frames:
                return None
            frame = self._frames.popleft()
            self._changed.notify_all()
            return frame

    def close(self, *, discard: bool = False) -> None:
        """No more frames come in; unread ones stay readable unless discarded."""
        with self._changed:
            self._closed = True
            if discard:
                self._frames.clear()
            self._changed.notify_all()

    @property
    def exhausted(self) -> bool:
        """Closed and every frame read."""
        with self._changed:
            return self._closed and not self._frames


class _Pacer:
    """Holds frames back until their media time has elapsed on the wall clock.

    The clock is anchored at the first frame and again whenever media time jumps back or ahead by
    more than ``MAX_PACED_GAP`` seconds (a damaged or forged time stamp), so no frame is
    ever held back longer than that.
    """

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._origin = 0.0
        self._last: float | None = None

    def wait(self, source_time: float) -> None:
        now = time.monotonic()
        if self._last is None or not 0 <= source_time - self._last <= MAX_PACED_GAP:
            self._origin = now - source_time
        self._last = source_time
        self._stop.wait(max(0.0, self._origin + source_time - now))


class FrameSource:
    """Runs the capture thread of one opened source and hands its frames to the consumer.

    Made by ``open_source``. Use as a context manager, or call ``start()`` and ``stop()``.
    ``stop`` is the event ``stop()`` sets; readers that wait (reconnect backoff) watch it too.
    """

    def __init__(
        self,
        reader: _Reader,
        *,
        name: str,
        live: bool,
        paced: bool,
        stop: threading.Event,
        queue_size: int = 8,
    ) -> None:
        self.name = name
        self._reader = reader
        self._stop = stop
        self._keep_latest = keep_latest = live or paced
        self._buffer = _FrameBuffer(1 if keep_latest else queue_size, overwrite=keep_latest)
        self._pacer = _Pacer(self._stop) if paced else None
        self._error: Exception | None = None
        self._skipped = 0
        self._thread = threading.Thread(target=self._capture, name=f"capture {name}", daemon=True)

    @property
    def fps(self) -> float | None:
        """The source's nominal frame rate, None when it does not say."""
        return self._reader.fps

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the first frame."""
        return self._reader.size

    @property
    def realtime(self) -> bool:
        """True when only the newest frame is kept (cameras, streams, files paced at their own rate):
        a frame read late is a stale frame."""
        return self._keep_latest

    @property
    def frame_count(self) -> int | None:
        """Frames a file or folder declares; None for live or looping sources, or when unknown."""
        return getattr(self._reader, "frame_count", None)

    @property
    def frames_skipped(self) -> int:
        """Bad frames skipped (images that could not be decoded)."""
        return self._skipped

    @property
    def frames_dropped(self) -> int:
        """Frames replaced by a newer one before they were read."""
        return self._buffer.dropped

    @property
    def reconnects(self) -> int:
        """Times a dropped network stream was reopened."""
        return self._reader.reconnects if isinstance(self._reader, _ReconnectingReader) else 0

    @property
    def finished(self) -> bool:
        """True once the stream has ended (or was stopped) and every frame has been read."""
        return self._buffer.exhausted

    def start(self) -> FrameSource:
        """Start the capture thread (once)."""
        if self._thread.ident is not None:
            raise RuntimeError(f"{self.name}: a FrameSource can be started only once")
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """End capture; waits at most ``timeout`` seconds for the thread (a daemon) to finish."""
        self._stop.set()
        self._buffer.close(discard=True)
        if self._thread.ident is None:
            self._reader.close()
        else:
            self._thread.join(timeout)

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None at the end of the stream or after ``timeout`` seconds (see ``finished``).

        Re-raises an error that ended the capture thread once the frames before it are read.
        """
        if self._thread.ident is None:
            raise RuntimeError(f"{self.name}: call start() before read()")
        frame = self._buffer.get(timeout)
        if frame is None and self._error is not None and self._buffer.exhausted:
            raise self._error
        return frame

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> FrameSource:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _capture(self) -> None:
        index = 0
        try:
            while not self._stop.is_set() and (item := self._reader.read()) is not None:
                if item is SKIPPED:
                    self._skipped += 1
                    index += 1
                    continue
                image, source_time = item
                if self._pacer is not None and source_time is not None:
                    self._pacer.wait(source_time)
                if not self._buffer.put(Frame(image, index, time.monotonic(), source_time)):
                    break
                index += 1
        except Exception as error:  # handed to the consumer by read()
            self._error = error
        finally:
            self._reader.close()
            self._buffer.close()


class MediaClockSource:
    """A file's FrameSource whose frames carry their media time, index / the nominal frame rate
    (30 when the file gives none), as ``timestamp``: the smoothing then sees a camera at the
    file's rate, whatever the processing speed (evaluations, labelling). ``transform``:
    (H, W, 3) -> (H, W, 3) applied to every image first (e.g. ``train.pseudo_gt.Variant``), None: none."""

    def __init__(self, source: FrameSource, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.source, self.transform = source, transform
        self.period = 1.0 / (source.fps or 30.0)

    @property
    def realtime(self) -> bool:
        return self.source.realtime

    @property
    def finished(self) -> bool:
        return self.source.finished

    @property
    def frames_dropped(self) -> int:
        return self.source.frames_dropped

    def start(self) -> MediaClockSource:
        self.source.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self.source.stop(timeout)

    def read(self, timeout: float | None = None) -> Frame | None:
        frame = self.source.read(timeout)
        if frame is None:
            return None
        image = frame.image if self.transform is None else self.transform(frame.image)
        return replace(frame, image=image, timestamp=frame.index * self.period)


def open_source(
    spec: int | str | os.PathLike[str],
    *,
    realtime: bool | None = None,
    loop: bool = False,
    reconnect: bool = True,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    queue_size: int = 8,
    timeout: float = 5.0,
    on_bad_frame: str = "skip",
) -> FrameSource:
    """Open a camera, video file, network stream or image folder as a FrameSource (not yet started).

    spec: camera index (int or digit string), video file path, URL (rtsp, rtmp, http(s), srt,
        udp; read through OpenCV's FFmpeg backend) or folder of .jpg/.jpeg/.png/.bmp images
        (name order).
    realtime: files and folders only. False (default): every frame, as fast as they are read.
        True: paced at the source's frame rate, keeping only the newest frame. Live sources
        always behave as realtime.
    loop: files and folders start over when they end.
    reconnect: network streams reopen after a drop (0.5 s backoff doubling to 5 s).
    width, height, fps: requests to a camera (it may pick the nearest mode it supports);
        fps is also the frame rate of an image folder (default 30).
    queue_size: frames buffered ahead for files and folders read with realtime=False.
    timeout: seconds a network stream may take to open or to deliver a frame.
    on_bad_frame: "skip" (default) or "stop" at an image of a folder that cannot be decoded.
    Raises TrackerError when the source cannot be opened or an option does not fit it.
    """
    if on_bad_frame not in BAD_FRAME_POLICIES:
        raise TrackerError(f"on_bad_frame must be one of {', '.join(BAD_FRAME_POLICIES)}, got {on_bad_frame!r}")
    stop = threading.Event()
    index = camera_index(spec)
    if index is not None:
        name = f"camera {index}"
        _check_live_options(name, realtime)
        return FrameSource(_open_camera(index, width, height, fps), name=name, live=True, paced=False, stop=stop)
    text = os.fspath(spec)
    if width is not None or height is not None:
        raise TrackerError(
            f"width/height are camera requests and cannot apply to {_redact(text)}; resize frames after reading instead"
        )
    if "://" in text:
        name = _redact(text)
        _check_live_options(name, realtime)
        _check_no_fps(name, fps)
        open_stream = partial(_open_url, text, timeout)
        reader: _Reader = _ReconnectingReader(open_stream, stop, name) if reconnect else open_stream()
        return FrameSource(reader, name=name, live=True, paced=False, stop=stop)
    path = Path(text)
    if path.is_dir():
        open_reader: Callable[[], _Reader] = partial(_open_folder, path, 30.0 if fps is None else fps, on_bad_frame)
    else:
        _check_no_fps(text, fps)
        open_reader = partial(_open_file, path)
    reader = _LoopingReader(open_reader) if loop else open_reader()
    return FrameSource(reader, name=text, live=False, paced=bool(realtime), queue_size=queue_size, stop=stop)


def camera_index(spec: int | str | os.PathLike) -> int | None:
    """The camera index ``spec`` names (an int, or a string of ASCII digits like "0"), else None."""
    if isinstance(spec, int):
        return spec
    text = os.fspath(spec)
    return int(text) if text.isascii() and text.isdigit() else None


def _plausible_fps(rate: float, name: str) -> float | None:
    """A capture's declared frame rate, or None when it declares none or one outside ``FPS_RANGE``
    (a damaged or forged header: such a rate would pace frames hours apart), with a warning."""
    if not rate > 0:
        return None
    low, high = FPS_RANGE
    if not low <= rate <= high:
        log.warning("%s declares %g frames per second, outside %g-%g: ignored (its frames' own time stamps pace it)", name or "the source", rate, low, high)
        return None
    return rate


def _check_live_options(name: str, realtime: bool | None) -> None:
    if realtime is False:
        raise TrackerError(
            f"realtime=False cannot apply to the live source {name}: it always delivers the newest frame; "
            "leave realtime unset, or record the stream to a file first"
        )


def _check_no_fps(name: str, fps: float | None) -> None:
    if fps is not None:
        raise TrackerError(
            f"fps applies to cameras and image folders only; {name} plays at its own rate, leave fps unset"
        )


def _open_camera(index: int, width: int | None, height: int | None, fps: float | None) -> _CaptureReader:
    capture = cv2.VideoCapture(index)
    requests = ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height), (cv2.CAP_PROP_FPS, fps))
    for prop, value in requests:
        if value is not None:
            capture.set(prop, value)
    return _CaptureReader(
        capture,
        live=True,
        error=f"camera {index} gives no frames: no camera has that index, or another program is using it. "
        "Close other programs using the camera, or try another index (on Linux: ls /dev/video*)",
    )


def _open_file(path: Path) -> _CaptureReader:
    if not path.exists():
        raise TrackerError(
            f"video file {path} not found: check the path "
            "(a camera is an index like 0, a stream a URL like rtsp://...)"
        )
    if not path.is_file():
        raise TrackerError(f"{path} is not a video file (it is a device, a pipe or a socket): give a video file, an image folder, a camera index or a stream URL")
    return _CaptureReader(
        cv2.VideoCapture(str(path), cv2.CAP_FFMPEG),
        live=False,
        name=str(path),
        error=f"cannot read video {path}: it is not a video, is damaged, or uses a codec this OpenCV/FFmpeg "
        "build lacks; re-encode it, e.g. `ffmpeg -i INPUT -c:v libx264 out.mp4`",
    )


def _open_url(url: str, timeout: float) -> _CaptureReader:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in NETWORK_SCHEMES:
        raise TrackerError(
            f"unsupported stream address {_redact(url)}: use a URL starting with "
            f"{', '.join(s + '://' for s in NETWORK_SCHEMES)}, or a local file or folder path"
        )
    milliseconds = int(timeout * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds]
    return _CaptureReader(
        cv2.VideoCapture(url, cv2.CAP_FFMPEG, params),
        live=True,
        error=f"cannot open stream {_redact(url)}: nothing decodable arrived within {timeout:g} s (server "
        "unreachable or refusing, wrong path or credentials, or the stream is not running). Check the "
        "address and that the stream plays elsewhere (e.g. ffplay), and that no firewall blocks it."
        + _SCHEME_HINTS.get(scheme, ""),
    )


def _open_folder(folder: Path, fps: float, on_bad_frame: str) -> _FolderReader:
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise TrackerError(
            f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images: "
            "point to the folder with the frames"
        )
    return _FolderReader(paths, fps, on_bad_frame)


def _load_image(path: Path, required: bool = True, hint: str = "") -> np.ndarray | None:
    """(H, W, 3) uint8 BGR; None when it cannot be decoded and not ``required`` (else TrackerError)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None and required:
        raise TrackerError(f"cannot decode image {path}: it is damaged or not an image; remove or replace it{hint}")
    return image


def _redact(url: str) -> str:
    """The URL with any user name and password replaced by ***."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
