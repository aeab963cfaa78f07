"""A pipeline sink that feeds a virtual camera (``pyvirtualcam``): ``--virtualcam``.

Two modes: ``overlay`` sends the video with the tracked mesh drawn over it; ``key`` sends the
mesh alone on a flat key colour, for chroma-key compositing in OBS or a video call. Frames are
sent at a fixed rate (the source's) from a thread of the sink's own (``tracker.live.mailbox``), so
the pipeline never waits for the camera; when no new result has arrived the previous frame is sent
again, so the camera keeps its rate. A frame that cannot be drawn or sent is logged (once per kind
of error) and counted, and the camera goes on with the next result; tracking never stops for it.
"""

from __future__ import annotations

import logging
import math
import threading

import cv2
import numpy as np
import pyvirtualcam
import torch

from tracker.errors import TrackerError
from tracker.live.mailbox import MailboxThread
from tracker.live.results import TrackingResult
from tracker.outputs.overlay import (
    MESH_COLOUR,
    MESH_OPACITY,
    MESH_STYLES,
    check_look,
    draw_landmarks,
    draw_mesh,
    draw_overlay,
)

log = logging.getLogger(__name__)

VIRTUALCAM_MODES = ("overlay", "key")

NO_DEVICE = """no virtual camera could be opened ({cause}).
To get one:
  Linux:         sudo apt install v4l2loopback-dkms
                 sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="N2F tracker"
  Windows/macOS: install OBS Studio (26 or newer) and start its Virtual Camera once
                 (Controls > Start Virtual Camera), then stop it again.
Pick a device with --virtualcam-device (Linux: /dev/videoN; Windows/macOS: "OBS Virtual Camera")."""


class VirtualCameraSink:
    """Sends every pipeline result, drawn, to a virtual camera at ``fps`` frames per second.

    faces_tri       (F, 3) int64 triangles of the head model's mesh
    width, height   the camera's frame size in pixels; each composed frame is resized to it with
                    a plain resize (the whole frame is kept, stretched if the aspect ratio differs)
    fps             frames per second sent to the camera (use the source's rate)
    mode            "overlay": the video with the mesh over it; "key": the mesh alone (opacity 1)
                    on ``key_colour_bgr``, for chroma keying
    style           mesh style, one of ``tracker.outputs.overlay.MESH_STYLES``
    colour          the mesh's (B, G, R) 0-255, as the viewer's --mesh-color
    opacity         the mesh's opacity over the video in the overlay mode, 0 to 1
    landmarks       also draw the head model's 68 projected landmarks (both modes)
    key_colour_bgr  (B, G, R) 0-255 background of the key mode
    device, backend passed to ``pyvirtualcam.Camera`` (None: the first available one)

    The camera is opened here, so a missing device fails at start-up with a ``TrackerError`` that
    says how to get one. ``__call__`` only keeps the newest result; the sender thread
    (``MailboxThread``, repeating) draws and sends. A failed frame is logged once per kind of error
    and counted (``frames_failed``), never raised: the sender goes on with the next result.
    """

    def __init__(
        self,
        faces_tri: torch.Tensor,
        width: int,
        height: int,
        fps: float,
        mode: str = "overlay",
        style: str = "shaded",
        colour: tuple[int, int, int] = MESH_COLOUR,
        opacity: float = MESH_OPACITY,
        landmarks: bool = False,
        key_colour_bgr: tuple[int, int, int] = (0, 255, 0),
        device: str | None = None,
        backend: str | None = None,
    ) -> None:
        if mode not in VIRTUALCAM_MODES:
            raise TrackerError(f"virtual camera mode must be one of {VIRTUALCAM_MODES}, got {mode!r}")
        if style not in MESH_STYLES:
            raise TrackerError(f"mesh style must be one of {MESH_STYLES}, got {style!r}")
        try:
            check_look(colour, opacity)
        except ValueError as error:
            raise TrackerError(str(error)) from None
        if int(width) != width or int(height) != height or width < 1 or height < 1:
            raise TrackerError(f"virtual camera size must be positive whole pixels, got {width}x{height}")
        if not math.isfinite(fps) or fps <= 0:
            raise TrackerError(f"virtual camera frame rate must be a positive number of frames per second, got {fps}")
        if len(key_colour_bgr) != 3 or not all(0 <= int(c) <= 255 for c in key_colour_bgr):
            raise TrackerError(f"key colour must be three 0-255 values (B, G, R), got {key_colour_bgr!r}")
        self.faces_tri, self.mode, self.style, self.landmarks = faces_tri, mode, style, landmarks
        self.colour, self.opacity = tuple(int(c) for c in colour), float(opacity)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.key_colour_bgr = tuple(int(c) for c in key_colour_bgr)
        try:
            self._camera = pyvirtualcam.Camera(self.width, self.height, self.fps, fmt=pyvirtualcam.PixelFormat.BGR, device=device, backend=backend)
        except Exception as error:  # pyvirtualcam raises RuntimeError (KeyError for an unknown backend)
            cause = " ".join(str(error).split()) or type(error).__name__
            raise TrackerError(NO_DEVICE.format(cause=cause)) from error

        self._lock = threading.Lock()  # guards the counters
        self._camera_lock = threading.Lock()  # a send never overlaps close()
        self._sent = 0
        self._composed = 0
        self._frame: tuple[TrackingResult, np.ndarray] | None = None  # the last result drawn, and its frame
        self._closed = self._camera_closed = False
        self._sender = MailboxThread(self._send, f"virtual camera {self.device}", repeat=True)

    @property
    def device(self) -> str:
        """The virtual camera device in use (e.g. ``/dev/video2``, ``OBS Virtual Camera``)."""
        return self._camera.device

    @property
    def results_received(self) -> int:
        """Results handed to the sink so far."""
        return self._sender.stats.received

    @property
    def frames_composed(self) -> int:
        """Frames drawn so far (one per result the sender took; fewer than received if results came faster than ``fps``)."""
        with self._lock:
            return self._composed

    @property
    def frames_sent(self) -> int:
        """Frames sent to the camera so far, re-sent ones included."""
        with self._lock:
            return self._sent

    @property
    def frames_failed(self) -> int:
        """Frames that could not be drawn or sent so far (``MailboxThread``'s errors)."""
        return self._sender.stats.errors

    def __call__(self, result: TrackingResult) -> None:
        """Keep ``result`` as the newest (O(1), never blocks)."""
        self._sender.put(result)

    def close(self) -> None:
        """Send the newest result not sent yet, stop the sender thread and close the camera. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sender.close(timeout=1.0 + 2.0 / self.fps)
        with self._camera_lock:
            self._camera.close()
            self._camera_closed = True
        stats = self._sender.stats
        if stats.errors:
            log.warning("%s: %d frames could not be sent (last: %s)", self._sender.name, stats.errors, stats.last_error)

    def compose(self, result: TrackingResult) -> np.ndarray:
        """The frame to send for ``result``: (height, width, 3) uint8 BGR."""
        image = result.frame.image
        if self.mode == "overlay":
            image = draw_overlay(image, result, self.faces_tri, self.style, self.landmarks, colour=self.colour, opacity=self.opacity)
        else:
            image = np.full(image.shape, self.key_colour_bgr, np.uint8)
            draw_mesh(image, result, self.faces_tri, self.style, opacity=1.0, colour=self.colour)
            if self.landmarks:
                draw_landmarks(image, result)
        source_height, source_width = image.shape[:2]
        if (source_width, source_height) == (self.width, self.height):
            return image
        shrinking = self.width * self.height < source_width * source_height
        return cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)

    def _send(self, result: TrackingResult) -> None:
        """The sender thread's work, repeated until a newer result comes: draw ``result`` (once),
        send it, wait for the camera's next frame time."""
        if self._frame is None or self._frame[0] is not result:
            self._frame = (result, self.compose(result))
            with self._lock:
                self._composed += 1
        with self._camera_lock:
            if self._camera_closed:  # the sender outlived close()'s wait
                return
            self._camera.send(self._frame[1])
        with self._lock:
            self._sent += 1
        self._camera.sleep_until_next_frame()
