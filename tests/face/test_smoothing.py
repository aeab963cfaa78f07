"""One-Euro filter against the paper's formulas (closed forms computed here) and the parameter smoother."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tracker.face.smoothing import (
    FrameParameters,
    OneEuroFilter,
    OneEuroSettings,
    ParameterSmoother,
)
from tracker.geometry.rotations import euler_to_rotation_6d, rotation_6d_to_matrix


def _run(filt: OneEuroFilter, values, times) -> np.ndarray:
    return np.stack([np.asarray(filt(v, t)) for v, t in zip(values, times)])


def test_constant_signal_is_unchanged_at_any_rate():
    times = np.cumsum(np.random.default_rng(0).uniform(0.005, 0.1, size=50))
    value = np.array([[0.3, -2.0], [7.0, 1e-3]])
    out = _run(OneEuroFilter(min_cutoff=0.5, beta=3.0), [value] * len(times), times)
    assert np.array_equal(out, np.broadcast_to(value, out.shape))


def test_step_response_matches_first_order_low_pass():
    fc = 2.0
    tau = 1.0 / (2 * math.pi * fc)
    rate = 60.0
    times = np.arange(61) / rate
    signal = np.where(np.arange(61) == 0, 0.0, 1.0)  # step right after the first sample
    out = _run(OneEuroFilter(min_cutoff=fc), signal, times)
    # discrete closed form: the remaining error shrinks by tau / (tau + Te) every sample
    n = np.arange(61)
    assert np.allclose(out, 1.0 - (tau / (tau + 1.0 / rate)) ** n, rtol=0, atol=1e-12)
    # sampled finely, the step response is the continuous 1 - exp(-t / tau)
    fine = np.arange(0, 5 * tau, tau / 2000)
    out = _run(OneEuroFilter(min_cutoff=fc), np.where(fine > 0, 1.0, 0.0), fine)
    assert np.allclose(out, 1.0 - np.exp(-fine / tau), atol=5e-4)
    assert abs(out[np.searchsorted(fine, tau)] - (1 - math.exp(-1))) < 1e-3


def test_variable_timestamps_follow_continuous_time():
    fc = 1.5
    tau = 1.0 / (2 * math.pi * fc)
    rng = np.random.default_rng(1)
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.2, 1.8, size=3000) * tau / 1000)])
    out = _run(OneEuroFilter(min_cutoff=fc), np.where(times > 0, 1.0, 0.0), times)
    assert np.allclose(out, 1.0 - np.exp(-times / tau), atol=1e-3)
    # and at coarse, irregular frame times every step uses its own Te: alpha_i = 1 / (1 + tau / Te_i)
    times = np.array([0.0, 0.01, 0.05, 0.06, 0.2, 0.21])
    out = _run(OneEuroFilter(min_cutoff=fc), [0.0] + [1.0] * 5, times)
    expected = 1.0 - np.concatenate([[1.0], np.cumprod(1.0 / (1.0 + np.diff(times) / tau))])
    assert np.allclose(out, expected, atol=1e-12)


def test_repeated_and_backward_timestamps():
    filt = OneEuroFilter(min_cutoff=1.0)
    filt(0.0, 0.0)
    first = filt(1.0, 0.1)
    assert filt(5.0, 0.1) == first  # same instant: previous output
    assert filt(3.0, 0.05) == 3.0  # time went back: restart from this sample


@pytest.mark.parametrize("beta", [0.0, 0.5, 5.0])
def test_ramp_lag_matches_steady_state_of_the_paper_equations(beta):
    fc, speed, rate = 1.0, 2.0, 100.0
    te = 1.0 / rate
    times = np.arange(2000) * te
    out = _run(OneEuroFilter(min_cutoff=fc, beta=beta), speed * times, times)
    lag = speed * times[-1] - out[-1]
    # steady state: the output trails by L = v * tau(fc'), fc' = fc + beta * |dx|, and the speed
    # estimate (x_i - xh_{i-1}) / Te reads v + L / Te; so (2 pi beta / Te) L^2 + 2 pi (fc + beta v) L - v = 0
    a, b, c = 2 * math.pi * beta / te, 2 * math.pi * (fc + beta * speed), -speed
    expected = -c / b if beta == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert lag == pytest.approx(expected, rel=1e-6)


def test_higher_beta_less_lag_on_fast_ramp():
    times = np.arange(30) / 30.0
    signal = np.where(times < 0.5, 0.0, 10.0 * (times - 0.5))  # a fast ramp starting mid-way
    lags = [np.abs(signal - _run(OneEuroFilter(min_cutoff=1.0, beta=b), signal, times))[-10:].mean() for b in (0.0, 0.1, 1.0)]
    assert lags[0] > lags[1] > lags[2]


def test_white_noise_variance_reduced_like_first_order_low_pass():
    fc, rate, sigma = 1.0, 60.0, 0.1
    alpha = 1.0 / (1.0 + rate / (2 * math.pi * fc))
    noise = np.random.default_rng(2).normal(0.0, sigma, size=(3000, 200))  # 200 channels at once
    out = _run(OneEuroFilter(min_cutoff=fc), noise, np.arange(3000) / rate)[500:]  # skip the transient
    # y_i = (1 - a) y_{i-1} + a x_i on white noise: var(y) = a / (2 - a) * var(x)
    assert out.var() / sigma**2 == pytest.approx(alpha / (2 - alpha), rel=0.05)


def test_torch_tensor_in_tensor_out_any_shape():
    filt = OneEuroFilter(min_cutoff=1.0, beta=0.1)
    x = torch.zeros(2, 3, 4)
    filt(x, 0.0)
    y = filt(x + 1, 0.1)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 4) and y.dtype == torch.float32
    with pytest.raises(ValueError):
        filt(torch.zeros(3), 0.2)


def test_filter_keeps_its_own_copy_of_the_input():
    filt = OneEuroFilter(min_cutoff=1.0)
    x = np.zeros(3)
    filt(x, 0.0)
    x += 100.0
    assert np.array_equal(filt(np.zeros(3), 0.1), np.zeros(3))


def _frame(t: float) -> FrameParameters:
    t = float(t)
    angle = torch.tensor([0.3 * math.sin(3 * t), 0.5 * math.cos(2 * t), 0.1 * t])
    return FrameParameters(
        params={"expression": torch.full((5,), math.sin(4 * t)), "translation": torch.full((3,), t)},
        rotation_6d=euler_to_rotation_6d(angle) * 1.7,  # unnormalised network-style output
        translation=torch.tensor([0.0, 0.0, 1.0 + 0.1 * math.sin(5 * t)]),
        crop_box=torch.tensor([100.0 + 20 * math.sin(t), 80.0, 240.0]),
    )


def test_parameter_smoother_groups_rotation_and_reset():
    smoother = ParameterSmoother(
        groups={"translation": OneEuroSettings(min_cutoff=1e6)},  # a FLAME group, not the camera's
        default=OneEuroSettings(min_cutoff=0.5),
        translation=OneEuroSettings(min_cutoff=0.5),
    )
    times = np.arange(40) / 30.0
    for t in times:
        raw, out = _frame(t), smoother(_frame(t), t)
        matrix = rotation_6d_to_matrix(out.rotation_6d)
        assert torch.allclose(matrix @ matrix.T, torch.eye(3), atol=1e-5)
        assert torch.allclose(out.rotation_6d.reshape(2, 3).norm(dim=-1), torch.ones(2), atol=1e-6)
        assert torch.allclose(out.params["translation"], raw.params["translation"], atol=1e-4)  # ~unfiltered
    assert not torch.allclose(out.params["expression"], raw.params["expression"], atol=1e-2)
    assert not torch.allclose(out.translation, raw.translation, atol=1e-3)
    assert not torch.allclose(out.crop_box, raw.crop_box, atol=1e-1)
    smoother.reset()  # face lost: the next frame passes through
    after = smoother(_frame(5.0), 5.0)
    assert torch.equal(after.params["expression"], _frame(5.0).params["expression"])
    assert torch.equal(after.crop_box, _frame(5.0).crop_box)


def test_smoothed_rotation_of_a_constant_pose_is_that_pose():
    smoother = ParameterSmoother()
    raw = euler_to_rotation_6d(torch.tensor([0.2, -0.4, 0.1]))
    for t in np.arange(10) / 30.0:
        out = smoother(FrameParameters(rotation_6d=raw * 3.0), t)
    assert torch.allclose(out.rotation_6d, raw, atol=1e-6)
    assert out.translation is None and out.crop_box is None and out.params == {}


def test_disabled_smoother_is_identity():
    smoother = ParameterSmoother(enabled=False)
    for t in np.arange(5) / 30.0:
        frame = _frame(t)
        assert smoother(frame, t) is frame
    smoother.enabled = True
    frame = _frame(1.0)
    out = smoother(frame, 1.0)  # first frame after enabling passes through
    assert torch.equal(out.params["expression"], frame.params["expression"])
