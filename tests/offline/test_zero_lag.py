"""The zero-lag smoother (tracker.offline.zero_lag) against a dense least-squares solve of the
same objective, and its promises: no lag, the stated gain at the cutoff, gaps filled."""

from __future__ import annotations

import numpy as np
import pytest

from tracker.offline.zero_lag import lambda_for_cutoff, whittaker


def dense_whittaker(y: np.ndarray, lam: float, w: np.ndarray) -> np.ndarray:
    """The minimiser of sum w (x - y)^2 + lam |D2 x|^2 by numpy's dense solve (the reference)."""
    second = np.diff(np.eye(len(y)), n=2, axis=0)
    return np.linalg.solve(np.diag(w) + lam * second.T @ second, w[:, None] * y.reshape(len(y), -1))


@pytest.mark.parametrize("count", [3, 4, 5, 41])
def test_the_banded_solve_is_the_dense_least_squares_solution(count: int) -> None:
    rng = np.random.default_rng(count)
    y = rng.normal(size=(count, 3))
    w = rng.random(count) + 0.1
    w[count // 2] = 0.0  # a frame without a value
    lam = 7.5
    assert np.allclose(whittaker(y, lam, w), dense_whittaker(y, lam, w), atol=1e-12)
    assert np.allclose(whittaker(y[:, 0], lam), dense_whittaker(y[:, 0], lam, np.ones(count))[:, 0], atol=1e-12)  # (T,) in, (T,) out


def test_a_peak_stays_on_its_frame_where_a_causal_filter_moves_it_later() -> None:
    t = np.arange(301, dtype=np.float64)
    clean = np.exp(-0.5 * ((t - 150.0) / 6.0) ** 2)  # a blink-like bump at frame 150
    noisy = clean + np.random.default_rng(0).normal(scale=0.05, size=t.shape)
    smoothed = whittaker(noisy, lambda_for_cutoff(4.0, 30.0))
    causal = np.zeros_like(noisy)  # a first-order low-pass with about the same noise reduction
    for i in range(1, len(t)):
        causal[i] = causal[i - 1] + 0.3 * (noisy[i] - causal[i - 1])

    def lag(x: np.ndarray) -> int:
        """Frames by which x trails the clean bump (peak of the cross-correlation)."""
        shifts = range(-10, 11)
        return list(shifts)[int(np.argmax([np.dot(np.roll(x, -s), clean) for s in shifts]))]

    assert lag(smoothed) == 0 and lag(causal) >= 2
    assert np.std(np.diff(smoothed, 2)) < 0.2 * np.std(np.diff(noisy, 2))  # and it does smooth


@pytest.mark.parametrize("cutoff, fps", [(4.0, 30.0), (8.0, 25.0), (2.0, 60.0)])
def test_half_the_amplitude_passes_at_the_cutoff(cutoff: float, fps: float) -> None:
    t = np.arange(2000) / fps
    gain = lambda hz: np.ptp(whittaker(np.sin(2 * np.pi * hz * t), lambda_for_cutoff(cutoff, fps))[500:-500]) / 2  # away from the ends
    assert gain(cutoff) == pytest.approx(0.5, abs=0.01)
    lam = lambda_for_cutoff(cutoff, fps)
    for hz in (cutoff / 4, cutoff / 2, min(2 * cutoff, fps / 2 - 1)):  # the transfer function of the module docstring
        assert gain(hz) == pytest.approx(1 / (1 + lam * (2 - 2 * np.cos(2 * np.pi * hz / fps)) ** 2), abs=0.01)
    assert gain(cutoff / 4) > 0.98


def test_frames_without_a_value_are_filled_from_their_neighbours() -> None:
    y = np.linspace(0.0, 3.0, 20)[:, None] * np.array([1.0, -2.0])  # a straight line: nothing to smooth
    w = np.ones(20)
    w[8:12] = 0.0
    y_holes = y.copy()
    y_holes[8:12] = 99.0  # what is at a frame without a value is ignored
    assert np.allclose(whittaker(y_holes, 50.0, w), y, atol=1e-9)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="weights"):
        whittaker(np.zeros(5), 1.0, np.array([1.0, -1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="weights"):
        whittaker(np.zeros(5), 1.0, np.ones(4))
    with pytest.raises(ValueError, match="lam"):
        whittaker(np.zeros(5), -1.0)
    with pytest.raises(ValueError, match="positive"):
        lambda_for_cutoff(0.0, 30.0)
    assert lambda_for_cutoff(30.0, 30.0) == pytest.approx(1 / 16)  # at or above Nyquist: the largest step's gain is 1/2
