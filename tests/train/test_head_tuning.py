"""Head tuning on cached backbone tokens (train.head_tuning), tiny sizes."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.train.test_training import SIZE, _write_real_dataset, tiny_config
from tracker.head_models import load_head_model
from tracker.n2fnet.checkpoint import load_checkpoint
from train import head_tuning
from train.config import HeadTuningConfig
from train.head_tuner import (
    HeadTuner,
    TokenSet,
    projected_landmarks,
    real_token_set,
    synthetic_token_set,
)
from train.real_data import RealDataset
from train.synthetic import SamplerConfig, SyntheticSampler
from train.trainer import Trainer


@pytest.fixture(scope="module")
def ict(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


def test_projected_landmarks_match_the_rendered_ones(ict):
    """The fast landmark path (basis rows of the landmark vertices) against the renderer's (whole
    mesh decoded, then the landmark vertices), on ground-truth synthetic faces."""
    batch = SyntheticSampler(ict, SamplerConfig(output_size=SIZE, surface="mediapipe"), seed=3).sample(4)
    fast = projected_landmarks(ict, batch.params, batch.rotation, batch.translation, batch.focal, batch.principal)
    assert torch.allclose(fast, batch.landmarks_2d, atol=1e-3)


def test_cached_tokens_are_the_backbones_and_the_heads_give_the_networks_output(tmp_path, ict_npz_path, ict):
    trainer = Trainer(tiny_config(tmp_path, ict_npz_path))
    sampler = SyntheticSampler(ict, trainer.config.sampler, seed=5)
    cached = synthetic_token_set(trainer.net, sampler, 5, batch=5)
    batch = SyntheticSampler(ict, trainer.config.sampler, seed=5).sample(5)  # the same faces again
    trainer.net.eval()
    with torch.no_grad():
        direct = trainer.net(batch.normals, batch.focal, batch.principal)
        via_cache = trainer.net.heads(cached.tokens, cached.focal, cached.principal)
    assert len(cached) == 5 and torch.allclose(cached.landmarks_2d, batch.landmarks_2d)
    assert torch.allclose(direct.translation, via_cache.translation, atol=1e-5)
    assert all(torch.allclose(direct.params[g], via_cache.params[g], atol=1e-5) for g in direct.params)


def test_head_tuning_fits_the_cached_faces_through_both_heads(tmp_path, ict_npz_path, ict):
    torch.manual_seed(0)
    trainer = Trainer(tiny_config(tmp_path, ict_npz_path, val_size=2))
    faces = synthetic_token_set(trainer.net, SyntheticSampler(ict, trainer.config.sampler, seed=7), 16, batch=8)
    config = HeadTuningConfig(steps=300, batch_size=16, real_fraction=1.0, lr_flame_module=3e-3, lr_camera_module=1e-2, val_every=300, log_every=100)
    tuner = HeadTuner(trainer, faces, faces.take(torch.arange(0)), config)
    loss, _ = tuner.loss(faces)
    loss.backward()  # the landmark term reaches both heads
    for module in (trainer.net.flame_module, trainer.net.camera_module):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in trainer.net.backbone.parameters())  # frozen
    before = tuner.fit_figures(faces, "fit")
    tuner.run()
    after = tuner.fit_figures(faces, "fit")
    assert after["fit_nme51"] < 0.5 * before["fit_nme51"], (before, after)
    assert after["fit_rotation_deg"] < 0.5 * before["fit_rotation_deg"], (before, after)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["head_tuning"]["steps"] == 300 and state["step"] == 300


def test_cli_on_a_pseudo_gt_folder_and_its_refusals(tmp_path, ict_npz_path, ict, capsys):
    Trainer(tiny_config(tmp_path, ict_npz_path, stage1_steps=1, stage2_steps=1)).run()
    start = str(tmp_path / "run" / "best_stage2.pt")
    data = tmp_path / "real"
    _write_real_dataset(data, ict, SIZE)
    real = real_token_set(Trainer(tiny_config(tmp_path, ict_npz_path), init=start).net, RealDataset(data, SIZE, 100.0, stage=1))
    assert len(real) == 3 and real.landmark_visible[:, :17].sum() == 0  # the unannotated contour stays out
    out = tmp_path / "tuned"
    args = ["--checkpoint", start, "--data", str(data), "--out-dir", str(out), "--steps", "3", "--batch-size", "4", "--synthetic-samples", "4", "--val-every", "3"]
    assert head_tuning.main(args) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["head_tuning"]["data"] == str(data) and state["stage"] == 2
    assert "real_train_nme51" in (out / "metrics.csv").read_text()
    # a folder without poses is refused with what is missing
    shutil.rmtree(data / "poses")
    assert head_tuning.main(args) == 2
    assert "poses" in capsys.readouterr().err
    assert head_tuning.main([*args, "--real-fraction", "0"]) == 2


def test_token_sets_join_and_take():
    def part(n, groups):
        return TokenSet(
            torch.randn(n, 4, 8), torch.ones(n, 2), torch.ones(n, 2), {g: torch.randn(n, 3) for g in groups},
            torch.zeros(n, 68, 2), torch.ones(n, 68), torch.eye(3).expand(n, 3, 3), torch.zeros(n, 3),
        )

    a, b = part(2, ("identity", "expression")), part(3, ("expression",))
    joined = TokenSet.join([a, b])
    assert len(joined) == 5 and set(joined.params) == {"expression"}
    picked = joined.take(torch.tensor([4, 0]))
    assert torch.equal(picked.tokens[1], a.tokens[0]) and torch.equal(picked.params["expression"][0], b.params["expression"][2])
