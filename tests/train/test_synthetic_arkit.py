"""``train.synthetic_arkit``: the per-shape figures on made series with known answers, and
``train.evaluate_real --synthetic-only`` tracking the demo's rendered head, the peer beside it
(skipped with a reason where the shared peer model is absent; CI has it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tracker.fitting.arkit import ARKIT_INDEX
from tracker.live.demo import demo_script
from tracker.live.options import DEFAULT_CHECKPOINT
from train import arkit_peer, evaluate_real
from train.synthetic_arkit import mediapipe_gain, neutral_profile, resting, shape_figures


def test_shape_figures_on_made_series() -> None:
    script = demo_script(shapes=("jawOpen", "eyeBlinkLeft"), turns=False, speech_frames=0)
    truth = script.weights.astype(np.float64)
    ours = truth.copy()
    jaw = next(s for s in script.segments if s.shape == "jawOpen")
    ours[jaw.start : jaw.stop, ARKIT_INDEX["mouthClose"]] = 0.3 * truth[jaw.start : jaw.stop, ARKIT_INDEX["jawOpen"]]  # crosstalk 0.3
    ours[:, ARKIT_INDEX["browInnerUp"]] = 0.05  # a resting weight everywhere
    blink = next(s for s in script.segments if s.shape == "eyeBlinkLeft")
    middle = (blink.start + blink.stop) // 2
    ours[blink.start : blink.stop, ARKIT_INDEX["eyeBlinkLeft"]] *= 0.5  # half the range
    ours[middle] = np.nan  # no face at the blink's peak
    figures = shape_figures(truth, ours, script)
    assert set(figures) == {"jawOpen", "eyeBlinkLeft"}
    r, crosstalk, which, peak = figures["jawOpen"]
    assert r == pytest.approx(1.0) and crosstalk == pytest.approx(0.3, abs=0.01) and which == "mouthClose" and peak == pytest.approx(1.0, abs=0.01)
    r, crosstalk, which, peak = figures["eyeBlinkLeft"]
    # scaled in its segment only (and its peak missing): r below 1 but high; the resting weight is its crosstalk
    assert 0.9 < r < 1.0 and crosstalk == pytest.approx(0.05) and which == "browInnerUp"
    assert peak == pytest.approx(0.5 * np.sort(truth[blink.start : blink.stop, ARKIT_INDEX["eyeBlinkLeft"]])[-2])
    assert resting(ours, script) == pytest.approx(0.05)
    calibrated = neutral_profile(ours, script).apply(ours)
    assert np.nanmax(calibrated[:, ARKIT_INDEX["browInnerUp"]]) == 0.0  # the resting weight reads 0 once calibrated
    assert np.nanmax(calibrated[:, ARKIT_INDEX["jawOpen"]]) == pytest.approx(np.nanmax(ours[:, ARKIT_INDEX["jawOpen"]]), abs=1e-6)
    assert math.isnan(resting(np.full_like(ours, np.nan), script))


def test_mediapipe_gain_is_one_for_points_that_follow_the_shape_and_scales_with_them(ict_npz_path) -> None:
    from tracker.fitting.mediapipe_embedding import mediapipe_embedding
    from tracker.head_models import load_head_model
    from tracker.live.demo import DemoPerformer

    head = load_head_model("ict", ict_npz_path)
    script = demo_script(shapes=("jawOpen", "browInnerUp"), turns=False, speech_frames=0)
    performer, embedding = DemoPerformer(head, script), mediapipe_embedding(head)
    exact = np.stack([performer.project(embedding.points(performer.vertices(t)[None])[0].double().numpy(), t) for t in range(len(script))])
    rest = exact[0]
    for scale in (1.0, 0.5, 0.0):
        gains = mediapipe_gain(head, script, rest + scale * (exact - rest))
        assert set(gains) == {"jawOpen", "browInnerUp"}
        assert gains["jawOpen"][0] == pytest.approx(scale, abs=1e-6) and gains["browInnerUp"][0] == pytest.approx(scale, abs=1e-6)
    assert gains["jawOpen"][1] > 30 > gains["browInnerUp"][1] > 3  # px: the jaw moves its points far more than the brows


def test_evaluate_real_tracks_the_rendered_head_beside_the_peer(shared_path: Path, tmp_path: Path, capsys) -> None:
    if arkit_peer.default_peer_path() is None:
        pytest.skip(f"no {arkit_peer.PEER_FILE} in the shared folder's peers/")
    report = tmp_path / "report.json"
    code = evaluate_real.main(["--checkpoint", str(DEFAULT_CHECKPOINT), "--synthetic-only", "--synthetic-shapes", "jawOpen", "mouthSmileLeft",
                               "--arkit-peer", "--runtime", "torch", "--json", str(report)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    script = demo_script(shapes=("jawOpen", "mouthSmileLeft"))
    assert f"ARKit weights on rendered ground truth (tracker.live.demo; train.synthetic_arkit defines the figures): {len(script)} frames" in printed
    result = json.loads(report.read_text())["synthetic_arkit"]
    assert result["frames"] == result["found"] == result["peer_found"] == len(script)
    shapes = {s["shape"]: s for s in result["shapes"]}
    assert set(shapes) == {"jawOpen", "mouthSmileLeft"}
    # both systems see the rendered jaw open: the renders are faces a trained model reads
    assert shapes["jawOpen"]["ours"]["r"] > 0.8 and shapes["jawOpen"]["peer"]["r"] > 0.8
    assert shapes["mouthSmileLeft"]["peer"]["r"] > 0.5
    assert shapes["jawOpen"]["gain"] > 0.7 and shapes["jawOpen"]["motion_px"] > 30  # MediaPipe's points follow the rendered jaw
    # the calibration takes the resting weights out: crosstalk never rises by it
    for figures in (f for s in shapes.values() for f in (s["ours"], s["peer"])):
        assert figures["calibrated_crosstalk"] <= figures["crosstalk"] + 1e-6
    assert evaluate_real.main(["--checkpoint", str(DEFAULT_CHECKPOINT), "--synthetic-only", "--synthetic-shapes", "tongueOut"]) == 2
    assert "cannot perform tongueOut" in capsys.readouterr().err
    assert evaluate_real.main(["--checkpoint", str(DEFAULT_CHECKPOINT), "--videos-only", "--synthetic-shapes", "jawOpen"]) == 2
    assert "add --synthetic-arkit or --synthetic-only" in capsys.readouterr().err
