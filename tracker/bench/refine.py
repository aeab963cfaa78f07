"""Landmark-refinement benchmark: ms per face per frame, FLAME (analytic LBS Jacobians) vs ICT.

    python -m tracker.bench refine [--frames 40] [--flame-dir DIR] [--ict-model NPZ] [--autodiff-frames 3]

One CPU thread (torch and numpy's BLAS), the default settings (``RefineSettings()``: 3 LM
iterations, 6 on a track's first frame); medians over ``ROUNDS`` passes over all the cases (each
pass starting one case later, so a busy moment of the machine is shared out). A synthetic track per model: a random identity and
expression, a head turning slowly, the embedded points projected with 0.5 px noise, the network's
guess the truth plus noise. "locked": the identity given (steady state, identity pooling off);
"calibrating": every frame pools the identity too (a track's first ``calibration_frames``).

FLAME is the user's folder (``--flame``) or a generated FLAME-size model (5023 vertices, 300
shape, 100 expression, eyelids, random smooth content), timed in two configurations: "105 pts",
the official ``mediapipe_landmark_embedding.npz`` format that real users have (generated: 105 of
the generated triangles at the official file's ``landmark_indices`` when the shared folder's
flame-aux has it, else a fixed random choice), and "468 pts", a computed embedding (generated: random front
triangles). ICT has no 105-point file: always 468. FLAME's pose-corrective Jacobian is timed both
ways. Last line: ``flame_ms=<a> ict_ms=<b> ratio=<a/b> flame468_ms=<c> ratio468=<c/b> (...)``
(locked, medians; a: FLAME at 105 points, the real users' configuration, when it has them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tracker.files.paths import shared_dir
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
OFFICIAL_POINTS = 105
ROUNDS = 3  # passes over all the timed cases, each starting one case later


def official_landmark_indices() -> np.ndarray:
    """(105,) MediaPipe landmarks of the official FLAME embedding: the shared flame-aux file's
    ``landmark_indices`` when present, else a fixed sorted random choice."""
    shared = shared_dir()
    path = shared / "flame-aux" / "mediapipe_landmark_embedding.npz" if shared else None
    if path is not None and path.is_file():
        return np.load(path)["landmark_indices"].astype(np.int64)
    return np.sort(np.random.default_rng(7).choice(468, OFFICIAL_POINTS, replace=False))


def generated_flame(seed: int = 0) -> tuple[FLAME, MediaPipeEmbedding]:
    """A FLAME-size model with random smooth content and a 468-point embedding on its front; the
    model carries the official-format 105-point embedding (those of the 468 at
    ``official_landmark_indices``), so ``embedded_head(model)`` takes the real users' path."""
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
    shape, expression, pose, eyelids = fields(300, 0.01), fields(100, 0.005), fields(36, 0.005).reshape(count * 3, 36).T, fields(2, 0.003).transpose(2, 0, 1)
    bary = rng.dirichlet(np.ones(3), 468)
    official = official_landmark_indices()
    mediapipe = {"faces_idx": official, "bary_coords": bary[official], "indices": official}  # face k is point k's triangle
    data = FlameData(template, faces, shape, expression, pose, regressor, weights, (-1, 0, 1, 1, 1), lmk, masks, eyelids, mediapipe)
    embedding = MediaPipeEmbedding(torch.from_numpy(corners), torch.from_numpy(bary).float(), torch.full((468,), 1.5), torch.full((468,), 15, dtype=torch.int32))
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


def time_track(model, frames: list, locked: bool, settings: RefineSettings | None = None) -> tuple[list[float], float, float]:
    """(ms per frame after the first, mean iterations, mean final cost) of ``frames``
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
    return times[1:], float(np.mean(iterations)), float(np.mean(costs))


def flame_configurations(folder: str | None) -> list[tuple[str, FlameEmbeddedHead]]:
    """[(label, model)]: FLAME at the official 105 points (when the model has them), then at 468
    computed points; ``folder``: the user's FLAME (None: ``generated_flame``)."""
    if folder:
        flame, embedding = FLAME.from_dir(folder), None
    else:
        flame, embedding = generated_flame()
    configurations = [("FLAME 105 pts", embedded_head(flame))] if flame.has_mediapipe else []
    computed = embedding if embedding is not None else mediapipe_embedding(flame, log=lambda _: None)
    return configurations + [("FLAME 468 pts", embedded_head(flame, computed))]


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    with single_blas_thread():
        flames = flame_configurations(args.flame)
        ict = load_head_model("ict", args.ict_model)
        ict_model = embedded_head(ict, mediapipe_embedding(ict, log=lambda _: None))
        first = flames[0][1]
        print(f"FLAME: {', '.join(f'{len(m.mediapipe_ids)}' for _, m in flames)} points ({'user' if args.flame else 'generated'} model), "
              f"{first.identity_size} identity, {first.local_size} local ({', '.join(g.name for g in first.groups)}); "
              f"ICT: {len(ict_model.mediapipe_ids)} points, {ict_model.identity_size} identity, {ict_model.local_size} local; "
              f"one thread, {args.frames} frames")
        cases = []  # (name, model, frames, locked, pose Jacobian or None)
        for index, (name, model) in enumerate([*flames, ("ICT 468 pts", ict_model)]):
            frames = synthetic_track(model, args.frames, 1 + index)
            for locked in (True, False):
                for pose in (True, False) if isinstance(model, FlameEmbeddedHead) else (None,):
                    cases.append((name, model, frames, locked, pose))
        times = {(name, locked, pose): [] for name, _, _, locked, pose in cases}
        summary = {}  # (name, locked, pose) -> (mean iterations, mean cost): the same every round
        for round_ in range(ROUNDS):  # a busy moment of the machine is shared out over the cases
            for name, model, frames, locked, pose in cases[round_ % len(cases) :] + cases[: round_ % len(cases)]:
                if pose is not None:
                    model.skinning.pose_jacobian = pose
                ms, *summary[(name, locked, pose)] = time_track(model, frames, locked)
                times[(name, locked, pose)] += ms
                if isinstance(model, FlameEmbeddedHead):
                    model.skinning.pose_jacobian = True
        results = {key: float(np.median(ms)) for key, ms in times.items()}
        for key, ms in results.items():
            name, locked, pose = key
            its, cost = summary[key]
            label = "" if pose is None else f" pose Jacobian {'on ' if pose else 'off'}"
            print(f"{name:13s} {'locked' if locked else 'calibrating':11s}{label}: {ms:6.2f} ms/frame, {its:.1f} iterations, mean cost {cost:.4f}")
        if args.autodiff_frames:
            name, model = flames[0]
            frames = synthetic_track(model, args.autodiff_frames + 1, 1)
            ms, its, _ = time_track(model.autodiff_reference(), frames, True)
            print(f"{name} autodiff locked: {np.median(ms):6.2f} ms/frame, {its:.1f} iterations (the old path, {args.autodiff_frames} frames)")
        flame_ms, ict_ms = results[(flames[0][0], True, True)], results[("ICT 468 pts", True, None)]
        flame468_ms = results[("FLAME 468 pts", True, True)]
        print(f"flame_ms={flame_ms:.2f} ict_ms={ict_ms:.2f} ratio={flame_ms / ict_ms:.2f} flame468_ms={flame468_ms:.2f} "
              f"ratio468={flame468_ms / ict_ms:.2f} ({flames[0][0]} vs ICT 468 pts, locked)")
