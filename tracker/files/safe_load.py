"""Reading torch files that come from elsewhere (checkpoints, weights) without running anything in them.

``torch.load(weights_only=True)`` rebuilds only tensors and plain values (dicts, lists, numbers,
strings); a file that names any other class or function is refused. PyTorch's refusal text tells
the user to retry with ``weights_only=False`` (which runs whatever the file names); the message
here says what the file holds and what to do instead.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Sequence

import torch

from tracker.errors import TrackerError


def load_torch_file(path: Path, what: str, fix: str, map_location="cpu", allowed: Sequence = ()) -> Any:
    """The contents of the torch file ``path``, read with ``weights_only=True``.

    ``what`` names the file in messages ("checkpoint", "backbone weights"), ``fix`` says what to do.
    ``allowed``: further plain-data classes to accept (``torch.serialization.safe_globals``).
    TrackerError when the file cannot be read or holds other objects.
    """
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's text advises weights_only=False: not passed on
        names = _unsafe_globals(path, allowed)
        if names:
            raise TrackerError(
                f"{what} {path} holds objects other than tensors and plain values ({', '.join(names)}), which it never needs: "
                f"it may be unsafe, so it was not loaded and nothing in it was run. {fix}"
            ) from None
        raise TrackerError(f"cannot read {what} {path}: it is damaged, not a torch file, or holds objects other than tensors and plain values. {fix}") from None
    except Exception as error:  # truncated, unreadable
        raise TrackerError(f"cannot read {what} {path}: {error}. {fix}") from error


def _unsafe_globals(path: Path, allowed: Sequence) -> list[str]:
    """Names of the classes and functions the file's pickle refers to beyond what ``weights_only`` and
    ``allowed`` accept ([] when the file is no readable torch zip archive)."""
    accepted = {f"{c.__module__}.{c.__qualname__}" for c in allowed}
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - accepted)
    except Exception:
        return []
