"""N2FNet: normal map -> head-model parameters and camera (backbone + FLAME module + camera module).

The network's names come from ``tracker.n2fnet.model`` on first use (PEP 562), so that the
package's command lines (``python -m tracker.n2fnet checkpoint | runtime | quantize``), and the
command lines that offer the runtimes below, answer --help before torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracker.n2fnet.model import (
        REGRESSED_GROUPS,
        N2FNet,
        N2FNetConfig,
        N2FNetOutput,
    )

# what runs the network (tracker.n2fnet.runtime); PREFERENCE: fastest first on this project's CPU
# (python -m tracker.bench network; README "Network runtime")
RUNTIMES = ("torch", "onnxruntime", "openvino", "openvino-int8")
PREFERENCE = ("openvino-int8", "openvino", "onnxruntime", "torch")

__all__ = ["N2FNet", "N2FNetConfig", "N2FNetOutput", "REGRESSED_GROUPS"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tracker.n2fnet.model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
