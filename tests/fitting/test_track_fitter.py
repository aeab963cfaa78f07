"""The per-track refinement (tracker.fitting.track_fitter): every track has its own identity pool
and last solution, locks after calibration_frames, and starts again when dropped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tracker.errors import TrackerError
from tracker.fitting.refinement import (
    LinearEmbeddedHead,
    Refiner,
    RefineSettings,
    Solution,
)
from tracker.fitting.track_fitter import TrackFitter
from tracker.geometry.camera import FLIP
from tracker.geometry.rotations import exp_rotation
from tracker.head_models import load_head_model

FOCAL = np.array([900.0, 900.0])
PRINCIPAL = np.array([320.0, 240.0])
CALIBRATION = 3


@pytest.fixture(scope="module")
def model(ict_npz_path):
    """ICT seen at 468 triangle centres standing in for MediaPipe's points (no embedding to compute)."""
    ict = load_head_model("ict", ict_npz_path)
    triangles = ict.faces[torch.from_numpy(np.random.default_rng(0).choice(len(ict.faces), 468, replace=False))]
    return LinearEmbeddedHead(ict, triangles, torch.full((468, 3), 1 / 3), np.arange(468), np.full(468, 2e-3))


def landmarks(model, sol: Solution, rng) -> np.ndarray:
    """(478, 3) MediaPipe-like points of ``sol`` in frame pixels (z unused), 0.3 px noise."""
    points = model.points(sol.identity, sol.local) @ (sol.rotation * FLIP).T + sol.translation
    out = np.zeros((478, 3))
    out[model.mediapipe_ids, :2] = FOCAL * points[:, :2] / points[:, 2:] + PRINCIPAL + rng.normal(size=(len(points), 2)) * 0.3
    return out


def faces(model, seed: int, frames: int) -> list[np.ndarray]:
    """One face (its own identity) over ``frames`` frames of small head and expression motion."""
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=model.identity_size) * 0.8
    out = []
    for _ in range(frames):
        local = np.where(rng.random(model.local_size) < 0.15, rng.random(model.local_size) * 0.6, 0.0)
        rotation = exp_rotation(rng.normal(size=3) * np.radians([8.0, 12.0, 4.0]))
        out.append(landmarks(model, Solution(rotation, np.array([0.01, -0.02, 0.55]), local, identity), rng))
    return out


def fitter(model) -> TrackFitter:
    return TrackFitter(Refiner(model, RefineSettings(calibration_frames=CALIBRATION)))


def same(a, b) -> bool:
    return a.state == b.state and a.iterations == b.iterations and all(
        np.array_equal(getattr(a.solution, f), getattr(b.solution, f)) for f in ("rotation", "translation", "local", "identity")
    )


@pytest.mark.shared
def test_tracks_keep_their_own_state_lock_and_start_again_when_dropped(model):
    first, second = faces(model, 1, 5), faces(model, 2, 5)
    alone = fitter(model)
    solo = [alone.fit(0, points, FOCAL, PRINCIPAL) for points in first]
    assert [f.state for f in solo] == ["calibrating"] * (CALIBRATION - 1) + ["locked"] * (5 - CALIBRATION + 1)

    both = fitter(model)  # track 0 as above, track 7 from its third frame on, interleaved
    fits = {0: [], 7: []}
    for n in range(5):
        fits[0].append(both.fit(0, first[n], FOCAL, PRINCIPAL))
        if n >= 2:
            fits[7].append(both.fit(7, second[n - 2], FOCAL, PRINCIPAL))
    assert all(same(a, b) for a, b in zip(fits[0], solo)), "another track changed track 0's fit"
    assert [f.state for f in fits[7]] == ["calibrating", "calibrating", "locked"]
    assert all(same(a, b) for a, b in zip(fits[7], [alone.fit(9, points, FOCAL, PRINCIPAL) for points in second[:3]]))
    assert not np.array_equal(fits[0][-1].solution.identity, fits[7][-1].solution.identity)

    both.drop_lost({7})  # track 0 is lost: it calibrates again from its first-frame start
    again = both.fit(0, first[0], FOCAL, PRINCIPAL)
    assert same(again, solo[0])
    assert same(both.fit(7, second[3], FOCAL, PRINCIPAL), alone.fit(9, second[3], FOCAL, PRINCIPAL)), "track 7 was kept"

    both.forget(7)
    assert same(both.fit(7, second[0], FOCAL, PRINCIPAL), fitter(model).fit(0, second[0], FOCAL, PRINCIPAL))
    both.reset()
    assert same(both.fit(0, first[0], FOCAL, PRINCIPAL), solo[0])


@pytest.mark.shared
def test_given_identity_is_every_tracks_and_the_network_start_is_used_once(model):
    given = np.random.default_rng(3).normal(size=model.identity_size)
    fixed = TrackFitter(Refiner(model), identity=given)
    points = faces(model, 4, 2)
    for track in (0, 1):
        fit = fixed.fit(track, points[0], FOCAL, PRINCIPAL)
        assert fit.state == "given" and np.array_equal(fit.solution.identity, given)
    # a track's first frame starts from the prediction, later frames from the track's last solution
    # (the prediction's locals still pull every frame)
    start = fitter(model)
    predicted = Solution(np.eye(3), np.array([0.03, -0.02, 0.6]), start.neutral_local.copy(), start.neutral_identity.copy())
    moved = Solution(exp_rotation(np.array([0.0, 0.2, 0.0])), np.array([-0.03, 0.0, 0.5]), predicted.local, predicted.identity)
    first = [fitter(model).fit(0, points[0], FOCAL, PRINCIPAL, p) for p in (predicted, moved, None)]
    assert not same(first[0], first[1]) and not same(first[0], first[2])
    later = []
    for second_start in (predicted, moved):
        track = fitter(model)
        track.fit(0, points[0], FOCAL, PRINCIPAL, predicted)
        later.append(track.fit(0, points[1], FOCAL, PRINCIPAL, second_start))
    assert same(later[0], later[1])


@pytest.mark.shared
@pytest.mark.parametrize("yaw_deg", [45.0, -70.0])
def test_pnp_first_pose_starts_a_turned_head_at_its_pose(model, yaw_deg):
    """A new track of a head turned away, without a prediction: the PnP start is the true pose
    before any iteration (the points' noise aside), and the fit stays there."""
    rng = np.random.default_rng(3)
    rotation = exp_rotation(np.radians([5.0, yaw_deg, 0.0]))
    truth = Solution(rotation, np.array([0.02, -0.01, 0.6]), np.zeros(model.local_size), np.zeros(model.identity_size))
    points = landmarks(model, truth, rng)

    def angle_deg(found: np.ndarray) -> float:
        return float(np.degrees(np.arccos(np.clip((np.trace(found @ rotation.T) - 1) / 2, -1, 1))))

    pnp = TrackFitter(Refiner(model, RefineSettings(calibration_frames=CALIBRATION)), first_pose="pnp")
    start = pnp._first_pose(points[model.mediapipe_ids, :2], FOCAL, PRINCIPAL)
    assert angle_deg(start.rotation) < 0.5 and np.abs(start.translation - truth.translation).max() < 5e-3
    assert angle_deg(pnp.fit(0, points, FOCAL, PRINCIPAL).solution.rotation) < 0.5


def test_unknown_first_pose_is_refused(model):
    with pytest.raises(TrackerError, match="frontal, pnp"):
        TrackFitter(Refiner(model), first_pose="sideways")


@pytest.mark.shared
def test_a_track_may_pool_all_its_frames_and_be_given_its_identity(model):
    """The offline tracker's two uses (tracker.offline): a first pass that never locks, then a
    refit with each track's pooled identity given from its first frame."""
    points = faces(model, 5, 6)
    pooling = fitter(model)
    pooling.calibration_frames = math.inf
    fits = [pooling.fit(0, p, FOCAL, PRINCIPAL) for p in points]
    assert {f.state for f in fits} == {"calibrating"}, "an unbounded pool locked"
    pooled = pooling.identities()
    assert set(pooled) == {0}
    locked = fitter(model)
    for p in points:
        locked.fit(0, p, FOCAL, PRINCIPAL)
    assert not np.allclose(pooled[0], locked.identities()[0]), "six frames pooled give the identity of three"

    refit = fitter(model)
    refit.track_identities = {0: pooled[0]}
    for p in points:
        fit = refit.fit(0, p, FOCAL, PRINCIPAL)
        assert fit.state == "given" and np.array_equal(fit.solution.identity, pooled[0])
    assert refit.fit(1, points[0], FOCAL, PRINCIPAL).state == "calibrating"  # a track not given pools as usual
