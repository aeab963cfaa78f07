"""``train.arkit_pictures``: which shapes get pictures and which frames show them, and the command
on a real video (skipped with a reason where the shared peer model is absent; CI has it)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tracker.fitting.arkit import ARKIT_INDEX
from tracker.live.options import DEFAULT_CHECKPOINT
from train import arkit_peer, arkit_pictures
from train.arkit_pictures import peak_rows, peer_silent_shapes


def test_shapes_we_move_and_the_peer_does_not() -> None:
    rng = np.random.default_rng(0)
    ours, theirs = np.zeros((100, 52)), np.zeros((100, 52))
    ours[:, ARKIT_INDEX["cheekPuff"]] = rng.uniform(0, 0.3, 100)  # ours only
    ours[:, ARKIT_INDEX["jawOpen"]] = theirs[:, ARKIT_INDEX["jawOpen"]] = rng.uniform(0, 0.5, 100)  # both
    theirs[:, ARKIT_INDEX["mouthPucker"]] = rng.uniform(0, 0.5, 100)  # the peer's only
    ours[:, ARKIT_INDEX["tongueOut"]] = rng.uniform(0, 0.5, 100)
    theirs[:, ARKIT_INDEX["tongueOut"]] = np.nan  # a shape the peer lacks counts as still
    assert peer_silent_shapes(ours, theirs) == ["cheekPuff", "tongueOut"]


def test_peaks_are_the_highest_values_kept_apart() -> None:
    series = np.zeros(100)
    series[[10, 12, 50, 80]] = [0.9, 1.0, 0.5, 0.7]
    assert peak_rows(series, count=3, spacing=15) == [12, 80, 50]  # 10 is within 15 rows of 12
    assert peak_rows(series[:20], count=3, spacing=15) == [12]  # fewer where the video is short


def test_the_command_writes_a_picture_of_a_real_video(shared_path: Path, tmp_path: Path, capsys) -> None:
    if arkit_peer.default_peer_path() is None:
        pytest.skip(f"no {arkit_peer.PEER_FILE} in the shared folder's peers/")
    video = shared_path / "real-faces" / "videos" / "single_face.mp4"
    code = arkit_pictures.main(["--checkpoint", str(DEFAULT_CHECKPOINT), "--videos", str(video), "--out", str(tmp_path), "--runtime", "torch"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    picture = cv2.imread(str(tmp_path / "single_face_arkit.jpg"))
    silent = printed.split("shapes we move and the peer does not: ")[1].splitlines()[0]
    disagreeing = printed.split("shapes both move that disagree: ")[1].splitlines()[0]
    rows = sum(0 if text == "none" else len(text.split(", ")) for text in (silent, disagreeing))
    assert rows > 0 and picture.shape == (arkit_pictures.TILE * rows, arkit_pictures.TILE * (arkit_pictures.PEAKS + 2), 3)
