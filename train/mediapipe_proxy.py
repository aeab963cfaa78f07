"""Runtime-matched training normals: the head model seen through the embedded MediaPipe cue.

At run time N2FNet's input comes from ``tracker.face.cues.MediaPipeMeshCue``: MediaPipe's 468
landmarks in crop pixels with its relative depth, meshed with 852 (+28 eye) triangles and shaded
by ``render_mediapipe_mesh``. ``MediaPipeProxy`` renders the synthetic heads the same way: the
468 points are fixed places on the head model's surface (``tracker.head_models.
mediapipe_embedding``), projected into the crop camera, given MediaPipe-like depth
(``(Z - Z_mean) * f / Z_mean`` pixels: the scale of x, smaller = nearer) and rendered by the
cue's own function, so the normals, the mask (face up to MediaPipe's outline, eyes closed, inner
mouth open) and their coarseness match what the network sees live.

Noise (``ProxyNoise``) models MediaPipe's landmark error. MediaPipe's mesh is smooth (its
regressor outputs a face-like surface; real cue normals have no per-point bumps), so its error is
a smooth deformation, not independent per point: independent per-point noise made the proxy's
normals crumpled, nothing like the live ones. The noise is white noise per point smoothed by a
Gaussian kernel of ``smoothing_mm`` over the neutral proxy surface, rescaled so every point's
standard deviation is the setting:
    position_mm 1.5   across the view: the median spread of MediaPipe's placement of a landmark
                      on ICT renders seen from 15 views is 1.7 mm (p90 4.7 mm)
    depth_mm    3.0   along the view: MediaPipe's depth is regressed from one image and rougher
                      than its x, y
    depth_scale_std 0.15  per sample: log-normal factor on all relative depths (MediaPipe's z
                      is documented as "roughly" the scale of x)
    smoothing_mm 20   the kernel width: errors of neighbouring points (a few mm apart) move together
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tracker.face.cues import mediapipe_triangles, render_mediapipe_mesh
from tracker.face.detection import MEDIAPIPE_68
from tracker.fitting.mediapipe_embedding import MediaPipeEmbedding, mediapipe_embedding
from tracker.geometry import camera
from tracker.head_models.base import HeadModel


@dataclass(frozen=True)
class ProxyNoise:
    """MediaPipe-like landmark error (see the module docstring); all zero switches it off."""

    position_mm: float = 1.5
    depth_mm: float = 3.0
    depth_scale_std: float = 0.15
    smoothing_mm: float = 20.0


class MediaPipeProxy:
    """Renders head-model meshes as the embedded MediaPipe cue renders a real face."""

    def __init__(self, head: HeadModel, embedding: MediaPipeEmbedding | None = None) -> None:
        self.embedding = (embedding if embedding is not None else mediapipe_embedding(head)).to(head.device)
        self.faces = torch.from_numpy(np.array(mediapipe_triangles(fill_eyes=True))).to(head.device)
        self.subset68 = torch.tensor(MEDIAPIPE_68, device=head.device)
        self.neutral_points = self.embedding.points(head.decode(head.neutral_params(1)))[0]  # (468, 3)
        self._kernels: dict[float, torch.Tensor] = {}

    def smooth_noise(self, batch: int, sigma: torch.Tensor, smoothing_mm: float, generator: torch.Generator | None) -> torch.Tensor:
        """(B, 468, 3) smooth Gaussian noise with per-axis standard deviation ``sigma`` (3,) metres."""
        white = _randn((batch, len(self.neutral_points), 3), generator, self.neutral_points)
        if smoothing_mm > 0:
            white = self._kernel(smoothing_mm) @ white
        return white * sigma

    def _kernel(self, smoothing_mm: float) -> torch.Tensor:
        """(468, 468) Gaussian smoothing over the neutral proxy, rows of unit norm (unit-variance output)."""
        if smoothing_mm not in self._kernels:
            distance = torch.cdist(self.neutral_points, self.neutral_points)
            kernel = torch.exp(-0.5 * (distance / (smoothing_mm / 1000.0)).square())
            self._kernels[smoothing_mm] = kernel / kernel.norm(dim=1, keepdim=True)
        return self._kernels[smoothing_mm]

    def points_camera(self, vertices: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) head-frame vertices -> (B, 468, 3) proxy points in the camera frame (metres)."""
        return camera.head_to_camera(self.embedding.points(vertices), rotation, translation)

    def landmarks68(self, vertices: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
        """(B, 68, 2) pixels of MediaPipe's iBUG-68 subset, the points the live crop box is built from."""
        points = self.points_camera(vertices, rotation, translation)[:, self.subset68]
        return camera.project(points, focal, principal)

    def render(
        self,
        vertices: torch.Tensor,
        rotation: torch.Tensor,
        translation: torch.Tensor,
        focal: torch.Tensor,
        principal: torch.Tensor,
        size: int,
        noise: ProxyNoise | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normals (B, 3, S, S) in the view frame, zero outside the mask, and mask (B, 1, S, S).

        vertices (B, V, 3) head frame; rotation (B, 3, 3), translation (B, 3) the crop camera's
        pose; focal, principal (B, 2) crop pixels. ``noise``: MediaPipe-like error (None: exact).
        """
        points = self.points_camera(vertices, rotation, translation)
        batch = points.shape[0]
        depth_scale = points.new_ones(batch, 1)
        if noise is not None:
            sigma = points.new_tensor([noise.position_mm, noise.position_mm, noise.depth_mm]) / 1000.0
            points = points + self.smooth_noise(batch, sigma, noise.smoothing_mm, generator)
            depth_scale = torch.exp(_randn((batch, 1), generator, points) * noise.depth_scale_std)
        pixels = camera.project(points, focal, principal)
        mean_depth = points[..., 2].mean(-1, keepdim=True)
        relative_depth = (points[..., 2] - mean_depth) * focal[:, :1] / mean_depth * depth_scale
        normals, mask = render_mediapipe_mesh(torch.cat((pixels, relative_depth[..., None]), -1), self.faces, size)
        return normals.permute(0, 3, 1, 2), mask[:, None]


def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
