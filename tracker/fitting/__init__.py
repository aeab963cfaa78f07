"""Fitting head models to MediaPipe's points: the embedding, the refinement, the per-track fitter, ARKit-52 and the ICT side fit."""
