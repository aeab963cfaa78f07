"""The landmark refinement (tracker.fitting.refinement): analytic Jacobians against finite differences,
the optimum against scipy's least_squares on the same objective, recovery of synthetic ICT and
FLAME heads from MediaPipe-like noisy points, and pooled against per-frame identity."""

from __future__ import annotations

import math
import time
from dataclasses import replace

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
    LinearEmbeddedHead,
    Refiner,
    RefineSettings,
    Solution,
    TrackState,
    embedded_head,
    refine_face,
    solve_positive,
)
from tracker.geometry.camera import FLIP
from tracker.geometry.rotations import exp_rotation, log_rotation
from tracker.head_models import load_head_model
from tracker.head_models.flame import FLAME
from train import metrics
from train.mediapipe_proxy import MediaPipeProxy, ProxyNoise

FOCAL = np.array([900.0, 900.0])
PRINCIPAL = np.array([320.0, 240.0])


@pytest.fixture(scope="module")
def ict(ict_npz_path):
    return load_head_model("ict", ict_npz_path)


@pytest.fixture(scope="module")
def ict_embedding(ict):
    from tracker.fitting.mediapipe_embedding import mediapipe_embedding

    return mediapipe_embedding(ict, log=lambda _: None)


@pytest.fixture(scope="module")
def ict_model_points(ict, ict_embedding):
    return embedded_head(ict, ict_embedding)


def project(model, sol: Solution) -> np.ndarray:
    points = model.points(sol.identity, sol.local) @ (sol.rotation * FLIP).T + sol.translation
    return FOCAL * points[:, :2] / points[:, 2:] + PRINCIPAL


def random_truth(model, rng, active=0.15) -> Solution:
    local = np.where(rng.random(model.local_size) < active, rng.random(model.local_size), 0.0)
    if np.isfinite(model.upper).all() is False:
        local = np.clip(local, model.lower, model.upper)
    rotation = exp_rotation(rng.normal(size=3) * np.radians([12.0, 18.0, 6.0]))
    return Solution(rotation, np.array([0.01, -0.02, 0.55]) + rng.normal(size=3) * 0.01, local, rng.normal(size=model.identity_size) * 0.8)


@pytest.mark.shared
def test_jacobian_matches_finite_differences(ict_model_points):
    """The normal equations' gradient is the cost's derivative along every coordinate
    (rotation as a left-multiplied update), so the analytic Jacobian is right."""
    model = ict_model_points
    rng = np.random.default_rng(1)
    truth = random_truth(model, rng)
    start = Solution(exp_rotation(rng.normal(size=3) * 0.05) @ truth.rotation, truth.translation + 0.005, np.clip(truth.local + 0.1, 0.05, 0.95), truth.identity)
    previous = Solution(truth.rotation, truth.translation, truth.local, truth.identity)
    problem = FrameProblem(project(model, truth) + rng.normal(size=(468, 2)), FOCAL, PRINCIPAL, truth.local * 0.5, previous, depth=0.55)
    refiner = Refiner(model, RefineSettings(huber=1e6))  # smooth cost: plain least squares
    system = refiner.system(start, problem)
    step = 1e-6
    for index in [0, 1, 2, 3, 4, 5, 6 + 26, 6 + 10, 6 + 45]:
        delta = np.zeros(6 + model.local_size)
        delta[index] = step
        up = refiner._apply(start, delta)
        down = refiner._apply(start, -delta)
        numeric = (refiner.system(up, problem, False).cost - refiner.system(down, problem, False).cost) / (2 * step)
        assert numeric == pytest.approx(2 * system.gradient[index], rel=2e-3, abs=1e-3), index


@pytest.mark.shared
@pytest.mark.parametrize("shape_stds, from_network", [((), True), ((("jaw", 0.25, 0.25), ("mouthSmile", 0.1, 0.3)), True), ((("jaw", 0.25, 0.25),), False)])
def test_optimum_agrees_with_scipy_least_squares(ict_model_points, ict, shape_stds, from_network):
    """Our LM and scipy.optimize.least_squares (trust-region reflective, box bounds, its own
    finite-difference Jacobian) minimise the same objective to the same point; per-shape prior
    strengths (``shape_stds``) pull a network's prediction by the shapes' names, never the
    neutral face's."""
    model = ict_model_points
    rng = np.random.default_rng(2)
    truth = random_truth(model, rng)
    observed = project(model, truth) + rng.normal(size=(468, 2)) * 0.7
    prior = np.clip(truth.local + rng.normal(size=model.local_size) * 0.15, 0, 1)
    problem = FrameProblem(observed, FOCAL, PRINCIPAL, prior, None, depth=0.55, prior_from_network=from_network)
    settings = RefineSettings(huber=1e6, iterations=60, tolerance=1e-12, shape_stds=shape_stds)
    refiner = Refiner(model, settings)
    stds = np.full(model.local_size, settings.prior_std)
    for prefix, std, _ in shape_stds if from_network else ():
        stds[[i for i, name in enumerate(ict.expression_names) if name.startswith(prefix)]] = std
    assert (stds != settings.prior_std).sum() == {2: 6, 1: 0, 0: 0}[len(shape_stds)]  # 4 jaw shapes and 2 smiles; the neutral pull: none
    temporal = {name: 1 / settings.temporal_std**2 for name in ict.expression_names}
    for prefix, _, std in shape_stds:  # the temporal term takes its strength by name whatever the prior
        temporal.update({name: 1 / std**2 for name in ict.expression_names if name.startswith(prefix)})
    np.testing.assert_allclose(refiner.temporal_precision, list(temporal.values()))
    start = Solution(exp_rotation(rng.normal(size=3) * 0.03) @ truth.rotation, truth.translation + [0.004, -0.003, 0.02], prior.copy(), truth.identity)
    ours, _, system = refiner.fit_local(start, problem, settings.iterations)

    base = start.rotation

    def residuals(x):
        sol = Solution(exp_rotation(x[:3]) @ base, x[3:6], x[6:], truth.identity)
        points = model.points(sol.identity, sol.local) @ (sol.rotation * FLIP).T + sol.translation
        z = points[:, 2]
        scale = model.sigma_m * FOCAL.mean() / problem.depth
        data = ((FOCAL * points[:, :2] / z[:, None] + PRINCIPAL) - observed) / scale[:, None] * math.sqrt(settings.data_weight)
        pull = (sol.local - prior) / stds
        return np.concatenate((data.ravel(), pull))

    x0 = np.concatenate((np.zeros(3), start.translation, start.local))
    lower = np.concatenate((np.full(6, -np.inf), model.lower))
    upper = np.concatenate((np.full(6, np.inf), model.upper))
    theirs = least_squares(residuals, x0, bounds=(lower, upper), method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12)
    theirs_cost = 2 * theirs.cost  # scipy's cost is half the sum of squares
    ours_cost = system.cost
    print(f"cost: ours {ours_cost:.6f}, scipy least_squares {theirs_cost:.6f}")
    assert ours_cost <= theirs_cost * (1 + 1e-4)
    rotation = exp_rotation(theirs.x[:3]) @ base
    assert np.degrees(np.linalg.norm(log_rotation(ours.rotation @ rotation.T))) < 0.05
    assert np.abs(ours.translation - theirs.x[3:6]).max() < 2e-4
    assert np.abs(ours.local - theirs.x[6:]).max() < 0.02


def noisy_track(head, model, embedding, frames: int, seed: int):
    """A sequence of one random head with changing expression and pose; the embedded points are
    projected with MediaPipe-like smooth noise (train/mediapipe_proxy.py's model)."""
    rng = np.random.default_rng(seed)
    proxy = MediaPipeProxy(head, embedding)
    noise = ProxyNoise()
    identity = rng.normal(size=model.identity_size) * 0.8
    truths, observations = [], []
    generator = torch.Generator().manual_seed(seed)
    for _ in range(frames):
        sol = random_truth(model, rng)
        sol.identity = identity
        truths.append(sol)
        sigma = torch.full((1, len(model.mediapipe_ids), 1), noise.position_mm * 1e-3)
        offsets = proxy.smooth_noise(1, sigma, noise.smoothing_mm, generator)[0].double().numpy()  # (N, 3) metres
        points = model.points(sol.identity, sol.local) + offsets
        cam = points @ (sol.rotation * FLIP).T + sol.translation
        observations.append(FOCAL * cam[:, :2] / cam[:, 2:] + PRINCIPAL)
    return truths, observations


def vertex_error_mm(head, model, sol: Solution, truth: Solution, aligned: bool = True) -> float:
    """Mean face-region vertex distance (mm) of the two heads: NoW-style (similarity-aligned
    head-frame shapes: what 2D landmarks can tell, scale and depth being ambiguous) or, with
    ``aligned=False``, in the camera frame."""
    face = head.region_masks["face"]

    def vertices(s: Solution, camera_frame: bool) -> torch.Tensor:
        params = head.complete_params({k: v[None] for k, v in model.to_params(s.identity, s.local).items()})
        v = head.decode(params)[0].double().numpy()[face.numpy()]
        return torch.from_numpy(v @ (s.rotation * FLIP).T + s.translation if camera_frame else v)

    if aligned:
        pred, gt = vertices(sol, False)[None], vertices(truth, False)[None]
        return float(metrics.chamfer_vertex_distance(pred, gt)[0] * metrics.MM_PER_METRE)
    return float((vertices(sol, True) - vertices(truth, True)).norm(dim=1).mean() * 1000)


def recover(head, model, truths, observations, pooled: bool, network_noise: float, seed: int):
    """Refine every frame from a network-like guess -> (refined errors, guess errors) in mm."""
    rng = np.random.default_rng(seed)
    refiner = Refiner(model, RefineSettings(calibration_frames=len(truths)))
    track = TrackState(IdentityPool(model.identity_size, refiner.identity_std, len(truths)))
    refined, guesses = [], []
    for truth, observed in zip(truths, observations):
        if not pooled:
            track = TrackState(IdentityPool(model.identity_size, refiner.identity_std, len(truths)))
        guess_local = np.clip(truth.local + rng.normal(size=model.local_size) * network_noise, model.lower, model.upper)
        guess = Solution(exp_rotation(rng.normal(size=3) * 0.05) @ truth.rotation, truth.translation + rng.normal(size=3) * 0.01, guess_local, np.zeros(model.identity_size))
        problem = FrameProblem(observed, FOCAL, PRINCIPAL, guess_local, None)
        fit = refine_face(refiner, track, problem, guess, photo=not pooled)
        refined.append(fit.solution)
        guesses.append(guess)
    final = track.pool.identity
    results = [Solution(s.rotation, s.translation, s.local, final if pooled else s.identity) for s in refined]
    figures = {}
    for aligned in (True, False):
        figures["shape" if aligned else "camera"] = (
            float(np.mean([vertex_error_mm(head, model, s, t, aligned) for s, t in zip(results, truths)])),
            float(np.mean([vertex_error_mm(head, model, g, t, aligned) for g, t in zip(guesses, truths)])),
        )
    return figures


@pytest.mark.shared
def test_ict_sequence_recovery_and_pooled_identity(ict, ict_model_points, ict_embedding):
    truths, observations = noisy_track(ict, ict_model_points, ict_embedding, frames=12, seed=3)
    pooled = recover(ict, ict_model_points, truths, observations, pooled=True, network_noise=0.2, seed=4)
    single = recover(ict, ict_model_points, truths, observations, pooled=False, network_noise=0.2, seed=4)
    for kind in ("shape", "camera"):
        print(f"ICT face vertex error ({kind}): network-like guess {pooled[kind][1]:.2f} mm, refined with per-frame identity "
              f"{single[kind][0]:.2f} mm, with pooled identity {pooled[kind][0]:.2f} mm")
    assert pooled["shape"][0] < 0.6 * pooled["shape"][1]
    assert pooled["shape"][0] < single["shape"][0]
    assert pooled["camera"][0] < pooled["camera"][1]


@pytest.fixture(scope="module")
def flame(tmp_path_factory):
    return FLAME.from_dir(make_flame_dir(tmp_path_factory.mktemp("flame"), use_shared_aux=False))


@pytest.fixture(scope="module")
def flame_embedding(flame):
    """A stand-in embedding: 468 points on random face triangles of the generated FLAME head
    (MediaPipe does not see the generated head as a face)."""
    rng = np.random.default_rng(5)
    face = flame.region_masks["face"]
    triangles = flame.faces[face[flame.faces].all(1)]
    pick = torch.from_numpy(rng.choice(len(triangles), 468, replace=False))
    bary = torch.from_numpy(rng.dirichlet(np.ones(3), 468)).float()
    return MediaPipeEmbedding(triangles[pick], bary, torch.full((468,), 1.5), torch.full((468,), 15, dtype=torch.int32))


def test_flame_sequence_recovery_through_lbs(flame, flame_embedding):
    """FLAME: expression, jaw (through LBS) and shape recovered by the autodiff path."""
    model = embedded_head(flame, flame_embedding)
    assert isinstance(model, DecodedEmbeddedHead) and [g.name for g in model.groups][:2] == ["expression", "jaw"]
    rng = np.random.default_rng(6)
    truths, observations = [], []
    identity = rng.normal(size=model.identity_size) * 0.5
    for _ in range(5):
        local = np.zeros(model.local_size)
        local[:model.groups[0].size] = rng.normal(size=model.groups[0].size) * 0.4
        jaw = slice(model.groups[0].size, model.groups[0].size + 3)
        local[jaw] = [np.radians(rng.uniform(0, 15)), 0.0, 0.0]
        sol = Solution(exp_rotation(rng.normal(size=3) * 0.1), np.array([0.0, 0.0, 0.6]), local, identity)
        truths.append(sol)
        observations.append(project(model, sol) + rng.normal(size=(468, 2)) * 0.3)
    refiner = Refiner(model, RefineSettings(iterations=8, calibration_frames=5))
    track = TrackState(IdentityPool(model.identity_size, refiner.identity_std, 5))
    errors, guess_errors, jaw_errors, pixels, times = [], [], [], [], []
    for truth, observed in zip(truths, observations):
        guess = Solution(exp_rotation(rng.normal(size=3) * 0.03) @ truth.rotation, truth.translation + 0.005, truth.local * 0.3, np.zeros(model.identity_size))
        started = time.perf_counter()
        fit = refine_face(refiner, track, FrameProblem(observed, FOCAL, PRINCIPAL, guess.local, None), guess)
        times.append((time.perf_counter() - started) * 1000 / fit.iterations)
        errors.append(vertex_error_mm(flame, model, fit.solution, truth))
        guess_errors.append(vertex_error_mm(flame, model, guess, truth))
        jaw = model.groups[0].size
        jaw_errors.append(np.degrees(abs(fit.solution.local[jaw] - truth.local[jaw])))
        pixels.append(np.abs(project(model, fit.solution) - observed).mean())
    print(f"FLAME face vertex error (shape): guess {np.mean(guess_errors):.2f} mm, refined {np.mean(errors):.2f} mm; "
          f"jaw error {np.mean(jaw_errors):.2f} deg; reprojection {np.mean(pixels):.2f} px; {np.median(times):.1f} ms per iteration")
    assert np.mean(errors) < 0.6 * np.mean(guess_errors)
    assert np.mean(jaw_errors) < 2.0 and np.mean(pixels) < 0.5
    assert track.pool.state == "locked"


def test_solve_positive_is_a_cholesky_solve():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(30, 12))
    h, b = a.T @ a + np.eye(12), rng.normal(size=12)
    assert np.allclose(solve_positive(h, b), np.linalg.solve(h, b), rtol=1e-12, atol=0)
    with pytest.raises(np.linalg.LinAlgError):
        solve_positive(-h, b)


def test_identity_information_is_the_schur_complement_and_fit_local_completes_its_system(flame, flame_embedding):
    """identity_information (Cholesky) equals h_ii - h_il h_ll^-1 h_li formed directly; fit_local's
    returned system, cost only or not, completes to the normal equations at its solution."""
    model = FlameEmbeddedHead(flame, flame_embedding.vertex_ids, flame_embedding.bary, np.arange(468), np.full(468, 1e-3))
    rng = np.random.default_rng(4)
    truth = Solution(exp_rotation(rng.normal(size=3) * 0.1), np.array([0.0, 0.0, 0.6]), rng.normal(size=model.local_size) * 0.1, rng.normal(size=model.identity_size) * 0.5)
    truth.local[model.rotation_coords] *= 0.1
    problem = FrameProblem(project(model, truth) + rng.normal(size=(468, 2)) * 0.3, FOCAL, PRINCIPAL, truth.local, None, depth=0.6)
    refiner = Refiner(model)
    sol, _, system = refiner.fit_local(replace(truth, local=truth.local * 0.5), problem, 3)
    system = refiner.complete(system, sol, problem)
    fresh = refiner.system(sol, problem)
    assert system.cost == fresh.cost and np.array_equal(system.hessian, fresh.hessian)
    a, b = refiner.identity_information(sol, problem, system)
    _, basis = model.jacobians(sol.identity, sol.local, with_identity=True)
    j_id = np.matmul(system.projector, basis).reshape(len(system.residual), -1)
    free = refiner._free(sol, system.gradient)
    h_li = system.jacobian[:, free].T @ j_id
    solved = np.linalg.solve(system.hessian[np.ix_(free, free)], np.concatenate((h_li, system.gradient[free][:, None]), 1))
    schur = j_id.T @ j_id - h_li.T @ solved[:, :-1]
    reduced = j_id.T @ system.residual - h_li.T @ solved[:, -1]
    assert np.abs(a - schur).max() < 1e-8 * np.abs(schur).max()
    assert np.abs(b - (schur @ sol.identity - reduced)).max() < 1e-8 * np.abs(b).max()


@pytest.mark.shared
def test_ict_expression_stays_in_range_and_given_identity_is_kept(ict_model_points):
    model = ict_model_points
    rng = np.random.default_rng(7)
    truth = random_truth(model, rng)
    observed = project(model, truth) + rng.normal(size=(468, 2)) * 3.0
    refiner = Refiner(model)
    given = rng.normal(size=model.identity_size)
    track = TrackState(IdentityPool(model.identity_size, 1.0, 30, given=given))
    start = Solution(truth.rotation, truth.translation, np.zeros(model.local_size), np.zeros(model.identity_size))
    fit = refine_face(refiner, track, FrameProblem(observed, FOCAL, PRINCIPAL, np.zeros(model.local_size), None), start)
    assert fit.state == "given" and np.array_equal(fit.solution.identity, given)
    assert fit.solution.local.min() >= 0.0 and fit.solution.local.max() <= 1.0
    assert isinstance(model, LinearEmbeddedHead)


@pytest.mark.shared
def test_flame_official_mediapipe_embedding_format(ict_as_flame_dir):
    """FLAME with a mediapipe_landmark_embedding.npz in the official format (the ICT-as-FLAME
    model's own, at the official file's 105 landmark indices) is refined through those points,
    indexed into MediaPipe's 478."""
    flame = FLAME.from_dir(ict_as_flame_dir)
    model = embedded_head(flame)
    assert isinstance(model, DecodedEmbeddedHead) and len(model.mediapipe_ids) == 105 and model.mediapipe_ids.max() < 478
    rng = np.random.default_rng(8)
    truth = Solution(exp_rotation(rng.normal(size=3) * 0.1), np.array([0.0, 0.0, 0.6]), np.zeros(model.local_size), np.zeros(model.identity_size))
    truth.local[:10] = rng.normal(size=10) * 0.5
    observed = project(model, truth)
    start = Solution(truth.rotation, truth.translation + 0.003, np.zeros(model.local_size), np.zeros(model.identity_size))
    refiner = Refiner(model, RefineSettings(iterations=10))
    before = np.abs(project(model, start) - observed).mean()
    fit = refine_face(refiner, TrackState(IdentityPool(model.identity_size, 0.8, 1)), FrameProblem(observed, FOCAL, PRINCIPAL, None, None), start)
    after = np.abs(project(model, fit.solution) - observed).mean()
    assert after < 0.2 * before


@pytest.mark.shared
def test_refinement_puts_the_mesh_on_a_real_face_and_locks_the_identity(shared_path):
    """A real video through the shipped tracker: with the refinement our 68 points agree with
    MediaPipe's, closer than the network's own, and the identity calibrates then locks."""
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.options import DEFAULT_CHECKPOINT, TrackerOptions
    from train.evaluate_real import evaluate_video

    video = shared_path / "real-faces" / "videos" / "WolfgangLanger_Pexels.mp4"
    rows = {}
    for refine in (False, True):
        tracker = FaceTracker.from_options(TrackerOptions(checkpoint=DEFAULT_CHECKPOINT, runtime="torch", refine=refine))
        try:
            rows[refine] = evaluate_video(tracker, video, max_frames=40)
        finally:
            tracker.close()
    print({k: (round(r.nme51_vs_mediapipe, 2), round(r.mouth_correlation, 3)) for k, r in rows.items()})
    assert rows[True].nme51_vs_mediapipe < min(4.0, 0.9 * rows[False].nme51_vs_mediapipe)  # the refinement improves on the network alone
    assert rows[True].identity_locked_frames == 40 - 30 + 1 and rows[False].identity_locked_frames == 0  # the 30th frame locks it
    assert rows[True].refine_iterations > 0 and rows[False].refine_iterations == 0
