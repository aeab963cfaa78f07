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
altered file is refused: it never runs with other weights than were exported), then dequantises
the int8 tensors back into ``model`` and drops the digest, so the rest of the code sees one format.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import torch

from tracker.errors import TrackerError
from tracker.n2fnet import N2FNet, N2FNetConfig
from tracker.safe_load import load_torch_file

FORMAT = "n2fnet-checkpoint-v1"
_RESTORE = "Restore or re-download the file, or re-export it (python -m tracker.n2fnet.checkpoint SRC OUT)."


def save_checkpoint(path: str | Path, state: dict, digest: bool = False) -> None:
    """Write atomically (temporary file, then rename) so an interrupted save never corrupts ``path``;
    ``digest``: store the ``content_digest`` of the written state (release checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {"format": FORMAT, **state}
    if digest:
        state["digest"] = content_digest(state)
    torch.save(state, tmp)
    tmp.replace(path)


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
    """Read a checkpoint safely; TrackerError when missing, damaged, unreadable or not an N2FNet checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrackerError(f"checkpoint not found: {path} (train one with `python -m train`, or pass --checkpoint)")
    _check_archive(path)
    state = load_torch_file(path, "checkpoint", "Re-export it from its training checkpoint (python -m tracker.n2fnet.checkpoint SRC OUT), or use one written by python -m train.", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrackerError(f"{path} is not an N2FNet checkpoint (expected format {FORMAT!r})")
    digest = state.pop("digest", None)
    if digest is not None and content_digest(state) != digest:
        raise TrackerError(f"checkpoint {path} is damaged: its contents do not match their digest (weights or settings changed after export). {_RESTORE}")
    if "model_int8" in state:
        state["model"] = {**state.get("model", {}), **_dequantize(state.pop("model_int8"), state.pop("model_scale"))}
    return state


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, ...) float weight -> int8 values and (out, 1, ...) float32 scales (symmetric per channel)."""
    reduce = tuple(range(1, weight.dim()))
    scale = weight.detach().float().abs().amax(dim=reduce, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(weight.detach().float() / scale).clamp(-127, 127).to(torch.int8), scale


def _dequantize(values: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if set(values) != set(scales):
        raise TrackerError("corrupt release checkpoint: int8 tensors and scales do not match")
    return {name: values[name].float() * scales[name] for name in values}


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
    the weights do not fit the network its settings describe (e.g. other parameter groups)."""
    config = N2FNetConfig(**state["n2fnet"])
    net = N2FNet(config)
    own, weights = net.state_dict(), state["model"]
    misfits = [f"{k} is {tuple(weights[k].shape)}, the settings need {tuple(own[k].shape)}" for k in own if k in weights and weights[k].shape != own[k].shape]
    misfits += [f"missing {k}" for k in own if k not in weights] + [f"unexpected {k}" for k in weights if k not in own]
    if misfits:
        more = f" (and {len(misfits) - 3} more)" if len(misfits) > 3 else ""
        raise TrackerError(
            f"the checkpoint's weights do not fit its network settings (groups {config.groups}, backbone {config.backbone}, "
            f"input size {config.input_size}): {'; '.join(misfits[:3])}{more}. Its settings were changed after training: "
            "use the checkpoint as python -m train or python -m tracker.n2fnet.checkpoint wrote it"
        )
    net.load_state_dict(weights)
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tracker.n2fnet.checkpoint", description="Export a training checkpoint as a small release checkpoint (int8 per-channel weights, no optimiser).")
    parser.add_argument("source", help="training checkpoint, e.g. runs/NAME/best_stage2.pt")
    parser.add_argument("out", help="release checkpoint to write, e.g. assets/n2fnet_ict_resnet18.pt")
    args = parser.parse_args(argv)
    try:
        export_release(args.source, args.out)
    except TrackerError as error:
        print(f"error: {error}")
        return 2
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
