"""Temporal smoothing of per-frame tracking output: the One-Euro filter (Casiez, Roussel, Vogel, CHI 2012).

One-Euro filter, per element of the signal, with real timestamps (Te = t_i - t_{i-1} may vary):
    alpha(Te, fc) = 1 / (1 + tau / Te),  tau = 1 / (2 pi fc)      first-order low-pass smoothing factor
    dx_i    = (x_i - xh_{i-1}) / Te                                 speed against the previous output
                                                                    (the paper's Algorithm 1)
    dxh_i   = dxh_{i-1} + alpha(Te, d_cutoff) * (dx_i - dxh_{i-1})  smoothed speed (dxh_0 = 0)
    fc_i    = min_cutoff + beta * |dxh_i|                           adaptive cutoff
    xh_i    = xh_{i-1} + alpha(Te, fc_i) * (x_i - xh_{i-1})         output (xh_0 = x_0)
At rest the filter is a low-pass at ``min_cutoff`` Hz (time constant tau); fast motion raises the
cutoff and so cuts lag. ``beta`` is in 1 / (unit of the signal): set it per signal (coefficients,
metres, pixels). A repeated timestamp returns the previous output; a timestamp earlier than the
previous one (a looped file, a new clock) restarts the filter from that sample.

``ParameterSmoother`` applies one filter per head-model parameter group, to the camera rotation
(6D: the 6 numbers are smoothed, then re-orthonormalised), the camera translation and the crop box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from tracker.geometry.rotations import matrix_to_rotation_6d, rotation_6d_to_matrix

Array = torch.Tensor | np.ndarray


def smoothing_factor(elapsed: float, cutoff: float | Array) -> float | Array:
    """alpha = 1 / (1 + tau / Te) with tau = 1 / (2 pi cutoff); ``cutoff`` may be per element."""
    r = 2.0 * math.pi * cutoff * elapsed
    return r / (1.0 + r)


class OneEuroFilter:
    """One-Euro filter over a tensor or array of any fixed shape (every element filtered on its own).

    ``min_cutoff`` and ``d_cutoff`` in Hz, ``beta`` in 1 / (signal unit); call ``filt(value, t)``
    with ``t`` in seconds. Torch tensors stay tensors (same device), anything else becomes a numpy
    array; integer inputs are filtered as floats.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"One-Euro filter needs min_cutoff > 0, d_cutoff > 0, beta >= 0; got {min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next sample passes through unchanged."""
        self._time: float | None = None
        self._output: Array | None = None
        self._speed: Array | None = None

    def __call__(self, value: Array | float, timestamp: float) -> Array:
        """``value`` (...) at ``timestamp`` seconds -> filtered value (...), a new object."""
        value = _copy(_as_float(value))
        if self._output is not None and value.shape != self._output.shape:
            raise ValueError(f"One-Euro filter got shape {tuple(value.shape)}, it filters {tuple(self._output.shape)}; reset() first")
        elapsed = None if self._time is None else float(timestamp) - self._time
        if elapsed is None or elapsed < 0:
            self._time, self._output, self._speed = float(timestamp), value, value * 0.0
            return _copy(value)
        if elapsed == 0:
            return _copy(self._output)
        speed = (value - self._output) / elapsed
        self._speed = self._speed + smoothing_factor(elapsed, self.d_cutoff) * (speed - self._speed)
        cutoff = self.min_cutoff + self.beta * abs(self._speed)
        self._output = self._output + smoothing_factor(elapsed, cutoff) * (value - self._output)
        self._time = float(timestamp)
        return _copy(self._output)


@dataclass(frozen=True)
class OneEuroSettings:
    """Parameters of one One-Euro filter (see module docstring)."""

    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0

    def make(self) -> OneEuroFilter:
        return OneEuroFilter(self.min_cutoff, self.beta, self.d_cutoff)


@dataclass
class FrameParameters:
    """One frame's tracking output (one face; a leading batch dimension of 1 is fine too).

    params       {group: (n,) tensor} head-model parameters
    rotation_6d  (6,) head rotation in the camera frame, 6D, or None
    translation  (3,) metres, camera frame, or None
    crop_box     (3,) (x0, y0, side) pixels, or None
    """

    params: dict[str, torch.Tensor] = field(default_factory=dict)
    rotation_6d: torch.Tensor | None = None
    translation: torch.Tensor | None = None
    crop_box: torch.Tensor | None = None


class ParameterSmoother:
    """One-Euro filters for a tracker's per-frame output, one per parameter group and camera part.

    groups       {group: settings} for head-model groups; others use ``default``
    rotation, translation, crop_box   settings for the camera rotation (6D), translation, crop box
    enabled      False: ``__call__`` returns its input unchanged (switching resets the filters)

    Call ``reset()`` when the face is lost, so that a re-acquired face (maybe another person)
    does not blend with the old one.
    """

    def __init__(
        self,
        groups: Mapping[str, OneEuroSettings] | None = None,
        default: OneEuroSettings = OneEuroSettings(),
        rotation: OneEuroSettings = OneEuroSettings(),
        translation: OneEuroSettings = OneEuroSettings(),
        crop_box: OneEuroSettings = OneEuroSettings(),
        enabled: bool = True,
    ) -> None:
        self.group_settings = dict(groups or {})
        self.default = default
        self.camera_settings = {"rotation_6d": rotation, "translation": translation, "crop_box": crop_box}
        self._enabled = enabled
        self._filters: dict[str, OneEuroFilter] = {}

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if value != self._enabled:
            self.reset()
        self._enabled = value

    def reset(self) -> None:
        """Drop every filter's state (face lost, new take, source switched)."""
        self._filters.clear()

    def __call__(self, frame: FrameParameters, timestamp: float) -> FrameParameters:
        """Smoothed copy of ``frame`` at ``timestamp`` seconds (``frame`` itself when disabled)."""
        if not self._enabled:
            return frame
        params = {
            group: self._filter(f"params/{group}", self.group_settings.get(group, self.default), value, timestamp)
            for group, value in frame.params.items()
        }
        rotation_6d = None
        if frame.rotation_6d is not None:
            smoothed = self._filter("rotation_6d", self.camera_settings["rotation_6d"], _orthonormal_6d(frame.rotation_6d), timestamp)
            rotation_6d = _orthonormal_6d(smoothed)
        translation = self._camera("translation", frame.translation, timestamp)
        crop_box = self._camera("crop_box", frame.crop_box, timestamp)
        return FrameParameters(params, rotation_6d, translation, crop_box)

    def _camera(self, key: str, value: torch.Tensor | None, timestamp: float) -> torch.Tensor | None:
        return None if value is None else self._filter(key, self.camera_settings[key], value, timestamp)

    def _filter(self, key: str, settings: OneEuroSettings, value: torch.Tensor, timestamp: float) -> torch.Tensor:
        if key not in self._filters:
            self._filters[key] = settings.make()
        return self._filters[key](value, timestamp)


def _orthonormal_6d(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 6) the first two rows of the Gram-Schmidt rotation matrix."""
    return matrix_to_rotation_6d(rotation_6d_to_matrix(d6))


def _as_float(value: Array | float) -> Array:
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else value.double()
    array = np.asarray(value)
    return array if array.dtype.kind == "f" else array.astype(np.float64)


def _copy(value: Array) -> Array:
    return value.clone() if isinstance(value, torch.Tensor) else value.copy()


def live_smoother(enabled: bool = True) -> ParameterSmoother:
    """The live tracker's default smoothing, per signal unit: coefficients (min cutoff 2 Hz, beta
    1 per coefficient/s), the 6D rotation (1.5 Hz, beta 1), the translation in metres (1.5 Hz,
    beta 20: a head moving 5 cm/s doubles the cutoff). At rest it removes frame-to-frame jitter;
    a moving head raises the cutoffs so the mesh does not trail behind."""
    return ParameterSmoother(
        default=OneEuroSettings(min_cutoff=2.0, beta=1.0),
        rotation=OneEuroSettings(min_cutoff=1.5, beta=1.0),
        translation=OneEuroSettings(min_cutoff=1.5, beta=20.0),
        enabled=enabled,
    )
