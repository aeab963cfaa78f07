"""FLAME live with the shipped ICT network and no FLAME network, end to end on a real video.

The FLAME files are the ICT-as-FLAME model (``flame_factory.write_ict_as_flame``: FLAME's exact
layout, a real face), so MediaPipe's points land on a face and every output carries real motion:
``python -m app.live --headless --flame-dir`` with a recording, the VMC, Live Link and OSC streams to
loopback receivers and the virtual camera; then the take's glb, Live Link CSV and FLAME-sequence
exports read back, a second run reusing the take's identity, and the viewer's screenshot.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pygltflib
import pytest
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_server import ThreadingOSCUDPServer

from app import live
from tests.app.test_viewer import MEMORY_BACKEND, MemoryBackend
from tests.outputs.test_streaming import (
    SHIPPED_CHECKPOINT,
    RecordingDispatcher,
    bundle_messages,
    read_livelink,
)
from tracker import export
from tracker.fitting.arkit import ARKIT_NAMES
from tracker.takes.recording import IDENTITY_STATES, read_take

FRAMES = 36  # past the identity's 30 calibrating frames

pytestmark = [pytest.mark.shared, pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="the shipped checkpoint is missing")]


@pytest.fixture(scope="module")
def video(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos" / "single_face.mp4"


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10.0)  # a safety net for a broken sender, not a timing assertion
    return sock


@pytest.fixture(scope="module")
def flame_run(ict_as_flame_dir: Path, video: Path, tmp_path_factory) -> dict:
    """One headless FLAME run: its exit code, output, take path, and what the receivers got."""
    folder = tmp_path_factory.mktemp("flame_live")
    take_path = folder / "take.npz"
    dispatcher = RecordingDispatcher()
    vmc = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    threading.Thread(target=vmc.serve_forever, daemon=True).start()
    receivers = {"livelink": _udp_socket(), "osc": _udp_socket()}
    cameras: list = []
    original = MemoryBackend.instances
    MemoryBackend.instances = cameras
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = live.main([
                "--video", str(video), "--headless", "--quiet", "--flame-dir", str(ict_as_flame_dir), "--max-frames", str(FRAMES),
                "--record", str(take_path), "--vmc", f"127.0.0.1:{vmc.server_address[1]}",
                "--livelink", f"127.0.0.1:{receivers['livelink'].getsockname()[1]}", "--osc", f":{receivers['osc'].getsockname()[1]}",
                "--virtualcam", "--virtualcam-backend", MEMORY_BACKEND, "--virtualcam-size", "320x180",
            ])  # fmt: skip
        packets = {name: [sock.recv(65536) for _ in range(FRAMES)] for name, sock in receivers.items()} if code == 0 else {}
        deadline = time.monotonic() + 10
        while len(dispatcher.datagrams) < FRAMES and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        MemoryBackend.instances = original
        vmc.shutdown()
        vmc.server_close()
        for sock in receivers.values():
            sock.close()
    return {"code": code, "out": out.getvalue(), "take": take_path, "vmc": list(dispatcher.datagrams), "packets": packets, "cameras": cameras,
            "folder": folder}


def test_flame_is_tracked_recorded_and_says_how_it_started(flame_run: dict) -> None:
    assert flame_run["code"] == 0, flame_run["out"]
    assert f"faces found in {FRAMES} frames (100.0%)" in flame_run["out"]
    take = read_take(flame_run["take"])
    assert take.head_model == "flame" and take.face_found.all() and len(take) == FRAMES
    assert take.metadata["fit_start"] == "pnp" and take.metadata["network_head_model"] == "ict"
    assert take.params["shape"].shape == (FRAMES, 300) and take.params["expression"].shape == (FRAMES, 100)
    for group in ("shape", "expression", "jaw", "eyelids"):
        assert np.isfinite(take.params[group]).all(), group
    assert np.ptp(take.params["expression"], axis=0).max() > 0.05, "the expression moves"
    states = [IDENTITY_STATES[s] for s in take.identity_state]
    assert states[0] == "calibrating" and states[-1] == "locked"
    assert np.isfinite(take.arkit).all() and np.ptp(take.arkit[:, ARKIT_NAMES.index("jawOpen")]) > 0.05, "ARKit weights from the ICT fit beside FLAME"


def test_flame_streams_reach_vmc_live_link_and_osc_receivers(flame_run: dict) -> None:
    assert flame_run["code"] == 0, flame_run["out"]
    assert len(flame_run["vmc"]) == FRAMES
    blends = bundle_messages(flame_run["vmc"][-1])[4:-1]
    assert [m.params[0] for m in blends] == list(ARKIT_NAMES)
    frames = sorted(read_livelink(packet)["frame"] for packet in flame_run["packets"]["livelink"])
    assert frames == list(range(FRAMES))
    osc = [OscBundle(packet) for packet in flame_run["packets"]["osc"]]
    addresses = {message.address for bundle in osc for message in bundle}
    assert any(address.endswith("/expression") for address in addresses), sorted(addresses)[:20]
    assert any(address.endswith("/jaw") for address in addresses) and any(address.endswith("/eyelids") for address in addresses)


def test_flame_virtual_camera_gets_the_tracked_frames(flame_run: dict) -> None:
    assert flame_run["code"] == 0, flame_run["out"]
    (camera,) = flame_run["cameras"]
    assert camera.rgb and all(frame.shape == (180, 320, 3) for frame in camera.rgb)


def test_flame_take_exports_glb_csv_and_the_flame_sequence(flame_run: dict, ict_as_flame_dir: Path) -> None:
    assert flame_run["code"] == 0, flame_run["out"]
    take, folder = flame_run["take"], flame_run["folder"]
    glb, table, sequence = folder / "take.glb", folder / "take.csv", folder / "take_flame.npz"
    assert export.main([str(take), "--format", "glb", "--out", str(glb), "--flame-dir", str(ict_as_flame_dir)]) == 0
    gltf = pygltflib.GLTF2().load(str(glb))
    assert gltf.animations and len(gltf.meshes[0].primitives[0].targets) >= 100
    assert export.main([str(take), "--format", "csv", "--out", str(table)]) == 0
    with open(table, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == FRAMES and "JawOpen" in rows[0]
    assert export.main([str(take), "--format", "flame-npz", "--out", str(sequence), "--flame-dir", str(ict_as_flame_dir)]) == 0
    with np.load(sequence) as data:
        assert data["expr"].shape == (FRAMES, 100) and data["shape"].shape == (300,)


def test_flame_identity_from_a_take(flame_run: dict, ict_as_flame_dir: Path, video: Path, tmp_path: Path) -> None:
    assert flame_run["code"] == 0, flame_run["out"]
    again = tmp_path / "again.npz"
    code = live.main(["--video", str(video), "--headless", "--quiet", "--flame-dir", str(ict_as_flame_dir), "--max-frames", "4",
                      "--record", str(again), "--identity", str(flame_run["take"])])
    assert code == 0
    first, second = read_take(flame_run["take"]), read_take(again)
    assert {IDENTITY_STATES[s] for s in second.identity_state} == {"given"}
    assert np.allclose(second.params["shape"], first.tracks().identity[0], atol=1e-6)



def test_flame_arkit_weights_are_the_ict_trackers(ict_as_flame_dir: Path, video: Path) -> None:
    """With the ICT network beside FLAME, the ICT fit that gives FLAME its ARKit weights starts
    from and is pulled towards the network's prediction, as the ICT tracker's own refinement is:
    on the same frames the weights and gaze are the ICT tracker's."""
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.options import TrackerOptions
    from tracker.live.results import RawOutput
    from tracker.live.sources import open_source

    trackers = [FaceTracker.from_options(TrackerOptions(runtime="torch", **extra)) for extra in ({}, {"flame_dir": ict_as_flame_dir})]
    weights: list[list[np.ndarray]] = [[], []]
    with open_source(str(video)) as source:
        for index, frame in enumerate(source):
            prepared = trackers[0].prepare(frame)
            raw = RawOutput(*trackers[0].run_network(prepared.inputs))
            for k, tracker in enumerate(trackers):
                (face,) = tracker.finish(prepared, raw).faces
                weights[k].append(np.concatenate([face.avatar.weights, face.avatar.eye_angles.ravel()]))
            if index == 8:
                break
    for tracker in trackers:
        tracker.close()
    assert trackers[1].head.name == "flame" and np.ptp(np.array(weights[0]), axis=0).max() > 0.05
    assert np.allclose(weights[1], weights[0], atol=1e-5)


def test_flame_camera_start_carries_the_network_pose_into_flames_frame(ict_as_flame_dir: Path, video: Path) -> None:
    """``--refine-start camera``: the ICT network's head pose, carried through the rigid map
    between the two mean faces, starts FLAME's fit where the PnP start does (within degrees)."""
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.options import TrackerOptions
    from tracker.live.results import RawOutput
    from tracker.live.sources import open_source

    trackers = {start: FaceTracker.from_options(TrackerOptions(runtime="torch", flame_dir=ict_as_flame_dir, refine_start=start))
                for start in ("camera", "pnp")}
    assert "mm apart" in trackers["camera"].describe_start() and trackers["camera"]._alignment.residual_mm < 10.0
    with open_source(str(video)) as source:
        frame = next(iter(source))
    prepared = trackers["pnp"].prepare(frame)
    raw = RawOutput(*trackers["pnp"].run_network(prepared.inputs))
    rotations = {start: tracker.finish(prepared, raw).faces[0].rotation.double().numpy() for start, tracker in trackers.items()}
    for tracker in trackers.values():
        tracker.close()
    relative = rotations["camera"] @ rotations["pnp"].T
    assert np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1))) < 3.0


def test_finish_benchmark_times_ict_and_flame_on_the_same_frames(ict_as_flame_dir: Path, video: Path, capsys) -> None:
    from tracker.bench.__main__ import main as bench_main

    bench_main(["finish", "--video", str(video), "--flame-dir", str(ict_as_flame_dir), "--runtime", "torch", "--frames", "5", "--passes", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    parts = {line.split()[0]: line for line in lines if line.split()[1:2] == ["finish"]}
    assert set(parts) == {"ICT", "FLAME"} and all("refine" in line and "avatar" in line for line in parts.values())
    ict, flame, difference, ratio = map(float, re.fullmatch(r"ict_ms=(\S+) flame_ms=(\S+) difference_ms=(\S+) expected_ratio=(\S+)", lines[-1]).groups())
    assert ict > 0 and flame > 0 and difference == pytest.approx(flame - ict, abs=0.011) and 0 < ratio
