"""A user's ARKit profile: per-shape neutral, deadzone, curve, gain and offset applied to the
tracker's raw ARKit weights, and the neutral-face calibration that measures the neutral.

Per shape, a raw weight x in [0, 1] becomes

    y = max(0, (x - neutral) / (1 - neutral))     the resting face reads 0, full motion still 1
    y = max(0, (y - deadzone) / (1 - deadzone))   small motion ignored, full motion still 1
    y = y ** curve                                 > 1: softer start, < 1: quicker start
    y = clip(gain * y + offset, 0, 1)

so the default profile (0, 0, 1, 1, 0) leaves every weight as it is. The file is JSON, readable and
hand-editable; shapes or fields left out keep their defaults:

    {"format": "n2f-arkit-profile", "version": 1,
     "shapes": {"jawOpen": {"neutral": 0.04, "deadzone": 0.02, "curve": 1.0, "gain": 1.2, "offset": 0.0}}}

    profile = ArkitProfile.load(path)            # TrackerError naming the field on a bad file
    calibrated = profile.apply(raw)              # (..., 52) -> (..., 52)
    calibration = NeutralCalibration(seconds=2.0); calibration.add(raw, timestamp) ... calibration.neutral()
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.files.atomic_write import atomic_write
from tracker.fitting.arkit import ARKIT_INDEX, ARKIT_NAMES

FORMAT = "n2f-arkit-profile"
VERSION = 1
# field -> (default, lowest, highest, whether the highest is allowed)
FIELDS = {
    "neutral": (0.0, 0.0, 1.0, False),
    "deadzone": (0.0, 0.0, 1.0, False),
    "curve": (1.0, 0.1, 10.0, True),
    "gain": (1.0, 0.0, 10.0, True),
    "offset": (0.0, -1.0, 1.0, True),
}


@dataclass(frozen=True)
class ArkitProfile:
    """(52,) float64 per-shape fields in ``ARKIT_NAMES`` order (module docstring)."""

    neutral: np.ndarray = field(default_factory=lambda: np.full(len(ARKIT_NAMES), FIELDS["neutral"][0]))
    deadzone: np.ndarray = field(default_factory=lambda: np.full(len(ARKIT_NAMES), FIELDS["deadzone"][0]))
    curve: np.ndarray = field(default_factory=lambda: np.full(len(ARKIT_NAMES), FIELDS["curve"][0]))
    gain: np.ndarray = field(default_factory=lambda: np.full(len(ARKIT_NAMES), FIELDS["gain"][0]))
    offset: np.ndarray = field(default_factory=lambda: np.full(len(ARKIT_NAMES), FIELDS["offset"][0]))

    def __post_init__(self) -> None:
        for name, (_, low, high, high_allowed) in FIELDS.items():
            values = np.asarray(getattr(self, name), np.float64)
            if values.shape != (len(ARKIT_NAMES),):
                raise TrackerError(f"ARKit profile: {name} must hold {len(ARKIT_NAMES)} values, got shape {values.shape}")
            for index in np.flatnonzero(~_in_range(values, low, high, high_allowed)):
                raise TrackerError(f"ARKit profile: {ARKIT_NAMES[index]}.{name} is {values[index]:g}, outside {_range_text(low, high, high_allowed)}")
            object.__setattr__(self, name, values)

    @property
    def is_default(self) -> bool:
        return all(np.all(getattr(self, name) == FIELDS[name][0]) for name in FIELDS)

    def apply(self, weights: np.ndarray) -> np.ndarray:
        """(..., 52) raw weights in [0, 1] -> (..., 52) float32 profiled weights in [0, 1]
        (NaN stays NaN: a shape not measured)."""
        x = np.asarray(weights, np.float64)
        y = np.maximum(0.0, (x - self.neutral) / (1.0 - self.neutral))
        y = np.maximum(0.0, (y - self.deadzone) / (1.0 - self.deadzone))
        y = np.clip(self.gain * y**self.curve + self.offset, 0.0, 1.0)
        return np.where(np.isnan(x), np.nan, y).astype(np.float32)

    def with_neutral(self, neutral: np.ndarray) -> ArkitProfile:
        """This profile with (52,) resting weights as its neutral (clipped to at most 0.95, to 4
        decimals: what the file holds is what was applied)."""
        return ArkitProfile(np.round(np.clip(np.asarray(neutral, np.float64), 0.0, 0.95), 4), self.deadzone, self.curve, self.gain, self.offset)

    # -- file ----------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The file's text: every shape on one line, all five fields, ARKit's order (each value to
        at most 6 decimals)."""
        lines = [f'  "{name}": {{' + ", ".join(f'"{key}": {_number(getattr(self, key)[i])}' for key in FIELDS) + "}"
                 for i, name in enumerate(ARKIT_NAMES)]
        return f'{{"format": "{FORMAT}", "version": {VERSION},\n "shapes": {{\n' + ",\n".join(lines) + "\n }\n}\n"

    def save(self, path: str | Path) -> Path:
        """Write the profile to ``path`` whole or not at all."""
        return atomic_write(path, self.to_json().encode())

    @classmethod
    def load(cls, path: str | Path) -> ArkitProfile:
        """The profile in ``path``; a TrackerError naming the file and the field that is wrong."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise TrackerError(f"ARKit profile {path} cannot be read: {error.strerror or error}") from error
        except UnicodeDecodeError as error:
            raise TrackerError(f"ARKit profile {path} is not UTF-8 text: {error}") from error
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise TrackerError(f"ARKit profile {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from error
        try:
            return cls.from_dict(data)
        except TrackerError as error:
            raise TrackerError(f"{path}: {error}") from None

    @classmethod
    def from_dict(cls, data) -> ArkitProfile:
        """The profile of a parsed file (module docstring's layout)."""
        if not isinstance(data, dict):
            raise TrackerError(f"ARKit profile: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise TrackerError(f"ARKit profile: \"format\" must be \"{FORMAT}\", got {json.dumps(data.get('format'))}")
        if data.get("version") != VERSION:
            raise TrackerError(f"ARKit profile: version {json.dumps(data.get('version'))} is not supported (this tracker reads version {VERSION})")
        unknown = sorted(set(data) - {"format", "version", "shapes"})
        if unknown:
            raise TrackerError(f"ARKit profile: unknown key(s) {', '.join(unknown)} (expected format, version, shapes)")
        shapes = data.get("shapes", {})
        if not isinstance(shapes, dict):
            raise TrackerError(f"ARKit profile: \"shapes\" must be an object of shape names, got {type(shapes).__name__}")
        values = {key: np.full(len(ARKIT_NAMES), default) for key, (default, *_rest) in FIELDS.items()}
        for name, fields in shapes.items():
            if name not in ARKIT_INDEX:
                close = difflib.get_close_matches(name, ARKIT_NAMES, n=1)
                raise TrackerError(f"ARKit profile: unknown shape {name!r}" + (f" (did you mean {close[0]!r}?)" if close else " (ARKit's 52 names)"))
            if not isinstance(fields, dict):
                raise TrackerError(f"ARKit profile: {name} must be an object of fields ({', '.join(FIELDS)}), got {type(fields).__name__}")
            for key, value in fields.items():
                if key not in FIELDS:
                    raise TrackerError(f"ARKit profile: {name}.{key} is not a field (fields: {', '.join(FIELDS)})")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise TrackerError(f"ARKit profile: {name}.{key} must be a number, got {json.dumps(value)}")
                values[key][ARKIT_INDEX[name]] = value
        return cls(**values)  # which checks every range, naming the shape and field


class NeutralCalibration:
    """The resting weights of one face: raw weights collected for ``seconds`` from the first frame
    added; ``neutral()`` is their per-shape median once ``done``."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise TrackerError(f"the neutral calibration needs a positive duration, got {seconds} s")
        self.seconds = float(seconds)
        self.start: float | None = None
        self.samples: list[np.ndarray] = []
        self.done = False

    def add(self, weights: np.ndarray, timestamp: float) -> bool:
        """Take (52,) raw weights at ``timestamp`` seconds -> True when this frame completed the
        calibration (frames after that are ignored)."""
        if self.done:
            return False
        if self.start is None:
            self.start = timestamp
        if timestamp - self.start >= self.seconds and self.samples:
            self.done = True
            return True
        if np.isfinite(weights).any():
            self.samples.append(np.asarray(weights, np.float64))
        return False

    def neutral(self) -> np.ndarray:
        """(52,) the median of the collected weights (0 for a shape never measured)."""
        if not self.samples:
            raise TrackerError("the neutral calibration saw no face")
        return np.nan_to_num(np.nanmedian(np.stack(self.samples), axis=0), nan=0.0)


def _in_range(values, low: float, high: float, high_allowed: bool):
    return (values >= low) & ((values <= high) if high_allowed else (values < high))


def _range_text(low: float, high: float, high_allowed: bool) -> str:
    return f"[{low:g}, {high:g}{']' if high_allowed else ')'}"


def _number(value: float) -> str:
    """The file's text of a field: at most 6 decimals, the shortest that reads back as that."""
    return repr(round(float(value), 6))
