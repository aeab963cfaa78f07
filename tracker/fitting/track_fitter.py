"""The landmark refinement of every tracked face: each track's identity pool and last solution.

    fitter = TrackFitter(Refiner(embedded_head(head)))
    fit = fitter.fit(crop.track_id, crop.face.points, focal, principal, predicted)  # -> FrameFit
    fitter.drop_lost({track ids of this frame's faces})

A track's first frame starts from ``predicted`` (the network's solution) or, without one, from the
neutral face: at a frontal pose at the landmarks' depth (``initial_pose``), or at the pose a
perspective-n-point solve gives (``start_pose.pnp_pose``, ``first_pose="pnp"``); every later frame
starts from the track's previous solution, which is also the temporal term's target (video).
The locals are pulled towards ``predicted``'s, or the neutral face's. The identity is pooled per
track and locks after ``calibration_frames`` (``IdentityPool``), unless one is given for every
track (state "given") or for particular tracks (``track_identities``: the offline refit,
``tracker.offline``). ``calibration_frames`` (default: the refinement's) may be raised so that a
track pools every frame it has (the offline first pass).
"""

from __future__ import annotations

import numpy as np

from tracker.errors import TrackerError
from tracker.fitting.refinement import (
    FrameFit,
    FrameProblem,
    IdentityPool,
    Refiner,
    Solution,
    TrackState,
    initial_pose,
    refine_face,
    single_blas_thread,
)
from tracker.fitting.start_pose import pnp_pose

FIRST_POSES = ("frontal", "pnp")


class TrackFitter:
    """``refine_face`` per tracked face (module docstring).

    refiner   the head model's refinement
    identity  (K,) a fixed identity for every track (state "given"); None: pooled per track
    first_pose  a new track's pose without a prediction: "frontal" (``initial_pose``) or "pnp"
    neutral_identity (K,), neutral_local (L,)  the neutral face's solver vectors
    calibration_frames  frames a new track pools before its identity locks (math.inf: never)
    track_identities  {track id: (K,)} fixed identities of particular tracks, before ``identity``
    """

    def __init__(self, refiner: Refiner, identity: np.ndarray | None = None, first_pose: str = "frontal") -> None:
        if first_pose not in FIRST_POSES:
            raise TrackerError(f"first_pose must be one of {', '.join(FIRST_POSES)}, got {first_pose!r}")
        self.refiner, self.identity, self.first_pose = refiner, identity, first_pose
        model = refiner.model
        neutral = model.head.neutral_params(1, device="cpu")
        self.neutral_identity, self.neutral_local = model.to_vectors({g: v[0] for g, v in neutral.items()})
        self.calibration_frames: float = refiner.settings.calibration_frames
        self.track_identities: dict[int, np.ndarray] = {}
        self._tracks: dict[int, TrackState] = {}

    def fit(
        self,
        track_id: int,
        landmarks: np.ndarray,
        focal: np.ndarray,
        principal: np.ndarray,
        predicted: Solution | None = None,
        temporal: bool = True,
        photo: bool = False,
    ) -> FrameFit:
        """One face in one frame -> its FrameFit; the track's pool and last solution take it in.

        landmarks  (468, 2+) the face's MediaPipe points, frame pixels; focal, principal (2,)
        predicted  the network's solution (None: none; module docstring)
        temporal   pull towards the track's previous solution (video; never for a ``photo``)
        photo      a single still image: several identity rounds, no temporal term
        The solve runs on one BLAS thread (``single_blas_thread``).
        """
        model = self.refiner.model
        track = self._tracks.get(track_id)
        if track is None:
            given = self.track_identities.get(track_id, self.identity)
            pool = IdentityPool(model.identity_size, self.refiner.identity_std, self.calibration_frames, given)
            track = self._tracks[track_id] = TrackState(pool)
        observed = landmarks[model.mediapipe_ids, :2].astype(np.float64)
        if track.last is not None:
            start = track.last
        elif predicted is not None:
            start = predicted
        else:
            start = self._first_pose(observed, focal, principal)
        prior = predicted.local if predicted is not None else self.neutral_local
        problem = FrameProblem(observed, focal, principal, prior, track.last if temporal and not photo else None, prior_from_network=predicted is not None)
        with single_blas_thread():
            return refine_face(self.refiner, track, problem, start, photo=photo)

    def _first_pose(self, observed: np.ndarray, focal: np.ndarray, principal: np.ndarray) -> Solution:
        """The neutral face at a new track's first pose (``first_pose``); a failed PnP falls back
        to the frontal pose."""
        model = self.refiner.model
        if self.first_pose == "pnp":
            try:
                rotation, translation = pnp_pose(model.points(self.neutral_identity, self.neutral_local), observed, focal, principal)
                return Solution(rotation, translation, self.neutral_local.copy(), self.neutral_identity.copy())
            except TrackerError:
                pass
        return initial_pose(model, observed, focal, principal, self.neutral_identity, self.neutral_local)

    def identities(self) -> dict[int, np.ndarray]:
        """{track id: (K,) its identity now} of every track it remembers (pooled, locked or given)."""
        return {track_id: track.pool.identity.copy() for track_id, track in self._tracks.items()}

    def forget(self, track_id: int) -> None:
        """Start track ``track_id`` again at its next frame (its pool and last solution go)."""
        self._tracks.pop(track_id, None)

    def drop_lost(self, alive: set[int]) -> None:
        """Forget every track not in ``alive``."""
        for track_id in list(self._tracks):
            if track_id not in alive:
                del self._tracks[track_id]

    def reset(self) -> None:
        """Forget every track."""
        self._tracks.clear()
