"""ARKit weights for head models without ARKit semantics (FLAME): ICT-FaceKit fitted beside them.

FLAME's expression space is a PCA basis with no named shapes. To give FLAME users ARKit weights,
ICT-FaceKit's 53 named expression weights are fitted to the same MediaPipe landmarks of the same
face, by the same refinement as the head model's own (``tracker.refinement``: Levenberg-Marquardt
on the 468 points through ICT's exact linear embedding, with ICT's own identity pooled and locked
per track). It starts from the neutral face, frontal, at the landmarks' depth on a track's first
frame and from the previous frame's fit after that, pulled towards the neutral expression
(``prior_std``) and the previous frame; no network is involved. The fit's eyeballs give the gaze.

    fit = ArkitFit(load_head_model("ict"))
    expression, eyeballs, rotation, translation = fit.fit(crop, focal, principal)

Its accuracy, measured against the ICT tracker's own ARKit weights on the real videos, is in the
README (``python -m train.evaluate_real --arkit-side-fit``).
"""

from __future__ import annotations

import numpy as np
import torch

from tracker.avatar import Eyeballs, ict_to_arkit_matrix
from tracker.face_detection import FaceCrop
from tracker.head_models.base import HeadModel
from tracker.refinement import FrameProblem, IdentityPool, LinearEmbeddedHead, RefineSettings, Refiner, TrackState, embedded_head, initial_pose, refine_face


class ArkitFit:
    """ICT-FaceKit's expression, eyeballs and pose fitted to a face's MediaPipe landmarks, per track.

    ict       the ICT-FaceKit head model; settings  the refinement's (its iterations per frame)
    """

    def __init__(self, ict: HeadModel, settings: RefineSettings | None = None) -> None:
        if ict.name != "ict":
            raise ValueError(f"the ARKit fit needs the ICT-FaceKit head model, got {ict.name!r}")
        model = embedded_head(ict)
        assert isinstance(model, LinearEmbeddedHead)
        self.refiner = Refiner(model, settings or RefineSettings())
        self.matrix = ict_to_arkit_matrix(ict.expression_names)  # (52, 53)
        masks = [ict.region_masks[name].cpu().numpy() for name in ("eyeball_left", "eyeball_right")]
        self._eye_masks = [np.flatnonzero(mask) for mask in masks]
        rows = np.concatenate(self._eye_masks)
        columns = (rows[:, None] * 3 + np.arange(3)).reshape(-1)
        self._eye_neutral = ict.neutral[rows].double().numpy()  # (N, 3)
        self._eye_identity = ict.identity_basis[:, columns].double().numpy()  # (K, N*3)
        self._eye_expression = ict.expression_basis[:, columns].double().numpy()  # (E, N*3)
        self._neutral = {g: v[0] for g, v in ict.neutral_params(1, device="cpu").items()}
        self._tracks: dict[int, TrackState] = {}

    def fit(self, crop: FaceCrop, focal: np.ndarray, principal: np.ndarray, temporal: bool = True, photo: bool = False):
        """One face -> (expression (53,) float32, Eyeballs in ICT's head frame, rotation (3, 3),
        translation (3,): ICT's pose, ``X_cam = R FLIP X_head + t``)."""
        model = self.refiner.model
        track = self._tracks.get(crop.track_id)
        if track is None:
            pool = IdentityPool(model.identity_size, self.refiner.identity_std, self.refiner.settings.calibration_frames)
            track = self._tracks[crop.track_id] = TrackState(pool)
        observed = crop.face.points[model.mediapipe_ids, :2].astype(np.float64)
        identity, prior = model.to_vectors(self._neutral)
        start = track.last if track.last is not None else initial_pose(model, observed, focal, principal, identity, prior)
        problem = FrameProblem(observed, focal, principal, prior, track.last if temporal and not photo else None)
        sol = refine_face(self.refiner, track, problem, start, photo=photo).solution
        params = model.to_params(sol.identity, sol.local, dtype=torch.float64)
        expression = params["expression"].numpy()
        return expression.astype(np.float32), self._eyeballs(params["identity"].numpy(), expression), sol.rotation, sol.translation

    def drop_lost_tracks(self, alive: set[int]) -> None:
        for track_id in list(self._tracks):
            if track_id not in alive:
                del self._tracks[track_id]

    def _eyeballs(self, identity: np.ndarray, expression: np.ndarray) -> Eyeballs:
        """The fitted face's eyeballs from the eyeball vertices alone (no full decode)."""
        points = self._eye_neutral + (identity @ self._eye_identity + expression @ self._eye_expression).reshape(-1, 3)
        first = np.arange(len(points)) < len(self._eye_masks[0])  # rows: one eyeball's vertices, then the other's
        return Eyeballs.from_vertices(points, (first, ~first))
