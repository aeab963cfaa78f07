"""Hostile or broken inputs around the network never reach the sinks as faces, and never cost
memory before they are refused.

    weights beside the checkpoint   the int8 copy's .bin and the cached exports (OpenVINO .xml/.bin,
                                    ONNX) are checked against the sha256 they record before a
                                    runtime reads them: a tampered one is refused (int8) or made
                                    again (cache), never run; --runtime auto goes on to float32
    non-finite outputs              a face whose network or refined outputs are not finite is a
                                    frame error: left out of the result, counted, warned about
                                    (rate-limited), never recorded as a face
    forged checkpoint metadata      one schema, checked when the checkpoint is loaded, before
                                    anything is built: a TrackerError naming the key and what it
                                    must be, one ``error:`` line from the app, no allocation

New names (FrameErrorLog, validate_checkpoint, rt.WEIGHTS_SHA256) are imported inside the tests,
so each test can be run on its own against older code.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

from app import live
from tracker.errors import TrackerError
from tracker.files.paths import PROJECT_ROOT
from tracker.live.face_tracker import FaceTracker
from tracker.live.options import DEFAULT_CHECKPOINT, TrackerOptions
from tracker.live.pipeline import Pipeline
from tracker.live.results import TrackingResult
from tracker.live.sinks import RecordingSink
from tracker.live.sources import Frame, open_source
from tracker.n2fnet import N2FNet, N2FNetConfig
from tracker.n2fnet import runtime as rt
from tracker.n2fnet.checkpoint import (
    content_digest,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from tracker.takes.recording import read_take

SHIPPED_INT8 = rt.int8_path(DEFAULT_CHECKPOINT)
EXPORTED = [pytest.param(name, marks=pytest.mark.skipif(not rt.installed(name), reason=f"{name} not installed ({rt.INSTALL[name]})")) for name in ("onnxruntime", "openvino")]
needs_openvino = pytest.mark.skipif(not rt.installed("openvino"), reason=f"openvino not installed ({rt.INSTALL['openvino']})")


@pytest.fixture(scope="module")
def video(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos" / "single_face.mp4"


def _f32_constants(xml: Path) -> list[tuple[str, int, int]]:
    """(name, offset, bytes) in the .bin of every float32 constant of an OpenVINO .xml, largest first."""
    found = []
    for layer in ElementTree.parse(xml).getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") == "Const" and data is not None and data.get("element_type") == "f32":
            found.append((layer.get("name"), int(data.get("offset")), int(data.get("size"))))
    return sorted(found, key=lambda c: -c[2])


def _nan_into(weights: Path, offset: int, size: int) -> None:
    data = bytearray(weights.read_bytes())
    data[offset : offset + size] = np.full(size // 4, np.nan, np.float32).tobytes()
    weights.write_bytes(bytes(data))


# -- 1. the weights beside the checkpoint ------------------------------------------------------------
@pytest.fixture
def tampered_copy(tmp_path: Path) -> Path:
    """The shipped checkpoint beside its int8 copy whose .bin has NaN for the tokens' projection
    weights (float32 in the copy): every output of the network NaN. Returns the checkpoint."""
    checkpoint = tmp_path / DEFAULT_CHECKPOINT.name
    shutil.copy(DEFAULT_CHECKPOINT, checkpoint)
    shutil.copy(SHIPPED_INT8, rt.int8_path(checkpoint))
    weights = rt.int8_path(checkpoint).with_suffix(".bin")
    shutil.copy(SHIPPED_INT8.with_suffix(".bin"), weights)
    _, offset, size = next(c for c in _f32_constants(SHIPPED_INT8) if c[0] == "self.net.backbone.project.weight")
    _nan_into(weights, offset, size)
    return checkpoint


@pytest.fixture(scope="module")
def shipped_net() -> N2FNet:
    return model_from_checkpoint(load_checkpoint(DEFAULT_CHECKPOINT))


@needs_openvino
def test_the_shipped_int8_copy_records_the_sha256_of_its_weights(shipped_net: N2FNet) -> None:
    recorded = rt.int8_recorded(SHIPPED_INT8)
    assert recorded.get("weights_sha256") == hashlib.sha256(SHIPPED_INT8.with_suffix(".bin").read_bytes()).hexdigest()
    runner = rt.create_runner(shipped_net, "openvino-int8", threads=1)
    params, rotation_6d, translation = runner(*rt.probe_inputs(shipped_net))
    assert all(bool(torch.isfinite(t).all()) for t in (*params.values(), rotation_6d, translation))


@needs_openvino
def test_a_tampered_int8_bin_is_refused_by_name_and_skipped_by_auto(tampered_copy: Path, shipped_net: N2FNet, caplog) -> None:
    with pytest.raises(TrackerError, match=r"int8 copy .* is refused: its weights n2fnet_ict_resnet18\.int8\.bin do not match the sha256 its \.xml records .*python -m tracker\.n2fnet quantize"):
        rt.create_runner(shipped_net, "openvino-int8", checkpoint=tampered_copy, threads=1)
    runner = rt.create_runner(shipped_net, "auto", checkpoint=tampered_copy, threads=1, cache=False)
    assert runner.name == "openvino"
    assert any(r.levelno == logging.WARNING and "openvino-int8 unavailable" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


@needs_openvino
def test_an_int8_copy_giving_nan_is_refused_even_when_its_sha256_matches(tampered_copy: Path, shipped_net: N2FNet) -> None:
    """A badly made copy (or one whose .xml was rewritten to match): its outputs on the probe are checked."""
    xml = rt.int8_path(tampered_copy)
    sha = hashlib.sha256(xml.with_suffix(".bin").read_bytes()).hexdigest()
    text = xml.read_text()
    recorded = rt.int8_recorded(SHIPPED_INT8)["weights_sha256"]
    xml.write_text(text.replace(recorded, sha))
    with pytest.raises(TrackerError, match=r"gives non-finite outputs on the probe input .*remake it with python -m tracker\.n2fnet quantize"):
        rt.create_runner(shipped_net, "openvino-int8", checkpoint=tampered_copy, threads=1)


@pytest.mark.shared
@needs_openvino
def test_the_app_refuses_a_tampered_int8_copy_asked_for_and_auto_runs_float32(tampered_copy: Path, video: Path, capsys, caplog) -> None:
    command = ["--video", str(video), "--headless", "--checkpoint", str(tampered_copy), "--max-frames", "3", "--quiet"]
    assert live.main([*command, "--runtime", "openvino-int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "do not match the sha256" in err and "Traceback" not in err
    assert live.main(command) == 0  # auto
    assert "faces found in 3 frames (100.0%)" in capsys.readouterr().out
    assert any(r.levelno == logging.WARNING and "openvino-int8 unavailable" in r.getMessage() for r in caplog.records)


def _small_net(seed: int) -> N2FNet:
    torch.manual_seed(seed)
    net = N2FNet(N2FNetConfig(head_model="ict", groups={"identity": 4, "expression": 3}, input_size=64))
    with torch.no_grad():  # the zero-initialised last layers would make every output the offset
        for module in (net.flame_module, net.camera_module):
            module.mlp[-1].weight.normal_(0, 0.01)
    return net.eval()


def _alter_weight(runner: rt.Runner, change: str) -> None:
    """Change the first value of the largest float32 weight of ``runner``'s cached file in place:
    "tiny" (the next float32 up: too small for the probe's parity check to see) or "nan"."""
    if runner.name == "openvino":
        weights = runner.path.with_suffix(".bin")
        _, offset, _ = _f32_constants(runner.path)[0]
    else:
        import onnx

        weights = runner.path
        initializer = max(onnx.load(str(weights)).graph.initializer, key=lambda t: len(t.raw_data))
        offset = weights.read_bytes().find(initializer.raw_data)
    data = bytearray(weights.read_bytes())
    value = np.frombuffer(bytes(data[offset : offset + 4]), np.float32)[0]
    data[offset : offset + 4] = (np.float32(np.nan) if change == "nan" else np.nextafter(value, np.float32(np.inf))).tobytes()
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("change", ["tiny", "nan"])
@pytest.mark.parametrize("name", EXPORTED)
def test_a_tampered_cached_export_is_made_again_not_run(name: str, change: str, tmp_path: Path, caplog) -> None:
    net = _small_net(21)
    first = rt.create_runner(net, name, cache=tmp_path)
    assert first.origin == "exported"
    _alter_weight(first, change)
    runner = rt.create_runner(net, name, cache=tmp_path)
    assert runner.origin == "exported" and "stale or damaged" in caplog.text and "sha256" in caplog.text
    inputs = rt.probe_inputs(net, faces=3)
    got, want = runner(*inputs), rt.Runner(net)(*inputs)
    assert all(torch.allclose(got[0][g], want[0][g], atol=1e-4) for g in want[0]) and torch.allclose(got[2], want[2], atol=1e-4)
    assert rt.create_runner(net, name, cache=tmp_path).origin == "cached"  # the export made again reads back


@pytest.mark.parametrize("name", EXPORTED)
def test_an_export_giving_nan_fails_the_parity_check(name: str, tmp_path: Path, monkeypatch) -> None:
    """NaN compares false with any bound: the parity check must not read it as a small difference."""
    net = _small_net(22)
    rt.create_runner(net, name, cache=tmp_path)
    real_run = rt.RUNNERS[name]._run

    def nan(self, arrays):
        params, rotation_6d, translation = real_run(self, arrays)
        return params, rotation_6d, translation * np.nan

    monkeypatch.setattr(rt.RUNNERS[name], "_run", nan)
    with pytest.raises(TrackerError, match=r"other outputs than PyTorch \(max difference inf"):
        rt.create_runner(net, name, cache=tmp_path)


# -- 2. non-finite outputs are frame errors ----------------------------------------------------------
@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, untrained_checkpoint: Path) -> Path:
    """The untrained network with one weight NaN: its second expression coefficient is NaN, the
    rest of its outputs finite."""
    state = load_checkpoint(untrained_checkpoint)
    state["model"]["flame_module.mlp.2.bias"][101] = math.nan  # identity 0-99, expression 100-152
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    save_checkpoint(path, state)
    return path


def _track(checkpoint: Path, video: Path, take: Path, frames: int, ict_npz_path: Path, identity: np.ndarray | None = None):
    """Run ``checkpoint`` through the real Pipeline on ``frames`` frames of ``video``, recording to
    ``take`` (``identity``: every track's, fixed, as a take's would be: one no take can hold, since
    ``take_identity`` refuses a non-finite one); returns (every TrackingResult, the pipeline's StatsSnapshot)."""
    from tracker.live import face_tracker as tracker_module

    with pytest.MonkeyPatch.context() as patch:
        if identity is not None:
            patch.setattr(tracker_module, "take_identity", lambda *args: identity)
        options = TrackerOptions(checkpoint=checkpoint, ict_model=ict_npz_path, runtime="torch", identity_take=None if identity is None else "given.npz")
        tracker = FaceTracker.from_options(options)
    results: list[TrackingResult] = []
    try:
        recording = RecordingSink(take, tracker.head, source=video.name)
        stats = Pipeline(open_source(video), tracker, [recording, results.append], max_frames=frames).run()
    finally:
        tracker.close()
    return results, stats


@pytest.mark.shared
def test_a_network_giving_nan_is_a_frame_error_never_a_face(nan_checkpoint: Path, untrained_checkpoint: Path, video: Path, tmp_path: Path, ict_npz_path: Path, caplog) -> None:
    results, stats = _track(untrained_checkpoint, video, tmp_path / "clean.npz", 2, ict_npz_path)
    assert all(r.faces and not r.errors for r in results)  # the frames have a face: the network's finite outputs make one
    results, stats = _track(nan_checkpoint, video, tmp_path / "nan.npz", 4, ict_npz_path)
    assert len(results) == 4
    for result in results:
        assert result.faces == [] and result.errors == ["track 0: the network's outputs are not finite (params.expression)"]
    assert stats.frames_out == 4 and stats.faces_found == 0 and stats.frame_errors == 4
    take = read_take(tmp_path / "nan.npz")
    assert take.complete and len(take) == 4 and not take.face_found.any()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not finite" in r.getMessage()]
    assert warnings and warnings[0].startswith("frame 0: track 0: the network's outputs are not finite (params.expression)")  # and not a line per frame: test_frame_error_warnings_are_rate_limited


@pytest.mark.shared
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_a_refinement_that_gives_non_finite_parameters_is_a_frame_error(untrained_checkpoint: Path, video: Path, tmp_path: Path, ict_npz_path: Path) -> None:
    """A given identity far outside the model (finite, 1e200) makes the fit overflow."""
    results, stats = _track(untrained_checkpoint, video, tmp_path / "take.npz", 3, ict_npz_path, identity=np.full(100, 1e200))
    for result in results:
        assert result.faces == [] and len(result.errors) == 1
        assert result.errors[0].startswith("track 0: the refinement's result is not finite (params.identity")
    assert stats.faces_found == 0 and stats.frame_errors == 3
    assert not read_take(tmp_path / "take.npz").face_found.any()


def test_frame_error_warnings_are_rate_limited(caplog) -> None:
    from tracker.live.pipeline import FrameErrorLog, PipelineStats

    now = [0.0]
    errors = FrameErrorLog(interval=5.0, clock=lambda: now[0])
    stats = PipelineStats()
    image = np.zeros((4, 4, 3), np.uint8)
    for index in range(330):  # 11 s at 30 fps; the last 30 frames clean
        now[0] = index / 30
        result = TrackingResult(Frame(image, index, now[0], None), [], np.ones(2), np.zeros(2), {}, errors=["track 0: broken"] if index < 300 else [])
        stats.add(result, now[0])
        errors(result)
    errors.flush()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 3, lines
    assert lines[0].startswith("frame 0: track 0: broken")
    assert lines[1].startswith("150 more frame(s) with errors in 5 s, the last frame 150: track 0: broken")
    assert lines[2].startswith("149 more frame(s) with errors in 6 s, the last frame 299: track 0: broken")
    assert stats.snapshot().frame_errors == 300 and stats.snapshot().frames_out == 330


# -- 3. forged checkpoint metadata -------------------------------------------------------------------
def _forge(path: Path, change) -> Path:
    """The shipped checkpoint as stored, ``change(raw)`` applied, its digest made to match again
    (a digest proves integrity, not origin: anyone can compute it)."""
    raw = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    change(raw)
    raw["digest"] = content_digest(raw)
    torch.save(raw, path)
    return path


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(raw: dict) -> None:
        target = raw
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _drop(*keys):
    def change(raw: dict) -> None:
        for key in keys:
            raw.pop(key)

    return change


def _bad_scale(raw: dict) -> None:
    name = next(iter(raw["model_scale"]))
    raw["model_scale"][name] = raw["model_scale"][name].reshape(-1)  # (out,), not (out, 1, ...)


FORGED = {
    "extra key": (_set("n2fnet", "evil", 1), r"n2fnet\.evil is an unknown key .*expected only backbone, camera_anchor"),
    "extra entry": (_set("payload", [1, 2]), r"payload is an unknown key"),
    "heads 0": (_set("n2fnet", "heads", 0), r"n2fnet\.heads is 0; expected a whole number from 1 to 64"),
    "heads not a divisor": (_set("n2fnet", "heads", 7), r"n2fnet\.heads is 7, expected a divisor of the resnet18 token width 256"),
    "no model": (_drop("model", "model_int8", "model_scale"), r"model is missing; expected a value"),
    "no groups": (lambda raw: raw["n2fnet"].pop("groups"), r"n2fnet\.groups is missing"),
    "unknown head model": (_set("n2fnet", "head_model", "bfm"), r"n2fnet\.head_model is 'bfm'; expected one of 'flame', 'ict'"),
    "sampler text": (_set("sampler", "alpha", "wide"), r"sampler\.alpha is 'wide'; expected a finite number from 0\.1 to 10"),
    "sampler nan": (_set("sampler", "focal_mean", math.nan), r"sampler\.focal_mean is nan; expected a finite number"),
    "sampler key": (_set("sampler", "evil", 1.0), r"sampler\.evil is an unknown key"),
    "group text": (_set("n2fnet", "groups", "expression", "53"), r"n2fnet\.groups\.expression is '53'; expected a whole number from 1 to 53"),
    "group 2e7": (_set("n2fnet", "groups", "expression", 20_000_000), r"n2fnet\.groups\.expression is 20000000; expected a whole number from 1 to 53"),
    "group of another model": (_set("n2fnet", "groups", "shape", 100), r"n2fnet\.groups\.shape is an unknown key .*expected only expression, identity"),
    "anchor": (_set("n2fnet", "camera_anchor", (0.0, 0.1)), r"n2fnet\.camera_anchor is \(0\.0, 0\.1\); expected 3 numbers from -1 to 1"),
    "backbone": (_set("n2fnet", "backbone", "resnet9000"), r"n2fnet\.backbone is 'resnet9000'; expected a timm model name"),
    "head name": (_set("head_model", "name", "flame"), r"head_model\.name is 'flame'; expected the head model the network regresses"),
    "settings not a dict": (_set("n2fnet", [1]), r"n2fnet is a list; expected a dict"),
    "int8 scale": (_bad_scale, r"model_scale\.\S+ is a torch\.float32 tensor of shape \(\d+,\); expected a float32 tensor of shape \(\d+, 1"),
    "train value": (_set("train", "sampler", "alpha", None), r"train\.sampler\.alpha is None; expected a finite number"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_metadata_is_refused_naming_the_key(case: str, tmp_path: Path) -> None:
    change, refusal = FORGED[case]
    path = _forge(tmp_path / "forged.pt", change)
    with pytest.raises(TrackerError, match=refusal):
        model_from_checkpoint(load_checkpoint(path))


@pytest.mark.shared
@pytest.mark.parametrize("case", ["extra key", "heads 0", "no model", "unknown head model", "sampler text"])
def test_the_app_refuses_forged_metadata_with_one_error_line(case: str, video: Path, tmp_path: Path, capsys) -> None:
    change, refusal = FORGED[case]
    path = _forge(tmp_path / "forged.pt", change)
    assert live.main(["--video", str(video), "--headless", "--checkpoint", str(path), "--max-frames", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err, err
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert re.search(refusal, line), line


_PEAK = r"""
import resource, subprocess, sys
limit = 4 << 30  # address space: an attempt at the 20 GB the forged sizes ask for fails at once
run = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
print(run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.stdout.write(run.stdout + run.stderr)
"""


def _peak(command: list[str]) -> tuple[int, int, str]:
    """(exit status, peak resident bytes, output) of ``command`` run in a child with at most 4 GB of address space."""
    out = subprocess.run([sys.executable, "-c", _PEAK, *command], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True).stdout
    first, _, rest = out.partition("\n")
    code, peak = (int(v) for v in first.split())
    return code, peak, rest


@pytest.mark.shared
def test_a_forged_group_size_fails_fast_without_allocating(video: Path, tmp_path: Path) -> None:
    path = _forge(tmp_path / "huge.pt", FORGED["group 2e7"][0])  # 2e7 x 256 float32 = 20 GB for one layer, before the fix
    code, peak, output = _peak([sys.executable, "-m", "app.live", "--video", str(video), "--headless", "--checkpoint", str(path), "--max-frames", "2"])
    assert code == 2 and output.count("error:") == 1 and "Traceback" not in output, output
    assert "n2fnet.groups.expression is 20000000" in output
    assert peak < 2 << 30, f"peak resident memory {peak / 2**30:.1f} GB"


def test_a_backbone_the_weights_do_not_fit_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """A real timm model name, but 1.1 billion parameters (4.4 GB) that the ResNet-18 weights do not fit."""
    path = _forge(tmp_path / "giant.pt", _set("n2fnet", "backbone", "vit_giant_patch14_dinov2"))
    code = f"from tracker.n2fnet.checkpoint import *\ntry:\n    model_from_checkpoint(load_checkpoint({str(path)!r}))\nexcept Exception as e:\n    print(type(e).__name__, e)"
    status, peak, output = _peak([sys.executable, "-c", code])
    assert status == 0 and output.startswith("TrackerError the checkpoint's weights do not fit its network settings"), output
    assert peak < 2 << 30, f"peak resident memory {peak / 2**30:.1f} GB"


def test_the_schema_holds_the_settings_of_the_code_that_writes_them() -> None:
    """SYNC: a setting added to N2FNetConfig or to the training code's SamplerConfig / TrainConfig
    needs its entry in tracker.n2fnet.checkpoint's schema (else checkpoints with it are refused)."""
    from tracker.n2fnet import checkpoint
    from train.config import SamplerConfig, TrainConfig

    assert set(checkpoint.NETWORK) | {"groups", "backbone"} == {f.name for f in fields(N2FNetConfig)}
    assert set(checkpoint.SAMPLER) == {f.name for f in fields(SamplerConfig)}
    assert set(checkpoint.TRAIN_KEYS) == {f.name for f in fields(TrainConfig)}
    checkpoint.validate_checkpoint({"format": checkpoint.FORMAT, "model": {}, "n2fnet": {"head_model": "ict", "groups": {"expression": 53}},
                                   "sampler": SamplerConfig().to_dict(), "train": TrainConfig().to_dict()})


def test_group_bounds_are_the_head_models_sizes(ict_npz_path: Path) -> None:
    from tracker.head_models import load_head_model
    from tracker.head_models.flame import _param_groups
    from tracker.n2fnet.model import GROUP_SIZES

    ict = load_head_model("ict", ict_npz_path).param_groups
    assert {g: high for g, (_, high) in GROUP_SIZES["ict"].items()} == {"identity": ict["identity"].size, "expression": ict["expression"].size}
    flame = _param_groups(300, 100, eyelids=True)  # FLAME 2020 / 2023's full spaces
    assert {g: high for g, (_, high) in GROUP_SIZES["flame"].items()} == {g: flame[g].size for g in GROUP_SIZES["flame"]}
