"""Landmark-refinement benchmark: ms per face per frame, FLAME (analytic LBS Jacobians) vs ICT.

    python -m tracker.bench refine [--frames 40] [--flame DIR] [--ict-model NPZ] [--autodiff-frames 3]

One CPU thread (torch and numpy's BLAS), the default settings (``RefineSettings()``: 3 LM
iterations, 6 on a track's first frame). A synthetic track per model: a random identity and
expression, a head turning slowly, the embedded points projected with 0.5 px noise, the network's
guess the truth plus noise. "locked": the identity given (steady state, identity pooling off);
"calibrating": every frame pools the identity too (a track's first ``calibration_frames``).
FLAME is the user's folder (``--flame``) or a generated FLAME-size model (5023 vertices, 300
shape, 100 expression, eyelids, random smooth content) on a generated 468-point embedding; its
pose-corrective Jacobian is timed both ways. Last line: ``flame_ms=<a> ict_ms=<b> ratio=<a/b>``
(locked, medians).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tracker.fitting.mediapipe_embedding import MediaPipeEmbedding, mediapipe_embedding
from tracker.fitting.refinement import (
    FlameEmbeddedHead,
    FrameProblem,
    IdentityPool,
    Refiner,
    RefineSettings,
    Solution,
    TrackState,
    embedded_head,
    refine_face,
    single_blas_thread,
    start_depth,
)
from tracker.geometry.camera import FLIP
from tracker.geometry.rotations import exp_rotation
from tracker.head_models import load_head_model
from tracker.head_models.flame import (
    FLAME,
    MASK_REGIONS,
    NUM_CONTOUR,
    NUM_STATIC,
    NUM_YAW_BINS,
    FlameData,
)

FOCAL = np.array([900.0, 900.0])
PRINCIPAL = np.array([320.0, 240.0])


def generated_flame(seed: int = 0) -> tuple[FLAME, MediaPipeEmbedding]:
    """A FLAME-size model with random smooth content and a 468-point embedding on its front."""
    rng = np.random.default_rng(seed)
    count = 5023
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    template = direction * [0.078, 0.12, 0.1]
    p = template / np.abs(template).max(0)
    basis = np.stack([np.ones(count), *p.T, *(p[:, [0, 1, 2, 0, 1, 2]] * p[:, [0, 1, 2, 1, 2, 0]]).T], -1)  # (V, 10)

    def fields(k: int, amplitude: float) -> np.ndarray:  # (V, 3, k) smooth random displacements
        return np.einsum("vb,bck->vck", basis, rng.normal(size=(basis.shape[1], 3, k))) * amplitude / 3

    weights = np.zeros((count, 5))
    jaw = 1.0 / (1.0 + np.exp(template[:, 1] / 0.01)) * (template[:, 2] > 0)
    weights[:, 2], weights[:, 1] = jaw, 1.0 - jaw
    regressor = np.zeros((5, count))
    for joint, centre in enumerate(([0, -0.1, 0], [0, -0.05, -0.01], [0, -0.02, 0.0], [0.03, 0.03, 0.07], [-0.03, 0.03, 0.07])):
        near = np.argsort(np.linalg.norm(template - centre, axis=1))[:20]
        regressor[joint, near] = 1.0 / 20
    front = np.flatnonzero(template[:, 2] > 0.03)
    corners = np.stack([rng.choice(front, 3, replace=False) for _ in range(468)])
    faces = np.concatenate([corners, rng.integers(0, count, size=(9976 - 468, 3))])
    masks = {key: np.ones(count, bool) for keys in MASK_REGIONS.values() for key in keys}
    lmk = {"static_faces_idx": np.zeros(NUM_STATIC, np.int64), "static_bary_coords": np.full((NUM_STATIC, 3), 1 / 3),
           "dynamic_faces_idx": np.zeros((NUM_YAW_BINS, NUM_CONTOUR), np.int64), "dynamic_bary_coords": np.full((NUM_YAW_BINS, NUM_CONTOUR, 3), 1 / 3)}
    data = FlameData(template, faces, fields(300, 0.01), fields(100, 0.005), fields(36, 0.005).reshape(count * 3, 36).T,
                     regressor, weights, (-1, 0, 1, 1, 1), lmk, masks, fields(2, 0.003).transpose(2, 0, 1), None)
    bary = torch.from_numpy(rng.dirichlet(np.ones(3), 468)).float()
    embedding = MediaPipeEmbedding(torch.from_numpy(corners), bary, torch.full((468,), 1.5), torch.full((468,), 15, dtype=torch.int32))
    return FLAME(data), embedding


def synthetic_track(model, frames: int, seed: int) -> list[tuple[Solution, np.ndarray, Solution]]:
    """[(truth, observed (N, 2), network guess)] of one face over ``frames`` frames."""
    rng = np.random.default_rng(seed)
    identity = rng.normal(size=model.identity_size) * 0.5
    base = np.clip(rng.normal(size=model.local_size) * 0.3, model.lower, model.upper)
    track = []
    for f in range(frames):
        local = np.clip(base + 0.1 * np.sin(0.2 * f + np.arange(model.local_size)), model.lower, model.upper)
        local[model.rotation_coords] *= 0.3
        truth = Solution(exp_rotation(np.array([0.05, 0.3 * np.sin(0.1 * f), 0.02])), np.array([0.0, 0.0, 0.6]), local, identity)
        points = model.points(identity, local) @ (truth.rotation * FLIP).T + truth.translation
        observed = FOCAL * points[:, :2] / points[:, 2:] + PRINCIPAL + rng.normal(size=(len(points), 2)) * 0.5
        noisy = np.clip(local + rng.normal(size=model.local_size) * 0.1, model.lower, model.upper)
        guess = Solution(exp_rotation(rng.normal(size=3) * 0.02) @ truth.rotation, truth.translation + rng.normal(size=3) * 0.003, noisy, identity)
        track.append((truth, observed, guess))
    return track


def time_track(model, frames: list, locked: bool, settings: RefineSettings | None = None) -> tuple[float, float, float]:
    """(median ms per frame after the first, mean iterations, mean final cost) of ``frames``
    (``synthetic_track``) refined as one track; ``locked``: the identity given."""
    refiner = Refiner(model, settings or RefineSettings())
    given = frames[0][0].identity if locked else None
    track = TrackState(IdentityPool(model.identity_size, refiner.identity_std, len(frames) if not locked else 1, given=given))
    times, iterations, costs = [], [], []
    for truth, observed, guess in frames:
        start = track.last if track.last is not None else guess
        problem = FrameProblem(observed, FOCAL, PRINCIPAL, guess.local, track.last, depth=start_depth(model, start))
        started = time.perf_counter()
        fit = refine_face(refiner, track, problem, start)
        times.append((time.perf_counter() - started) * 1000)
        iterations.append(fit.iterations)
        costs.append(refiner.system(fit.solution, problem, False).cost)
    return float(np.median(times[1:])), float(np.mean(iterations)), float(np.mean(costs))


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    with single_blas_thread():
        if args.flame:
            flame = FLAME.from_dir(args.flame)
            flame_model = embedded_head(flame)
        else:
            flame, embedding = generated_flame()
            flame_model = embedded_head(flame, embedding)
        ict = load_head_model("ict", args.ict_model)
        ict_model = embedded_head(ict, mediapipe_embedding(ict, log=lambda _: None))
        print(f"FLAME: {len(flame_model.mediapipe_ids)} points, {flame_model.identity_size} identity, {flame_model.local_size} local "
              f"({', '.join(g.name for g in flame_model.groups)}); ICT: {len(ict_model.mediapipe_ids)} points, "
              f"{ict_model.identity_size} identity, {ict_model.local_size} local; one thread, {args.frames} frames")
        flame_frames = synthetic_track(flame_model, args.frames, 1)
        ict_frames = synthetic_track(ict_model, args.frames, 2)
        results = {}
        for name, model, frames in (("FLAME analytic", flame_model, flame_frames), ("ICT linear", ict_model, ict_frames)):
            for locked in (True, False):
                if isinstance(model, FlameEmbeddedHead):
                    for pose in (True, False):
                        model.skinning.pose_jacobian = pose
                        ms, its, cost = time_track(model, frames, locked)
                        print(f"{name:15s} {'locked' if locked else 'calibrating':11s} pose Jacobian {'on ' if pose else 'off'}: "
                              f"{ms:6.2f} ms/frame, {its:.1f} iterations, mean cost {cost:.4f}")
                        results[(name, locked, pose)] = ms
                    model.skinning.pose_jacobian = True
                else:
                    ms, its, cost = time_track(model, frames, locked)
                    print(f"{name:15s} {'locked' if locked else 'calibrating':11s}: {ms:6.2f} ms/frame, {its:.1f} iterations, mean cost {cost:.4f}")
                    results[(name, locked, True)] = ms
        if args.autodiff_frames:
            reference = flame_model.autodiff_reference()
            ms, its, cost = time_track(reference, flame_frames[: args.autodiff_frames + 1], True)
            print(f"FLAME autodiff  locked     : {ms:6.2f} ms/frame, {its:.1f} iterations (the old path, {args.autodiff_frames} frames)")
        flame_ms, ict_ms = results[("FLAME analytic", True, True)], results[("ICT linear", True, True)]
        print(f"flame_ms={flame_ms:.2f} ict_ms={ict_ms:.2f} ratio={flame_ms / ict_ms:.2f}")
