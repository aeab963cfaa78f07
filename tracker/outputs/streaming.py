"""Avatar streams: the tracked face, live, to VSeeFace / VNyan / Warudo (VMC), Unreal (Live Link Face)
and researchers' own tools (OSC).

    sink = VmcSink("127.0.0.1", 39539)           # --vmc 127.0.0.1:39539
    sink = LiveLinkSink("192.168.1.20", 11111)   # --livelink 192.168.1.20
    sink = OscSink("127.0.0.1", 9000)            # --osc :9000
    Pipeline(source, tracker, [sink, ...]).run()

Each sink sends every tracked frame over UDP from a thread of its own, newest frame wins, never
raising into the pipeline (``StreamStats`` counts what happened). The encoders are pure functions
(``vmc_bundle``, ``livelink_packet``, ``osc_bundle``) from ``AvatarValues`` / ``FaceResult`` to
bytes or python-osc bundles. The wire formats, axes, mirroring, VRM keys and their sources:
docs/streaming.md.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import threading
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from tracker.errors import TrackerError
from tracker.fitting.arkit import ARKIT_INDEX, ARKIT_NAMES, AvatarValues
from tracker.live.mailbox import MailboxThread

if TYPE_CHECKING:
    from tracker.live.results import FaceResult, TrackingResult

log = logging.getLogger(__name__)

VMC_PORT = 39539  # VMC receivers ("Marionette": VSeeFace, VNyan, Warudo) listen here
LIVELINK_PORT = 11111  # Live Link Face's port in Unreal
OSC_PORT = 9000  # no standard port for OSC; a common default
VMC_NAMES = ("arkit", "vrm")
LIVELINK_VERSION = 6
LIVELINK_COUNT = 61
VRM_NAMES = ("A", "I", "U", "E", "O", "Blink_L", "Blink_R", "Joy", "Angry", "Sorrow", "Fun")


# -- endpoints ------------------------------------------------------------------------------------
def parse_endpoint(text: str, default_port: int, option: str = "the address") -> tuple[str, int]:
    """'HOST:PORT', 'HOST', ':PORT' or '[IPv6]:PORT' -> (host, port); the host defaults to
    127.0.0.1, the port to ``default_port``. Raises TrackerError for bad input (the host is not
    resolved here; the sink does that when it opens)."""
    given = text.strip()
    if not given:
        raise TrackerError(f"{option} is empty: give HOST:PORT, HOST or :PORT (e.g. 127.0.0.1:{default_port})")
    if given.startswith("["):  # [IPv6] or [IPv6]:PORT
        host, bracket, rest = given[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise TrackerError(f"{option} must look like [IPv6]:PORT, e.g. [::1]:{default_port}; got {text!r}")
        if rest == ":":
            raise TrackerError(f"{option}: the port is missing after the colon in {text!r} (e.g. [::1]:{default_port})")
        port_text = rest[1:]
    elif given.count(":") > 1:
        raise TrackerError(f"{option}: write an IPv6 address in brackets, e.g. [::1]:{default_port}; got {text!r}")
    else:
        host, _, port_text = given.partition(":")
        if ":" in given and port_text == "":
            raise TrackerError(f"{option}: the port is missing after the colon in {text!r} (e.g. 127.0.0.1:{default_port})")
    host = host or "127.0.0.1"
    if any(c.isspace() for c in host) or "/" in host:
        raise TrackerError(f"{option} must look like HOST:PORT (e.g. 127.0.0.1:{default_port}), got {text!r}")
    if port_text == "":
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise TrackerError(f"{option}: the port must be a whole number from 1 to 65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


def stream_time(result: TrackingResult, start: float) -> float:
    """Seconds: the frame's position in the media (files, folders), else since ``start`` (the
    monotonic capture time of the stream's first frame)."""
    frame = result.frame
    return float(frame.source_time) if frame.source_time is not None else float(frame.timestamp - start)


# -- the sender ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamStats:
    """What a stream did so far (docs/streaming.md)."""

    received: int = 0
    sent: int = 0
    replaced: int = 0
    skipped: int = 0
    errors: int = 0
    last_error: str | None = None


class StreamSink:
    """A pipeline sink that sends each result over UDP from its own thread, newest frame wins
    (``tracker.live.mailbox.MailboxThread``: a failed send is logged once and counted, never raised).

    Subclasses implement ``encode(result) -> bytes or None`` (None: nothing to send for this
    result, counted as skipped) and may override ``transmit(packet)``; ``label`` names the stream
    in messages. The host is resolved here (IPv4 preferred): an unknown one raises TrackerError at
    start-up. ``stats`` and ``describe()`` report what was sent.
    """

    label = "stream"

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, int(port)
        try:
            infos = socket.getaddrinfo(host, self.port, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as error:
            raise TrackerError(f"{self.label}: cannot resolve host {host!r} ({error}); give an IP address or a known host name") from error
        family, _, _, _, address = sorted(infos, key=lambda info: info[0] != socket.AF_INET)[0]  # IPv4 first
        self.address = address
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        self._socket.settimeout(1.0)  # a full send buffer waits up to 1 s, then counts as an error
        self._start: float | None = None
        self._lock = threading.Lock()  # guards the counts
        self._counts = dict(sent=0, skipped=0)
        self._closed = False
        self._sender = MailboxThread(self._send, f"{self.label} to {host}:{self.port}")

    @property
    def stats(self) -> StreamStats:
        mailbox = self._sender.stats
        with self._lock:
            sent, skipped = self._counts["sent"], self._counts["skipped"]
        return StreamStats(mailbox.received, sent, mailbox.replaced, skipped, mailbox.errors, mailbox.last_error)

    def describe(self) -> str:
        """One line for the run's figures."""
        s = self.stats
        line = f"{self.label} to {self.host}:{self.port}: {s.sent} sent of {s.received} frames, {s.replaced} replaced by newer ones, {s.skipped} with nothing to send, {s.errors} send errors"
        return line + (f" (last: {s.last_error})" if s.last_error else "")

    def __call__(self, result: TrackingResult) -> None:
        """Leave ``result`` for the sender (O(1), never waits on the network)."""
        self._sender.put(result)

    def close(self) -> None:
        """Send what is still in the mailbox, stop the thread, close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._sender.close(timeout=5.0)
        self._socket.close()
        stats = self.stats
        if stats.errors:
            log.warning("%s to %s:%d: %d of %d frames could not be sent (last: %s)", self.label, self.host, self.port, stats.errors, stats.received, stats.last_error)

    def encode(self, result: TrackingResult):
        raise NotImplementedError

    def transmit(self, packet: bytes) -> None:
        """Send one encoded packet."""
        self._socket.sendto(packet, self.address)

    def time_of(self, result: TrackingResult) -> float:
        """``stream_time`` with the first result taken as the start."""
        if self._start is None:
            self._start = result.frame.timestamp
        return stream_time(result, self._start)

    def _send(self, result: TrackingResult) -> None:
        """The sender thread's work: encode and send one result (errors: ``MailboxThread``)."""
        packet = self.encode(result)
        if packet is not None:
            self.transmit(packet)
        with self._lock:
            self._counts["sent" if packet is not None else "skipped"] += 1


# -- VMC ------------------------------------------------------------------------------------------
def _message(address: str, *args) -> OscMessageBuilder:
    """An OSC message; Python floats and numpy numbers go as 'f', ints as 'i', strings as 's'."""
    builder = OscMessageBuilder(address=address)
    for value in args:
        if isinstance(value, str):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_STRING)
        elif isinstance(value, (bool, int, np.integer)) and not isinstance(value, (float, np.floating)):
            builder.add_arg(int(value), OscMessageBuilder.ARG_TYPE_INT)
        else:
            builder.add_arg(float(value), OscMessageBuilder.ARG_TYPE_FLOAT)
    return builder


def _bundle(messages: list[OscMessageBuilder]) -> OscBundle:
    bundle = OscBundleBuilder(IMMEDIATELY)
    for message in messages:
        bundle.add_content(message.build())
    return bundle.build()


def mirrored_name(name: str) -> str:
    """The ARKit name of the other side: 'eyeBlinkLeft' -> 'eyeBlinkRight', 'jawLeft' -> 'jawRight'
    (sides and directions alike), 'jawOpen' unchanged."""
    for side, other in (("Left", "Right"), ("Right", "Left")):
        if name.endswith(side):
            return name[: -len(side)] + other
    return name


MIRROR_ORDER = np.array([ARKIT_INDEX[mirrored_name(name)] for name in ARKIT_NAMES])  # weights[MIRROR_ORDER]: the mirror image


def unity_head_quaternion(rotation: np.ndarray, mirror: bool = True) -> np.ndarray:
    """Our (3, 3) head rotation (head frame -> avatar frame, ``tracker.geometry.camera.head_pose``) -> (4,) the Unity
    quaternion (x, y, z, w) of the Head bone's local rotation (docs/streaming.md: puppet S R S, or its
    mirror image)."""
    from tracker.geometry.rotations import matrix_to_quaternion_xyzw

    x, y, z, w = matrix_to_quaternion_xyzw(rotation)
    return np.array([x, y, z, w] if mirror else [x, -y, -z, w])


def _ramp(value: float, low: float, high: float) -> float:
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def vrm_weights(weights: np.ndarray, mirror: bool = True) -> dict[str, float]:
    """(52,) ARKit weights -> {VRM 0.x proxy key: value} (docs/streaming.md for the mapping and its source)."""
    w = {name: float(weights[i]) for i, name in enumerate(ARKIT_NAMES)}
    lip = lambda x: _ramp(x, 0.15, 0.6)  # noqa: E731  (VMagicMirror's bsMin, bsMax)
    a = lip(2.0 * w["jawOpen"])
    i = lip(0.6 * (w["mouthSmileLeft"] + w["mouthSmileRight"]) - 0.1)
    u = lip(0.4 * (w["mouthPucker"] + w["mouthFunnel"] + w["jawForward"]))
    if a + i + u > 1.0:
        a, i, u = (v / (a + i + u) for v in (a, i, u))
    left, right = _ramp(w["eyeBlinkLeft"], 0.2, 0.8), _ramp(w["eyeBlinkRight"], 0.2, 0.8)
    if mirror:
        left, right = right, left
    return {
        "A": a, "I": i, "U": u, "E": 0.0, "O": 0.0,
        "Blink_L": left, "Blink_R": right,
        "Joy": lip((w["mouthSmileLeft"] + w["mouthSmileRight"]) / 2),
        "Angry": lip((w["browDownLeft"] + w["browDownRight"]) / 2),
        "Sorrow": lip((w["mouthFrownLeft"] + w["mouthFrownRight"]) / 2),
        "Fun": 0.0,
    }  # fmt: skip


def vmc_blendshapes(values: AvatarValues, names: str = "arkit", mirror: bool = True) -> dict[str, float]:
    """{name: value} sent as /VMC/Ext/Blend/Val: the ARKit names (mirrored: each weight under its
    other side's name) or the VRM proxy keys."""
    if names == "vrm":
        return vrm_weights(values.weights, mirror)
    if names != "arkit":
        raise TrackerError(f"VMC names must be one of {VMC_NAMES}, got {names!r}")
    weights = np.asarray(values.weights, np.float32)
    if mirror:
        weights = weights[MIRROR_ORDER]
    return {name: float(weights[i]) for i, name in enumerate(ARKIT_NAMES)}


def vmc_bundle(values: AvatarValues | None, time_s: float, names: str = "arkit", mirror: bool = True) -> OscBundle:
    """One frame of VMC (docs/streaming.md): OK, T, then with ``values`` the root, the Head bone,
    every blendshape and Apply last."""
    messages = [_message("/VMC/Ext/OK", 1), _message("/VMC/Ext/T", float(time_s))]
    if values is not None:
        q = unity_head_quaternion(values.head_rotation, mirror)
        messages.append(_message("/VMC/Ext/Root/Pos", "root", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        messages.append(_message("/VMC/Ext/Bone/Pos", "Head", 0.0, 0.0, 0.0, *q))
        for name, value in vmc_blendshapes(values, names, mirror).items():
            messages.append(_message("/VMC/Ext/Blend/Val", name, value))
        messages.append(_message("/VMC/Ext/Blend/Apply"))
    return _bundle(messages)


class VmcSink(StreamSink):
    """``--vmc``: the largest face as VMC bundles (docs/streaming.md). ``names``: "arkit" or "vrm";
    ``mirror``: send the mirror image (default, as VTuber apps show the avatar)."""

    label = "VMC"

    def __init__(self, host: str = "127.0.0.1", port: int = VMC_PORT, names: str = "arkit", mirror: bool = True) -> None:
        if names not in VMC_NAMES:
            raise TrackerError(f"VMC names must be one of {VMC_NAMES}, got {names!r}")
        self.names, self.mirror = names, mirror
        super().__init__(host, port)

    def encode(self, result: TrackingResult) -> bytes:
        values = result.faces[0].avatar if result.faces else None
        return vmc_bundle(values, self.time_of(result), self.names, self.mirror).dgram


# -- Live Link Face --------------------------------------------------------------------------------
def frame_rate(fps: float) -> tuple[int, int]:
    """Frames per second -> FFrameRate (numerator, denominator): 30 -> (30, 1), 29.97 -> (30000, 1001)."""
    if not math.isfinite(fps) or fps <= 0:
        raise TrackerError(f"the Live Link frame rate must be a positive number, got {fps}")
    ntsc = Fraction(round(fps * 1.001), 1) * Fraction(1000, 1001)
    if round(fps) != fps and abs(float(ntsc) - fps) < 1e-3:
        return ntsc.numerator, ntsc.denominator
    rate = Fraction(fps).limit_denominator(1001)
    return rate.numerator, rate.denominator


def livelink_values(values: AvatarValues) -> np.ndarray:
    """(61,) float32: the 52 ARKit weights, then head yaw, pitch, roll and each eye's yaw, pitch,
    roll (left, then right) in Live Link's -1..1 (radians / pi; NaN gaze -> 0)."""
    eyes = np.nan_to_num(np.asarray(values.eye_angles, np.float64), nan=0.0)
    angles = [*np.asarray(values.head_angles, np.float64), eyes[0, 0], eyes[0, 1], 0.0, eyes[1, 0], eyes[1, 1], 0.0]
    return np.concatenate([np.asarray(values.weights, np.float32), np.asarray(angles) / math.pi]).astype(np.float32)


def livelink_packet(values: AvatarValues, time_s: float, fps: tuple[int, int] = (30, 1), subject: str = "N2F", device_id: str | None = None) -> bytes:
    """One Live Link Face packet (docs/streaming.md). ``fps``: (numerator, denominator); ``device_id``:
    36 ASCII characters (default: a fresh uuid)."""
    device = device_id if device_id is not None else str(uuid.uuid4())
    device_bytes, subject_bytes = device.encode("ascii"), subject.encode("utf-8")
    frames = max(0.0, time_s) * fps[0] / fps[1]
    whole = math.floor(frames + 1e-6)  # 31 / 30 s at 30 fps is frame 31, not 30.999...
    return b"".join([
        struct.pack("!B", LIVELINK_VERSION),
        struct.pack("!i", len(device_bytes)), device_bytes,
        struct.pack("!i", len(subject_bytes)), subject_bytes,
        struct.pack("!if", whole, max(0.0, frames - whole)),
        struct.pack("!ii", *fps),
        struct.pack("!B", LIVELINK_COUNT),
        struct.pack(f"!{LIVELINK_COUNT}f", *livelink_values(values)),
    ])  # fmt: skip


class LiveLinkSink(StreamSink):
    """``--livelink``: the largest face as Live Link Face packets for Unreal (docs/streaming.md).
    ``fps``: the source's frame rate (the packets' FFrameRate); ``subject``: the name Unreal shows."""

    label = "Live Link"

    def __init__(self, host: str = "127.0.0.1", port: int = LIVELINK_PORT, fps: float = 30.0, subject: str = "N2F") -> None:
        if not subject or len(subject.encode("utf-8")) > 255:
            raise TrackerError(f"the Live Link subject name must be 1-255 bytes, got {subject!r}")
        self.rate, self.subject = frame_rate(fps), subject
        self.device_id = str(uuid.uuid4())  # 36 characters: what PyLiveLinkFace's reading needs
        super().__init__(host, port)

    def encode(self, result: TrackingResult) -> bytes | None:
        values = result.faces[0].avatar if result.faces else None
        if values is None:
            return None  # the receiver keeps the last values
        return livelink_packet(values, self.time_of(result), self.rate, self.subject, self.device_id)


# -- OSC ------------------------------------------------------------------------------------------
def face_messages(face: FaceResult, prefix: str = "/n2f") -> list[OscMessageBuilder]:
    """The /n2f/face/<track>/... messages of one face (docs/streaming.md)."""
    from tracker.geometry.camera import head_pose
    from tracker.geometry.rotations import matrix_to_quaternion_xyzw

    base = f"{prefix}/face/{int(face.track_id)}"
    rotation = np.asarray(face.rotation, np.float64)
    translation = np.asarray(face.translation, np.float64)
    avatar_rotation, angles, position = head_pose(rotation, translation)
    messages = [
        _message(f"{base}/pose", *position, *matrix_to_quaternion_xyzw(avatar_rotation)),
        _message(f"{base}/angles", *angles),
        _message(f"{base}/camera", *rotation.ravel(), *translation),
    ]
    for group, value in face.params.items():
        messages.append(_message(f"{base}/params/{group}", *np.asarray(value, np.float64).ravel()))
    if face.avatar is not None:
        messages.append(_message(f"{base}/arkit", *np.asarray(face.avatar.weights, np.float64)))
        messages.append(_message(f"{base}/gaze", *np.asarray(face.avatar.eye_angles, np.float64).ravel()))
    messages.append(_message(f"{base}/identity", str(face.identity_state)))
    return messages


def osc_bundle(result: TrackingResult, time_s: float, prefix: str = "/n2f") -> OscBundle:
    """One frame of ``--osc``: /n2f/frame, then every face's messages."""
    messages = [_message(f"{prefix}/frame", int(result.frame.index), float(time_s), len(result.faces))]
    for face in result.faces:
        messages.extend(face_messages(face, prefix))
    return _bundle(messages)


class OscSink(StreamSink):
    """``--osc``: every face's raw parameters and pose under /n2f/... (docs/streaming.md)."""

    label = "OSC"

    def encode(self, result: TrackingResult) -> bytes:
        return osc_bundle(result, self.time_of(result)).dgram
