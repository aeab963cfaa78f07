"""Checkpoints and weight files that are damaged, altered, inconsistent or unsafe give one clear
TrackerError, never other weights, a traceback, or code run from the file.

    damaged / altered   the zip archive's CRCs and the release checkpoint's content digest
    inconsistent        parameter groups that fit neither the weights nor the head model
    unsafe              objects other than tensors and plain values (N2FNet, backbone, Pixel3DMM files)
"""

from __future__ import annotations

import os
import shlex
import struct
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from tracker.errors import TrackerError
from tracker.face.cues import Pixel3DMMCue
from tracker.live.face_tracker import FaceTracker
from tracker.live.options import DEFAULT_CHECKPOINT, TrackerOptions
from tracker.n2fnet import N2FNet, N2FNetConfig
from tracker.n2fnet.backbone import read_state_dict
from tracker.n2fnet.checkpoint import (
    FORMAT,
    content_digest,
    export_release,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

SHIPPED = DEFAULT_CHECKPOINT


def _raw(path: Path = SHIPPED) -> dict:
    """The stored entries of a checkpoint as written (int8 tensors, digest), not as load_checkpoint returns them."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _largest_member(path: Path) -> zipfile.ZipInfo:
    """The archive member holding the largest tensor (the data of a weight matrix)."""
    with zipfile.ZipFile(path) as archive:
        return max(archive.infolist(), key=lambda info: info.file_size)


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored member's data: after its local header (30 bytes, name, extra field)."""
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        header = file.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


# --------------------------------------------------------------------------- damaged or altered


def test_the_shipped_checkpoint_carries_its_digest_and_loads() -> None:
    raw = _raw()
    assert raw["digest"] == content_digest(raw)
    state = load_checkpoint(SHIPPED)
    assert "digest" not in state and state["release"]["weights"] == "int8-per-channel"


def test_flipped_bytes_in_a_tensor_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "damaged.pt"
    data = bytearray(SHIPPED.read_bytes())
    member = _largest_member(SHIPPED)
    start = _data_offset(SHIPPED, member) + member.file_size // 2
    data[start : start + 4096] = bytes(b ^ 0xFF for b in data[start : start + 4096])  # 4 KB inside a weight tensor
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)  # torch itself reads it without a complaint
    with pytest.raises(TrackerError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and f"bad CRC in member {member.filename}" in message and "re-download" in message


def _forge(source: Path, out: Path, member: str, change) -> None:
    """Rewrite the archive with ``change(bytes) -> bytes`` applied to one member: CRCs recomputed, so consistent."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as forged:
        for info in archive.infolist():
            data = archive.read(info)
            forged.writestr(info, change(data) if info.filename == member else data)


def test_altered_tensor_bytes_with_consistent_crcs_are_caught_by_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "forged.pt"
    member = _largest_member(SHIPPED).filename
    _forge(SHIPPED, path, member, lambda data: bytes(b ^ 1 for b in data[:64]) + data[64:])  # 64 int8 weights off by one
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every CRC matches
    forged = _raw(path)
    assert forged.keys() == _raw().keys()  # torch reads it
    with pytest.raises(TrackerError, match="do not match their digest") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "re-export" in str(error.value)


def test_altered_settings_are_caught_by_the_digest(tmp_path: Path) -> None:
    raw = _raw()
    raw["sampler"]["alpha"] = 1.6  # a consistent torch file, but not what was exported
    torch.save(raw, tmp_path / "altered.pt")
    with pytest.raises(TrackerError, match="do not match their digest"):
        load_checkpoint(tmp_path / "altered.pt")


def test_a_checkpoint_without_digest_still_loads(tmp_path: Path) -> None:
    raw = _raw()
    raw.pop("digest", None)  # as training checkpoints are
    torch.save(raw, tmp_path / "plain.pt")
    assert load_checkpoint(tmp_path / "plain.pt")["model"].keys() == load_checkpoint(SHIPPED)["model"].keys()


def test_a_release_export_stores_its_digest(tmp_path: Path, untrained_checkpoint: Path) -> None:
    export_release(untrained_checkpoint, tmp_path / "release.pt")
    raw = _raw(tmp_path / "release.pt")
    assert raw["digest"] == content_digest(raw)


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cut.pt").write_bytes(SHIPPED.read_bytes()[: 5_000_000])
    with pytest.raises(TrackerError, match="damaged or not a checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")


# --------------------------------------------------------------------------- contents that do not fit their metadata


def _with_groups(tmp_path: Path, groups: dict[str, int]) -> Path:
    """The shipped checkpoint with other parameter groups in its network settings (no digest, as in training)."""
    raw = _raw()
    raw.pop("digest", None)
    raw["n2fnet"]["groups"] = groups
    path = tmp_path / "groups.pt"
    torch.save(raw, path)
    return path


def test_groups_that_do_not_fit_the_weights(tmp_path: Path) -> None:
    path = _with_groups(tmp_path, {"identity": 90, "expression": 50})  # within ICT's sizes, but the weights regress 153 values
    with pytest.raises(TrackerError, match=r"weights do not fit its network settings .*flame_module.mlp.2.weight is \(153, 256\), the settings need \(140, 256\)"):
        model_from_checkpoint(load_checkpoint(path))
    with pytest.raises(TrackerError, match="do not fit"):
        FaceTracker.from_options(TrackerOptions(checkpoint=path))


@pytest.mark.parametrize(
    ("groups", "refusal"),
    [({"identity": 100, "expressions": 53}, r"n2fnet\.groups\.expressions is an unknown key .*expected only expression, identity"),
     ({"identity": 90, "expression": 63}, r"n2fnet\.groups\.expression is 63; expected a whole number from 1 to 53")],
    ids=["name", "sizes"],
)
def test_groups_that_no_ict_head_model_has_are_refused_when_loaded(tmp_path: Path, groups: dict[str, int], refusal: str) -> None:
    path = _with_groups(tmp_path, groups)  # 153 values, as the weights
    with pytest.raises(TrackerError, match=refusal):
        load_checkpoint(path)


def test_groups_that_do_not_fit_the_loaded_head_model(tmp_path: Path, ict_npz_path: Path) -> None:
    net = N2FNet(N2FNetConfig(head_model="ict", groups={"identity": 4, "expression": 3}, input_size=64))  # a valid ICT network, not for these ICT files
    path = tmp_path / "small.pt"
    save_checkpoint(path, {"model": net.state_dict(), "n2fnet": net.config.to_dict(), "head_model": {"name": "ict", "path": None}})
    with pytest.raises(TrackerError, match=r"regresses parameter groups .* that the loaded ict head model does not have .*'expression': 53"):
        FaceTracker.from_options(TrackerOptions(checkpoint=path, ict_model=ict_npz_path))


# --------------------------------------------------------------------------- unsafe files


class Custom:
    """A class of this test module: not a tensor or plain value."""


class Payload:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _assert_own_refusal(message: str, path: Path) -> None:
    # never PyTorch's tips to switch the safety off or allowlist the file's classes
    assert "weights_only=False" not in message and "set to `False`" not in message and "add_safe_globals" not in message
    assert str(path) in message and "objects other than tensors and plain values" in message


def test_an_n2fnet_checkpoint_with_a_custom_object_is_refused_in_our_words(tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save({"format": FORMAT, "model": {}, "extra": Custom()}, path)
    with pytest.raises(TrackerError) as error:
        load_checkpoint(path)
    _assert_own_refusal(str(error.value), path)
    assert "tests.n2fnet.test_checkpoint_integrity.Custom" in str(error.value) and "Re-export" in str(error.value)


def test_backbone_weights_with_a_custom_object_are_refused_in_our_words(tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Custom()}, path)
    with pytest.raises(TrackerError) as error:
        read_state_dict(path)
    _assert_own_refusal(str(error.value), path)


class FakeNetwork(torch.nn.Module):
    """Stands in for Pixel3DMM's normal network: (1, 1, n, n, 3) RGB -> {"normals": (1, 1, 3, n, n)}."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 1)

    def forward(self, batch: dict):
        return {"normals": self.conv(batch["tar_rgb"][:, 0].permute(0, 3, 1, 2))[:, None]}, None


class FakeSystem(torch.nn.Module):
    """Stands in for ``pixel3dmm.lightning.p3dmm_system.system``: built from its hyper-parameters (``cfg``)."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.net = FakeNetwork(cfg["channels"])

    @classmethod
    def load_from_checkpoint(cls, path, strict=True, map_location=None, weights_only=False):
        """What Lightning's loader does with weights_only=False: it runs whatever the file names."""
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
        model = cls(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"], strict=strict)
        return model


@pytest.fixture
def fake_pixel3dmm(monkeypatch) -> None:
    for name in ("pixel3dmm", "pixel3dmm.lightning", "pixel3dmm.lightning.p3dmm_system"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["pixel3dmm.lightning.p3dmm_system"].system = FakeSystem


def _pixel3dmm_checkpoint(path: Path, cfg) -> dict[str, torch.Tensor]:
    """A Lightning-style checkpoint of FakeSystem at ``path``; returns its weights."""
    weights = {f"net.{k}": torch.randn_like(v) for k, v in FakeNetwork(3).state_dict().items()}
    torch.save({"state_dict": weights, "hyper_parameters": {"cfg": cfg}, "epoch": 3, "pytorch-lightning_version": "2.4.0"}, path)
    return weights


def test_pixel3dmm_weights_are_loaded_without_lightnings_unsafe_loader(tmp_path: Path, fake_pixel3dmm, monkeypatch) -> None:
    path = tmp_path / "normals.ckpt"
    weights = _pixel3dmm_checkpoint(path, {"channels": 3})
    monkeypatch.setattr(FakeSystem, "load_from_checkpoint", None)  # never used
    with Pixel3DMMCue(path, device="cpu") as cue:
        assert isinstance(cue.net, FakeNetwork) and not cue.net.training
        assert all(torch.equal(cue.net.state_dict()[k.removeprefix("net.")], v) for k, v in weights.items())


def test_pixel3dmm_config_of_omegaconf_is_read(tmp_path: Path, fake_pixel3dmm) -> None:
    omegaconf = pytest.importorskip("omegaconf", reason="omegaconf (a Pixel3DMM dependency) is not installed")
    path = tmp_path / "normals.ckpt"
    weights = _pixel3dmm_checkpoint(path, omegaconf.OmegaConf.create({"channels": 3, "model": {"n_groups": [16], "prediction_type": "normals"}}))
    with Pixel3DMMCue(path, device="cpu") as cue:
        assert torch.equal(cue.net.conv.weight, weights["net.conv.weight"])


def test_a_malicious_pixel3dmm_checkpoint_is_refused_and_never_run(tmp_path: Path, fake_pixel3dmm) -> None:
    path, marker = tmp_path / "normals.ckpt", tmp_path / "payload-ran"
    _pixel3dmm_checkpoint(path, Payload(marker))
    with pytest.raises(TrackerError) as error:
        Pixel3DMMCue(path, device="cpu")
    assert not marker.exists()
    _assert_own_refusal(str(error.value), path)
    assert "posix.system" in str(error.value) or "os.system" in str(error.value)
