"""Zero-lag smoothing of a whole track: the Whittaker-Eilers smoother.

    smoothed = whittaker(values, lam, weights)          # (T, C) -> (T, C)
    lam = lambda_for_cutoff(4.0, fps=30.0)              # half the power passes at 4 Hz

x minimises sum_t w_t (x_t - y_t)^2 + lam * sum_t (x_{t-1} - 2 x_t + x_{t+1})^2: a penalised least
squares over the whole track (the discrete cubic smoothing spline), solved exactly through its
banded normal equations (W + lam D'D) x = W y. It is symmetric in time, so it adds no lag: a
peak stays on its frame, where a causal filter (One-Euro) moves it later. Frames without a value
(w_t = 0) are filled by the same solve. Far from the ends, its transfer function is
1 / (1 + lam (2 - 2 cos omega)^2) at omega radians per frame (``lambda_for_cutoff``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solveh_banded


def lambda_for_cutoff(cutoff_hz: float, fps: float) -> float:
    """The lam whose gain is 1/2 at ``cutoff_hz`` for frames at ``fps``: 1 / (1 + lam s^2) = 1/2, so
    lam = 1 / s^2 with s = 2 - 2 cos(2 pi cutoff / fps); a cutoff at or above the Nyquist frequency
    gives 1/16 (s = 4)."""
    if cutoff_hz <= 0 or fps <= 0:
        raise ValueError(f"the cutoff and the frame rate must be positive, got {cutoff_hz} Hz at {fps} fps")
    s = 2.0 - 2.0 * math.cos(2.0 * math.pi * min(cutoff_hz / fps, 0.5))
    return 1.0 / s**2


def whittaker(values: np.ndarray, lam: float, weights: np.ndarray | None = None) -> np.ndarray:
    """(T, C) or (T,) values at T evenly spaced frames -> the smoothed values, float64 (module
    docstring). ``weights`` (T,) >= 0 (None: all 1; 0: no value at that frame, any number there is
    ignored). Fewer than 3 frames, or lam 0, come back unchanged where weighted."""
    y = np.asarray(values, dtype=np.float64)
    flat = y.ndim == 1
    y = y.reshape(len(y), -1)
    count = len(y)
    w = np.ones(count) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (count,) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be {count} finite values >= 0, got shape {w.shape}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    y = np.where(w[:, None] > 0, y, 0.0)
    if count < 3 or lam == 0:
        return y[:, 0] if flat else y
    # D'D of the second difference, upper banded form for solveh_banded: rows = 2nd, 1st super-diagonal, diagonal
    diagonal = np.full(count, 6.0)
    diagonal[[1, -2]] = 5.0 if count > 3 else 4.0
    diagonal[[0, -1]] = 1.0
    first = np.full(count - 1, -4.0)
    first[[0, -1]] = -2.0
    second = np.ones(count - 2)
    banded = np.zeros((3, count))
    banded[0, 2:] = lam * second
    banded[1, 1:] = lam * first
    banded[2] = lam * diagonal + w
    smoothed = solveh_banded(banded, w[:, None] * y, check_finite=False)
    return smoothed[:, 0] if flat else smoothed
