"""Synthetic training data, a fresh batch every step, sampled and rendered on the training device.

Per sample (paper section "Synthetic data"):
 1. head-model parameters from the head model's priors (FLAME: the paper's Gaussians), camera
    rotation from Gaussian Euler angles (15, 20, 10 deg), translation t_xy ~ N(0, 0.02^2) m,
    t_z ~ N(1.0, 0.2^2) m, focal and principal point from Gaussians (settings below);
 2. decode the mesh, project the 68 landmarks into the original image (S_orig x S_orig);
 3. DECA-style square crop of side max(w, h) * alpha around the landmarks' box;
 4. crop camera by eqs. 6-9 (same R, t; focal and principal point mapped into the crop);
 5. render the normal map N*, the face mask S*_face and the landmarks lmk*_2D in the S_out crop;
    N*_face = N* * S*_face.

Settings the paper does not give, and our choices (recorded in every checkpoint):
    focal: normalised by S_orig, N(1.0, 0.1^2): a typical webcam/phone field of view (about 53 deg);
        the crop removes scale, so it only shapes perspective through the head's off-axis position.
    principal point: normalised, N(0.5, 0.02^2) per axis (near the image centre).
    alpha = 1.4: DECA's crop (1.25 x 1.1 x the mean box side) expressed on the max side.
    crop jitter: the live detector's box is never exact, so the box centre moves by
        N(0, (0.03 side)^2) and its side scales by exp(N(0, 0.05^2)) (0 switches it off).
    normal frame: "camera" (the view frame of tracker.geometry.camera) or "head" (Pixel3DMM).
    surface: "mesh" (the paper: the head model's face region rendered from its own mesh) or
        "mediapipe" (runtime-matched: the head seen through the embedded MediaPipe cue, see
        train.mediapipe_proxy; normals in the camera frame, mask up to MediaPipe's outline, crop
        box from MediaPipe's 68-point subset as the live cropper builds it, MediaPipe-like noise
        ``proxy_position_mm``, ``proxy_depth_mm``, ``proxy_depth_scale_std``, ``proxy_smoothing_mm``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from tracker.geometry import camera, crop
from tracker.geometry.rotations import euler_to_matrix, matrix_to_rotation_6d
from tracker.head_models.base import HeadModel
from tracker.render import render_maps
from train.config import SamplerConfig
from train.mediapipe_proxy import MediaPipeProxy, ProxyNoise


@dataclass
class SyntheticBatch:
    """One rendered batch; every tensor on the sampler's device.

    params       {group: (B, n)} ground-truth head-model parameters
    vertices     (B, V, 3) head-frame mesh, metres
    rotation     (B, 3, 3), rotation_6d (B, 6), translation (B, 3): the camera C* (crop camera = original)
    focal        (B, 2), principal (B, 2): crop intrinsics in crop pixels
    normals      (B, 3, S, S) N*_face (zero outside the face mask)
    mask         (B, 1, S, S) S*_face in {0, 1}
    landmarks_2d (B, 68, 2) lmk*_2D in crop pixels
    (the last three are None for a batch from ``sample_scene``)
    """

    params: dict[str, torch.Tensor]
    vertices: torch.Tensor
    rotation: torch.Tensor
    rotation_6d: torch.Tensor
    translation: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    normals: torch.Tensor | None
    mask: torch.Tensor | None
    landmarks_2d: torch.Tensor | None


@dataclass
class RenderedFace:
    """Rendered maps of a posed head: normals (B, 3, S, S) masked to the face, mask (B, 1, S, S),
    landmarks (B, 68, 2) crop pixels."""

    normals: torch.Tensor
    mask: torch.Tensor
    landmarks_2d: torch.Tensor


def render_face(
    head: HeadModel,
    vertices: torch.Tensor,
    params: dict[str, torch.Tensor],
    rotation: torch.Tensor,
    translation: torch.Tensor,
    focal: torch.Tensor,
    principal: torch.Tensor,
    size: int,
    normal_frame: str = "camera",
    proxy: MediaPipeProxy | None = None,
    noise: ProxyNoise | None = None,
    generator: torch.Generator | None = None,
) -> RenderedFace:
    """Render N_face, S_face and lmk_2D of head-frame ``vertices`` (B, V, 3) in a crop camera.

    ``proxy``: render the normals and mask as the live MediaPipe cue would (with ``noise`` drawn
    from ``generator``); None: the head model's own face region.

    Gradients: the landmarks are differentiable w.r.t. vertices, rotation and translation; the
    mesh surface's normals w.r.t. the vertices and (camera frame only) the rotation, not the
    translation (the MediaPipe proxy's w.r.t. all three: they come from projected points); the
    mask is a hard coverage test with no gradient (the rasteriser is not differentiable).
    """
    if proxy is not None:
        normals, mask = proxy.render(vertices, rotation, translation, focal, principal, size, noise, generator)
    else:
        maps = render_maps(
            vertices, head.render_faces, rotation, translation, focal, principal, (size, size), frame=normal_frame, region=head.region_masks["face"]
        )
        mask = maps.region_mask[..., None]  # (B, S, S, 1): pixel inside a triangle of the face region
        normals, mask = (maps.normals * mask).permute(0, 3, 1, 2), mask.permute(0, 3, 1, 2)
    landmarks_3d = head.landmarks(vertices, params, view_rotation=rotation)
    landmarks = camera.project_head(landmarks_3d, rotation, translation, focal, principal)
    return RenderedFace(normals, mask, landmarks)


def make_proxy(head: HeadModel, config: SamplerConfig) -> MediaPipeProxy | None:
    """The MediaPipe proxy the ``config``'s surface needs (None for the head model's own mesh)."""
    return MediaPipeProxy(head) if config.surface == "mediapipe" else None


class SyntheticSampler:
    """Draws SyntheticBatch-es from a head model's priors and the camera distributions.

    ``proxy``: the runtime-matched surface's renderer (default: built from ``config.surface``).
    """

    def __init__(self, head: HeadModel, config: SamplerConfig = SamplerConfig(), seed: int | None = None, proxy: MediaPipeProxy | None = None) -> None:
        self.head = head
        self.config = config
        self.proxy = proxy if proxy is not None else make_proxy(head, config)
        self.generator = torch.Generator(device=head.device)
        self.generator.manual_seed(seed if seed is not None else secrets.randbits(63))

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, device=self.head.device)

    @torch.no_grad()
    def sample(self, batch: int) -> SyntheticBatch:
        """A fresh rendered batch of ``batch`` samples."""
        scene = self.sample_scene(batch)
        cfg = self.config
        rendered = render_face(
            self.head, scene.vertices, scene.params, scene.rotation, scene.translation, scene.focal, scene.principal, cfg.output_size, cfg.normal_frame,
            proxy=self.proxy, noise=ProxyNoise(cfg.proxy_position_mm, cfg.proxy_depth_mm, cfg.proxy_depth_scale_std, cfg.proxy_smoothing_mm), generator=self.generator,
        )
        scene.normals, scene.mask, scene.landmarks_2d = rendered.normals, rendered.mask, rendered.landmarks_2d
        return scene

    @torch.no_grad()
    def sample_scene(self, batch: int) -> SyntheticBatch:
        """Steps 1-4 (parameters, camera, crop, crop camera) without rendering: the returned
        batch's normals, mask and landmarks_2d are None."""
        cfg, head = self.config, self.head
        device = head.device
        params = head.sample_params(batch, generator=self.generator, device=device)
        vertices = head.decode(params)

        euler = self._randn(batch, 3) * torch.deg2rad(torch.tensor(cfg.rotation_std_deg, device=device))
        rotation = euler_to_matrix(euler)
        translation = torch.tensor(cfg.translation_mean, device=device) + self._randn(batch, 3) * torch.tensor(cfg.translation_std, device=device)
        translation[:, 2].clamp_(min=cfg.min_depth)
        s_orig = cfg.image_size
        focal = (cfg.focal_mean + cfg.focal_std * self._randn(batch, 1)).clamp_min(0.2).expand(batch, 2) * s_orig
        principal = (0.5 + cfg.principal_std * self._randn(batch, 2)) * s_orig

        if self.proxy is not None:  # the live cropper's box comes from MediaPipe's 68-point subset
            landmarks_orig = self.proxy.landmarks68(vertices, rotation, translation, focal, principal)
        else:
            landmarks_3d = head.landmarks(vertices, params, rotation)
            landmarks_orig = camera.project_head(landmarks_3d, rotation, translation, focal, principal)
        box = self._jitter(crop.square_box_from_landmarks(landmarks_orig, cfg.alpha))
        focal_c, principal_c = crop.crop_intrinsics(focal, principal, box, cfg.output_size)
        return SyntheticBatch(params, vertices, rotation, matrix_to_rotation_6d(rotation), translation, focal_c, principal_c, None, None, None)

    def typical_crop_focal(self, samples: int = 256) -> float:
        """Median crop focal (pixels) of this distribution: the intrinsics to assume for a real
        crop whose camera is unknown."""
        return self.sample_scene(samples).focal[:, 0].median().item()

    def _jitter(self, box: torch.Tensor) -> torch.Tensor:
        """(B, 3) boxes moved and rescaled about their centre (detector imprecision)."""
        cfg = self.config
        if cfg.crop_shift_std == 0 and cfg.crop_scale_std == 0:
            return box
        side = box[:, 2:3]
        centre = box[:, :2] + side / 2 + self._randn(box.shape[0], 2) * cfg.crop_shift_std * side
        side = side * torch.exp(self._randn(box.shape[0], 1) * cfg.crop_scale_std)
        return torch.cat((centre - side / 2, side), dim=-1)
