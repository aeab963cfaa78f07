"""N2FNet checkpoints: weights plus everything needed to rebuild and use them.

A checkpoint is a dict of tensors and plain Python values (saved with ``torch.save``, read with
``torch.load(weights_only=True)``: a checkpoint is untrusted input, nothing in it is executed):

    format         "n2fnet-checkpoint-v1"
    model          N2FNet state dict
    n2fnet         N2FNetConfig as a dict (head model, regressed groups, backbone, input size, ...)
    head_model     {"name", "path"} of the head model it was trained for
    sampler        SamplerConfig as a dict (focal, principal point, alpha, normal frame, ...)
    train          TrainConfig as a dict
    stage, step    training progress (a resumed run reseeds its sampler from them)
    optimizer, scheduler  in last.pt only, for resuming
    metrics, best  the validation figures of this checkpoint and the best so far per stage

A release checkpoint (``export_release``, what ships under assets/) drops the optimiser and stores
every weight matrix / convolution kernel as int8 with one float32 scale per output channel
(symmetric, scale = max |w| / 127 over the channel), the other tensors as float32:

    model_int8     {name: int8 tensor}, model_scale {name: (out, 1, ...) float32}
    release        {"weights": "int8-per-channel", "source": the training checkpoint's file name}
    digest         sha256 (hex) of every other entry (``content_digest``)

``load_checkpoint`` checks the zip archive's CRCs and, when there is one, the digest (a damaged or
altered file is refused: it never runs with other weights than were exported), then the metadata
against the schema below (``validate_checkpoint``), then dequantises the int8 tensors back into
``model`` and drops the digest, so the rest of the code sees one format.

Schema (a digest proves a file unchanged, not well made: anyone can write a consistent one). Every
entry above and no other; ``format``, ``model`` and ``n2fnet`` required; ``n2fnet`` holds
N2FNetConfig's fields and no other (``head_model`` and ``groups`` required), ``groups`` the head
model's regressed groups (``model.GROUP_SIZES``) within their sizes, each setting its type and
range (``NETWORK``); ``sampler`` SamplerConfig's fields (``SAMPLER``), ``train`` TrainConfig's
(``TRAIN_KEYS``), the rest plain values. Each violation is a TrackerError naming the key and what
it must be, raised before anything is built from the metadata: ``model_from_checkpoint`` then
builds the network on the meta device (no memory) and compares every weight's shape with it
before it builds the real one, so no setting makes it allocate more than the weights it loads.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import re
import reprlib
import zipfile
from pathlib import Path

import torch

from tracker.errors import TrackerError
from tracker.files.atomic_write import staged
from tracker.files.safe_load import load_torch_file
from tracker.n2fnet import N2FNet, N2FNetConfig
from tracker.n2fnet.model import GROUP_SIZES

BACKBONE_NAME = "a timm model name, e.g. resnet18 or vit_large_patch16_dinov3"
FORMAT = "n2fnet-checkpoint-v1"
_RESTORE = "Restore or re-download the file, or re-export it (python -m tracker.n2fnet checkpoint SRC OUT)."
_INVALID = "Use the checkpoint as python -m train or python -m tracker.n2fnet checkpoint wrote it (restore or re-download it)."

# -- the schema (module docstring) ----------------------------------------------------------------
# A value's spec: ("int" | "real", low, high), ("reals", count, low, high), ("choice", options),
# ("bool",), ("dict",), ("plain",) (None, numbers, text, and lists / tuples / dicts of them),
# ("tensors",) ({name: real tensor}); and an entry's own: ("network",), ("head_model",),
# ("sampler",), ("train",), ("release",) (``_Schema.value``).
ENTRIES = {
    "format": ("choice", (FORMAT,)),
    "model": ("tensors",),
    "n2fnet": ("network",),
    "head_model": ("head_model",),
    "sampler": ("sampler",),
    "train": ("train",),
    "stage": ("int", 1, 2),
    "step": ("int", 0, 10**12),
    "optimizer": ("dict",),  # torch's optimiser / scheduler state, read only when resuming
    "scheduler": ("dict",),
    "metrics": ("plain",),
    "best": ("plain",),
    "head_tuning": ("plain",),
    "release": ("release",),
    "model_int8": ("tensors",),
    "model_scale": ("tensors",),
}
REQUIRED = ("format", "model", "n2fnet")
# N2FNetConfig's fields but ``groups`` (GROUP_SIZES of ``head_model``) and ``backbone`` (a timm model name)
NETWORK = {
    "head_model": ("choice", tuple(GROUP_SIZES)),
    "input_size": ("int", 16, 1024),
    "use_mask_input": ("bool",),
    "token_dim": ("int", 1, 4096),
    "heads": ("int", 1, 64),
    "depth_per_focal": ("real", 1e-6, 100.0),
    "camera_anchor": ("reals", 3, -1.0, 1.0),
    "extra": ("plain",),
}
# the training code's SamplerConfig fields (the tracker reads alpha, focal_mean, normal_frame, surface)
SAMPLER = {
    "image_size": ("int", 16, 8192),
    "output_size": ("int", 16, 4096),
    "focal_mean": ("real", 1e-3, 100.0),
    "focal_std": ("real", 0.0, 100.0),
    "principal_std": ("real", 0.0, 10.0),
    "rotation_std_deg": ("reals", 3, 0.0, 180.0),
    "translation_mean": ("reals", 3, -100.0, 100.0),
    "translation_std": ("reals", 3, 0.0, 100.0),
    "min_depth": ("real", 0.0, 100.0),
    "alpha": ("real", 0.1, 10.0),
    "crop_shift_std": ("real", 0.0, 10.0),
    "crop_scale_std": ("real", 0.0, 10.0),
    "normal_frame": ("choice", ("camera", "head")),
    "surface": ("choice", ("mesh", "mediapipe")),
    "proxy_position_mm": ("real", 0.0, 1000.0),
    "proxy_depth_mm": ("real", 0.0, 1000.0),
    "proxy_depth_scale_std": ("real", 0.0, 10.0),
    "proxy_smoothing_mm": ("real", 0.0, 1000.0),
}
# the training code's TrainConfig fields (plain values; "sampler" as SAMPLER)
TRAIN_KEYS = (
    "head_model", "head_model_path", "backbone", "backbone_weights", "input_size", "use_mask_input", "token_dim", "stages",
    "stage1_steps", "stage2_steps", "batch_size", "warmup_fraction", "lr_backbone", "lr_stem", "lr_flame_module", "lr_camera_module",
    "param_weights", "freeze_tokens", "val_every", "val_size", "val_seed", "seed", "out_dir", "device", "log_every", "sampler",
)
_MAX_DEPTH = 8  # nesting of plain values


def save_checkpoint(path: str | Path, state: dict, digest: bool = False) -> None:
    """Write atomically through a freshly created temporary file (``tracker.files.atomic_write.staged``),
    so an interrupted save never corrupts ``path`` and never writes through a link in the way;
    ``digest``: store the ``content_digest`` of the written state (release checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    if digest:
        state["digest"] = content_digest(state)
    with staged(path) as temporary:
        torch.save(state, temporary)


def content_digest(state: dict) -> str:
    """sha256 (hex) of every entry of ``state`` but "digest", independent of how it was pickled:
    its leaves sorted by key path, a tensor as dtype, shape and raw bytes, any other value by repr."""
    sha = hashlib.sha256()
    for path, value in sorted(_leaves({k: v for k, v in state.items() if k != "digest"}), key=lambda leaf: leaf[0]):
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            header = f"tensor {value.dtype} {tuple(value.shape)}"
        else:
            data, header = repr(value).encode(), type(value).__name__
        sha.update(f"{path}\0{header}\0{len(data)}\0".encode() + data)
    return sha.hexdigest()


def _leaves(value, path: str = ""):
    """(key path, value) of the leaves of nested dicts, lists and tuples; containers as their type and length."""
    if isinstance(value, (dict, list, tuple)):
        yield path, f"{type(value).__name__}[{len(value)}]"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            yield from _leaves(item, f"{path}/{key!r}")
    else:
        yield path, value


def _check_archive(path: Path) -> None:
    """TrackerError unless ``path`` is a zip archive (torch.save's format) whose members all match their CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC-32
    except Exception as error:  # not a zip archive, truncated, unreadable
        raise TrackerError(f"checkpoint {path} is damaged or not a checkpoint: it is not a readable zip archive ({error}). {_RESTORE}") from None
    if bad is not None:
        raise TrackerError(f"checkpoint {path} is damaged: bad CRC in member {bad}. {_RESTORE}")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint safely; TrackerError when missing, damaged, unreadable, not an N2FNet
    checkpoint, or its metadata breaks the schema (``validate_checkpoint``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrackerError(f"checkpoint not found: {path} (train one with `python -m train`, or pass --checkpoint)")
    _check_archive(path)
    state = load_torch_file(path, "checkpoint", "Re-export it from its training checkpoint (python -m tracker.n2fnet checkpoint SRC OUT), or use one written by python -m train.", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrackerError(f"{path} is not an N2FNet checkpoint (expected format {FORMAT!r})")
    digest = state.pop("digest", None)
    if digest is not None and content_digest(state) != digest:
        raise TrackerError(f"checkpoint {path} is damaged: its contents do not match their digest (weights or settings changed after export). {_RESTORE}")
    validate_checkpoint(state, f"checkpoint {path}")
    if "model_int8" in state:
        state["model"] = {**state.get("model", {}), **_dequantize(state.pop("model_int8"), state.pop("model_scale"))}
    return state


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, ...) float weight -> int8 values and (out, 1, ...) float32 scales (symmetric per channel)."""
    reduce = tuple(range(1, weight.dim()))
    scale = weight.detach().float().abs().amax(dim=reduce, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(weight.detach().float() / scale).clamp(-127, 127).to(torch.int8), scale


def _dequantize(values: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{name: int8 (out, ...)} and {name: (out, 1, ...) float32} (checked by ``validate_checkpoint``) -> float32 weights."""
    return {name: values[name].float() * scales[name] for name in values}


# -- validation -----------------------------------------------------------------------------------
def validate_checkpoint(state: dict, source: str = "the checkpoint") -> None:
    """TrackerError naming the key and what it must be when ``state`` (a checkpoint as read, its
    digest removed, or as ``load_checkpoint`` returns it) breaks the schema of the module
    docstring; ``source`` names it in the message. Allocates nothing."""
    check = _Schema(source)
    check.keys("", state, ENTRIES, REQUIRED)
    for key, value in state.items():
        check.value(key, value, ENTRIES[key])
    network = state["n2fnet"]["head_model"]
    if "head_model" in state and state["head_model"]["name"] != network:
        check.fail("head_model.name", _show(state["head_model"]["name"]), f"the head model the network regresses, n2fnet.head_model {network!r}")
    if ("model_int8" in state) != ("model_scale" in state):
        check.fail("model_scale" if "model_int8" in state else "model_int8", "missing", "model_int8 and model_scale together (a corrupt release checkpoint)")
    for name, values in state.get("model_int8", {}).items():
        if values.dtype != torch.int8 or values.dim() == 0:
            check.fail(f"model_int8.{name}", f"a {values.dtype} tensor of shape {tuple(values.shape)}", "an int8 tensor of at least one dimension (a corrupt release checkpoint)")
        scale, want = state["model_scale"].get(name), (values.shape[0],) + (1,) * (values.dim() - 1)
        if scale is None or scale.dtype != torch.float32 or tuple(scale.shape) != want:
            shown = "missing" if scale is None else f"a {scale.dtype} tensor of shape {tuple(scale.shape)}"
            check.fail(f"model_scale.{name}", shown, f"a float32 tensor of shape {want}, a scale per output channel of model_int8.{name} (a corrupt release checkpoint)")
    for name in sorted(set(state.get("model_scale", {})) - set(state.get("model_int8", {}))):
        check.fail(f"model_scale.{name}", "a scale without int8 weights", "the name of a model_int8 tensor (a corrupt release checkpoint)")


def _show(value) -> str:
    return reprlib.repr(value)


class _Schema:
    """The checks of ``validate_checkpoint``: ``value(key, value, spec)`` by the specs of ENTRIES,
    NETWORK and SAMPLER; ``fail`` raises the TrackerError."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, expected: str) -> None:
        raise TrackerError(f"{self.source} has invalid metadata: {key} is {problem}; expected {expected}. {_INVALID}")

    def keys(self, where: str, value, allowed, required=()) -> None:
        """``value`` is a dict whose keys are among ``allowed``, the ``required`` ones present."""
        if not isinstance(value, dict):
            self.fail(where or "the file's content", f"a {type(value).__name__}", "a dict")
        prefix = f"{where}." if where else ""
        for key in value:
            if key not in allowed:
                self.fail(f"{prefix}{key}" if isinstance(key, str) else f"a key of {where or 'the checkpoint'}", f"an unknown key ({_show(key)})", f"only {', '.join(sorted(allowed))}")
        for key in required:
            if key not in value:
                self.fail(f"{prefix}{key}", "missing", "a value (a required entry)")

    def value(self, key: str, value, spec: tuple) -> None:
        kind, *args = spec
        if kind in ("int", "real"):
            low, high = args
            number = isinstance(value, int) if kind == "int" else isinstance(value, (int, float)) and math.isfinite(value)
            if isinstance(value, bool) or not number or not low <= value <= high:
                self.fail(key, _show(value), f"{'a whole number' if kind == 'int' else 'a finite number'} from {low:g} to {high:g}")
        elif kind == "reals":
            count, low, high = args
            if not isinstance(value, (list, tuple)) or len(value) != count:
                self.fail(key, _show(value), f"{count} numbers from {low:g} to {high:g}")
            for index, item in enumerate(value):
                self.value(f"{key}[{index}]", item, ("real", low, high))
        elif kind == "choice":
            if not isinstance(value, str) or value not in args[0]:
                self.fail(key, _show(value), f"one of {', '.join(map(repr, args[0]))}")
        elif kind == "bool":
            if not isinstance(value, bool):
                self.fail(key, _show(value), "True or False")
        elif kind == "dict":
            if not isinstance(value, dict):
                self.fail(key, f"a {type(value).__name__}", "a dict")
        elif kind == "plain":
            self.plain(key, value, 0)
        elif kind == "tensors":
            self.keys(key, value, value if isinstance(value, dict) else ())
            for name, tensor in value.items():
                if not isinstance(name, str) or not isinstance(tensor, torch.Tensor) or tensor.is_complex() or tensor.dtype == torch.bool:
                    shown = f"a {tensor.dtype} tensor" if isinstance(tensor, torch.Tensor) else f"a {type(tensor).__name__}"
                    self.fail(f"{key}.{name}", shown, "a real-valued tensor under a parameter name")
        elif kind == "network":
            self.network(key, value)
        elif kind == "head_model":
            self.keys(key, value, ("name", "path"), ("name",))
            self.value(f"{key}.name", value["name"], NETWORK["head_model"])
            if value.get("path") is not None and not isinstance(value["path"], str):
                self.fail(f"{key}.path", _show(value["path"]), "a path (text) or None")
        elif kind == "sampler":
            self.keys(key, value, SAMPLER)
            for name, item in value.items():
                self.value(f"{key}.{name}", item, SAMPLER[name])
        elif kind == "train":
            self.keys(key, value, TRAIN_KEYS)
            for name, item in value.items():
                self.value(f"{key}.{name}", item, ENTRIES["sampler"] if name == "sampler" else ("plain",))
        elif kind == "release":
            self.keys(key, value, ("weights", "source"), ("weights",))
            self.value(f"{key}.weights", value["weights"], ("choice", ("int8-per-channel",)))
            if not isinstance(value.get("source", ""), str):
                self.fail(f"{key}.source", _show(value["source"]), "the training checkpoint's file name (text)")
        else:
            raise AssertionError(f"no check for the spec {spec}")

    def network(self, key: str, value) -> None:
        """N2FNetConfig's fields: the required ones present, no other, each by NETWORK; the groups by GROUP_SIZES."""
        fields = dataclasses.fields(N2FNetConfig)
        required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        self.keys(key, value, [f.name for f in fields], required)
        self.value(f"{key}.head_model", value["head_model"], NETWORK["head_model"])  # before the groups, whose sizes it gives
        sizes = GROUP_SIZES[value["head_model"]]
        groups = value["groups"]
        self.keys(f"{key}.groups", groups, sizes)
        if not groups:
            self.fail(f"{key}.groups", "empty", f"some of the {value['head_model']} groups {', '.join(sizes)}")
        for name, size in groups.items():
            self.value(f"{key}.groups.{name}", size, ("int", *sizes[name]))
        for name, item in value.items():
            if name == "backbone":  # a name here; one that timm knows, where the network is built (model_from_checkpoint)
                if not isinstance(item, str) or not re.fullmatch(r"[a-z0-9_.]{1,100}", item):
                    self.fail(f"{key}.backbone", _show(item), BACKBONE_NAME)
            elif name != "groups":
                self.value(f"{key}.{name}", item, NETWORK[name])

    def plain(self, key: str, value, depth: int) -> None:
        """None, bool, numbers, text, and lists / tuples / dicts (text keys) of them, at most _MAX_DEPTH deep."""
        if value is None or isinstance(value, (bool, int, float, str)):
            return
        if depth < _MAX_DEPTH and isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                self.plain(f"{key}[{index}]", item, depth + 1)
        elif depth < _MAX_DEPTH and isinstance(value, dict):
            for name, item in value.items():
                if not isinstance(name, str):
                    self.fail(key, f"a dict with the key {_show(name)}", "text keys")
                self.plain(f"{key}.{name}", item, depth + 1)
        else:
            problem = "nested too deep" if depth >= _MAX_DEPTH else f"a {type(value).__name__}"
            self.fail(key, problem, f"plain values (numbers, text, lists, dicts) at most {_MAX_DEPTH} deep")


def export_release(source: str | Path, out: str | Path) -> dict:
    """Write ``source``'s network with int8 per-channel weights, no optimiser state and a content
    digest to ``out``; returns the exported state (as ``load_checkpoint`` would read it back)."""
    state = load_checkpoint(source)
    model, model_int8, model_scale = {}, {}, {}
    for name, tensor in state["model"].items():
        if tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() >= 1024:
            model_int8[name], model_scale[name] = quantize_per_channel(tensor)
        else:
            model[name] = tensor.float() if tensor.is_floating_point() else tensor
    keep = {key: value for key, value in state.items() if key not in ("format", "model", "optimizer", "scheduler")}
    release = {"weights": "int8-per-channel", "source": Path(source).name}
    save_checkpoint(out, {**keep, "model": model, "model_int8": model_int8, "model_scale": model_scale, "release": release}, digest=True)
    return load_checkpoint(out)


def model_from_checkpoint(state: dict) -> N2FNet:
    """Rebuild the N2FNet of a loaded checkpoint and load its weights (eval mode); TrackerError when
    its metadata breaks the schema (``validate_checkpoint``) or the weights do not fit the network
    its settings describe (e.g. other parameter groups). The settings are first built on the meta
    device (shapes, no memory) and compared with the weights, so the network built for real holds
    no more than the weights it loads."""
    validate_checkpoint(state)
    config = N2FNetConfig(**state["n2fnet"])
    import timm  # here, not at the top: importing timm costs about 1.5 s of start-up, and the int8 runtime needs no module

    if config.backbone not in timm.list_models():
        _Schema("the checkpoint").fail("n2fnet.backbone", _show(config.backbone), BACKBONE_NAME)
    with torch.device("meta"):
        own = N2FNet(config).state_dict()
    weights = state["model"]
    misfits = [f"{k} is {tuple(weights[k].shape)}, the settings need {tuple(own[k].shape)}" for k in own if k in weights and weights[k].shape != own[k].shape]
    misfits += [f"{k} is {weights[k].dtype}, the network needs floating point" for k in own if k in weights and own[k].is_floating_point() and not weights[k].is_floating_point()]
    misfits += [f"missing {k}" for k in own if k not in weights] + [f"unexpected {k}" for k in weights if k not in own]
    if misfits:
        more = f" (and {len(misfits) - 3} more)" if len(misfits) > 3 else ""
        raise TrackerError(
            f"the checkpoint's weights do not fit its network settings (groups {config.groups}, backbone {config.backbone}, "
            f"input size {config.input_size}): {'; '.join(misfits[:3])}{more}. Its settings were changed after training: "
            "use the checkpoint as python -m train or python -m tracker.n2fnet checkpoint wrote it"
        )
    net = N2FNet(config)
    net.load_state_dict(weights)
    return net.eval()


class DeferredNetwork:
    """A loaded checkpoint's N2FNet, built on first use: ``config`` and ``state_dict()`` at once,
    the module itself (``module()``, or any other attribute or a call) only when something needs
    it. The int8 runtime needs only the settings and the digest of the weights, and building the
    module imports timm (about 1.5 s of start-up); a copy whose digest matches was made from
    exactly these weights in this network, so they need no check of their own there.

    ``to(device)`` and ``eval()`` return the network itself, applied to the module when it is
    built (always in eval mode, by ``model_from_checkpoint``, which checks the weights against the
    settings first)."""

    def __init__(self, state: dict) -> None:
        validate_checkpoint(state)
        self.state, self.config = state, N2FNetConfig(**state["n2fnet"])
        self.device = torch.device("cpu")
        self._module: N2FNet | None = None

    def module(self) -> N2FNet:
        if self._module is None:
            self._module = model_from_checkpoint(self.state).to(self.device)
        return self._module

    def state_dict(self) -> collections.OrderedDict:
        """The weights as the built module's ``state_dict()`` gives them (same names, values and type)."""
        return collections.OrderedDict(self.state["model"]) if self._module is None else self._module.state_dict()

    def to(self, device: str | torch.device) -> DeferredNetwork:
        self.device = torch.device(device)
        if self._module is not None:
            self._module.to(self.device)
        return self

    def eval(self) -> DeferredNetwork:
        return self

    def __call__(self, *args, **kwargs):
        return self.module()(*args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("state", "config", "device"):  # not set yet (copy, pickle): no build
            raise AttributeError(name)
        return getattr(self.module(), name)


def built(net: N2FNet | DeferredNetwork) -> N2FNet:
    """The module of ``net``, built now when it was deferred."""
    return net.module() if isinstance(net, DeferredNetwork) else net
