"""``tracker.fitting.arkit_profile``: the per-shape mapping against hand-computed values, the
neutral calibration, the file's round trip and a clear error for every way a file can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tracker.errors import TrackerError
from tracker.fitting.arkit import ARKIT_INDEX
from tracker.fitting.arkit_profile import ArkitProfile, NeutralCalibration

JAW = ARKIT_INDEX["jawOpen"]


def test_the_default_profile_leaves_weights_as_they_are() -> None:
    weights = np.random.default_rng(0).random((10, 52))
    assert ArkitProfile().is_default
    np.testing.assert_allclose(ArkitProfile().apply(weights), weights, atol=1e-7)


def test_each_field_against_hand_computed_values() -> None:
    def one(**fields) -> ArkitProfile:
        values = {key: np.full(52, default) for key, default in (("neutral", 0.0), ("deadzone", 0.0), ("curve", 1.0), ("gain", 1.0), ("offset", 0.0))}
        for key, value in fields.items():
            values[key][JAW] = value
        return ArkitProfile(**values)

    x = np.zeros(52)
    for raw, expected, fields in [
        (0.2, 0.0, {"neutral": 0.2}),  # the resting face reads 0
        (1.0, 1.0, {"neutral": 0.2}),  # full motion still reaches 1
        (0.6, 0.5, {"neutral": 0.2}),  # (0.6 - 0.2) / 0.8
        (0.05, 0.0, {"deadzone": 0.1}),
        (0.55, 0.5, {"deadzone": 0.1}),  # (0.55 - 0.1) / 0.9
        (0.25, 0.5, {"curve": 0.5}),  # 0.25 ** 0.5
        (0.5, 0.75, {"gain": 1.5}),
        (0.9, 1.0, {"gain": 1.5}),  # clipped
        (0.0, 0.1, {"offset": 0.1}),
    ]:
        x[JAW] = raw
        assert one(**fields).apply(x)[JAW] == pytest.approx(expected, abs=1e-6), fields
    x[JAW] = 0.6  # every field together, in the documented order
    combined = one(neutral=0.2, deadzone=0.2, curve=2.0, gain=2.0, offset=-0.05)
    assert combined.apply(x)[JAW] == pytest.approx(2.0 * ((0.5 - 0.2) / 0.8) ** 2 - 0.05, abs=1e-6)
    assert np.isnan(ArkitProfile().apply(np.full(52, np.nan))).all(), "a shape not measured stays unmeasured"


def test_neutral_calibration_takes_the_median_over_its_seconds_and_reads_zero_at_rest() -> None:
    rng = np.random.default_rng(1)
    rest = rng.random(52) * 0.3
    calibration = NeutralCalibration(seconds=1.0)
    finished = [calibration.add(np.clip(rest + rng.normal(0, 0.01, 52), 0, 1), t / 30) for t in range(40)]
    assert finished.index(True) == 30 and calibration.done and len(calibration.samples) == 30
    np.testing.assert_allclose(calibration.neutral(), rest, atol=0.01)
    profile = ArkitProfile().with_neutral(calibration.neutral())
    assert np.abs(profile.apply(rest)).max() < 0.05
    full = rest.copy()
    full[JAW] = 1.0
    assert profile.apply(full)[JAW] == pytest.approx(1.0)
    with pytest.raises(TrackerError, match="positive duration"):
        NeutralCalibration(0)
    with pytest.raises(TrackerError, match="saw no face"):
        NeutralCalibration(1.0).neutral()


def test_the_file_round_trips_and_is_hand_editable(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    profile = ArkitProfile(neutral=rng.random(52) * 0.5, deadzone=rng.random(52) * 0.1, curve=0.5 + rng.random(52),
                           gain=0.5 + rng.random(52), offset=rng.random(52) * 0.2 - 0.1)
    path = profile.save(tmp_path / "me.json")
    text = path.read_text()
    assert len(text.splitlines()) == 52 + 4 and '"jawOpen": {"neutral":' in text, "one line per shape"
    loaded = ArkitProfile.load(path)
    for key in ("neutral", "deadzone", "curve", "gain", "offset"):
        np.testing.assert_allclose(getattr(loaded, key), getattr(profile, key), rtol=1e-3)
    (tmp_path / "few.json").write_text(json.dumps({"format": "n2f-arkit-profile", "version": 1, "shapes": {"jawOpen": {"gain": 2}}}))
    few = ArkitProfile.load(tmp_path / "few.json")
    assert few.gain[JAW] == 2 and few.gain[ARKIT_INDEX["eyeBlinkLeft"]] == 1 and few.neutral[JAW] == 0


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON: .* line 1, column 2"),
    ("[]", "expected a JSON object"),
    ('{"format": "other", "version": 1}', '"format" must be "n2f-arkit-profile"'),
    ('{"format": "n2f-arkit-profile", "version": 7}', "version 7 is not supported"),
    ('{"format": "n2f-arkit-profile", "version": 1, "extra": 1}', "unknown key.*extra"),
    ('{"format": "n2f-arkit-profile", "version": 1, "shapes": {"jawOpn": {}}}', "unknown shape 'jawOpn' .did you mean 'jawOpen'"),
    ('{"format": "n2f-arkit-profile", "version": 1, "shapes": {"jawOpen": {"gian": 1}}}', "jawOpen.gian is not a field"),
    ('{"format": "n2f-arkit-profile", "version": 1, "shapes": {"jawOpen": {"gain": "2"}}}', 'jawOpen.gain must be a number, got "2"'),
    ('{"format": "n2f-arkit-profile", "version": 1, "shapes": {"jawOpen": {"neutral": 1.0}}}', r"jawOpen.neutral is 1, outside \[0, 1\)"),
    ('{"format": "n2f-arkit-profile", "version": 1, "shapes": {"eyeBlinkLeft": {"gain": -1}}}', r"eyeBlinkLeft.gain is -1, outside \[0, 10\]"),
    ('{"format": "n2f-arkit-profile", "version": 1, "shapes": {"jawOpen": 3}}', "jawOpen must be an object"),
])
def test_a_bad_file_is_a_clear_error_naming_the_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TrackerError, match=message) as error:
        ArkitProfile.load(path)
    assert str(path) in str(error.value)
    with pytest.raises(TrackerError, match="cannot be read"):
        ArkitProfile.load(tmp_path / "missing.json")
