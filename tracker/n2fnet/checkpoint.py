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
    return state


def model_from_checkpoint(state: dict) -> N2FNet:
    """Rebuild the N2FNet of a loaded checkpoint and load its weights (eval mode)."""
    net = N2FNet(N2FNetConfig(**state["n2fnet"]))
    net.load_state_dict(state["model"])
    return net.eval()
