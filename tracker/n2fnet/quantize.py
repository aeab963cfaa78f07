"""Release step: the int8 OpenVINO copy of a checkpoint's network (``--runtime openvino-int8``),
written beside the checkpoint and shipped with it.

    python -m tracker.n2fnet quantize assets/n2fnet_ict_resnet18.pt --calibration DATA_DIR [--samples 300]
    # -> assets/n2fnet_ict_resnet18.int8.xml + .int8.bin (``runtime.int8_path``)

The network is converted by OpenVINO as ``--runtime openvino`` converts it (float32), then
``nncf.quantize`` (post-training, OpenVINO backend) makes the convolutions of its ResNet body int8
(weights symmetric per channel, their inputs per tensor, ranges from ``--samples`` real cue maps)
with NNCF's full bias correction (``fast_bias_correction=False``). Everything else stays float32
(an ignored scope): the residual additions, the tokens' projection and position embedding, the two
transformer-layer heads and N2FNet's camera arithmetic. Measured against torch on real cue maps of
held-out videos (largest / median landmark difference in the 128-px crop): this 1.8 / 0.3 px;
the fast bias correction 4.2 / 1.0 px; the residual additions in int8 too 2.1 / 0.5 px (6 %
faster); the heads in int8 too up to 100 px (5-9 px with NNCF's transformer preset), for under
10 % of the time.

Calibration inputs come from a fine-tuning folder in the format of ``train/real_data.py`` (read
with ``tracker.files.cue_maps``, as the fine-tuning data is): ``normals/NAME.png`` (8- or 16-bit RGB =
(n + 1) / 2 * max), ``masks/NAME.png`` (non-zero = face), the intrinsics from
``cameras/NAME.json`` or ``camera.json`` ({focal, principal} in pixels of the stored maps; without
either, the probe camera: they enter the network after its last quantised layer). ``--samples``
of them, evenly spaced in name order. ``python -m train.pseudo_gt --split train --out DATA_DIR``
makes such a folder from the training side of the shared real faces.

The copy records in its rt_info (``runtime.int8_recorded``): the format (``runtime.INT8_FORMAT``),
the ``runtime.network_digest`` of the network it was made from (the runtime refuses it for any
other network), the sha256 of its .bin (``runtime.WEIGHTS_SHA256``: the runtime refuses a .bin
that does not match, before OpenVINO reads it), the source checkpoint, the calibration (folder,
samples, sha256 of the files used), the settings, the versions, and this command.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.files.atomic_write import staged
from tracker.files.cue_maps import read_cue_maps
from tracker.n2fnet import runtime as rt
from tracker.n2fnet.model import N2FNet

# kept float32 (OpenVINO node names): everything from the tokens on (their projection and position
# embedding, both heads, N2FNet's camera arithmetic); and, by type, every addition (the residual ones)
FLOAT = (r".*\.backbone\.project/.*", r".*\.backbone/.*", r".*\.(flame|camera)_module[./].*", r"__module\.net/.*")
SETTINGS = "nncf.quantize: performance preset, full bias correction; int8: the ResNet body's convolutions; float32: the rest"


def read_calibration(folder: str | Path, net: N2FNet, samples: int) -> tuple[list[list[np.ndarray]], str]:
    """``samples`` network inputs [normals (1, 3, S, S), focal (1, 2), principal (1, 2)[, mask (1, 1, S, S)]]
    from a fine-tuning folder (module docstring), and a description of them."""
    folder = Path(folder)
    stems = sorted(p.stem for p in (folder / "normals").glob("*.png"))
    if not stems or not (folder / "masks").is_dir():
        raise TrackerError(f"{folder}: no calibration data (a folder with normals/NAME.png and masks/NAME.png, the format of train/real_data.py)")
    picked = [stems[i] for i in np.unique(np.linspace(0, len(stems) - 1, min(samples, len(stems))).round().astype(int))]
    size = net.config.input_size
    sha = hashlib.sha256()
    inputs = []
    for stem in picked:
        normals_path, mask_path = folder / "normals" / f"{stem}.png", folder / "masks" / f"{stem}.png"
        normals, mask, scale = read_cue_maps(folder, stem, size)
        focal, principal = _camera(folder, stem, size, scale)
        item = [normals[None], focal[None], principal[None]] + ([mask[None, None]] if net.config.use_mask_input else [])
        inputs.append([np.ascontiguousarray(a, dtype=np.float32) for a in item])
        for path in (normals_path, mask_path):
            sha.update(stem.encode() + b"\0" + path.read_bytes())
    description = f"{len(picked)} of the {len(stems)} samples of {folder.name}/ (evenly spaced by name), sha256 of their normal maps and masks {sha.hexdigest()}"
    return inputs, description


def _camera(folder: Path, stem: str, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(2,) focal and principal point in input pixels."""
    for path in (folder / "cameras" / f"{stem}.json", folder / "camera.json"):
        if path.is_file():
            values = json.loads(path.read_text())
            return np.asarray(values["focal"], np.float32) * scale, np.asarray(values["principal"], np.float32) * scale
    return np.full(2, 2.5 * size, np.float32), np.full(2, size / 2, np.float32)  # probe_inputs' camera


def quantize(net: N2FNet, inputs: list[list[np.ndarray]]):
    """The int8 ``openvino.Model`` of ``net`` calibrated on ``inputs`` (``read_calibration``)."""
    import nncf

    model = rt.convert_openvino(net)
    return nncf.quantize(
        model,
        nncf.Dataset(inputs),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(inputs),
        fast_bias_correction=False,
        ignored_scope=nncf.IgnoredScope(patterns=list(FLOAT), types=["Add"]),
    )


def output_differences(model, net: N2FNet, inputs: list[list[np.ndarray]]) -> dict[str, float]:
    """Largest |int8 - torch| per output over ``inputs`` (params, rotation_6d, translation); inf
    where either gives a non-finite value."""
    import openvino

    request = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    worst = dict.fromkeys(("params", "rotation_6d", "translation"), 0.0)
    with torch.no_grad():
        for item in inputs:
            request.infer(item)
            want = rt._Exportable(net)(*(torch.from_numpy(a) for a in item))
            for index, (name, value) in enumerate(zip(worst, want)):
                difference = np.nan_to_num(np.abs(request.get_output_tensor(index).data - value.numpy()), nan=np.inf)
                worst[name] = max(worst[name], float(difference.max()))
    return worst


def int8_metadata(net: N2FNet, checkpoint: str | Path, calibration: str, command: str) -> dict[str, str]:
    """What the int8 copy of ``net`` records in its rt_info (module docstring): the format, the
    network's digest, the source checkpoint's name, the ``calibration`` (``read_calibration``'s
    description), the settings, the ``command`` that made it and the versions."""
    import nncf
    import openvino

    return {
        "format": rt.INT8_FORMAT,
        "digest": rt.network_digest(net),
        "source": Path(checkpoint).name,
        "calibration": calibration,
        "settings": SETTINGS,
        "command": command,
        "openvino": openvino.get_version().split("-")[0],
        "nncf": nncf.__version__,
        "torch": torch.__version__.split("+")[0],
    }


def write(model, out: Path, metadata: dict[str, str]) -> None:
    """Save ``model`` with ``metadata`` and the sha256 of its .bin in its rt_info (["n2f", key]) to
    ``out`` (.xml) and its .bin, atomically (the .bin first, the .xml renamed last); then read it
    back as the runtime does (TrackerError when the written .bin does not match)."""
    import openvino

    for key, value in metadata.items():
        model.set_rt_info(value, ["n2f", key])
    out.parent.mkdir(parents=True, exist_ok=True)
    rt.record_weights_sha256(model, out.parent)

    with staged(out, companions=(".bin",)) as temporary:
        openvino.save_model(model, str(temporary), compress_to_fp16=False)
    try:
        rt.read_openvino(out)
    except rt.DamagedCopy as why:
        raise TrackerError(f"the int8 copy written to {out} does not read back: {why}") from None
