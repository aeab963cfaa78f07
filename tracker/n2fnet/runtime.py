"""Where N2FNet runs on the CPU: PyTorch eager, ONNX Runtime, OpenVINO, or OpenVINO's int8 copy
(the first three give the same outputs, to a few 1e-6 on real cue maps; the exported two are about
twice as fast, the int8 copy about 2.8 times faster than those, at int8's accuracy).

    runner = create_runner(net, "onnxruntime", threads=1)
    params, rotation_6d, translation = runner(normals, focal, principal, mask)

``torch``          ``net`` itself, eager. The only runtime on CUDA, and the fallback everywhere.
``onnxruntime``    the network exported to ONNX (``torch.onnx.export``, which needs the ``onnx``
                   package; ONNX Runtime itself does not), run by an ``InferenceSession``.
``openvino``       the network converted by OpenVINO straight from the torch module (nothing more
                   needed), compiled for the CPU in float32.
``openvino-int8``  the int8 copy shipped beside the checkpoint (``int8_path``: NAME.int8.xml /
                   .bin beside NAME.pt), made at release time by ``python -m tracker.n2fnet quantize``
                   (the ResNet body's convolutions in int8, calibrated on real cue maps; the rest,
                   both heads among it, in float32). It
                   records the digest of the network it was made from and the sha256 of its .bin;
                   a copy of another network, one whose .bin does not match (damaged, altered) or
                   that gives non-finite outputs on the probe input is refused (TrackerError saying
                   the command that remakes it), never run.

The float32 copies are not shipped (about 52 MB each): the exported network is made at first use
(about a second for ONNX, a few seconds for OpenVINO) into ``tracker.files.paths.cache_dir()/networks/`` (``~/.cache/n2f-tracker``),
named by the network's digest: the sha256 of its settings and of the weights as they are loaded
(``network_digest``; a release checkpoint's int8 weights after dequantisation, a training
checkpoint's as they are), so any checkpoint, released or one's own, gets its own copy, and a
changed checkpoint can never meet an old export. Each exported file records that digest, the
export recipe and a sha256 of its own bytes (OpenVINO: of the .bin, in the .xml's rt_info; ONNX: of
the file, in a metadata entry appended at its end), checked before the runtime reads the file; a
file that does not record the expected ones, whose bytes do not match their sha256 (damaged or
altered), that cannot be read, or whose outputs on a fixed probe input differ from torch's by more
than ``PARITY_TOLERANCE`` (a non-finite output differs by infinity) is made again. A fresh export
that still differs is refused (TrackerError).

Threads: each runtime runs with ``threads`` intra-op threads (default: torch's current setting,
which the live app's ``--threads`` sets; 1 there), since MediaPipe and the rest share the cores.

"auto" (``default_runtime``): torch on CUDA; on the CPU the first installed of ``PREFERENCE``
(fastest first, as ``python -m tracker.bench network`` measured on this project's CPU); under
"auto" a runtime that fails to set up is skipped with a warning (a network without an int8 copy
of its own: quietly), down to torch. A runtime asked for by name is used or refused
(TrackerError), and the CPU runtimes are refused on CUDA.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import tempfile
import threading
import time
import warnings
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import torch
from torch import nn

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write, staged
from tracker.files.paths import PROJECT_ROOT, cache_dir
from tracker.n2fnet import PREFERENCE, RUNTIMES
from tracker.n2fnet.checkpoint import DeferredNetwork, built, content_digest
from tracker.n2fnet.model import N2FNet

log = logging.getLogger(__name__)

# what each runtime needs beyond the project's own dependencies, and the command that installs it
PACKAGES = {"torch": (), "onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino",), "openvino-int8": ("openvino",)}
INSTALL = {
    "onnxruntime": "pip install onnxruntime==1.32.0 onnx==1.17.0",
    "openvino": "pip install openvino==2026.4.1",
    "openvino-int8": "pip install openvino==2026.4.1",
}
EXPORT_FORMAT = "n2fnet-export-v1"  # bump when the exported graph's inputs / outputs change
INT8_FORMAT = "n2fnet-int8-v1"  # what tracker.n2fnet.quantize writes; bump when the int8 copy's inputs / outputs change
SHIPPED_CHECKPOINT = PROJECT_ROOT / "assets" / "n2fnet_ict_resnet18.pt"
ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |runtime - torch| on the probe input (absolute, every output)
WEIGHTS_SHA256 = "weights_sha256"  # rt_info ["n2f", ...] of an OpenVINO copy: sha256 (hex) of its .bin
FILE_SHA256 = "n2f_file_sha256"  # the metadata entry at the end of an exported ONNX file: sha256 (hex) of the bytes before it

Outputs = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]


# -- choosing a runtime ---------------------------------------------------------------------------
def installed(runtime: str) -> bool:
    """Whether the packages ``runtime`` needs can be imported (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in PACKAGES[runtime])


def available_runtimes() -> tuple[str, ...]:
    """The runtimes installed here, in RUNTIMES order."""
    return tuple(name for name in RUNTIMES if installed(name))


def check_device(device: str, allow_auto: bool = False) -> torch.device:
    """``device`` ("cpu", "cuda", "cuda:N"; with ``allow_auto`` also "auto": CUDA when usable, else the
    CPU) as a torch.device this machine has; TrackerError otherwise."""
    if allow_auto and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise TrackerError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise TrackerError(f"the tracker runs on cpu or cuda, not {device!r}: use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"a build for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise TrackerError(
                f"--device {device}: no CUDA GPU is usable on this machine (PyTorch {torch.__version__} is {build}; "
                "no NVIDIA driver or GPU answered). Run with --device cpu, or check the driver with nvidia-smi"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise TrackerError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return parsed


def check_runtime(runtime: str | None, device: str | torch.device = "cpu") -> str:
    """``runtime`` ("auto"/None, or one of RUNTIMES) checked for ``device``: the name itself, "auto"
    for None; TrackerError for an unknown name, one that is not installed (with the pip command),
    or a CPU runtime asked for on CUDA."""
    runtime = "auto" if runtime is None else str(runtime)
    if runtime != "auto" and runtime not in RUNTIMES:
        raise TrackerError(f"unknown network runtime {runtime!r}: use auto, {', '.join(RUNTIMES)}")
    device = torch.device(device)
    if device.type == "cuda" and runtime not in ("auto", "torch"):
        raise TrackerError(
            f"--runtime {runtime} runs the network on the CPU, but --device {device} asks for the GPU, where the network runs on "
            "PyTorch: leave out --runtime (or pass --runtime torch) to run on the GPU, or pass --device cpu to use " + runtime
        )
    if runtime not in ("auto", "torch") and not installed(runtime):
        missing = [name for name in PACKAGES[runtime] if importlib.util.find_spec(name) is None]
        raise TrackerError(
            f"--runtime {runtime} needs the package(s) {', '.join(missing)}, not installed here: {INSTALL[runtime]} "
            f"(or use --runtime torch; installed: {', '.join(available_runtimes())})"
        )
    return runtime


def default_runtime(device: str | torch.device = "cpu") -> str:
    """torch on CUDA; else the first installed runtime of PREFERENCE."""
    if torch.device(device).type == "cuda":
        return "torch"
    return next(name for name in PREFERENCE if installed(name))


# -- the runners ----------------------------------------------------------------------------------
def output_difference(got: Outputs, want: Outputs) -> float:
    """max |got - want| over the parameter groups of ``want``, the rotation 6D and the translation;
    infinite where either gives a non-finite value (NaN never passes a bound)."""
    pairs = [(got[0][g], want[0][g]) for g in want[0]] + [(got[1], want[1]), (got[2], want[2])]
    return max(float(torch.nan_to_num((a - b.float()).abs(), nan=math.inf).max()) for a, b in pairs)


class Runner:
    """Calls the network: ``runner(normals (F,3,S,S), focal (F,2), principal (F,2), mask (F,1,S,S))``
    -> (params {group: (F, n)}, rotation_6d (F, 6), translation (F, 3)).

    name     the runtime; threads  its intra-op threads (None: torch's own setting)
    origin   how the network got here: "eager", "exported" (now, into the cache), "cached", "in memory"
    setup_s  seconds spent exporting / converting (0 for a cached or eager network); load_s loading it
    """

    name = "torch"

    def __init__(self, net: N2FNet) -> None:
        self.net = net
        self.groups = dict(net.config.groups)
        self.use_mask = bool(net.config.use_mask_input)
        self.threads: int | None = None
        self.origin, self.setup_s, self.load_s, self.path = "eager", 0.0, 0.0, None

    @torch.no_grad()
    def __call__(self, normals, focal, principal, mask=None) -> Outputs:
        out = self.net(normals, focal, principal, mask if self.use_mask else None)
        return out.params, out.rotation_6d, out.translation

    def describe(self) -> str:
        threads = self.threads
        if threads is None and next(self.net.parameters()).device.type == "cpu":
            threads = torch.get_num_threads()
        threads = f", {threads} thread(s)" if threads is not None else ""
        where = f" {self.path}" if self.path else ""
        return f"{self.name} ({self.origin}{where}{threads})"

    def _split(self, flat: np.ndarray, rotation_6d: np.ndarray, translation: np.ndarray) -> Outputs:
        params = torch.from_numpy(np.array(flat, dtype=np.float32, copy=True))
        parts = dict(zip(self.groups, params.split(list(self.groups.values()), dim=-1)))
        return parts, torch.from_numpy(np.array(rotation_6d, dtype=np.float32, copy=True)), torch.from_numpy(np.array(translation, dtype=np.float32, copy=True))

    def _arrays(self, normals, focal, principal, mask) -> list[np.ndarray]:
        arrays = [normals, focal, principal] + ([mask] if self.use_mask else [])
        return [np.ascontiguousarray(_numpy(a), dtype=np.float32) for a in arrays]


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise TrackerError("the onnxruntime and openvino network runtimes take CPU tensors (run on --device cpu)")
        return value.detach().numpy()
    return np.asarray(value)


class _Exportable(nn.Module):
    """N2FNet with plain tensor outputs for export: (normals, focal, principal[, mask]) ->
    (params (F, P) in group order, rotation_6d (F, 6), translation (F, 3))."""

    def __init__(self, net: N2FNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, normals, focal, principal, mask=None):
        out = self.net(normals, focal, principal, mask)
        return torch.cat(list(out.params.values()), dim=-1), out.rotation_6d, out.translation


def _input_names(net: N2FNet) -> list[str]:
    return ["normals", "focal", "principal"] + (["mask"] if net.config.use_mask_input else [])


def probe_inputs(net: N2FNet, faces: int = 2) -> list[torch.Tensor]:
    """Fixed, face-like network inputs (a masked sphere of unit normals, a DECA-crop camera) for
    export and for the parity check of an exported network."""
    size = net.config.input_size
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    inside = (x**2 + y**2 < 0.8).float()
    z = torch.sqrt((1 - x**2 - y**2).clamp_min(0.0))
    normals = (torch.stack((x, y, -z)) * inside)[None].repeat(faces, 1, 1, 1)
    normals[1:] = normals[1:].flip(-1)  # the faces differ
    mask = inside[None, None].repeat(faces, 1, 1, 1)
    focal = torch.full((faces, 2), 2.5 * size)
    principal = torch.full((faces, 2), size / 2.0) + torch.arange(faces, dtype=torch.float32)[:, None] * 3
    return [normals, focal, principal] + ([mask] if net.config.use_mask_input else [])


def network_digest(net: N2FNet) -> str:
    """sha256 of the network's settings and weights as loaded (names the exported copies)."""
    return content_digest({"format": EXPORT_FORMAT, "n2fnet": net.config.to_dict(), "model": net.state_dict()})


def network_cache_dir() -> Path:
    return cache_dir() / "networks"


def _recipe(runtime: str) -> dict[str, str]:
    """What an exported file must have been made with to be reused."""
    recipe = {"format": EXPORT_FORMAT, "torch": torch.__version__.split("+")[0]}
    if runtime == "onnxruntime":
        recipe["opset"] = str(ONNX_OPSET)
    else:
        import openvino

        recipe["openvino"] = openvino.get_version().split("-")[0]
    return recipe


class _Exported(Runner):
    """A runner of an exported network: ``_load(path | bytes)`` and ``_run(arrays)`` per runtime."""

    suffix = ""

    def __init__(self, net: N2FNet, threads: int | None, cache: bool | str | Path) -> None:
        super().__init__(net)
        self.threads = max(1, int(threads if threads is not None else torch.get_num_threads()))
        self.digest = network_digest(net)
        self._lock = threading.Lock()
        if cache is False:
            folder = None
        else:
            folder = network_cache_dir() if cache is True else Path(cache)
        self._prepare(folder)

    def __call__(self, normals, focal, principal, mask=None) -> Outputs:
        arrays = self._arrays(normals, focal, principal, mask)
        with self._lock:
            outputs = self._run(arrays)
        return self._split(*outputs)

    # the cache and the checks ------------------------------------------------------------------
    def _prepare(self, folder: Path | None) -> None:
        expected = {"digest": self.digest, **_recipe(self.name)}
        if folder is None:  # export into memory, nothing written
            start = time.perf_counter()
            model = self._export(None, expected)
            self.setup_s = time.perf_counter() - start
            self.origin = "in memory"
            self._load_checked(model, fresh=True)
            return
        path = folder / f"{self.digest[:40]}{self.suffix}"
        self.path = path
        if path.is_file():
            start = time.perf_counter()
            try:
                recorded = self._recorded(path)
                if recorded != expected:
                    stale = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
                    raise _Stale(f"it records other settings {stale}")
                self.origin = "cached"
                self._load_checked(path, fresh=False)
                self.load_s = time.perf_counter() - start
                return
            except _Stale as why:
                log.warning("the exported network %s is stale or damaged (%s): exporting it again", path, why)
            self._session = self._model = None
        start = time.perf_counter()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._export(path, expected)
        except OSError as error:  # a read-only or full cache: this run exports into memory
            log.warning("cannot write the exported network to %s (%s): exporting it into memory for this run", folder, error)
            self.path = None
            self._prepare(None)
            return
        self.setup_s = time.perf_counter() - start
        self.origin = "exported"
        log.info("exported the network for %s in %.1f s: %s", self.name, self.setup_s, path)
        self._load_checked(path, fresh=True)

    def _load_checked(self, model, fresh: bool) -> None:
        """Load ``model`` and check its outputs on the probe against torch's: TrackerError for a
        fresh export that fails, _Stale for a cached one (made again then)."""
        start = time.perf_counter()
        try:
            self._load(model)
        except Exception as error:
            if fresh:
                raise TrackerError(f"{self.name} could not load the network it was given ({error}); use --runtime torch") from None
            raise _Stale(f"it cannot be read: {error}") from None
        error = self.parity_error()
        self.load_s = time.perf_counter() - start
        if not error <= PARITY_TOLERANCE:
            if fresh:
                if not _finite(Runner.__call__(self, *probe_inputs(self.net))):
                    raise TrackerError("the network gives non-finite outputs on the probe input, under PyTorch too: the checkpoint's weights are broken (restore or retrain it)")
                raise TrackerError(
                    f"the network exported for {self.name} gives other outputs than PyTorch (max difference {error:.2g} > {PARITY_TOLERANCE:g}): "
                    "use --runtime torch"
                )
            raise _Stale(f"its outputs differ from torch's by {error:.2g}")

    def parity_error(self, inputs: list[torch.Tensor] | None = None) -> float:
        """max |this runtime - torch| over every output, on ``inputs`` (default: ``probe_inputs``);
        infinite where either gives a non-finite value (NaN never passes a bound)."""
        inputs = probe_inputs(self.net) if inputs is None else inputs
        return output_difference(self(*inputs), Runner.__call__(self, *inputs))

    # per runtime -------------------------------------------------------------------------------
    def _export(self, path: Path | None, metadata: dict[str, str]):
        raise NotImplementedError

    def _recorded(self, path: Path) -> dict[str, str]:
        raise NotImplementedError

    def _load(self, model) -> None:
        raise NotImplementedError

    def _run(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError


class _Stale(Exception):
    """A cached export that must be made again (why)."""


class DamagedCopy(Exception):
    """An exported or int8 file whose bytes do not match the sha256 it records, that records none,
    or that its runtime cannot read (why)."""


def _finite(outputs: Outputs) -> bool:
    """Whether every value of a runner's outputs is finite."""
    params, rotation_6d, translation = outputs
    return all(bool(torch.isfinite(t).all()) for t in (*params.values(), rotation_6d, translation))


class OnnxRuntimeRunner(_Exported):
    name, suffix = "onnxruntime", ".onnx"

    def _export(self, path: Path | None, metadata: dict[str, str]):
        try:
            import onnx
        except ImportError:
            raise TrackerError(f"exporting the network for onnxruntime needs the onnx package: {INSTALL['onnxruntime']} (or use --runtime torch)") from None
        import io

        names = _input_names(self.net)
        outputs = ["params", "rotation_6d", "translation"]
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.enable_grad():  # grad on: the transformer layers' plain ops, not their fused inference kernel
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Exportable(self.net).eval(), tuple(probe_inputs(self.net, faces=1)), buffer, dynamo=False, opset_version=ONNX_OPSET,
                input_names=names, output_names=outputs, dynamic_axes={name: {0: "faces"} for name in names + outputs},
            )
        model = onnx.load_model_from_string(buffer.getvalue())
        onnx.helper.set_model_props(model, {f"n2f_{k}": v for k, v in metadata.items()})
        data = model.SerializeToString()
        data += _onnx_sha256_entry(hashlib.sha256(data).hexdigest())
        if path is None:
            return data
        atomic_write(path, data)  # a reader never sees half a file; two processes exporting at once each stage their own
        return path

    def _recorded(self, path: Path) -> dict[str, str]:
        try:
            self._session = self._open(path)
        except DamagedCopy as why:
            raise _Stale(str(why)) from None
        props = self._session.get_modelmeta().custom_metadata_map
        keys = _recipe(self.name).keys() | {"digest"}
        return {key: props[f"n2f_{key}"] for key in keys if f"n2f_{key}" in props}

    def _open(self, path: Path):
        """An InferenceSession of the exported file ``path``, its bytes checked against the sha256
        they end with first (``_onnx_sha256_entry``); DamagedCopy when they do not match or cannot be read."""
        import onnxruntime

        try:
            data = path.read_bytes()
        except OSError as error:
            raise DamagedCopy(f"it cannot be read: {error}") from None
        size = len(_onnx_sha256_entry("0" * 64))
        if len(data) <= size or data[-size:] != _onnx_sha256_entry(hashlib.sha256(data[:-size]).hexdigest()):
            raise DamagedCopy("its bytes do not match the sha256 they end with (damaged or altered)")
        try:
            return onnxruntime.InferenceSession(data, self._options(), providers=["CPUExecutionProvider"])
        except Exception as error:
            raise DamagedCopy(f"it cannot be read: {error}") from None

    def _options(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads yield the shared cores
        return options

    def _load(self, model) -> None:
        import onnxruntime

        session = getattr(self, "_session", None)  # opened by _recorded
        if session is None:
            session = onnxruntime.InferenceSession(model, self._options(), providers=["CPUExecutionProvider"]) if isinstance(model, bytes) else self._open(model)
        self._session = session
        self._names = [i.name for i in session.get_inputs()]

    def _run(self, arrays):
        return self._session.run(None, dict(zip(self._names, arrays)))


def _onnx_sha256_entry(sha256: str) -> bytes:
    """A serialised ModelProto holding only the metadata entry FILE_SHA256 = ``sha256``. Appended
    to a serialised model, protobuf merges it in (a repeated field), so the file stays the same
    model and its last bytes record the sha256 of all the bytes before them."""
    import onnx

    entry = onnx.ModelProto()
    prop = entry.metadata_props.add()
    prop.key, prop.value = FILE_SHA256, sha256
    return entry.SerializeToString()


def convert_openvino(net: N2FNet):
    """``net`` converted by OpenVINO (an ``openvino.Model``, float32): inputs normals (F, 3, S, S),
    focal (F, 2), principal (F, 2)[, mask (F, 1, S, S)] (F dynamic), outputs params (F, P) in group
    order, rotation_6d (F, 6), translation (F, 3)."""
    import openvino

    size = net.config.input_size
    shapes = [[-1, 3, size, size], [-1, 2], [-1, 2]] + ([[-1, 1, size, size]] if net.config.use_mask_input else [])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = openvino.convert_model(_Exportable(net).eval(), example_input=tuple(probe_inputs(net, faces=1)), input=[openvino.PartialShape(s) for s in shapes])
    for model_input, name in zip(model.inputs, _input_names(net)):
        model_input.get_tensor().set_names({name})
    return model


class OpenVinoRunner(_Exported):
    name, suffix = "openvino", ".openvino.xml"

    def _export(self, path: Path | None, metadata: dict[str, str]):
        import openvino

        model = convert_openvino(self.net)
        for key, value in metadata.items():
            model.set_rt_info(value, ["n2f", key])
        if path is None:
            return model
        record_weights_sha256(model, path.parent)
        with staged(path, companions=(".bin",)) as temporary:  # the .bin renamed first: the .xml, renamed last, marks the export complete
            openvino.save_model(model, str(temporary), compress_to_fp16=False)
        return path

    def _recorded(self, path: Path) -> dict[str, str]:
        try:
            self._model, recorded = read_openvino(path)
        except DamagedCopy as why:
            raise _Stale(str(why)) from None
        keys = _recipe(self.name).keys() | {"digest"}
        return {key: recorded[key] for key in keys if key in recorded}

    def _load(self, model) -> None:
        import openvino

        core = openvino.Core()
        if not isinstance(model, openvino.Model):
            read = getattr(self, "_model", None)  # read by _recorded
            model = read if read is not None else read_openvino(Path(model))[0]
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",  # not bf16 / f16 on CPUs that have them: the numbers stay torch's (int8 layers stay int8)
            "ENABLE_CPU_PINNING": False,  # MediaPipe and the pipeline's threads share the cores
        }
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._model = None

    def _run(self, arrays):
        self._request.infer(arrays)
        return tuple(self._request.get_output_tensor(i).data for i in range(3))


def record_weights_sha256(model, folder: Path) -> None:
    """Record in ``model``'s rt_info (["n2f", WEIGHTS_SHA256]) the sha256 of the .bin that
    ``openvino.save_model`` writes for it (learnt by saving it once into a temporary folder inside
    ``folder``: save_model writes the same bytes each time, and ``read_openvino`` checks them)."""
    import openvino

    with tempfile.TemporaryDirectory(dir=folder, prefix=".n2f-weights-") as scratch:
        openvino.save_model(model, str(Path(scratch) / "model.xml"), compress_to_fp16=False)
        model.set_rt_info(_sha256_file(Path(scratch) / "model.bin"), ["n2f", WEIGHTS_SHA256])


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def openvino_recorded(xml: bytes) -> dict[str, str]:
    """The ["n2f", ...] rt_info of an OpenVINO .xml (its text), read without OpenVINO, so before its
    .bin is trusted; DamagedCopy when it is not XML."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise DamagedCopy(f"its .xml cannot be read: {error}") from None
    node = root.find("rt_info/n2f")
    return {child.tag: child.get("value", "") for child in node} if node is not None else {}


def read_openvino(path: Path, xml: bytes | None = None):
    """(``openvino.Model``, its ["n2f", ...] rt_info) of the .xml ``path`` (``xml``: its bytes, when
    already read) and its .bin, read from the bytes checked: the .bin must match the sha256 the
    .xml records (WEIGHTS_SHA256) before OpenVINO reads either. DamagedCopy (why) when it does not,
    records none, or cannot be read."""
    import openvino

    try:
        xml = path.read_bytes() if xml is None else xml
        weights = path.with_suffix(".bin").read_bytes()
    except OSError as error:
        raise DamagedCopy(f"it cannot be read: {error}") from None
    recorded = openvino_recorded(xml)
    if WEIGHTS_SHA256 not in recorded:
        raise DamagedCopy(f"its .xml records no sha256 of its weights ({WEIGHTS_SHA256}; made before the tracker checked them)")
    if hashlib.sha256(weights).hexdigest() != recorded[WEIGHTS_SHA256]:
        raise DamagedCopy(f"its weights {path.with_suffix('.bin').name} do not match the sha256 its .xml records (damaged or altered)")
    try:
        model = openvino.Core().read_model(xml.decode(), openvino.Tensor(np.frombuffer(weights, np.uint8)))
    except Exception as error:
        raise DamagedCopy(f"OpenVINO cannot read it: {error}") from None
    return model, recorded


class NoInt8Copy(TrackerError):
    """No int8 copy of this network beside its checkpoint (none at all, or one of another network)."""


def int8_path(checkpoint: str | Path) -> Path:
    """Where the int8 copy of ``checkpoint``'s network is shipped: NAME.int8.xml (+ .bin) beside NAME.pt."""
    return Path(checkpoint).with_suffix(".int8.xml")


def int8_recorded(path: str | Path) -> dict[str, str]:
    """What the int8 copy at ``path`` records (``tracker.n2fnet.quantize``): format, digest, source,
    calibration, command, weights_sha256, ...; TrackerError when it cannot be read."""
    try:
        return openvino_recorded(Path(path).read_bytes())
    except (OSError, DamagedCopy) as error:
        raise TrackerError(f"cannot read the int8 copy {path} ({error})") from None


class OpenVinoInt8Runner(OpenVinoRunner):
    """The int8 copy shipped beside ``checkpoint`` (None: the shipped checkpoint), read as it is:
    nothing is exported or cached, and its outputs are not compared with torch's (int8 is not
    torch to 1e-4; the release and the tests measure it), only checked finite on the probe input.
    NoInt8Copy when it is missing or records another network's digest; TrackerError when it
    cannot be read, records another format, its .bin does not match the sha256 its .xml records
    (or it records none), or its outputs on the probe input are not finite."""

    name = "openvino-int8"

    def __init__(self, net: N2FNet | DeferredNetwork, threads: int | None, checkpoint: str | Path | None = None) -> None:
        Runner.__init__(self, net)  # not _Exported's: nothing is exported or cached; a DeferredNetwork stays unbuilt
        self.threads = max(1, int(threads if threads is not None else torch.get_num_threads()))
        self.digest = network_digest(net)
        self._lock = threading.Lock()
        checkpoint = Path(checkpoint) if checkpoint is not None else SHIPPED_CHECKPOINT
        self.path, self.origin = int8_path(checkpoint), "shipped"
        remake = f"python -m tracker.n2fnet quantize {checkpoint} --calibration DATA_DIR"
        if not self.path.is_file():
            raise NoInt8Copy(
                f"no int8 copy of the network beside {checkpoint}: {self.path} does not exist. Make it (a release step): {remake} "
                "(DATA_DIR: a fine-tuning folder of real cue maps, e.g. python -m train.pseudo_gt --split train --out DATA_DIR); "
                "or use --runtime openvino"
            )
        start = time.perf_counter()
        try:
            xml = self.path.read_bytes()
            recorded = openvino_recorded(xml)
        except (OSError, DamagedCopy) as error:
            raise TrackerError(f"cannot read the int8 copy {self.path} ({error}): remake it with {remake}, or use --runtime openvino") from None
        remake = recorded.get("command", remake)
        if recorded.get("format") != INT8_FORMAT:
            raise TrackerError(f"{self.path} is not an int8 copy of format {INT8_FORMAT} (it records {recorded.get('format')!r}): remake it with {remake}")
        try:
            model = read_openvino(self.path, xml)[0]
        except DamagedCopy as why:
            raise TrackerError(f"the int8 copy {self.path} is refused: {why}. Remake it with {remake} (or restore the shipped files), or use --runtime openvino") from None
        if recorded.get("digest") != self.digest:
            raise NoInt8Copy(
                f"{self.path} is the int8 copy of another network (digest {recorded.get('digest', '?')[:12]}, made from {recorded.get('source', '?')}) "
                f"than the one loaded (digest {self.digest[:12]}): if {recorded.get('source', 'its checkpoint')} was retrained, remake the copy: {remake}; "
                "or use --runtime openvino"
            )
        try:
            self._load(model)
        except Exception as error:
            raise TrackerError(f"cannot compile the int8 copy {self.path} ({error}): remake it with {remake}, or use --runtime openvino") from None
        if not _finite(self(*probe_inputs(net))):
            raise TrackerError(f"the int8 copy {self.path} gives non-finite outputs on the probe input (damaged or badly made): remake it with {remake}, or use --runtime openvino")
        self.load_s = time.perf_counter() - start


RUNNERS: dict[str, type[Runner]] = {"torch": Runner, "onnxruntime": OnnxRuntimeRunner, "openvino": OpenVinoRunner, "openvino-int8": OpenVinoInt8Runner}


def create_runner(
    net: N2FNet | DeferredNetwork,
    runtime: str | None = "torch",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    cache: bool | str | Path = True,
    checkpoint: str | Path | None = None,
) -> Runner:
    """The runner of ``net`` (eval mode, on ``device``) for ``runtime`` (module docstring). A
    ``DeferredNetwork`` is built only for the runtimes that need the PyTorch module (all but
    openvino-int8, which reads its own copy).

    "auto"/None: ``default_runtime(device)``, and when a runtime fails to set up (a warning says
    why; an info line for a network without an int8 copy), the next one of PREFERENCE, down to
    torch. A named runtime that cannot run: TrackerError.
    ``threads``: intra-op threads of onnxruntime / openvino (None: ``torch.get_num_threads()``).
    ``cache``: True: the exported network is kept in ``network_cache_dir()``; a folder: kept there;
    False: exported into memory each time (nothing written).
    ``checkpoint``: the file ``net`` came from; openvino-int8 reads the int8 copy beside it (None:
    the shipped checkpoint's, ``SHIPPED_CHECKPOINT``)."""
    requested = check_runtime(runtime, device)
    if requested != "auto":
        return _create(net, requested, threads, cache, checkpoint)
    if torch.device(device).type == "cuda":
        return Runner(built(net))
    for name in PREFERENCE:
        if not installed(name):
            continue
        try:
            return _create(net, name, threads, cache, checkpoint)
        except TrackerError as error:
            (log.info if isinstance(error, NoInt8Copy) else log.warning)("network runtime %s unavailable (%s); trying the next one", name, error)
    return Runner(built(net))


def _create(net: N2FNet | DeferredNetwork, runtime: str, threads: int | None, cache: bool | str | Path, checkpoint: str | Path | None) -> Runner:
    if runtime == "openvino-int8":  # the only runtime that needs no PyTorch module (DeferredNetwork)
        return OpenVinoInt8Runner(net.eval(), threads, checkpoint)
    if runtime == "torch":
        return Runner(built(net))
    return RUNNERS[runtime](built(net).eval(), threads, cache)
