"""The user's ARKit profile end to end (``python -m app.live --headless``, the shipped network, a
real video): ``--calibrate-neutral`` measures the resting weights and writes ``--profile``; the
recorded weights are the profile's mapping of the raw ones, which the take keeps beside them;
a saved profile applies from the first frame of the next run; a bad one is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app import live
from tracker.fitting.arkit import ARKIT_INDEX
from tracker.fitting.arkit_profile import ArkitProfile
from tracker.live.options import DEFAULT_CHECKPOINT
from tracker.takes.recording import read_take

pytestmark = pytest.mark.shared
CALIBRATION_SECONDS = 1.0
JAW = ARKIT_INDEX["jawOpen"]


@pytest.fixture(scope="module")
def video(shared_path: Path) -> Path:
    return shared_path / "real-faces" / "videos" / "single_face.mp4"


def _run(video: Path, take: Path, *extra: str) -> int:
    return live.main(["--video", str(video), "--headless", "--record", str(take), "--checkpoint", str(DEFAULT_CHECKPOINT), "--runtime", "torch",
                      "--quiet", *extra])


def test_neutral_calibration_writes_the_profile_and_the_take_keeps_both_weights(video: Path, tmp_path: Path, capsys) -> None:
    profile_path = tmp_path / "me.json"
    assert _run(video, tmp_path / "calibrated.npz", "--calibrate-neutral", str(CALIBRATION_SECONDS), "--profile", str(profile_path)) == 0
    take = read_take(tmp_path / "calibrated.npz")
    profile = ArkitProfile.load(profile_path)
    assert not profile.is_default and take.metadata["arkit_profile"] == str(profile_path)
    during = take.media_time - take.media_time[0] < CALIBRATION_SECONDS
    # the calibration's frames went out raw; its neutral is their median
    np.testing.assert_array_equal(take.arkit[during], take.arkit_raw[during])
    np.testing.assert_allclose(profile.neutral, np.clip(np.median(take.arkit_raw[during], axis=0), 0, 0.95), atol=1e-4)
    after = ~during
    np.testing.assert_allclose(take.arkit[after], profile.apply(take.arkit_raw[after]), atol=1e-6)
    rest = profile.apply(take.arkit_raw[during])  # the resting stretch, as the profile maps it
    jaw_range = np.ptp(take.arkit[after, JAW]) / np.ptp(take.arkit_raw[after, JAW])
    print(f"resting weights after calibration: median {np.median(rest, axis=0).max():.3f} (largest shape), mean {rest.mean():.3f}; "
          f"jawOpen neutral {profile.neutral[JAW]:.3f}, range calibrated / raw {jaw_range:.3f}")
    assert np.median(rest, axis=0).max() < 0.01 and rest.mean() < 0.05
    # the motion keeps its range: shifted down by the neutral and stretched by 1 / (1 - neutral), so a
    # full opening still reaches 1; only motion below the resting value is cut
    assert jaw_range >= 0.9

    assert _run(video, tmp_path / "again.npz", "--profile", str(profile_path)) == 0  # the saved profile, from the first frame
    again = read_take(tmp_path / "again.npz")
    np.testing.assert_allclose(again.arkit, profile.apply(again.arkit_raw), atol=1e-6)


def test_a_bad_profile_is_refused_naming_its_field(video: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "n2f-arkit-profile", "version": 1, "shapes": {"jawOpen": {"gain": -2}}}))
    assert _run(video, tmp_path / "take.npz", "--profile", str(bad), "--max-frames", "2") == 2
    assert "jawOpen.gain is -2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        _run(video, tmp_path / "take.npz", "--calibrate-neutral", "0", "--max-frames", "2")
    assert exit_.value.code == 2 and "--calibrate-neutral: must be a finite number above 0" in capsys.readouterr().err
