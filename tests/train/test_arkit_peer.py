"""``train.arkit_peer``: the figures that compare ARKit weights with the face's openings (hand-made
series with known answers), and ``train.evaluate_real --arkit-peer`` running MediaPipe's
blendshape model beside the tracker on a real video (skipped with a reason where the shared
peer model is absent; CI has it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tracker.errors import TrackerError
from tracker.fitting.arkit import ARKIT_INDEX, ARKIT_NAMES
from tracker.live.options import DEFAULT_CHECKPOINT
from train import arkit_peer, evaluate_real
from train.arkit_peer import (
    lag,
    relative_jitter,
    shape_agreement,
    subframe_lag,
    weight_figures,
)


def test_relative_jitter_is_scale_free_and_counts_consecutive_triples_only() -> None:
    t = np.arange(40)
    ramp = 0.01 * t  # constant velocity: no jitter
    assert relative_jitter(ramp, t) == pytest.approx(0.0, abs=1e-12)
    zigzag = np.where(t % 2 == 0, 0.0, 1.0)  # |second difference| = 2, std = 0.5
    assert relative_jitter(zigzag, t) == pytest.approx(4.0)
    assert relative_jitter(3.0 * zigzag, t) == pytest.approx(4.0), "scale-free"
    gapped = np.array([0, 1, 2, 10, 11, 12, 20])  # triples (0,1,2) and (10,11,12) only
    series = np.array([0.0, 1.0, 0.0, 5.0, 5.0, 5.0, 9.0])
    assert relative_jitter(series, gapped) == pytest.approx(np.mean([2.0, 0.0]) / series.std())
    assert math.isnan(relative_jitter(np.ones(10), np.arange(10)))


def test_lag_finds_a_known_delay_either_way() -> None:
    rng = np.random.default_rng(0)
    opening = np.convolve(rng.normal(size=300), np.ones(5) / 5, mode="same")
    late = np.roll(opening, 3)  # the weight follows the face 3 frames late
    assert lag(late, opening) == 3
    assert lag(np.roll(opening, -2), opening) == -2
    assert lag(opening, opening) == 0


@pytest.mark.parametrize("delay", [0.0, 0.3, -0.45, 2.25])
def test_subframe_lag_finds_a_fractional_delay_of_a_smooth_signal(delay: float) -> None:
    t = np.arange(400, dtype=np.float64)

    def opening(times: np.ndarray) -> np.ndarray:  # band-limited, so the parabola's vertex is close to the true delay
        return np.sin(2 * np.pi * times / 37.0) + 0.6 * np.sin(2 * np.pi * times / 23.0 + 1.0)

    late = opening(t - delay)  # the weight follows the face ``delay`` frames late
    assert lag(late, opening(t)) == round(delay)
    assert subframe_lag(late, opening(t)) == pytest.approx(delay, abs=0.03)


def test_weight_figures_and_agreement_on_made_series() -> None:
    rng = np.random.default_rng(1)
    frames = 200
    mouth = 0.5 + 0.4 * np.sin(np.linspace(0, 12, frames))
    eye = 0.3 - 0.2 * (rng.random(frames) < 0.1)  # blinks: the lid gap drops
    ours = np.zeros((frames, len(ARKIT_NAMES)))
    ours[:, ARKIT_INDEX["jawOpen"]] = mouth
    ours[:, ARKIT_INDEX["eyeBlinkLeft"]] = ours[:, ARKIT_INDEX["eyeBlinkRight"]] = 0.3 - eye
    ours[:, ARKIT_INDEX["mouthSmileLeft"]] = np.linspace(0, 1, frames)
    figures = weight_figures(ours, np.arange(frames), mouth, eye)
    assert figures.jaw_open_r == pytest.approx(1.0) and figures.blink_r == pytest.approx(1.0)
    assert figures.jaw_open_lag == 0 and figures.moving == 4
    theirs = ours.copy()
    theirs[:, ARKIT_INDEX["mouthSmileLeft"]] *= -1.0  # the peer disagrees on one shape
    theirs[:, ARKIT_INDEX["tongueOut"]] = np.nan  # and lacks another
    agreement = shape_agreement(ours, theirs)
    assert agreement["mouthSmileLeft"] == pytest.approx(-1.0) and agreement["jawOpen"] == pytest.approx(1.0)
    assert "tongueOut" not in agreement and "browDownLeft" not in agreement  # not moving


def test_compare_with_peer_uses_the_frames_both_have() -> None:
    frames = 30
    t = np.arange(frames, dtype=float)
    ours = np.tile(np.linspace(0, 1, frames)[:, None], (1, len(ARKIT_NAMES)))
    theirs = ours.copy()
    theirs[5] = np.nan  # the peer found no face here
    comparison = arkit_peer.compare_with_peer(ours, theirs, np.arange(frames), t, -t)
    assert comparison.frames == frames - 1
    assert comparison.ours.jaw_open_r == pytest.approx(1.0) and comparison.peer.jaw_open_r == pytest.approx(1.0)


def test_a_missing_peer_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrackerError, match="does not exist.*Face Landmarker"):
        arkit_peer.ArkitPeer(tmp_path / "nothing.task")
    (tmp_path / "bad.task").write_bytes(b"not a model")
    with pytest.raises(TrackerError, match="not a Face Landmarker model"):
        arkit_peer.ArkitPeer(tmp_path / "bad.task")


@pytest.mark.shared
def test_evaluate_real_runs_the_peer_beside_the_tracker(shared_path: Path, tmp_path: Path, capsys) -> None:
    if arkit_peer.default_peer_path() is None:
        pytest.skip(f"no {arkit_peer.PEER_FILE} in the shared folder's peers/")
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    report = tmp_path / "report.json"
    code = evaluate_real.main(["--checkpoint", str(DEFAULT_CHECKPOINT), "--videos-only", "--videos", str(video), "--arkit-peer", "--runtime", "torch", "--json", str(report)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "ARKit weights beside the peer" in printed and "| single_face.mp4 | 72 |" in printed
    peer = json.loads(report.read_text())["videos"]["rows"][0]["peer"]
    assert peer["frames"] == 72
    # the peer is a working blendshape model: its jaw follows MediaPipe's mouth on a speaking face
    assert peer["peer"]["jaw_open_r"] > 0.8 and peer["ours"]["jaw_open_r"] > 0.8
    assert 0 < peer["peer"]["moving"] <= 51 and len(peer["agreement"]) >= 5 and all(-1 <= r <= 1 for r in peer["agreement"].values())


def test_evaluate_real_skips_the_peer_with_a_reason_when_it_is_absent(shared_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(evaluate_real, "default_peer_path", lambda: None)
    video = shared_path / "real-faces" / "videos" / "no_face.mp4"
    code = evaluate_real.main(["--checkpoint", str(DEFAULT_CHECKPOINT), "--videos-only", "--videos", str(video), "--arkit-peer", "--runtime", "torch", "--max-frames", "3"])
    printed = capsys.readouterr().out
    assert code == 0 and "--arkit-peer: skipped, no face_landmarker_v2_with_blendshapes.task" in printed
    assert "beside the peer" not in printed
    assert evaluate_real.main(["--checkpoint", str(DEFAULT_CHECKPOINT), "--videos-only", "--videos", str(video), "--arkit-peer", "/nowhere/x.task"]) == 2
    assert "does not exist" in capsys.readouterr().err
