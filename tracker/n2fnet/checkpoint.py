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

``load_checkpoint`` dequantises them back into ``model``, so the rest of the code sees one format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tracker.errors import TrackerError
from tracker.n2fnet import N2FNet, N2FNetConfig

FORMAT = "n2fnet-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically (temporary file, then rename) so an interrupted save never corrupts ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint safely; TrackerError when missing, unreadable or not an N2FNet checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrackerError(f"checkpoint not found: {path} (train one with `python -m train`, or pass --checkpoint)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise TrackerError(f"cannot read checkpoint {path} safely (weights_only): {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrackerError(f"{path} is not an N2FNet checkpoint (expected format {FORMAT!r})")
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
    """Write ``source``'s network with int8 per-channel weights and no optimiser state to ``out``;
    returns the exported state (as ``load_checkpoint`` would read it back)."""
    state = load_checkpoint(source)
    model, model_int8, model_scale = {}, {}, {}
    for name, tensor in state["model"].items():
        if tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() >= 1024:
            model_int8[name], model_scale[name] = quantize_per_channel(tensor)
        else:
            model[name] = tensor.float() if tensor.is_floating_point() else tensor
    keep = {key: value for key, value in state.items() if key not in ("format", "model", "optimizer", "scheduler")}
    release = {"weights": "int8-per-channel", "source": Path(source).name}
    save_checkpoint(out, {**keep, "model": model, "model_int8": model_int8, "model_scale": model_scale, "release": release})
    return load_checkpoint(out)


def model_from_checkpoint(state: dict) -> N2FNet:
    """Rebuild the N2FNet of a loaded checkpoint and load its weights (eval mode)."""
    net = N2FNet(N2FNetConfig(**state["n2fnet"]))
    net.load_state_dict(state["model"])
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
