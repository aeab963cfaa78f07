"""FlameEmbeddedHead (analytic LBS Jacobians) against FLAME's decode: points, Jacobians by
torch.func.jacfwd, and the refinement's optimum (autodiff path, scipy least_squares).

The generated FLAME-format model (tests/flame_factory.py: 5023 vertices, 300 shape, 100
expression, eyelids) is loaded in float64, so points agree to 1e-9 relative."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from tests.flame_factory import make_flame_dir
from tracker.fitting.mediapipe_embedding import MediaPipeEmbedding
from tracker.fitting.refinement import (
    DecodedEmbeddedHead,
    FlameEmbeddedHead,
    FrameProblem,
    IdentityPool,
    Refiner,
    RefineSettings,
    Solution,
    TrackState,
    embedded_head,
    refine_face,
)
from tracker.geometry.camera import FLIP
from tracker.geometry.rotations import axis_angle_to_rotation_6d, exp_rotation
from tracker.head_models.flame import FLAME

FOCAL = np.array([900.0, 900.0])
PRINCIPAL = np.array([320.0, 240.0])


@pytest.fixture(scope="module")
def flame(tmp_path_factory):
    return FLAME.from_dir(make_flame_dir(tmp_path_factory.mktemp("flame"), use_shared_aux=False), dtype=torch.float64)


@pytest.fixture(scope="module")
def embedding(flame):
    """468 points on random face triangles of the generated head (as test_refinement's)."""
    rng = np.random.default_rng(5)
    face = flame.region_masks["face"]
    triangles = flame.faces[face[flame.faces].all(1)]
    pick = torch.from_numpy(rng.choice(len(triangles), 468, replace=False))
    bary = torch.from_numpy(rng.dirichlet(np.ones(3), 468)).float()
    return MediaPipeEmbedding(triangles[pick], bary, torch.full((468,), 1.5), torch.full((468,), 15, dtype=torch.int32))


def random_state(model, rng) -> tuple[np.ndarray, np.ndarray]:
    identity = rng.normal(size=model.identity_size) * 0.8
    local = rng.normal(size=model.local_size) * 0.5
    for group, start in zip(model.groups, np.cumsum([0] + [g.size for g in model.groups])):
        if group.rotation:
            local[start : start + group.size] = rng.normal(size=group.size) * 0.25
    return identity, local


def random_fixed(rng) -> dict[str, torch.Tensor]:
    """Non-zero global, neck and eye rotations and a translation (groups outside the solver)."""
    rot = lambda n: axis_angle_to_rotation_6d(torch.from_numpy(rng.normal(size=(n, 3)) * 0.2)).reshape(-1)
    return {"global": rot(1), "neck": rot(1), "eyes": rot(2), "translation": torch.from_numpy(rng.normal(size=3) * 0.01)}


def reference(model, fixed):
    """(identity, local) torch -> (N, 3) points through FLAME's decode with ``fixed`` groups."""

    def decode(identity, local):
        params = {name: value[None] for name, value in fixed.items()}
        params[model.identity_group] = identity[None]
        start = 0
        for group in model.groups:
            value = local[start : start + group.size]
            if group.rotation:
                value = axis_angle_to_rotation_6d(value.reshape(-1, 3)).reshape(-1)
            params[group.name] = value[None]
            start += group.size
        return model.point_fn(model.head.decode(params))[0]

    return decode


def test_groups_and_selection(flame, embedding):
    model = embedded_head(flame, embedding)
    assert type(model) is FlameEmbeddedHead
    assert [g.name for g in model.groups] == ["expression", "jaw", "eyelids"] and model.identity_size == 300
    assert isinstance(model, DecodedEmbeddedHead)  # its decoded methods stay as the reference
    assert not model.autodiff and model.autodiff_reference().autodiff  # the tracker warns only for the slow path


@pytest.mark.parametrize("posed", [False, True])
def test_points_and_jacobians_match_the_decode(flame, embedding, posed):
    """Points to 1e-9 relative (float64) and both Jacobians to 1e-6 relative against jacfwd of
    FLAME's decode, at random shape, expression, jaw, eyelids and (posed) global / neck / eyes."""
    rng = np.random.default_rng(11 + posed)
    fixed = random_fixed(rng) if posed else {}
    base = embedded_head(flame, embedding)
    model = FlameEmbeddedHead(flame, embedding.vertex_ids, embedding.bary, base.mediapipe_ids, base.sigma_m, fixed=fixed, pose_jacobian=True)
    decode = reference(model, fixed)
    for _ in range(3):
        identity, local = random_state(model, rng)
        ident, loc = torch.from_numpy(identity), torch.from_numpy(local)
        with torch.no_grad():
            expected = decode(ident, loc).numpy()
        points = model.points(identity, local)
        scale = np.abs(expected).max()
        assert np.abs(points - expected).max() < 1e-9 * scale
        if not posed:
            assert np.abs(model.points(identity, local) - DecodedEmbeddedHead.points(model, identity, local)).max() < 1e-9 * scale
        j_id, j_loc = torch.func.jacfwd(decode, argnums=(0, 1))(ident, loc)
        local_jac, identity_jac = model.jacobians(identity, local, with_identity=True)
        for ours, theirs in ((local_jac, j_loc.numpy()), (identity_jac, j_id.numpy())):
            assert ours.shape == theirs.shape
            assert np.abs(ours - theirs).max() < 1e-6 * np.abs(theirs).max()


def test_jacobian_without_pose_correctives_differs_only_by_them(flame, embedding):
    """pose_jacobian=False drops only the posedirs' part of the jaw's columns."""
    base = embedded_head(flame, embedding)
    rng = np.random.default_rng(3)
    identity, local = random_state(base, rng)
    rigid = FlameEmbeddedHead(flame, embedding.vertex_ids, embedding.bary, base.mediapipe_ids, base.sigma_m, pose_jacobian=False)
    a, _ = base.jacobians(identity, local, False)
    b, _ = rigid.jacobians(identity, local, False)
    jaw = slice(100, 103)
    assert np.array_equal(np.delete(a, np.s_[100:103], 2), np.delete(b, np.s_[100:103], 2))
    assert 0 < np.abs(a[:, :, jaw] - b[:, :, jaw]).max() < 0.2 * np.abs(a[:, :, jaw]).max()


def project(model, sol: Solution) -> np.ndarray:
    points = model.points(sol.identity, sol.local) @ (sol.rotation * FLIP).T + sol.translation
    return FOCAL * points[:, :2] / points[:, 2:] + PRINCIPAL


def frame(model, seed: int):
    rng = np.random.default_rng(seed)
    local = np.zeros(model.local_size)
    local[:100] = rng.normal(size=100) * 0.4
    local[100:103] = [math.radians(rng.uniform(3, 15)), 0.02, -0.01]
    local[103:] = rng.uniform(0, 0.5, size=2)
    identity = rng.normal(size=model.identity_size) * 0.5
    truth = Solution(exp_rotation(rng.normal(size=3) * 0.1), np.array([0.0, 0.0, 0.6]), local, identity)
    observed = project(model, truth) + rng.normal(size=(len(model.mediapipe_ids), 2)) * 0.3
    prior = local + rng.normal(size=model.local_size) * 0.1
    start = Solution(exp_rotation(rng.normal(size=3) * 0.03) @ truth.rotation, truth.translation + 0.005, prior.copy(), identity)
    return truth, observed, prior, start


def test_refinement_reaches_the_autodiff_optimum(flame, embedding):
    """refine_face from the same start converges to the same optimum (1e-6 relative cost) with
    the analytic and the autodiff Jacobians, and the cost equals scipy.optimize.least_squares'.
    Without the pose correctives in the Jacobian the fixed point is off the optimum."""
    analytic = embedded_head(flame, embedding)
    assert analytic.skinning.pose_jacobian
    autodiff = FlameEmbeddedHead(flame, embedding.vertex_ids, embedding.bary, analytic.mediapipe_ids, analytic.sigma_m).autodiff_reference()
    truth, observed, prior, start = frame(analytic, 21)
    settings = RefineSettings(iterations=40, tolerance=1e-14, huber=1e6)
    problem = FrameProblem(observed, FOCAL, PRINCIPAL, prior, None, depth=0.6)
    fits = {}
    for name, model in (("analytic", analytic), ("autodiff", autodiff)):
        refiner = Refiner(model, settings)
        track = TrackState(IdentityPool(model.identity_size, refiner.identity_std, 30, given=truth.identity))
        fits[name] = refine_face(refiner, track, problem, start)
        fits[name + " cost"] = refiner.system(fits[name].solution, problem, False).cost
    assert fits["analytic cost"] == pytest.approx(fits["autodiff cost"], rel=1e-6)
    analytic.skinning.pose_jacobian = False
    refiner = Refiner(analytic, settings)
    track = TrackState(IdentityPool(analytic.identity_size, refiner.identity_std, 30, given=truth.identity))
    biased = refiner.system(refine_face(refiner, track, problem, start).solution, problem, False).cost
    analytic.skinning.pose_jacobian = True
    assert biased > fits["analytic cost"] * (1 + 1e-5)
    a, b = fits["analytic"].solution, fits["autodiff"].solution
    assert np.abs(a.local - b.local).max() < 1e-3 and np.abs(a.translation - b.translation).max() < 1e-6

    refiner = Refiner(analytic, settings)
    base = start.rotation

    def residuals(x):
        sol = Solution(exp_rotation(x[:3]) @ base, x[3:6], x[6:], truth.identity)
        points = analytic.points(sol.identity, sol.local) @ (sol.rotation * FLIP).T + sol.translation
        scale = analytic.sigma_m * FOCAL.mean() / problem.depth
        data = ((FOCAL * points[:, :2] / points[:, 2:] + PRINCIPAL) - observed) / scale[:, None] * math.sqrt(settings.data_weight)
        return np.concatenate((data.ravel(), (sol.local - prior) * np.sqrt(refiner.prior_precision)))

    x0 = np.concatenate((np.zeros(3), start.translation, start.local))
    theirs = least_squares(residuals, x0, method="trf", x_scale="jac", xtol=1e-14, ftol=1e-14, gtol=1e-14)
    print(f"cost: analytic {fits['analytic cost']:.8f}, without pose Jacobian {biased:.8f}, autodiff {fits['autodiff cost']:.8f}, least_squares {2 * theirs.cost:.8f}")
    assert fits["analytic cost"] == pytest.approx(2 * theirs.cost, rel=1e-6)


@pytest.mark.shared
def test_refine_benchmark_runs(capsys, ict_npz_path):
    """``python -m tracker.bench refine`` prints ms per frame for FLAME at the official 105 points
    and at 468, and ICT; the last line compares the 105-point configuration with ICT."""
    from tracker.bench.__main__ import main

    main(["refine", "--frames", "3", "--autodiff-frames", "0", "--ict-model", str(ict_npz_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    for label in ("FLAME 105 pts locked", "FLAME 105 pts calibrating", "FLAME 468 pts locked", "FLAME 468 pts calibrating", "ICT 468 pts   locked"):
        assert any(line.startswith(label) for line in lines), label
    last = lines[-1]
    assert last.startswith("flame_ms=") and "ict_ms=" in last and "ratio=" in last and "flame468_ms=" in last
    assert "(FLAME 105 pts vs ICT 468 pts, locked)" in last
