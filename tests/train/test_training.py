"""Synthetic data, losses, the two-stage trainer, checkpoints, fine-tuning and evaluation (tiny sizes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from tracker.geometry import camera
from tracker.head_models import load_head_model
from tracker.n2fnet.checkpoint import load_checkpoint, model_from_checkpoint
from tracker.render import normals_to_rgb
from train import evaluate, finetune
from train.losses import (
    PARAM_WEIGHTS,
    PoseWeights,
    RenderWeights,
    coefficient_metrics,
    param_loss,
    pose_loss,
    render_loss,
)
from train.metrics import similarity_align
from train.real_data import RealDataset
from train.synthetic import SamplerConfig, SyntheticSampler
from train.trainer import TrainConfig, Trainer, warmup_cosine

SIZE = 48


@pytest.fixture(scope="module")
def ict(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


def tiny_config(tmp_path, ict_npz_path, **overrides) -> TrainConfig:
    values = dict(
        head_model="ict",
        head_model_path=str(ict_npz_path),
        backbone="resnet18",
        input_size=SIZE,
        token_dim=32,
        stage1_steps=3,
        stage2_steps=2,
        batch_size=2,
        val_every=2,
        val_size=2,
        log_every=1,
        out_dir=str(tmp_path / "run"),
        sampler=SamplerConfig(output_size=SIZE),
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_warmup_then_cosine():
    factors = [warmup_cosine(s, total=100, warmup=10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5, abs=1e-9)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01


def test_param_loss_uses_the_paper_weights():
    target = {"shape": torch.zeros(2, 3), "expression": torch.zeros(2, 5)}
    pred = {"shape": torch.ones(2, 3), "expression": torch.full((2, 5), 2.0)}
    total, terms = param_loss(pred, target, PARAM_WEIGHTS["flame"])
    assert terms["shape"].item() == pytest.approx(10 * 1.0) and terms["expression"].item() == pytest.approx(100 * 4.0)
    assert total.item() == pytest.approx(410.0)


def test_ict_coefficient_metrics_measure_face_displacement_after_now_alignment(ict):
    """e^T G e is proportional to the squared face-vertex displacement an error e leaves after the
    NoW-style alignment (Umeyama, nonlinear, through decode -- not the basis buffers the metric is
    built from); small errors, where the linearised similarity motions are exact enough."""
    metrics_by_group = coefficient_metrics(ict)
    face = ict.region_masks["face"]
    rest = ict.decode(ict.neutral_params(1)).double()
    generator = torch.Generator().manual_seed(0)
    for group in ("identity", "expression"):
        metric = metrics_by_group[group].double()
        assert metric.diagonal().mean().item() == pytest.approx(1.0, rel=1e-5)
        assert torch.allclose(metric, metric.T) and torch.linalg.eigvalsh(metric).min() > -1e-5
        n = ict.param_groups[group].size
        ratios = []
        for _ in range(4):
            error = 1e-3 * torch.randn(1, n, generator=generator)
            params = ict.neutral_params(1)
            params[group] = params[group] + error
            moved = ict.decode(params).double()
            aligned = similarity_align(moved[:, face], rest[:, face])[0]
            displacement = (aligned - rest[:, face]).square().sum()
            ratios.append((error.double() @ metric @ error.double().T).item() / displacement.item())
        assert max(ratios) / min(ratios) == pytest.approx(1.0, abs=2e-2), ratios
    assert coefficient_metrics(type("Flame", (), {"name": "flame"})()) == {}


def test_ict_identity_metric_ignores_the_scale_mode(ict):
    """ICT's first identity mode is mostly a uniform scale, which NoW-style CD aligns away: its
    metric weight falls below the raw face displacement's share."""
    metric = coefficient_metrics(ict)["identity"]
    face = ict.region_masks["face"]
    raw = ict.identity_basis.reshape(-1, ict.num_vertices, 3)[:, face].double().square().sum(dim=(1, 2))
    raw = raw / raw.mean()
    assert raw[0] > 20 and metric[0, 0] < 0.3 * raw[0]


def test_param_loss_applies_coefficient_metrics():
    pred, target = {"identity": torch.ones(4, 3)}, {"identity": torch.zeros(4, 3)}
    total, _ = param_loss(pred, target, {"identity": 2.0}, {"identity": torch.diag(torch.tensor([0.0, 1.0, 2.0]))})
    assert total.item() == pytest.approx(2.0 * (0 + 1 + 2) / 3)
    pred = {"identity": torch.tensor([[1.0, 2.0]])}
    metric = torch.tensor([[2.0, 1.0], [1.0, 3.0]])  # e^T G e = 2 + 2 * 2 + 12 = 18
    total, _ = param_loss(pred, {"identity": torch.zeros(1, 2)}, {"identity": 1.0}, {"identity": metric})
    assert total.item() == pytest.approx(18 / 2)


def test_render_loss_terms():
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8), dim=1)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    lmk = torch.rand(2, 68, 2) * 8
    total, terms = render_loss(normals, mask, lmk, normals, mask, lmk, 8)
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    shifted = lmk + torch.tensor([4.0, 0.0])  # half the crop -> 1.0 in [-1, 1] units
    _, terms = render_loss(normals, mask, shifted, normals, mask, lmk, 8, RenderWeights(landmarks=10000))
    assert terms["landmarks"].item() == pytest.approx(10000 * 1.0 / 2)
    _, terms = render_loss(-normals, 1 - mask, lmk, normals, mask, lmk, 8)
    assert terms["normal"].item() == pytest.approx(2.0, abs=1e-5) and terms["mask"].item() == pytest.approx(10.0)


def test_pose_loss_is_the_chordal_distance_and_the_relative_translation_error():
    axis = torch.nn.functional.normalize(torch.tensor([[0.3, -1.0, 0.4]]), dim=-1)
    theta = 0.2
    turned = torch.from_numpy(Rotation.from_rotvec((axis * theta).numpy()).as_matrix()).float()
    base = torch.eye(3)[None]
    target_t = torch.tensor([[0.01, -0.02, 0.5]])
    total, terms = pose_loss(turned, target_t + torch.tensor([[0.0, 0.03, 0.04]]), base, target_t, PoseWeights(rotation=2.0, translation=3.0))
    assert terms["rotation"].item() == pytest.approx(2.0 * 8 * math.sin(theta / 2) ** 2, rel=1e-5)
    assert terms["translation"].item() == pytest.approx(3.0 * (0.03**2 + 0.04**2) / 0.5**2, rel=1e-5)
    assert total.item() == pytest.approx(terms["rotation"].item() + terms["translation"].item())
    zero, _ = pose_loss(base, target_t, base, target_t, PoseWeights(1.0, 1.0))
    assert zero.item() == 0.0 and not PoseWeights().active


def test_synthetic_batch_is_consistent(ict):
    config = SamplerConfig(output_size=64, crop_shift_std=0.0, crop_scale_std=0.0)
    batch = SyntheticSampler(ict, config, seed=3).sample(6)
    assert batch.normals.shape == (6, 3, 64, 64) and batch.mask.shape == (6, 1, 64, 64)
    norms = batch.normals.norm(dim=1, keepdim=True)
    assert torch.allclose(norms[batch.mask > 0], torch.ones(1), atol=1e-4) and norms[batch.mask == 0].abs().max() == 0
    # DECA crop without jitter: the landmarks' box is centred and spans 1/alpha of the crop
    low, high = batch.landmarks_2d.amin(1), batch.landmarks_2d.amax(1)
    assert torch.allclose((low + high) / 2, torch.full((6, 2), 32.0), atol=1e-3)
    assert torch.allclose((high - low).amax(-1), torch.full((6,), 64 / 1.4), atol=1e-3)
    # the face mask covers the landmarks' box centre and is seen from the front (+z normals)
    assert (batch.mask[:, 0, 28:36, 28:36].mean((1, 2)) > 0.9).all()
    assert (batch.normals[:, 2][batch.mask[:, 0] > 0].mean() > 0.5)
    # the crop camera reprojects the 3D landmarks onto lmk*_2D
    lmk3d = ict.landmarks(batch.vertices, batch.params, batch.rotation)
    projected = camera.project_head(lmk3d, batch.rotation, batch.translation, batch.focal, batch.principal)
    assert torch.allclose(projected, batch.landmarks_2d, atol=1e-3)
    again = SyntheticSampler(ict, config, seed=3).sample(6)
    assert torch.equal(again.normals, batch.normals)


def test_synthetic_priors_follow_the_paper(ict):
    scene = SyntheticSampler(ict, SamplerConfig(), seed=0).sample_scene(4000)
    euler_deg = torch.rad2deg(torch.stack((torch.atan2(scene.rotation[:, 2, 1], scene.rotation[:, 2, 2]), torch.asin(-scene.rotation[:, 2, 0])), -1))
    assert euler_deg.std(0).tolist() == pytest.approx([15.0, 20.0], rel=0.06)
    assert scene.translation.mean(0).tolist() == pytest.approx([0.0, 0.0, 1.0], abs=0.01)
    assert scene.translation.std(0).tolist() == pytest.approx([0.02, 0.02, 0.2], rel=0.06)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_two_stage_training_checkpoint_and_resume(tmp_path, ict_npz_path, capsys):
    trainer = Trainer(tiny_config(tmp_path, ict_npz_path))
    camera_before = _params(trainer.net.camera_module)
    trainer.stage_index = 0
    module, optimiser, scheduler, steps = trainer._stage_setup(1)
    assert {g["name"]: g["lr"] for g in optimiser.param_groups} == {"stem": 1e-3, "token_layers": 1e-3, "backbone": 1e-3, "flame_module": 1e-3}
    trainer.run()
    out = tmp_path / "run"
    for name in ("best_stage1.pt", "best_stage2.pt", "last.pt", "metrics.csv"):
        assert (out / name).is_file(), name
    stage1 = load_checkpoint(out / "best_stage1.pt")
    stage2 = load_checkpoint(out / "best_stage2.pt")
    # stage 1 leaves the camera module alone; stage 2 trains only the camera module
    net1, net2 = model_from_checkpoint(stage1), model_from_checkpoint(stage2)
    assert all(torch.equal(a, b) for a, b in zip(camera_before, _params(net1.camera_module)))
    assert all(torch.equal(a, b) for a, b in zip(_params(net1.backbone), _params(net2.backbone)))
    assert not all(torch.equal(a, b) for a, b in zip(_params(net1.camera_module), _params(net2.camera_module)))
    # everything needed to rebuild is recorded
    assert stage2["n2fnet"]["backbone"] == "resnet18" and stage2["sampler"]["normal_frame"] == "camera"
    assert stage2["sampler"]["alpha"] == 1.4 and stage2["head_model"]["name"] == "ict"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == "kind,stage,step,metric,value" and any(",vertex_error_mm," in r for r in rows)
    # resume: continues stage 2 from the saved step
    config = tiny_config(tmp_path, ict_npz_path, stage2_steps=4)
    resumed = Trainer(config, resume=str(out / "last.pt"))
    assert resumed.stage_index == 1 and resumed.step == 2
    resumed.run()
    assert load_checkpoint(out / "last.pt")["step"] == 4


def test_freeze_tokens_retrains_the_flame_module_alone(tmp_path, ict_npz_path):
    Trainer(tiny_config(tmp_path, ict_npz_path, stage1_steps=1, stage2_steps=1)).run()
    start = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "best_stage2.pt"))
    config = tiny_config(tmp_path, ict_npz_path, stages=(1,), stage1_steps=3, freeze_tokens=True)
    config.out_dir = str(tmp_path / "head")
    trainer = Trainer(config, init=str(tmp_path / "run" / "best_stage2.pt"))
    _, optimiser, _, _ = trainer._stage_setup(1)
    assert [g["name"] for g in optimiser.param_groups] == ["flame_module"]
    trainer.run()
    retrained = model_from_checkpoint(load_checkpoint(tmp_path / "head" / "last.pt"))
    # backbone weights AND normalisation statistics untouched, so the camera module still fits
    before, after = start.backbone.state_dict(), retrained.backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(a, b) for a, b in zip(_params(start.camera_module), _params(retrained.camera_module)))
    assert not all(torch.equal(a, b) for a, b in zip(_params(start.flame_module), _params(retrained.flame_module)))


def test_checkpoint_is_loaded_without_unpickling_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "n2fnet-checkpoint-v1", "payload": os.system}, path)  # a callable global
    from tracker.errors import TrackerError

    with pytest.raises(TrackerError, match="objects other than tensors and plain values .*system"):
        load_checkpoint(path)


def test_release_checkpoint_is_small_and_close_to_the_training_one(tmp_path, untrained_checkpoint):
    from tracker.n2fnet.__main__ import main

    out = tmp_path / "release.pt"
    assert main(["checkpoint", str(untrained_checkpoint), str(out)]) == 0
    source = load_checkpoint(untrained_checkpoint)
    released = load_checkpoint(out)
    assert released["release"]["weights"] == "int8-per-channel" and "optimizer" not in released
    assert set(released["model"]) == set(source["model"])
    assert out.stat().st_size < 0.4 * untrained_checkpoint.stat().st_size
    # per-channel int8: every weight within half a quantisation step of the original
    for name, weight in source["model"].items():
        if weight.is_floating_point() and weight.dim() >= 2 and weight.numel() >= 1024:
            step = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / 127
            assert ((released["model"][name] - weight).abs() <= step / 2 + 1e-7).all(), name
        else:
            assert torch.equal(released["model"][name], weight.float() if weight.is_floating_point() else weight), name
    a, b = model_from_checkpoint(source), model_from_checkpoint(released)
    size = source["n2fnet"]["input_size"]
    normals = torch.nn.functional.normalize(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)), dim=1)
    focal, principal = torch.full((2, 2), 1.2 * size), torch.full((2, 2), size / 2)
    with torch.no_grad():
        pa, pb = a(normals, focal, principal), b(normals, focal, principal)
    for group in pa.params:
        assert (pa.params[group] - pb.params[group]).abs().max() < 0.05 * pa.params[group].abs().max() + 1e-3
    # a release whose int8 tensors and scales disagree is refused (without its digest, which would refuse it first)
    broken = torch.load(out, weights_only=True)
    broken["model_scale"].popitem()
    del broken["digest"]
    torch.save(broken, tmp_path / "broken.pt")
    from tracker.errors import TrackerError

    with pytest.raises(TrackerError, match="corrupt release"):
        load_checkpoint(tmp_path / "broken.pt")


def _write_real_dataset(root, ict, size):
    """A tiny fine-tuning folder made from synthetic renders (format of train/real_data.py)."""
    batch = SyntheticSampler(ict, SamplerConfig(output_size=size), seed=11).sample(3)
    for folder in ("normals", "masks", "params", "landmarks", "poses"):
        (root / folder).mkdir(parents=True)
    rgb = normals_to_rgb(batch.normals.permute(0, 2, 3, 1), batch.mask[:, 0]).numpy()
    for i in range(3):
        Image.fromarray(rgb[i]).save(root / "normals" / f"face{i}.png")
        Image.fromarray((batch.mask[i, 0].numpy() * 255).astype(np.uint8)).save(root / "masks" / f"face{i}.png")
        np.savez(root / "params" / f"face{i}.npz", **{k: v[i].numpy() for k, v in batch.params.items()})
        lmk = batch.landmarks_2d[i].numpy().copy()
        lmk[:17] = np.nan  # contour not annotated
        np.savetxt(root / "landmarks" / f"face{i}.txt", lmk)
        (root / "poses" / f"face{i}.json").write_text(json.dumps({"rotation": batch.rotation[i].tolist(), "translation": batch.translation[i].tolist()}))
    (root / "camera.json").write_text(json.dumps({"focal": batch.focal[0].tolist(), "principal": batch.principal[0].tolist()}))


def test_finetune_both_stages_on_a_tiny_real_folder(tmp_path, ict_npz_path, ict):
    Trainer(tiny_config(tmp_path, ict_npz_path, stage1_steps=1, stage2_steps=1)).run()
    data = tmp_path / "real"
    _write_real_dataset(data, ict, SIZE)
    start = str(tmp_path / "run" / "best_stage2.pt")
    for stage in (1, 2):
        out = tmp_path / f"ft{stage}"
        args = ["--checkpoint", start, "--data", str(data), "--stage", str(stage), "--steps", "2", "--batch-size", "2", "--val-every", "2", "--out-dir", str(out)]
        if stage == 2:  # known poses supervise the camera too; half of each batch synthetic
            args += ["--pose-weights", "1000", "10000", "--real-fraction", "0.5"]
        assert finetune.main(args) == 0
        state = load_checkpoint(out / "last.pt")
        assert state["train"]["lr_backbone"] == 1e-6 and state["stage"] == stage and state["step"] == 2
        rows = (out / "metrics.csv").read_text()
        assert ("landmarks" in rows and "train,2,2,rotation," in rows) if stage == 2 else "identity" in rows
        start = str(out / "last.pt")


def test_real_maps_of_another_size_are_rescaled_with_their_landmarks(tmp_path, ict):
    data = tmp_path / "real"
    _write_real_dataset(data, ict, 2 * SIZE)  # stored at twice the network input
    stored = np.loadtxt(data / "landmarks" / "face0.txt")
    camera_file = json.loads((data / "camera.json").read_text())
    dataset = RealDataset(data, SIZE, default_focal=100.0, stage=2)
    sample = dataset.load("face0")
    assert sample["normals"].shape == (3, SIZE, SIZE)
    visible = ~np.isnan(stored).any(1)
    assert np.allclose(sample["landmarks_2d"].numpy()[visible], stored[visible] / 2, atol=1e-4)
    batch = dataset.sample(2)
    assert torch.allclose(batch.focal[0], torch.tensor(camera_file["focal"]) / 2)
    assert batch.landmark_visible[:, :17].sum() == 0 and batch.landmark_visible[:, 17:].all()


def test_finetune_reports_a_folder_without_the_stage_data(tmp_path, ict_npz_path, capsys):
    Trainer(tiny_config(tmp_path, ict_npz_path, stage1_steps=1, stage2_steps=1, stages=(1,))).run()
    (tmp_path / "empty" / "normals").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    args = ["--checkpoint", str(tmp_path / "run" / "best_stage1.pt"), "--data", str(tmp_path / "empty"), "--stage", "1", "--out-dir", str(tmp_path / "o")]
    assert finetune.main(args) == 2
    assert "params" in capsys.readouterr().err


def test_evaluate_prints_the_paper_table(tmp_path, ict_npz_path, capsys):
    Trainer(tiny_config(tmp_path, ict_npz_path, stage1_steps=1, stage2_steps=1)).run()
    assert evaluate.main(["--checkpoint", str(tmp_path / "run" / "best_stage2.pt"), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "| Method | CD face | CD eyes | CD nose | CD mouth | CD ears | MNE | CR | NME % | FPS (net) |" in out
    rows = [line for line in out.splitlines() if line.startswith("| N2FNet") or line.startswith("| mean parameters")]
    assert len(rows) == 2
    values = [float(v) for v in rows[1].split("|")[2:-2]]
    assert all(math.isfinite(v) for v in values) and values[0] > 0.5  # the mean face is millimetres off


def test_help_documents_the_settings():
    out = subprocess.run([sys.executable, "-m", "train", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--backbone-weights", "--normal-frame", "--alpha", "--focal-mean", "--resume", "--stage1-steps", "--lr-stem", "torchrun", "--surface", "--param-weight"):
        assert flag in out


def test_param_weight_overrides_reach_the_loss_and_unknown_groups_are_refused(tmp_path, ict_npz_path):
    from tracker.errors import TrackerError
    from train.__main__ import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--param-weight", "identity=25", "--surface", "mediapipe"]))
    assert config.param_weights == {"identity": 25.0} and config.sampler.surface == "mediapipe"
    trainer = Trainer(tiny_config(tmp_path, ict_npz_path, param_weights={"identity": 25.0}))
    assert trainer.param_weights == {"identity": 25.0, "expression": PARAM_WEIGHTS["ict"]["expression"]}
    with pytest.raises(TrackerError, match="shape"):
        Trainer(tiny_config(tmp_path, ict_npz_path, param_weights={"shape": 1.0}))


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test on Linux")
def test_torchrun_distributed_data_parallel_on_cpu(tmp_path, ict_npz_path):
    """The same command under torchrun: 2 CPU processes (gloo), gradients averaged by DDP."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train",
        "--head-model-path", str(ict_npz_path), "--input-size", "32", "--token-dim", "32", "--batch-size", "2",
        "--stage1-steps", "2", "--stage2-steps", "1", "--val-every", "2", "--val-size", "2", "--device", "cpu", "--out-dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(out / "best_stage2.pt")
    assert state["step"] == 1 and state["stage"] == 2
