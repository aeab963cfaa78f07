"""Avatar streams: the tracked face, live, to VSeeFace / VNyan / Warudo (VMC), Unreal (Live Link Face)
and researchers' own tools (OSC).

    sink = VmcSink("127.0.0.1", 39539)           # --vmc 127.0.0.1:39539
    sink = LiveLinkSink("192.168.1.20", 11111)   # --livelink 192.168.1.20
    sink = OscSink("127.0.0.1", 9000)            # --osc :9000
    Pipeline(source, tracker, [sink, ...]).run()

Every sink sends every tracked frame over UDP from a thread of its own: ``__call__`` (the pipeline's
sink thread) only leaves the result in a one-slot mailbox, and when a result arrives before the
sender took the previous one, the newer replaces it (newest frame wins; counted as ``replaced``).
A send that fails (no route, a full buffer, a host that went away) is logged once and counted,
never raised into the pipeline; ``close()`` sends what is still in the mailbox, then joins the
thread. ``StreamStats`` counts results received, packets sent, results replaced before sending,
results with nothing to send (``skipped``) and errors: ``received == sent + replaced + skipped +
errors`` once closed. The encoders are pure functions (``vmc_bundle``, ``livelink_packet``,
``osc_bundle``) from ``tracker.fitting.arkit.AvatarValues`` / ``FaceResult`` to bytes or python-osc
bundles. VMC and Live Link carry one face, the largest (``TrackingResult.faces[0]``); OSC carries
every face. A frame's time (``stream_time``) is its position in the media for files, else the
seconds since the stream's first frame.

VMC (``VmcSink``; sh-akira/VirtualMotionCaptureProtocol, docs/marionette-spec). One OSC bundle per
frame, every value an OSC float ('f') but OK's int flag, in this order::

    /VMC/Ext/OK        (i) 1                                  model loaded
    /VMC/Ext/T         (f) stream time, seconds
    /VMC/Ext/Root/Pos  (s) "root" (f) 0 0 0  0 0 0 1          the avatar stays where it is
    /VMC/Ext/Bone/Pos  (s) "Head" (f) 0 0 0  qx qy qz qw      the head's local rotation, Unity axes
    /VMC/Ext/Blend/Val (s) name (f) value                     one per name
    /VMC/Ext/Blend/Apply                                      last: receivers apply the values here

A frame without a face (or without ARKit values) sends only OK and T, so the receiver keeps the
last pose. Names: ``names="arkit"`` the 52 ARKit names, for "perfect sync" avatars; ``"vrm"`` the
VRM 0.x proxy keys, derived from the same weights (``vrm_weights``). The Head bone position is 0
as other face-only senders send it (iFacialMocap's VMC tutorial: switch off EVMC4U's "Bone
Position Synchronize"); head translation is not sent, and neither are eye bones (the eyeLook
weights carry the gaze).

Axes. Unity is left-handed: +x the avatar's right, +y up, +z its forward (UniVRM's normalised
bones rest at the identity). Our head frame (``tracker.fitting.arkit``) is right-handed with +x the face's
own left; the two differ by S = diag(-1, 1, 1), so the head's rotation R in Unity axes is S R S,
whose quaternion is (qx, -qy, -qz, qw) for R's quaternion (qx, qy, qz, qw) (a puppet: turning to
your own left turns the avatar to its own left). ``mirror=True`` (the default, ``--vmc-mirror``)
sends the mirror image instead, as VTuber apps show an avatar facing you: the reflection S R S of
the puppet rotation gives back (qx, qy, qz, qw) itself, and every Left / Right weight swaps sides
(eyeBlinkLeft <-> eyeBlinkRight, jawLeft <-> jawRight, ...; VRM: Blink_L <-> Blink_R). So you turn
to your left and the avatar turns to the screen's left, you close your left eye and the eye on the
screen's left closes. VMagicMirror's webcam tracking flips the same way by default (its "Disable
horizontal flip" option is off); the VMC protocol carries the model's own bone poses and
blendshape values, so flipping is the sender's choice.

VRM proxy keys (``vrm_weights``), from the ARKit weights w:
  A, I, U   VMagicMirror's external-tracker lip sync (malaybaku/VMagicMirror, ExternalTrackerLipSync.cs,
            default mode): A = m(2 jawOpen), I = m(0.6 (mouthSmileLeft + mouthSmileRight) - 0.1),
            U = m(0.4 (mouthPucker + mouthFunnel + jawForward)), scaled down to sum to 1 when their
            sum exceeds 1, with m(x) = clamp01((x - 0.15) / 0.45); E and O are 0 there and here
            (ARKit has no shape that tells them apart from A and U).
  Blink_L, Blink_R  eyeBlinkLeft / eyeBlinkRight through VMagicMirror's blink ramp clamp01((w - 0.2) / 0.6)
            (ExternalTrackerBlink.cs); VRM's Blink_L is the avatar's own left eye, so the face's own
            left, or its right when mirrored.
  Joy       m(mean of mouthSmileLeft, mouthSmileRight).
  Angry     m(mean of browDownLeft, browDownRight).
  Sorrow    m(mean of mouthFrownLeft, mouthFrownRight).
  Fun       0 (no ARKit cue tells it from Joy).
The emotion keys use the lip-sync ramp m so that a resting face (small smile or brow weights) sends 0.

Live Link Face (``LiveLinkSink``, Unreal's Live Link Face / ARKit source; the packet the iPhone app
sends, as Unreal's AppleARKitLiveLinkSource reads it with FNboSerializeFromBuffer, network byte
order). One UDP packet per frame::

    !B  version 6
    !i  length, then the device id (36 ASCII characters: a uuid)
    !i  length, then the subject name (UTF-8)
    !i  frame number, !f subframe              FFrameTime at the frame rate below
    !i  rate numerator, !i rate denominator    FFrameRate (e.g. 30000 / 1001)
    !B  count, 61
    !61f values

JimWest/PyLiveLinkFace reads the same bytes as "<I version, a 37-byte id '$' + uuid, ..." (its
'$' is the low byte of the big-endian length 36; hence the 36-character id), and its decoder's
"!if2ib" for the frame time, rate and count. The 61 values: the 52 ARKit weights in Apple's order,
then HeadYaw, HeadPitch, HeadRoll, LeftEyeYaw, LeftEyePitch, LeftEyeRoll, RightEyeYaw,
RightEyePitch, RightEyeRoll. Units: the angles are normalised, -1..1 for -180..180 degrees
(Unreal's AppleARKitConversion ToBlendShapeMap: "Map the -180..180 range to -1..1", the FRotator's
degrees / 180), i.e. radians / pi here. Signs: Unreal converts ARKit's face-anchor transform to its
own axes (X = -z, Y = x, Z = y) and, face-relative (not mirrored, what Live Link Face streams for
performance capture), negates yaw and roll; worked through, HeadYaw / HeadPitch / HeadRoll are our
``head_angles`` yaw / pitch / roll over pi with our signs: > 0 the face turns to its own left,
tips down, tilts towards its own right shoulder. The eyes likewise (roll 0); a NaN gaze sends 0.
Sides are the face's own (face-relative: "right eye is the mesh's right eye"), nothing is mirrored.
The frame number counts frames of the source's rate: floor(stream time x rate), the fraction as
the subframe.

OSC (``OscSink``, ``--osc``): one bundle per frame, every number an OSC float ('f') unless noted::

    /n2f/frame                       (i) frame index (f) stream time, seconds (i) number of faces
    /n2f/face/<track>/pose           px py pz qx qy qz qw: head position (metres) and rotation
                                     (quaternion, scalar last) in the avatar frame (right-handed,
                                     +x viewer's right, +y up, +z towards the camera; camera at 0)
    /n2f/face/<track>/angles         yaw pitch roll, radians (``tracker.fitting.arkit``'s convention)
    /n2f/face/<track>/camera         R (9, row-major) t (3, metres): the tracker's own pose in the
                                     OpenCV camera frame, X_cam = R diag(1, -1, -1) X_head + t
    /n2f/face/<track>/params/<group> every raw head-model parameter of that group, e.g. ICT's
                                     identity (100) and expression (53), FLAME's shape, expression,
                                     jaw (6D rotation), ...
    /n2f/face/<track>/arkit          52 ARKit weights in Apple's order (when the face has them)
    /n2f/face/<track>/gaze           left yaw, left pitch, right yaw, right pitch, radians in the
                                     head frame, NaN where the iris was not found (with arkit)
    /n2f/face/<track>/identity       (s) identity state: calibrating, locked, given or network

``<track>`` is the face's track id (stable while the face stays tracked); faces come largest first.
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

from tracker.fitting.arkit import ARKIT_INDEX, ARKIT_NAMES, AvatarValues, head_pose
from tracker.errors import TrackerError

if TYPE_CHECKING:
    from tracker.live.tracker import FaceResult, TrackingResult

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


# -- the sender thread ----------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamStats:
    """What a stream did so far (module docstring)."""

    received: int = 0
    sent: int = 0
    replaced: int = 0
    skipped: int = 0
    errors: int = 0
    last_error: str | None = None


class StreamSink:
    """A pipeline sink that sends each result over UDP from its own thread, newest frame wins.

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
        self._cond = threading.Condition()
        self._pending: TrackingResult | None = None
        self._start: float | None = None
        self._closing = False
        self._closed = False
        self._counts = dict(received=0, sent=0, replaced=0, skipped=0, errors=0)
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"{self.label} sender", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> StreamStats:
        with self._cond:
            return StreamStats(**self._counts, last_error=self._last_error)

    def describe(self) -> str:
        """One line for the run's figures."""
        s = self.stats
        line = f"{self.label} to {self.host}:{self.port}: {s.sent} sent of {s.received} frames, {s.replaced} replaced by newer ones, {s.skipped} with nothing to send, {s.errors} send errors"
        return line + (f" (last: {s.last_error})" if s.last_error else "")

    def __call__(self, result: TrackingResult) -> None:
        """Leave ``result`` for the sender (O(1), never waits on the network)."""
        with self._cond:
            if self._closing:
                return
            if self._pending is not None:
                self._counts["replaced"] += 1
            self._pending = result
            self._counts["received"] += 1
            self._cond.notify()

    def close(self) -> None:
        """Send what is still in the mailbox, stop the thread, close the socket. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = self._closing = True
            self._cond.notify()
        self._thread.join(timeout=5.0)
        if self._thread.is_alive():
            log.warning("%s to %s:%d: the sender did not stop within 5 s", self.label, self.host, self.port)
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

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                result, self._pending = self._pending, None
            if result is None:
                return
            try:
                packet = self.encode(result)
                if packet is not None:
                    self.transmit(packet)
            except Exception as error:  # a socket error (or a bad value): reported, never raised into the pipeline
                message = f"{type(error).__name__}: {error}"
                with self._cond:
                    first = self._counts["errors"] == 0
                    self._counts["errors"] += 1
                    self._last_error = message
                if first:
                    log.warning("%s to %s:%d: cannot send (%s); the stream goes on, later errors are counted", self.label, self.host, self.port, message)
                continue
            with self._cond:
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


def quaternion(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (4,) float64 unit quaternion (x, y, z, w), w >= 0."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(np.asarray(rotation, np.float64)).as_quat()
    return -q if q[3] < 0 else q


def unity_head_quaternion(rotation: np.ndarray, mirror: bool = True) -> np.ndarray:
    """Our (3, 3) head rotation (head frame -> avatar frame, ``tracker.fitting.arkit``) -> (4,) the Unity
    quaternion (x, y, z, w) of the Head bone's local rotation (module docstring: puppet S R S, or its
    mirror image)."""
    x, y, z, w = quaternion(rotation)
    return np.array([x, y, z, w] if mirror else [x, -y, -z, w])


def _ramp(value: float, low: float, high: float) -> float:
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def vrm_weights(weights: np.ndarray, mirror: bool = True) -> dict[str, float]:
    """(52,) ARKit weights -> {VRM 0.x proxy key: value} (module docstring for the mapping and its source)."""
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
    """One frame of VMC (module docstring): OK, T, then with ``values`` the root, the Head bone,
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
    """``--vmc``: the largest face as VMC bundles (module docstring). ``names``: "arkit" or "vrm";
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
    """One Live Link Face packet (module docstring). ``fps``: (numerator, denominator); ``device_id``:
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
    """``--livelink``: the largest face as Live Link Face packets for Unreal (module docstring).
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
    """The /n2f/face/<track>/... messages of one face (module docstring)."""
    base = f"{prefix}/face/{int(face.track_id)}"
    rotation = np.asarray(face.rotation, np.float64)
    translation = np.asarray(face.translation, np.float64)
    avatar_rotation, angles, position = head_pose(rotation, translation)
    messages = [
        _message(f"{base}/pose", *position, *quaternion(avatar_rotation)),
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
    """``--osc``: every face's raw parameters and pose under /n2f/... (module docstring)."""

    label = "OSC"

    def encode(self, result: TrackingResult) -> bytes:
        return osc_bundle(result, self.time_of(result)).dgram
