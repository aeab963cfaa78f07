"""The normal-map grid script renders real faces (needs the ICT model from the shared folder)."""

import numpy as np
from PIL import Image

from tracker.render.__main__ import main


def test_grid_png_has_one_face_per_tile(tmp_path, ict_npz_path):
    out = tmp_path / "grid.png"
    assert main(["grid", "--out", str(out), "--rows", "2", "--cols", "3", "--size", "64", "--head-model-path", str(ict_npz_path)]) == 0
    image = np.asarray(Image.open(out))
    assert image.shape == (128, 192, 3)
    tiles = image.reshape(2, 64, 3, 64, 3).transpose(0, 2, 1, 3, 4).reshape(6, 64, 64, 3)
    covered = tiles.any(-1).mean(axis=(1, 2))
    assert (covered > 0.3).all() and (covered < 0.95).all()  # a head in every tile, background around it
    centre = tiles[:, 24:40, 24:40].reshape(6, -1, 3).mean(1)
    assert (centre[:, 2] > 180).all()  # the face's centre looks at the camera: +z (blue) dominates


def test_missing_head_model_is_a_clear_error(tmp_path, capsys):
    assert main(["grid", "--out", str(tmp_path / "g.png"), "--head-model-path", str(tmp_path / "none.npz")]) == 2
    assert "ict" in capsys.readouterr().err.lower()
