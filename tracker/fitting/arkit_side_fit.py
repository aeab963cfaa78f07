"""ARKit weights from an ICT-FaceKit fit of their own, beside the tracked head model's fit.

FLAME's expression space is a PCA basis with no named shapes. To give FLAME users ARKit weights,
ICT-FaceKit's 53 named expression weights are fitted to the same MediaPipe landmarks of the same
face, by the same refinement as the head model's own (``tracker.fitting.refinement``: Levenberg-Marquardt
on the 468 points through ICT's exact linear embedding, with ICT's own identity pooled and locked
per track). It starts from the neutral face, frontal, at the landmarks' depth on a track's first
frame and from the previous frame's fit after that, pulled towards the neutral expression
(``prior_std``) and the previous frame. Where an ICT network runs beside FLAME (FLAME tracked with
the shipped ICT network), its prediction is the start and the prior instead (``network_solution``),
as in the ICT tracker's own refinement. The fit's eyeballs give the gaze.

The ICT tracker uses it too (``TrackerOptions.arkit_from`` "network"): there the mesh's fit stays
close to MediaPipe's points, and this one follows the network's expression closely
(``refinement.ARKIT_SETTINGS``), which gives blinks that follow the lids better.

    fit = ArkitFit(load_head_model("ict"))
    expression, eyeballs, rotation, translation = fit.fit(crop, focal, principal)
    prior = fit.network_prior(network, smoothed)     # FrameParameters: this frame's, the smoothed
    fit.fit(crop, focal, principal, predicted=fit.network_solution(prior.params, prior.rotation_6d, prior.translation))

Its accuracy, measured against the ICT tracker's own ARKit weights on the real videos, is in the
README (``python -m train.evaluate_real --arkit-side-fit``).
"""

from __future__ import annotations

import numpy as np
import torch

from tracker.face.detection import FaceCrop
from tracker.face.smoothing import FrameParameters
from tracker.fitting.arkit import EyeballDecoder, Eyeballs, ict_to_arkit_matrix
from tracker.fitting.refinement import (
    LinearEmbeddedHead,
    Refiner,
    RefineSettings,
    Solution,
    embedded_head,
    settings_for,
)
from tracker.fitting.track_fitter import TrackFitter
from tracker.head_models.base import HeadModel


class ArkitFit:
    """ICT-FaceKit's expression, eyeballs and pose fitted to a face's MediaPipe landmarks, per track.

    ict       the ICT-FaceKit head model; settings  the refinement's (its iterations per frame)
    """

    def __init__(self, ict: HeadModel, settings: RefineSettings | None = None) -> None:
        if ict.name != "ict":
            raise ValueError(f"the ARKit fit needs the ICT-FaceKit head model, got {ict.name!r}")
        model = embedded_head(ict)
        assert isinstance(model, LinearEmbeddedHead)
        self.fitter = TrackFitter(Refiner(model, settings or settings_for("ict")))
        self.matrix = ict_to_arkit_matrix(ict.expression_names)  # (52, 53)
        self._eyeballs = EyeballDecoder(ict)
        self._eye_shapes = torch.tensor([name.startswith("eye") for name in ict.expression_names])

    def network_prior(self, network: FrameParameters, smoothed: FrameParameters) -> FrameParameters:
        """An ICT network's prediction of one face, as this frame's network gave it and as the
        tracker smoothed it -> the fit's start and prior: the smoothed pose and eye shapes, and
        this frame's own other expression shapes. The smoothing lags the mouth by about 0.4 of a
        frame; the weights get a filter of their own (``tracker.fitting.arkit.WeightFilter``),
        which smooths at least as well with that lag spent once. The network's lids are noisier
        frame to frame, so the eyes keep the smoothed prediction (docs/arkit-accuracy.md)."""
        expression = network.params["expression"].clone()
        expression[..., self._eye_shapes] = smoothed.params["expression"][..., self._eye_shapes]
        return FrameParameters({**smoothed.params, "expression": expression}, smoothed.rotation_6d, smoothed.translation, smoothed.crop_box)

    def network_solution(self, params: dict[str, torch.Tensor], rotation_6d: torch.Tensor, translation: torch.Tensor) -> Solution:
        """An ICT network's prediction of one face ({group: (n,)}, (6,), (3,)) -> the fit's start
        and prior."""
        return self.fitter.refiner.model.solution(params, rotation_6d, translation)

    def fit(
        self, crop: FaceCrop, focal: np.ndarray, principal: np.ndarray, temporal: bool = True, photo: bool = False,
        predicted: Solution | None = None,
    ) -> tuple[np.ndarray, Eyeballs, np.ndarray, np.ndarray]:
        """One face -> (expression (53,) float32, Eyeballs in ICT's head frame, rotation (3, 3),
        translation (3,): ICT's pose, ``X_cam = R FLIP X_head + t``); ``predicted``: an ICT
        network's prediction (``network_solution``), the start and prior. The solve runs on one
        BLAS thread (``single_blas_thread``)."""
        fit = self.fitter.fit(crop.track_id, crop.face.points, focal, principal, predicted, temporal=temporal, photo=photo)
        sol = fit.solution
        params = self.fitter.refiner.model.to_params(sol.identity, sol.local)
        return params["expression"].numpy(), self._eyeballs(params), sol.rotation, sol.translation

    def drop_lost(self, alive: set[int]) -> None:
        """Forget every track not in ``alive``."""
        self.fitter.drop_lost(alive)

    def reset(self) -> None:
        """Forget every track (a new clip)."""
        self.fitter.reset()
