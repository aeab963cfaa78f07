"""Avatar streams (tracker.outputs.streaming) against real receivers on 127.0.0.1: VMC bundles read by
python-osc's own parser and server, Live Link Face packets read by a struct decoder written here
from the documented layout (not by inverting the encoder), the OSC stream, the newest-frame-wins
mailbox, send errors, the command line and the viewer's toggles; then a headless run of the
shipped tracker on a real video whose receivers see the speaker's mouth open and eyes blink."""

from __future__ import annotations

import logging
import math
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_server import ThreadingOSCUDPServer
from scipy.spatial.transform import Rotation

from app import live
from tests.app.test_viewer import display, qapp  # noqa: F401  (the viewer tests' X display and QApplication)
from tracker.errors import TrackerError
from tracker.files.paths import PROJECT_ROOT
from tracker.fitting.arkit import ARKIT_INDEX, ARKIT_NAMES, AvatarValues
from tracker.live.results import FaceResult, TrackingResult
from tracker.live.sources import Frame
from tracker.outputs.streaming import (
    VRM_NAMES,
    LiveLinkSink,
    OscSink,
    VmcSink,
    frame_rate,
    livelink_packet,
    osc_bundle,
    parse_endpoint,
    vmc_bundle,
    vrm_weights,
)

SHIPPED_CHECKPOINT = PROJECT_ROOT / "assets" / "n2fnet_ict_resnet18.pt"


# -- independent decoders ----------------------------------------------------------------------------
def type_tags(message: OscMessage) -> str:
    """The OSC type tag string of a message, read from its bytes: the address (NUL-terminated,
    padded to 4 bytes), then ',' and one letter per argument."""
    data = message.dgram
    end = data.index(b"\0")
    start = (end // 4 + 1) * 4
    return data[start : data.index(b"\0", start)].decode("ascii")


def bundle_messages(datagram: bytes) -> list[OscMessage]:
    bundle = OscBundle(datagram)
    return [bundle.content(i) for i in range(bundle.num_contents)]


def read_livelink(packet: bytes) -> dict:
    """A Live Link Face packet as Unreal's receiver reads it (network byte order): uint8 version,
    int32-length-prefixed device id and subject name, int32 frame + float subframe, int32 rate
    numerator + denominator, uint8 count, count floats."""
    at = 0

    def take(fmt: str):
        nonlocal at
        values = struct.unpack_from(fmt, packet, at)
        at += struct.calcsize(fmt)
        return values

    (version,) = take("!B")
    (id_length,) = take("!i")
    device = packet[at : at + id_length].decode("ascii")
    at += id_length
    (name_length,) = take("!i")
    name = packet[at : at + name_length].decode("utf-8")
    at += name_length
    frame, subframe = take("!if")
    numerator, denominator = take("!ii")
    (count,) = take("!B")
    values = np.array(take(f"!{count}f"), np.float32)
    assert at == len(packet), "nothing after the values"
    return dict(version=version, device=device, name=name, frame=frame, subframe=subframe, rate=(numerator, denominator), count=count, values=values)


def read_livelink_as_pylivelinkface(packet: bytes) -> tuple[int, str, str, int, int]:
    """The same packet through PROTOCOLS.md's (JimWest/PyLiveLinkFace's) reading: '<I' version, a
    37-byte id, '!i' name length + name, then '!if2ib'."""
    version = struct.unpack("<I", packet[0:4])[0]
    device = packet[4:41].decode("ascii")
    name_length = struct.unpack("!i", packet[41:45])[0]
    name = packet[45 : 45 + name_length].decode("utf-8")
    frame, _, fps, _, count = struct.unpack("!if2ib", packet[45 + name_length : 45 + name_length + 17])
    return version, device, name, frame, count


def quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """The textbook unit quaternion -> rotation matrix (what Unity's Quaternion does to a Vector3)."""
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def yaw_pitch_roll_matrix(angles) -> np.ndarray:
    """(3,) yaw, pitch, roll -> (3, 3) float32 Ry(yaw) Rx(pitch) Rz(roll) (scipy's intrinsic YXZ)."""
    return Rotation.from_euler("YXZ", np.asarray(angles, np.float64)).as_matrix().astype(np.float32)


# -- helpers -------------------------------------------------------------------------------------------
def avatar_values(weights=None, angles=(0.0, 0.0, 0.0), eyes=((0.1, -0.05), (np.nan, np.nan))) -> AvatarValues:
    weights = np.linspace(0.0, 1.0, 52, dtype=np.float32) if weights is None else np.asarray(weights, np.float32)
    angles = np.asarray(angles, np.float32)
    return AvatarValues(weights, yaw_pitch_roll_matrix(angles), angles, np.array([0.01, -0.02, -0.55], np.float32), np.asarray(eyes, np.float32))


def tracking_result(index: int, values: AvatarValues | None = None, fps: float = 30.0, track_id: int = 7) -> TrackingResult:
    """A TrackingResult of one face (or none) at frame ``index`` of a file played at ``fps``."""
    frame = Frame(np.zeros((4, 4, 3), np.uint8), index, 100.0 + index, index / fps)
    faces = []
    if values is not None:
        import torch

        rotation = torch.diag(torch.tensor([1.0, -1.0, -1.0])) @ torch.from_numpy(values.head_rotation) @ torch.diag(torch.tensor([1.0, -1.0, -1.0]))
        faces.append(FaceResult(
            params={"identity": torch.arange(100, dtype=torch.float32) / 100, "expression": torch.zeros(53)},
            rotation_6d=torch.zeros(6), rotation=rotation, translation=torch.tensor([0.01, 0.02, 0.55]),
            mesh=torch.zeros(3, 3), landmarks68=np.zeros((68, 2)), mesh_landmarks68=np.zeros((68, 2)),
            crop_box=np.zeros(3), track_id=track_id, crop=None, cue=None, identity_state="locked", avatar=values,
        ))  # fmt: skip
    return TrackingResult(frame, faces, np.array([500.0, 500.0]), np.array([320.0, 180.0]), {})


@pytest.fixture
def udp_receiver():
    """A UDP socket on 127.0.0.1 (free port) and a function that reads ``count`` datagrams from it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10.0)  # a safety net for a broken sender, not a timing assertion

    def read(count: int) -> list[bytes]:
        return [sock.recv(65536) for _ in range(count)]

    yield sock.getsockname()[1], read, sock
    sock.close()


def assert_nothing_more(sock: socket.socket) -> None:
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(65536)


# -- endpoints and the command line ------------------------------------------------------------------
def test_endpoints_parse_and_bad_ones_say_what_is_wrong() -> None:
    assert parse_endpoint("192.168.1.20:40000", 39539) == ("192.168.1.20", 40000)
    assert parse_endpoint("studio-pc", 39539) == ("studio-pc", 39539)
    assert parse_endpoint(":9001", 39539) == ("127.0.0.1", 9001)
    assert parse_endpoint("[::1]:11111", 1) == ("::1", 11111) and parse_endpoint("[::1]", 11111) == ("::1", 11111)
    for bad, says in [("host:0", "1 to 65535"), ("host:70000", "1 to 65535"), ("host:abc", "whole number"), ("host:", "port is missing"),
                      ("", "empty"), ("::1:5", "brackets"), ("[::1", r"\[IPv6\]:PORT"), ("my host:5", "HOST:PORT")]:
        with pytest.raises(TrackerError, match=says):
            parse_endpoint(bad, 39539, "--vmc")
    with pytest.raises(TrackerError, match="cannot resolve host"):
        VmcSink("no-such-host.invalid", 39539)


def test_command_line_refuses_a_bad_address_before_the_set_up(shared_path: Path, tmp_path: Path, capsys) -> None:
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    for option, value in [("--vmc", "127.0.0.1:99999"), ("--livelink", "host:port"), ("--osc", "a:b:c")]:
        code = live.main(["--video", str(video), "--headless", "--quiet", "--checkpoint", str(tmp_path / "never-loaded.pt"), option, value])
        assert code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and option in err and "No N2FNet checkpoint" not in err


def test_frame_rates_are_rational() -> None:
    assert frame_rate(30.0) == (30, 1) and frame_rate(25) == (25, 1)
    assert frame_rate(29.97002997) == (30000, 1001) and frame_rate(23.976023976023978) == (24000, 1001)
    with pytest.raises(TrackerError):
        frame_rate(0.0)


# -- VMC -----------------------------------------------------------------------------------------------
def test_vmc_bundle_has_the_protocols_messages_in_order_with_float_arguments() -> None:
    values = avatar_values()
    messages = bundle_messages(vmc_bundle(values, 2.5, mirror=False).dgram)
    addresses = [m.address for m in messages]
    assert addresses[:4] == ["/VMC/Ext/OK", "/VMC/Ext/T", "/VMC/Ext/Root/Pos", "/VMC/Ext/Bone/Pos"]
    assert addresses[4:-1] == ["/VMC/Ext/Blend/Val"] * 52 and addresses[-1] == "/VMC/Ext/Blend/Apply"
    tags = [type_tags(m) for m in messages]
    assert tags[:4] == [",i", ",f", ",sfffffff", ",sfffffff"] and set(tags[4:-1]) == {",sf"} and tags[-1] == ","
    assert messages[0].params == [1] and messages[1].params == [2.5]
    assert messages[2].params == ["root", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0] and messages[3].params[:4] == ["Head", 0.0, 0.0, 0.0]
    sent = {m.params[0]: m.params[1] for m in messages[4:-1]}
    assert list(sent) == list(ARKIT_NAMES)
    assert np.allclose([sent[name] for name in ARKIT_NAMES], values.weights, atol=1e-7)
    # mirrored: each weight goes under the other side's name; names without a side keep theirs
    mirrored = {m.params[0]: m.params[1] for m in bundle_messages(vmc_bundle(values, 2.5, mirror=True).dgram)[4:-1]}
    for name, other in [("eyeBlinkLeft", "eyeBlinkRight"), ("eyeLookInRight", "eyeLookInLeft"), ("jawLeft", "jawRight"), ("mouthSmileRight", "mouthSmileLeft")]:
        assert mirrored[name] == pytest.approx(values.weights[ARKIT_INDEX[other]])
    for name in ("jawOpen", "browInnerUp", "tongueOut"):
        assert mirrored[name] == pytest.approx(values.weights[ARKIT_INDEX[name]])
    # a frame without a face: only OK and T, the receiver keeps the last pose
    assert [m.address for m in bundle_messages(vmc_bundle(None, 3.0).dgram)] == ["/VMC/Ext/OK", "/VMC/Ext/T"]


@pytest.mark.parametrize("mirror", [False, True])
def test_vmc_head_rotation_in_unity_axes(mirror: bool) -> None:
    """Unity: +x the avatar's right, +y up, +z its forward. A puppet turns, tips and tilts as the
    face does; the mirror image turns and tilts the other way and tips the same way."""
    side = 1.0 if mirror else -1.0  # the avatar's own x of "the face's own left"

    def unity_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
        head = bundle_messages(vmc_bundle(avatar_values(angles=(yaw, pitch, roll)), 0.0, mirror=mirror).dgram)[3]
        x, y, z, w = head.params[4:]
        assert x * x + y * y + z * z + w * w == pytest.approx(1.0, abs=1e-6)
        return quaternion_matrix(x, y, z, w)

    forward, up = np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    turned = unity_rotation(0.4, 0.0, 0.0) @ forward  # the face turns to its own left
    assert np.sign(turned[0]) == side and turned[0] == pytest.approx(side * math.sin(0.4), abs=1e-5)
    tipped = unity_rotation(0.0, 0.3, 0.0) @ forward  # the face tips down
    assert tipped[1] == pytest.approx(-math.sin(0.3), abs=1e-5) and abs(tipped[0]) < 1e-6
    tilted = unity_rotation(0.0, 0.0, 0.3) @ up  # towards its own right shoulder: the top of the head to its right
    assert tilted[0] == pytest.approx(-side * math.sin(0.3), abs=1e-5)
    # the whole rotation: S R S (puppet, S = diag(-1, 1, 1) between our head frame and Unity's) or R (mirror)
    angles = (0.3, -0.2, 0.25)
    ours = yaw_pitch_roll_matrix(angles)
    flip = np.diag([-1.0, 1.0, 1.0])
    assert np.allclose(unity_rotation(*angles), ours if mirror else flip @ ours @ flip, atol=1e-5)


def test_vrm_proxy_keys_from_the_arkit_weights() -> None:
    def weights(**named) -> np.ndarray:
        w = np.zeros(52, np.float32)
        for name, value in named.items():
            w[ARKIT_INDEX[name]] = value
        return w

    rest = vrm_weights(weights())
    assert list(rest) == list(VRM_NAMES) and all(value == 0.0 for value in rest.values())
    opened = vrm_weights(weights(jawOpen=0.5))
    assert opened["A"] == 1.0 and opened["I"] == opened["U"] == opened["E"] == opened["O"] == 0.0
    assert vrm_weights(weights(jawOpen=0.15))["A"] == pytest.approx((0.3 - 0.15) / 0.45, rel=1e-5)
    pout = vrm_weights(weights(mouthPucker=0.6, mouthFunnel=0.6))
    assert pout["U"] == pytest.approx((0.48 - 0.15) / 0.45, rel=1e-5) and pout["A"] == 0.0
    mixed = vrm_weights(weights(jawOpen=0.5, mouthSmileLeft=1.0, mouthSmileRight=1.0))
    assert mixed["A"] + mixed["I"] + mixed["U"] == pytest.approx(1.0) and mixed["A"] == pytest.approx(0.5)
    smile = vrm_weights(weights(mouthSmileLeft=0.6, mouthSmileRight=0.6))
    assert smile["Joy"] == 1.0 and smile["Angry"] == smile["Sorrow"] == smile["Fun"] == 0.0
    assert vrm_weights(weights(browDownLeft=0.7, browDownRight=0.7))["Angry"] == 1.0
    assert vrm_weights(weights(mouthFrownLeft=0.7, mouthFrownRight=0.7))["Sorrow"] == 1.0
    # VRM's Blink_L is the avatar's own left eye: the face's own left, or its right in the mirror image
    wink = weights(eyeBlinkLeft=0.5)
    assert vrm_weights(wink, mirror=False)["Blink_L"] == pytest.approx((0.5 - 0.2) / 0.6, rel=1e-5)  # VMagicMirror's blink ramp
    assert vrm_weights(weights(eyeBlinkLeft=0.9), mirror=False)["Blink_L"] == 1.0
    assert vrm_weights(wink, mirror=False)["Blink_R"] == 0.0
    assert vrm_weights(wink, mirror=True)["Blink_R"] == vrm_weights(wink, mirror=False)["Blink_L"] and vrm_weights(wink, mirror=True)["Blink_L"] == 0.0
    messages = bundle_messages(vmc_bundle(avatar_values(weights(jawOpen=0.5)), 1.0, names="vrm").dgram)
    sent = {m.params[0]: m.params[1] for m in messages if m.address == "/VMC/Ext/Blend/Val"}
    assert list(sent) == list(VRM_NAMES) and sent["A"] == 1.0 and messages[-1].address == "/VMC/Ext/Blend/Apply"
    assert all(type_tags(m) == ",sf" for m in messages if m.address == "/VMC/Ext/Blend/Val")


def test_vmc_sink_sends_bundles_a_python_osc_server_dispatches() -> None:
    received: list[tuple[str, list]] = []
    lock = threading.Lock()

    def handler(address: str, *args) -> None:
        with lock:
            received.append((address, list(args)))

    dispatcher = Dispatcher()
    dispatcher.set_default_handler(handler)
    server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sink = VmcSink("127.0.0.1", server.server_address[1], names="vrm")
        sink(tracking_result(0, avatar_values()))
        sink.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if any(address == "/VMC/Ext/Blend/Apply" for address, _ in received):
                    break
            time.sleep(0.01)
    finally:
        server.shutdown()
        server.server_close()
    names = [args[0] for address, args in received if address == "/VMC/Ext/Blend/Val"]
    assert sorted(names) == sorted(VRM_NAMES)
    assert sink.stats.sent == 1 and sink.stats.errors == 0


# -- Live Link Face ----------------------------------------------------------------------------------
def test_livelink_packet_follows_the_documented_layout() -> None:
    values = avatar_values(angles=(0.5, -0.25, 0.1), eyes=((0.2, -0.1), (np.nan, 0.3)))
    device = "0b1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"
    packet = livelink_packet(values, 1.5, (30, 1), "N2F", device)
    read = read_livelink(packet)
    assert read["version"] == 6 and read["device"] == device and read["name"] == "N2F"
    assert read["frame"] == 45 and read["subframe"] == 0.0 and read["rate"] == (30, 1) and read["count"] == 61
    assert np.array_equal(read["values"][:52], values.weights)
    # head yaw, pitch, roll; left eye yaw, pitch, roll; right eye: radians / pi (Unreal's degrees / 180), NaN -> 0
    assert np.allclose(read["values"][52:], np.array([0.5, -0.25, 0.1, 0.2, -0.1, 0.0, 0.0, 0.3, 0.0]) / math.pi, atol=1e-6)
    # the same bytes as PROTOCOLS.md (PyLiveLinkFace) reads them: '<I' 6, then '$' + the 36-character id
    assert read_livelink_as_pylivelinkface(packet) == (6, "$" + device, "N2F", 45, 61)
    ntsc = read_livelink(livelink_packet(values, 1.5, (30000, 1001), "N2F", device))
    assert ntsc["rate"] == (30000, 1001) and ntsc["frame"] == 44 and ntsc["subframe"] == pytest.approx(1.5 * 30000 / 1001 - 44, abs=1e-5)


def test_livelink_sink_sends_faces_and_skips_frames_without_one(udp_receiver) -> None:
    port, read, sock = udp_receiver
    sink = LiveLinkSink("127.0.0.1", port, fps=30.0, subject="Stage A")
    sink(tracking_result(3, avatar_values()))
    (packet,) = read(1)
    sink(tracking_result(4, None))
    sink.close()
    assert_nothing_more(sock)
    decoded = read_livelink(packet)
    assert decoded["name"] == "Stage A" and decoded["frame"] == 3 and len(decoded["device"]) == 36
    assert sink.stats.received == 2 and sink.stats.sent == 1 and sink.stats.skipped == 1 and sink.stats.errors == 0


# -- the mailbox: newest frame wins ---------------------------------------------------------------
class HeldLiveLinkSink(LiveLinkSink):
    """A Live Link sink whose first send waits until ``release`` is set, as on a link that stalls."""

    def __init__(self, *args, **kwargs) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        super().__init__(*args, **kwargs)

    def transmit(self, packet: bytes) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        super().transmit(packet)


def test_a_stalled_sender_keeps_only_the_newest_frame_and_never_blocks_the_pipeline(udp_receiver) -> None:
    port, read, sock = udp_receiver
    sink = HeldLiveLinkSink("127.0.0.1", port, fps=30.0)
    sink(tracking_result(0, avatar_values()))
    assert sink.entered.wait(10)  # frame 0 is being sent and the send is held up
    for index in range(1, 6):  # the pipeline goes on: each call returns at once, frames 1-4 are replaced
        sink(tracking_result(index, avatar_values()))
    assert sink.stats.received == 6 and sink.stats.replaced == 4 and sink.stats.sent == 0
    sink.release.set()
    sink.close()  # sends what is in the mailbox, then stops
    frames = [read_livelink(packet)["frame"] for packet in read(2)]
    assert frames == [0, 5]
    assert_nothing_more(sock)
    stats = sink.stats
    assert (stats.received, stats.sent, stats.replaced, stats.skipped, stats.errors) == (6, 2, 4, 0, 0)


def test_send_errors_are_logged_once_and_counted_not_raised(caplog) -> None:
    caplog.set_level(logging.WARNING)
    sink = VmcSink("255.255.255.255", 39539)  # a broadcast address without SO_BROADCAST: the kernel refuses every send
    for index in range(4):
        sink(tracking_result(index, avatar_values()))
        deadline = time.monotonic() + 10
        while sink.stats.errors + sink.stats.replaced < index + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    sink.close()
    stats = sink.stats
    assert stats.sent == 0 and stats.errors + stats.replaced == 4 and stats.errors >= 1 and "PermissionError" in stats.last_error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(w.startswith("VMC to 255.255.255.255:39539: PermissionError") and "goes on" in w for w in warnings) == 1, warnings  # logged once ...
    assert any("could not be sent" in w for w in warnings)  # ... and summed up at close
    assert "send errors" in sink.describe() and f"{stats.errors} send errors" in sink.describe()
    sink.close()  # idempotent


# -- OSC -------------------------------------------------------------------------------------------
def test_osc_bundle_carries_every_parameter_and_the_pose() -> None:
    values = avatar_values(angles=(0.2, 0.1, -0.1))
    result = tracking_result(12, values, track_id=3)
    messages = {m.address: m for m in bundle_messages(osc_bundle(result, 0.4).dgram)}
    assert list(messages)[0] == "/n2f/frame" and type_tags(messages["/n2f/frame"]) == ",ifi"
    assert messages["/n2f/frame"].params == [12, pytest.approx(0.4), 1]
    sizes = {"pose": 7, "angles": 3, "camera": 12, "params/identity": 100, "params/expression": 53, "arkit": 52, "gaze": 4}
    for name, size in sizes.items():
        message = messages[f"/n2f/face/3/{name}"]
        assert type_tags(message) == "," + "f" * size, name
    assert type_tags(messages["/n2f/face/3/identity"]) == ",s" and messages["/n2f/face/3/identity"].params == ["locked"]
    assert np.allclose(messages["/n2f/face/3/arkit"].params, values.weights, atol=1e-7)
    assert np.allclose(messages["/n2f/face/3/angles"].params, [0.2, 0.1, -0.1], atol=1e-5)
    assert np.allclose(messages["/n2f/face/3/params/identity"].params, np.arange(100) / 100, atol=1e-6)
    px, py, pz, *q = messages["/n2f/face/3/pose"].params
    assert np.allclose([px, py, pz], [0.01, -0.02, -0.55], atol=1e-6)  # the avatar frame: camera-frame y, z flipped
    assert np.allclose(quaternion_matrix(*q), values.head_rotation, atol=1e-5)
    gaze = messages["/n2f/face/3/gaze"].params
    assert np.allclose(gaze[:2], [0.1, -0.05], atol=1e-6) and all(math.isnan(v) for v in gaze[2:])
    empty = bundle_messages(osc_bundle(tracking_result(13, None), 0.43).dgram)
    assert [m.address for m in empty] == ["/n2f/frame"] and empty[0].params[2] == 0


def test_osc_sink_sends_one_bundle_per_frame(udp_receiver) -> None:
    port, read, sock = udp_receiver
    sink = OscSink("127.0.0.1", port)
    for index in range(3):
        sink(tracking_result(index, avatar_values()))
        (datagram,) = read(1)
        assert bundle_messages(datagram)[0].params[0] == index
    sink.close()
    assert sink.stats.sent == 3 and sink.stats.replaced == 0


# -- the viewer's toggles ---------------------------------------------------------------------------
def test_viewer_keys_switch_the_streams(qapp, untrained_checkpoint: Path, shared_path: Path, tmp_path: Path, udp_receiver) -> None:
    from PyQt6 import QtCore

    from app.viewer import STREAMS, ResultBridge, ViewerOptions, ViewerWindow
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.options import TrackerOptions
    from tracker.live.pipeline import Pipeline
    from tracker.live.sinks import SwitchableSink
    from tracker.live.sources import open_source

    port, read, sock = udp_receiver
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    tracker = FaceTracker.from_options(TrackerOptions(checkpoint=untrained_checkpoint, runtime="torch"))
    source = open_source(video, loop=True)
    bridge, recording, virtualcam = ResultBridge(), SwitchableSink(), SwitchableSink()
    streams = {label: SwitchableSink() for label in STREAMS}
    pipeline = Pipeline(source, tracker, [recording, virtualcam, *streams.values(), bridge])
    options = ViewerOptions(source_name=str(video), checkpoint=str(untrained_checkpoint), device="cpu", software_3d=True,
                            record_dir=str(tmp_path / "takes"), screenshot_dir=str(tmp_path / "shots"),
                            streams={"OSC": lambda: OscSink("127.0.0.1", port)}, streams_on=("OSC",))
    window = ViewerWindow(pipeline, bridge, recording, virtualcam, options, streams=streams)
    window.show()
    pipeline.start()
    try:
        assert {label: window.actions_by_name[label].shortcut().toString() for label in STREAMS} == {"VMC": "K", "Live Link": "U", "OSC": "O"}
        assert streams["OSC"].current is not None and "streams: OSC" in window.status.text()  # on at launch, as --osc asks
        (datagram,) = read(1)
        assert bundle_messages(datagram)[0].address == "/n2f/frame"
        window.actions_by_name["OSC"].trigger()  # O: off
        assert streams["OSC"].current is None and "streams off" in window.status.text()
        window.actions_by_name["VMC"].trigger()  # K without --vmc: reported, nothing breaks
        assert streams["VMC"].current is None
        window.actions_by_name["OSC"].trigger()  # O: on again
        assert streams["OSC"].current is not None
        qapp.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
    finally:
        window.close()
        tracker.close()
    assert streams["OSC"].current is None  # closing the window closed the stream


# -- end to end: the shipped tracker on a real video --------------------------------------------------
# single_face.mp4 (72 frames, 30 fps, 640x360), checked by eye frame by frame: the lips are together
# in frames 0-17 and parted (a wide smile showing the teeth) from frame 19 to the end; the eyes
# close in frames 26-27 (half shut in 25 and 28) and are open elsewhere.
MOUTH_CLOSED, MOUTH_OPEN = range(2, 15), range(22, 69)
BLINK, EYES_OPEN = (26, 27), [*range(18, 24), *range(31, 60)]


class RecordingDispatcher(Dispatcher):
    """A dispatcher that also keeps every datagram (one VMC bundle each) it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.datagrams: list[bytes] = []
        self.lock = threading.Lock()

    def call_handlers_for_packet(self, data: bytes, client_address):
        with self.lock:
            self.datagrams.append(data)
        return super().call_handlers_for_packet(data, client_address)


def test_headless_run_streams_every_frame_to_vmc_live_link_and_osc_receivers(shared_path: Path, capsys) -> None:
    if not SHIPPED_CHECKPOINT.is_file():
        pytest.skip(f"the shipped checkpoint {SHIPPED_CHECKPOINT} is missing")
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    dispatcher = RecordingDispatcher()
    blend_values: list[str] = []
    dispatcher.map("/VMC/Ext/Blend/Val", lambda address, name, value: blend_values.append(name))
    vmc_server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    threading.Thread(target=vmc_server.serve_forever, daemon=True).start()
    receivers = {}
    for name in ("livelink", "osc"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        receivers[name] = sock
    try:
        code = live.main(["--video", str(video), "--headless", "--quiet", "--checkpoint", str(SHIPPED_CHECKPOINT),
                          "--vmc", f"127.0.0.1:{vmc_server.server_address[1]}",
                          "--livelink", f"127.0.0.1:{receivers['livelink'].getsockname()[1]}",
                          "--osc", f":{receivers['osc'].getsockname()[1]}"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "frames: 72 tracked of 72 read" in out and "faces found in 72 frames (100.0%)" in out
        # every tracked frame was sent: none replaced in the mailbox (the senders keep up), none failed
        for label, port in [("VMC", vmc_server.server_address[1]), ("Live Link", receivers["livelink"].getsockname()[1]), ("OSC", receivers["osc"].getsockname()[1])]:
            assert f"{label} to 127.0.0.1:{port}: 72 sent of 72 frames, 0 replaced by newer ones, 0 with nothing to send, 0 send errors" in out, out
        packets = {}
        for name, sock in receivers.items():
            sock.settimeout(10.0)
            packets[name] = [sock.recv(65536) for _ in range(72)]
            assert_nothing_more(sock)
        deadline = time.monotonic() + 10
        while len(dispatcher.datagrams) < 72 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        vmc_server.shutdown()
        vmc_server.server_close()
        for sock in receivers.values():
            sock.close()

    # VMC: 72 bundles, each OK, T, root, Head, the 52 ARKit names as floats, Apply last
    assert len(dispatcher.datagrams) == 72 and len(blend_values) == 72 * 52
    frames = []
    for datagram in dispatcher.datagrams:
        messages = bundle_messages(datagram)
        assert [m.address for m in messages[:4]] == ["/VMC/Ext/OK", "/VMC/Ext/T", "/VMC/Ext/Root/Pos", "/VMC/Ext/Bone/Pos"]
        assert messages[-1].address == "/VMC/Ext/Blend/Apply" and type_tags(messages[-1]) == ","
        blends = messages[4:-1]
        assert [m.params[0] for m in blends] == list(ARKIT_NAMES) and all(type_tags(m) == ",sf" for m in blends)
        assert type_tags(messages[1]) == ",f" and type_tags(messages[3]) == ",sfffffff"
        frames.append((messages[1].params[0], {m.params[0]: m.params[1] for m in blends}))
    frames.sort(key=lambda frame: frame[0])  # the server's threads may hand datagrams over out of order
    times = np.array([t for t, _ in frames])
    assert np.allclose(np.diff(times), 1 / 30, atol=1e-4) and times[0] == pytest.approx(0.0, abs=1e-6)  # the video's 30 fps
    vmc = {name: np.array([weights[name] for _, weights in frames]) for name in ARKIT_NAMES}

    # Live Link: 72 packets, frames 0-71 at 30/1, 61 values each
    decoded = sorted((read_livelink(packet) for packet in packets["livelink"]), key=lambda d: d["frame"])
    assert [d["frame"] for d in decoded] == list(range(72)) and {d["rate"] for d in decoded} == {(30, 1)}
    assert {d["version"] for d in decoded} == {6} and {d["count"] for d in decoded} == {61} and {d["name"] for d in decoded} == {"N2F"}
    livelink = np.stack([d["values"] for d in decoded])
    assert np.all(np.abs(livelink[:, 52:]) <= 1.0) and np.all((livelink[:, :52] >= 0) & (livelink[:, :52] <= 1))

    # OSC: one bundle per frame with the raw ICT parameters
    osc = sorted((bundle_messages(datagram) for datagram in packets["osc"]), key=lambda messages: messages[0].params[0])
    assert [messages[0].params[0] for messages in osc] == list(range(72))
    for messages in osc:
        assert messages[0].params[2] == 1  # one face
        face = messages[1].address.removesuffix("/pose")
        sizes = {m.address.removeprefix(face): len(m.params) for m in messages[1:]}
        assert sizes == {"/pose": 7, "/angles": 3, "/camera": 12, "/params/identity": 100, "/params/expression": 53, "/arkit": 52, "/gaze": 4, "/identity": 1}

    # the same weights in both streams (VMC mirrors by default: its eyeBlinkLeft is the face's right eye)
    assert np.allclose(vmc["jawOpen"], livelink[:, ARKIT_INDEX["jawOpen"]])
    assert np.allclose(vmc["eyeBlinkLeft"], livelink[:, ARKIT_INDEX["eyeBlinkRight"]])
    # the speaker's mouth opens: jawOpen is higher on the frames where the lips are parted
    for jaw in (vmc["jawOpen"], livelink[:, ARKIT_INDEX["jawOpen"]]):
        closed, opened = np.median(jaw[list(MOUTH_CLOSED)]), np.median(jaw[list(MOUTH_OPEN)])
        assert opened > closed + 0.08, (closed, opened)
    # and blinks: each eye's eyeBlink is higher at the blink than with the eyes open
    for name in ("eyeBlinkLeft", "eyeBlinkRight"):
        for series in (vmc[name], livelink[:, ARKIT_INDEX[name]]):
            blink, open_eyes = series[list(BLINK)].max(), np.median(series[EYES_OPEN])
            assert blink > open_eyes + 0.2, (name, blink, open_eyes)
