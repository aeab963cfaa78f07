"""tracker.n2fnet.runtime: the network run by onnxruntime / openvino gives torch's outputs on real cue
maps, the exported copy is tied to the checkpoint it came from (a stale or damaged one is made
again, never used), the shipped int8 copy stays within int8's bounds of torch on real cue maps and
is refused for any other network (and must be the shipped checkpoint's own), the release command
writes it, the runtime is chosen and refused as documented, and the app and the network
benchmark use it. Every export goes to a temporary cache folder (N2F_CACHE_DIR)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app import live
from tracker.bench.__main__ import main as bench_main
from tracker.errors import TrackerError
from tracker.geometry.camera import head_to_camera, project
from tracker.geometry.rotations import rotation_6d_to_matrix
from tracker.head_models import load_head_model
from tracker.live.face_tracker import FaceTracker
from tracker.live.options import DEFAULT_CHECKPOINT, TrackerOptions
from tracker.live.results import NetworkInputs
from tracker.live.sources import open_source
from tracker.n2fnet import N2FNet, N2FNetConfig
from tracker.n2fnet import runtime as rt
from tracker.n2fnet.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

EXPORTED = [pytest.param(name, marks=pytest.mark.skipif(not rt.installed(name), reason=f"{name} not installed ({rt.INSTALL[name]})")) for name in ("onnxruntime", "openvino")]
TOLERANCE = 1e-4  # the parity bound, on every output
# int8 against torch on real cue maps (measured on 182 cue maps of the held-out videos: landmarks
# 1.81 px at worst, 0.29 px median of the per-frame worst; expression 0.032 at worst; on the 6 maps
# of ``real_inputs``: 0.59 px, mean 0.21 px, expression 0.0013)
INT8_LANDMARK_PX = 2.5  # worst projected landmark, in pixels of the 128-px crop
INT8_MEAN_LANDMARK_PX = 0.6  # mean over the 68 landmarks and the frames
INT8_EXPRESSION = 0.05  # worst |expression coefficient difference|
SHIPPED_INT8 = rt.int8_path(DEFAULT_CHECKPOINT)
needs_openvino = pytest.mark.skipif(not rt.installed("openvino"), reason=f"openvino not installed ({rt.INSTALL['openvino']})")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch) -> Path:
    """Exports go to one temporary cache for the module's tests, never to ~/.cache."""
    folder = tmp_path_factory.getbasetemp() / "runtime-cache"
    monkeypatch.setenv("N2F_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def shipped_net() -> N2FNet:
    return model_from_checkpoint(load_checkpoint(DEFAULT_CHECKPOINT))


@pytest.fixture(scope="module")
def real_inputs(shared_path: Path, ict_npz_path: Path) -> list[NetworkInputs]:
    """Network inputs (real cue maps) of 6 frames of a real video, from the shipped checkpoint's tracker."""
    tracker = FaceTracker.from_options(TrackerOptions(runtime="torch", ict_model=ict_npz_path, refine=False))
    inputs = []
    try:
        with open_source(shared_path / "real-faces" / "videos" / "single_face.mp4") as source:
            for index, frame in enumerate(source):
                if index % 5 == 0:
                    prepared = tracker.prepare(frame)
                    assert prepared.inputs is not None
                    inputs.append(prepared.inputs)
                if len(inputs) == 6:
                    break
    finally:
        tracker.close()
    return inputs


def _outputs(runner: rt.Runner, inputs: NetworkInputs):
    with torch.no_grad():
        return runner(inputs.normals, inputs.focal, inputs.principal, inputs.mask)


def _difference(got, want) -> float:
    assert set(got[0]) == set(want[0])
    for group in want[0]:
        assert got[0][group].shape == want[0][group].shape
    pairs = [(got[0][g], want[0][g]) for g in want[0]] + [(got[1], want[1]), (got[2], want[2])]
    return max(float((a - b).abs().max()) for a, b in pairs)


SMALL = 1  # the seed of the small network that most tests share (exported once into the module's cache)


def _small_net(seed: int, use_mask_input: bool = False) -> N2FNet:
    torch.manual_seed(seed)
    net = N2FNet(N2FNetConfig(head_model="ict", groups={"identity": 4, "expression": 3}, input_size=64, use_mask_input=use_mask_input))
    with torch.no_grad():  # the zero-initialised last layers would make every output the offset
        for module in (net.flame_module, net.camera_module):
            module.mlp[-1].weight.normal_(0, 0.01)
    return net.eval()


# -- parity ---------------------------------------------------------------------------------------
@pytest.mark.shared
@pytest.mark.parametrize("name", EXPORTED)
def test_exported_network_gives_torchs_outputs_on_real_cue_maps(name: str, shipped_net: N2FNet, real_inputs: list[NetworkInputs], _cache: Path) -> None:
    runner = rt.create_runner(shipped_net, name, threads=1)
    assert runner.name == name and runner.threads == 1 and runner.path.parent == _cache / "networks"
    torch_runner = rt.Runner(shipped_net)
    errors = [_difference(_outputs(runner, item), _outputs(torch_runner, item)) for item in real_inputs]
    assert max(errors) < TOLERANCE, errors
    # two faces in one call (the faces axis is dynamic)
    pair = NetworkInputs(*(torch.cat([getattr(real_inputs[0], k), getattr(real_inputs[3], k)]) for k in ("normals", "mask", "focal", "principal")))
    assert _difference(_outputs(runner, pair), _outputs(torch_runner, pair)) < TOLERANCE
    # outputs are the caller's: the next call does not overwrite them
    first = _outputs(runner, real_inputs[0])
    kept = first[1].clone()
    _outputs(runner, real_inputs[1])
    assert torch.equal(first[1], kept)


@pytest.mark.shared
@pytest.mark.parametrize("name", EXPORTED)
def test_tracker_runs_its_network_through_the_runtime(name: str, real_inputs: list[NetworkInputs], ict_npz_path: Path) -> None:
    tracker = FaceTracker.from_options(TrackerOptions(runtime=name, ict_model=ict_npz_path, refine=False))
    try:
        assert tracker.runner.name == name
        params, rotation_6d, translation = tracker.run_network(real_inputs[2])
        want = _outputs(rt.Runner(tracker.net), real_inputs[2])
        assert _difference((params, rotation_6d, translation), want) < TOLERANCE
    finally:
        tracker.close()


@pytest.mark.parametrize("name", EXPORTED)
def test_a_network_with_the_mask_input_exports_too(name: str) -> None:
    net = _small_net(3, use_mask_input=True)
    runner = rt.create_runner(net, name, cache=False)
    assert runner.origin == "in memory" and runner.path is None
    inputs = rt.probe_inputs(net, faces=3)
    assert _difference(runner(*inputs), rt.Runner(net)(*inputs)) < TOLERANCE


# -- the exported copy stays the checkpoint's ------------------------------------------------------
@pytest.mark.parametrize("name", EXPORTED)
def test_the_export_is_cached_by_the_network_digest_and_records_it(name: str, _cache: Path) -> None:
    net = _small_net(SMALL)
    path = _cache / "networks" / (rt.network_digest(net)[:40] + rt.RUNNERS[name].suffix)
    path.unlink(missing_ok=True)
    first = rt.create_runner(net, name)
    assert first.origin == "exported" and first.setup_s > 0 and first.path == path
    recorded = first._recorded(path)
    assert recorded["digest"] == rt.network_digest(net) and recorded["format"] == rt.EXPORT_FORMAT
    again = rt.create_runner(net, name)
    assert again.origin == "cached" and again.path == first.path and again.setup_s == 0
    # the same weights loaded again: the same digest; other weights (a retrained or re-exported
    # checkpoint, or its settings changed): another digest, so never the old export
    assert rt.network_digest(_small_net(SMALL)) == rt.network_digest(net)
    other = _small_net(2)
    assert rt.network_digest(other) != rt.network_digest(net)
    other.config.depth_per_focal = 0.3
    assert rt.network_digest(other) != rt.network_digest(_small_net(2))


@pytest.mark.parametrize("name", EXPORTED)
def test_a_stale_or_damaged_export_is_made_again_not_used(name: str, _cache: Path, caplog) -> None:
    old, new = _small_net(SMALL), _small_net(5)
    stale = rt.create_runner(old, name)
    path = _cache / "networks" / (rt.network_digest(new)[:40] + stale.suffix)
    # the old checkpoint's export where the new one's belongs (a copy out of sync with its .pt)
    shutil.copy(stale.path, path)
    if name == "openvino":
        shutil.copy(stale.path.with_suffix(".bin"), path.with_suffix(".bin"))
    runner = rt.create_runner(new, name)
    assert runner.origin == "exported" and "stale or damaged" in caplog.text and "digest" in caplog.text
    inputs = rt.probe_inputs(new)
    assert _difference(runner(*inputs), rt.Runner(new)(*inputs)) < TOLERANCE
    assert runner._recorded(path)["digest"] == rt.network_digest(new)
    # a damaged file (cut short) is made again too
    caplog.clear()
    damaged = path.with_suffix(".bin") if name == "openvino" else path
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    runner = rt.create_runner(new, name)
    assert runner.origin == "exported" and "stale or damaged" in caplog.text
    assert rt.create_runner(new, name).origin == "cached"


@pytest.mark.parametrize("name", EXPORTED)
def test_an_export_recorded_right_but_computing_wrong_is_refused(name: str, monkeypatch, caplog) -> None:
    net = _small_net(SMALL)
    rt.create_runner(net, name)  # exported (or already cached)
    real_run = rt.RUNNERS[name]._run

    def off(self, arrays):
        params, rotation_6d, translation = real_run(self, arrays)
        return params + 1e-3, rotation_6d, translation

    monkeypatch.setattr(rt.RUNNERS[name], "_run", off)
    with pytest.raises(TrackerError, match="other outputs than PyTorch"):  # the cached copy is redone, and still wrong: refused
        rt.create_runner(net, name)
    assert "outputs differ" in caplog.text


def test_an_unwritable_cache_exports_into_memory(tmp_path: Path, monkeypatch, caplog) -> None:
    name = next((n for n in ("onnxruntime", "openvino") if rt.installed(n)), None)
    if name is None:
        pytest.skip("no exporting runtime installed")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("N2F_CACHE_DIR", str(blocker / "cache"))
    net = _small_net(SMALL)
    runner = rt.create_runner(net, name)
    assert runner.origin == "in memory" and runner.path is None and "cannot write the exported network" in caplog.text
    inputs = rt.probe_inputs(net)
    assert _difference(runner(*inputs), rt.Runner(net)(*inputs)) < TOLERANCE


# -- the shipped int8 copy ------------------------------------------------------------------------
def _landmarks_px(head, outputs, inputs: NetworkInputs) -> torch.Tensor:
    """(F, 68, 2) the head's landmarks of ``outputs`` projected into the crop (pixels)."""
    params, rotation_6d, translation = outputs
    camera = head_to_camera(head.decode_landmarks(params).float(), rotation_6d_to_matrix(rotation_6d), translation)
    return project(camera, inputs.focal, inputs.principal)


@needs_openvino
def test_the_shipped_int8_copy_is_the_shipped_networks(shipped_net: N2FNet) -> None:
    """SYNC: fails when the shipped checkpoint is retrained (or re-exported) without remaking its int8 copy."""
    assert rt.SHIPPED_CHECKPOINT == DEFAULT_CHECKPOINT
    assert SHIPPED_INT8.is_file() and SHIPPED_INT8.with_suffix(".bin").is_file(), f"no int8 copy: run python -m tracker.n2fnet quantize {DEFAULT_CHECKPOINT} --calibration DATA_DIR"
    recorded = rt.int8_recorded(SHIPPED_INT8)
    assert recorded["format"] == rt.INT8_FORMAT
    assert recorded["digest"] == rt.network_digest(shipped_net), (
        f"{SHIPPED_INT8} is not the int8 copy of {DEFAULT_CHECKPOINT} (retrained?): remake it with {recorded['command']}"
    )
    assert recorded["source"] == DEFAULT_CHECKPOINT.name and "samples" in recorded["calibration"]
    size = (SHIPPED_INT8.stat().st_size + SHIPPED_INT8.with_suffix(".bin").stat().st_size) / 1e6
    assert size < 25, f"the int8 copy is {size:.1f} MB"


@pytest.mark.shared
@needs_openvino
def test_the_int8_copy_stays_close_to_torch_on_real_cue_maps(shipped_net: N2FNet, real_inputs: list[NetworkInputs], ict_npz_path: Path) -> None:
    runner = rt.create_runner(shipped_net, "openvino-int8", threads=1)
    assert runner.name == "openvino-int8" and runner.origin == "shipped" and runner.path == SHIPPED_INT8 and runner.threads == 1
    head = load_head_model("ict", ict_npz_path)
    torch_runner = rt.Runner(shipped_net)
    distances, expression = [], []
    for item in real_inputs:
        got, want = _outputs(runner, item), _outputs(torch_runner, item)
        distances.append((_landmarks_px(head, got, item) - _landmarks_px(head, want, item)).norm(dim=-1))
        expression.append(float((got[0]["expression"] - want[0]["expression"]).abs().max()))
    distances = torch.cat(distances)
    assert float(distances.max()) < INT8_LANDMARK_PX and float(distances.mean()) < INT8_MEAN_LANDMARK_PX, distances.max(dim=-1).values
    assert max(expression) < INT8_EXPRESSION, expression
    # two faces in one call: each face's own outputs
    pair = NetworkInputs(*(torch.cat([getattr(real_inputs[0], k), getattr(real_inputs[3], k)]) for k in ("normals", "mask", "focal", "principal")))
    both = _outputs(runner, pair)
    assert _difference(tuple(({g: v[1:] for g, v in both[0].items()}, both[1][1:], both[2][1:])), _outputs(runner, real_inputs[3])) < 1e-4


@pytest.fixture
def changed_checkpoint(tmp_path: Path) -> Path:
    """The shipped checkpoint with one weight changed (a retrained network, as far as the digest
    goes), beside a copy of the shipped int8 copy: an int8 copy out of step with its checkpoint."""
    state = load_checkpoint(DEFAULT_CHECKPOINT)
    state["model"]["flame_module.mlp.2.bias"] = state["model"]["flame_module.mlp.2.bias"] + 1e-3
    path = tmp_path / DEFAULT_CHECKPOINT.name
    save_checkpoint(path, state)
    shutil.copy(SHIPPED_INT8, rt.int8_path(path))
    shutil.copy(SHIPPED_INT8.with_suffix(".bin"), rt.int8_path(path).with_suffix(".bin"))
    return path


@needs_openvino
def test_an_int8_copy_of_another_network_is_refused(changed_checkpoint: Path, ict_npz_path: Path, caplog) -> None:
    net = model_from_checkpoint(load_checkpoint(changed_checkpoint))
    with pytest.raises(rt.NoInt8Copy, match=r"int8 copy of another network .* remake the copy: python -m tracker.n2fnet quantize .*--calibration"):
        rt.create_runner(net, "openvino-int8", checkpoint=changed_checkpoint)
    with pytest.raises(rt.NoInt8Copy, match="int8 copy of another network"):  # the tracker (app, evaluate_real) reads the shipped one
        FaceTracker.from_options(TrackerOptions(checkpoint=changed_checkpoint, ict_model=ict_npz_path, runtime="openvino-int8", refine=False))
    # a network without an int8 copy of its own: auto goes on to float32 OpenVINO, with an info line, no warning
    caplog.set_level(logging.INFO, logger=rt.__name__)
    runner = rt.create_runner(net, "auto", checkpoint=changed_checkpoint, cache=False)
    assert runner.name == "openvino" and "openvino-int8 unavailable" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # cut short: refused as damaged (its .bin no longer matches the sha256 its .xml records), with the command that remakes it
    weights = rt.int8_path(changed_checkpoint).with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(TrackerError, match="(?s)the int8 copy .* is refused: its weights .* do not match the sha256 .*python -m tracker.n2fnet quantize"):
        rt.create_runner(net, "openvino-int8", checkpoint=changed_checkpoint)
    # none at all beside the checkpoint: said how to make it
    rt.int8_path(changed_checkpoint).unlink()
    with pytest.raises(rt.NoInt8Copy, match=rf"{re.escape(str(rt.int8_path(changed_checkpoint)))} does not exist\. Make it .*python -m tracker\.n2fnet quantize"):
        rt.create_runner(net, "openvino-int8", checkpoint=changed_checkpoint)


@needs_openvino
def test_auto_runs_the_shipped_network_on_its_int8_copy(shipped_net: N2FNet) -> None:
    assert rt.default_runtime() == "openvino-int8" and rt.create_runner(shipped_net, "auto").name == "openvino-int8"


def _calibration_folder(folder: Path, net: N2FNet, count: int) -> None:
    """``count`` samples in train/real_data.py's format from probe-like maps: 16-bit ones with their
    own camera, and one 8-bit map at twice the size with the folder's camera.json."""
    for kind in ("normals", "masks", "cameras"):
        (folder / kind).mkdir(parents=True)
    (folder / "camera.json").write_text(json.dumps({"focal": [320.0, 320.0], "principal": [64.0, 64.0]}))
    normals = rt.probe_inputs(net, faces=2)[0]
    for index in range(count):
        n = normals[index % 2].permute(1, 2, 0).numpy()
        inside = (np.abs(n).sum(axis=2) > 0).astype(np.uint8) * 255
        if index == count - 1:  # 8-bit, 2x the input size, no camera of its own
            rgb = np.round((cv2.resize(n, None, fx=2, fy=2) + 1) / 2 * 255).astype(np.uint8)
            inside = cv2.resize(inside, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        else:
            rgb = np.round((n + 1) / 2 * 65535).astype(np.uint16)
            (folder / "cameras" / f"s{index}.json").write_text(json.dumps({"focal": [160.0, 160.0], "principal": [32.0, 30.0 + index]}))
        cv2.imwrite(str(folder / "normals" / f"s{index}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "masks" / f"s{index}.png"), inside)


@needs_openvino
def test_the_release_command_writes_the_int8_copy_beside_the_checkpoint(tmp_path: Path, capsys) -> None:
    pytest.importorskip("nncf", reason='the release command needs NNCF: pip install -e ".[dev]"')
    from tracker.n2fnet import quantize
    from tracker.n2fnet.__main__ import main

    net = _small_net(SMALL)
    checkpoint = tmp_path / "small.pt"
    save_checkpoint(checkpoint, {"model": net.state_dict(), "n2fnet": net.config.to_dict(), "head_model": {"name": "ict", "path": None}})
    data = tmp_path / "calibration"
    _calibration_folder(data, net, 5)
    inputs, description = quantize.read_calibration(data, net, samples=3)
    assert len(inputs) == 3 and description.startswith("3 of the 5 samples of calibration/")
    normals, focal, principal = inputs[2]  # s4: the 8-bit map at twice the size, the folder's camera scaled to the input
    assert normals.shape == (1, 3, 64, 64) and np.allclose(focal, 160.0) and np.allclose(principal, 32.0)
    assert np.allclose(inputs[0][2], [[32.0, 30.0]])
    assert np.allclose(np.linalg.norm(normals[0], axis=0)[np.abs(normals[0]).sum(axis=0) > 0], 1.0, atol=1e-5)

    assert main(["quantize", str(checkpoint), "--calibration", str(data), "--samples", "4"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "small.int8.xml"
    assert f"wrote {path}" in out and "largest |int8 - torch|" in out
    recorded = rt.int8_recorded(path)
    assert recorded["digest"] == rt.network_digest(net) and recorded["format"] == rt.INT8_FORMAT and recorded["source"] == "small.pt"
    assert recorded["command"] == f"python -m tracker.n2fnet quantize {checkpoint} --calibration {data} --samples 4"
    assert recorded["calibration"].startswith("4 of the 5 samples") and recorded["nncf"]
    runner = rt.create_runner(net, "openvino-int8", checkpoint=checkpoint, threads=1)
    probe = rt.probe_inputs(net, faces=3)
    got, want = runner(*probe), rt.Runner(net)(*probe)
    assert all(got[0][g].shape == want[0][g].shape for g in want[0]) and got[1].shape == (3, 6) and got[2].shape == (3, 3)
    assert main(["quantize", str(checkpoint), "--calibration", str(tmp_path / "nothing")]) == 2
    assert "no calibration data" in capsys.readouterr().out


# -- choosing the runtime --------------------------------------------------------------------------
def test_runtime_names_devices_and_missing_packages_are_checked(monkeypatch) -> None:
    assert rt.check_runtime(None) == "auto" and rt.check_runtime("torch", "cuda") == "torch"
    with pytest.raises(TrackerError, match="unknown network runtime 'tensorrt'"):
        rt.check_runtime("tensorrt")
    with pytest.raises(TrackerError, match="runs the network on the CPU.*--runtime torch"):
        rt.check_runtime("onnxruntime", "cuda:0")
    with pytest.raises(TrackerError, match="runs the network on the CPU"):
        rt.check_runtime("openvino-int8", "cuda")
    with pytest.raises(TrackerError, match="unknown network runtime"):
        TrackerOptions(runtime="onnx")
    monkeypatch.setattr(rt.importlib.util, "find_spec", lambda name: None)
    for name in ("onnxruntime", "openvino", "openvino-int8"):
        with pytest.raises(TrackerError, match=re.escape(rt.INSTALL[name])):
            rt.check_runtime(name)
        with pytest.raises(TrackerError, match="pip install"):
            TrackerOptions(runtime=name)
    assert rt.available_runtimes() == ("torch",) and rt.default_runtime() == "torch"


def test_auto_is_the_first_installed_of_the_preference_and_torch_on_cuda(monkeypatch) -> None:
    assert rt.default_runtime("cuda") == "torch"
    assert rt.default_runtime("cpu") == next(n for n in rt.PREFERENCE if rt.installed(n))
    monkeypatch.setattr(rt, "installed", lambda name: name in ("torch", "onnxruntime"))
    assert rt.default_runtime() == "onnxruntime"
    monkeypatch.setattr(rt, "installed", lambda name: name == "torch")
    assert rt.default_runtime() == "torch"
    net = _small_net(7)
    assert type(rt.create_runner(net, "auto")) is rt.Runner


@pytest.mark.parametrize("name", EXPORTED)
def test_auto_falls_back_when_a_runtime_cannot_set_up(name: str, monkeypatch, caplog) -> None:
    monkeypatch.setattr(rt, "PREFERENCE", (name, "torch"))

    def broken(self, path, metadata):
        raise TrackerError("exporter broken")

    monkeypatch.setattr(rt.RUNNERS[name], "_export", broken)
    runner = rt.create_runner(_small_net(8), "auto", cache=False)
    assert type(runner) is rt.Runner and "exporter broken" in caplog.text
    with pytest.raises(TrackerError, match="exporter broken"):  # asked for by name: no fallback
        rt.create_runner(_small_net(8), name, cache=False)


@pytest.mark.parametrize("name", EXPORTED)
def test_threads_follow_torchs_setting(name: str) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        runner = rt.create_runner(_small_net(SMALL), name)
        assert runner.threads == 2
        if name == "onnxruntime":
            assert runner._session.get_session_options().intra_op_num_threads == 2
        else:
            assert int(runner._compiled.get_property("INFERENCE_NUM_THREADS")) == 2
        assert rt.create_runner(_small_net(SMALL), name, threads=1).threads == 1
    finally:
        torch.set_num_threads(before)


def test_the_torch_runner_is_the_network_itself() -> None:
    net = _small_net(10)
    runner = rt.create_runner(net, "torch")
    inputs = rt.probe_inputs(net)
    with torch.no_grad():
        out = net(*inputs)
        got = runner(*inputs)
    assert all(torch.equal(got[0][g], out.params[g]) for g in out.params)
    assert torch.equal(got[1], out.rotation_6d) and torch.equal(got[2], out.translation)
    assert FaceTracker.__init__.__kwdefaults__["runtime"] == "torch"  # the library's own default: eager, nothing exported


# -- the app and the benchmark ---------------------------------------------------------------------
def test_app_option_reaches_the_tracker_options() -> None:
    parser = live.build_parser()
    assert live.tracker_options(parser.parse_args(["--video", "v.mp4"])).runtime == "auto"
    for name in rt.RUNTIMES:
        if name == "torch" or rt.installed(name):
            assert live.tracker_options(parser.parse_args(["--video", "v.mp4", "--runtime", name])).runtime == name
    with pytest.raises(SystemExit):
        parser.parse_args(["--video", "v.mp4", "--runtime", "tensorrt"])


@pytest.mark.shared
def test_app_refuses_a_cpu_runtime_on_cuda(shared_path: Path, capsys) -> None:
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    code = live.main(["--video", str(video), "--headless", "--device", "cuda", "--runtime", "onnxruntime", "--max-frames", "1", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert "runs the network on the CPU" in err
    else:
        assert "no CUDA GPU" in err


@pytest.mark.shared
@pytest.mark.parametrize("name", EXPORTED)
def test_app_tracks_with_the_runtime(name: str, shared_path: Path, untrained_checkpoint: Path, capsys) -> None:
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    code = live.main(["--video", str(video), "--headless", "--checkpoint", str(untrained_checkpoint), "--runtime", name, "--max-frames", "4", "--quiet"])
    assert code == 0 and "faces found in 4 frames (100.0%)" in capsys.readouterr().out


@pytest.mark.shared
def test_network_benchmark_prints_each_runtimes_ms(shared_path: Path, capsys) -> None:
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    bench_main(["network", "--video", str(video), "--frames", "3", "--rounds", "1", "--fresh"])
    out = capsys.readouterr().out
    ran = ["torch", *(name for name in ("onnxruntime", "openvino", "openvino-int8") if rt.installed(name))]
    for name in ran:
        assert re.search(rf"^{name}\s+[\d.]+ ms median\s+[\d.]+ ms p95\s+x[\d.]+ vs torch eager\s+max \|diff\| from torch ", out, re.M), out
    if "openvino-int8" in ran:
        assert re.search(r"^openvino-int8 x[\d.]+ vs openvino \(float32\)$", out, re.M), out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(" ".join(rf"{name.replace('-', '_')}_ms=[\d.]+" for name in ran), last), last
