"""A head model rendered as a stand-in for a camera image of a face, for sources and tests that
need a face MediaPipe finds without a camera (``tracker.live.demo``).

    painter = FacePainter(head)                                       # albedo once per head model
    image = painter.render(vertices, rotation, translation, focal, principal, (480, 640))  # (H, W, 3) uint8 BGR

Each vertex gets an albedo by region (``region_masks``): skin, a dark mouth inside, light teeth,
and eyeballs with a white sclera, a coloured iris and a dark pupil around the eyeball's forward
axis (+z of the head frame, the neutral mesh's). The contrast of lids against sclera and of lips
against the mouth inside is what MediaPipe's lid, iris and lip points need. Shading is Lambertian
from a light beside the camera (``LIGHT``) plus an ambient term, over a vertical grey gradient.
An eyeball's vertices carry their albedo when they are rotated (gaze).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tracker.head_models.base import HeadModel
from tracker.render.maps import render_maps
from tracker.render.rasterizer import covered_to_image, interpolate_covered

# BGR albedos in [0, 1]
SKIN = (0.50, 0.62, 0.86)
MOUTH_INSIDE = (0.16, 0.16, 0.30)
TEETH = (0.80, 0.86, 0.88)
SCLERA = (0.88, 0.90, 0.92)
IRIS = (0.32, 0.24, 0.14)
PUPIL = (0.04, 0.04, 0.04)
IRIS_DEG = 32.0  # the iris's angular radius about the eyeball's forward axis (a 6 mm iris on a 12 mm eyeball)
PUPIL_DEG = 13.0
LIGHT = (0.35, 0.30, 0.89)  # towards the light, view frame (+x right, +y up, +z towards the camera)
AMBIENT = 0.25
BACKGROUND = ((0.42, 0.40, 0.38), (0.26, 0.25, 0.24))  # BGR at the top and the bottom row


class FacePainter:
    """Per-vertex albedo of one head model (module docstring) and its renders.

    albedo (V, 3) float32 BGR; faces (F, 3) the head model's render triangles.
    """

    def __init__(self, head: HeadModel) -> None:
        self.faces = head.render_faces.cpu()
        vertices = head.decode(head.neutral_params(1))[0].detach().cpu().float()
        masks = {name: mask.cpu() for name, mask in head.region_masks.items()}
        albedo = torch.tensor(SKIN).repeat(len(vertices), 1)
        for region, colour in (("mouth_socket", MOUTH_INSIDE), ("gums_and_tongue", MOUTH_INSIDE), ("teeth", TEETH)):
            if region in masks:
                albedo[masks[region]] = torch.tensor(colour)
        for region in ("eyeball_left", "eyeball_right"):
            if region in masks:
                ids = torch.nonzero(masks[region]).squeeze(1)
                albedo[ids] = eye_albedo(vertices[ids])
        self.albedo = albedo

    @torch.no_grad()
    def render(
        self,
        vertices: torch.Tensor,
        rotation: torch.Tensor,
        translation: torch.Tensor,
        focal: torch.Tensor,
        principal: torch.Tensor,
        size: tuple[int, int],
    ) -> np.ndarray:
        """(V, 3) head-frame vertices at (3, 3) rotation and (3,) translation (``X_cam = R FLIP X_head + t``),
        focal (2,) and principal (2,) pixels, size (H, W) -> (H, W, 3) uint8 BGR image."""
        maps = render_maps(vertices[None].float(), self.faces, rotation[None].float(), translation[None].float(), focal[None].float(), principal[None].float(), size)
        light = torch.tensor(LIGHT) / math.sqrt(sum(c * c for c in LIGHT))
        shade = (maps.normals[0] @ light).clamp(min=0) * (1 - AMBIENT) + AMBIENT  # (H, W)
        colour = covered_to_image(interpolate_covered(self.albedo, self.faces, maps.fragments), maps.fragments)[0]
        height, width = size
        rows = torch.linspace(0, 1, height)[:, None, None]
        top, bottom = (torch.tensor(c) for c in BACKGROUND)
        background = (top * (1 - rows) + bottom * rows).expand(height, width, 3)
        mask = maps.mask[0][..., None]
        image = colour * shade[..., None] * mask + background * (1 - mask)
        return (image.clamp(0, 1) * 255).round().byte().numpy()


def eye_albedo(points: torch.Tensor) -> torch.Tensor:
    """(n, 3) one eyeball's neutral vertices (head frame) -> (n, 3) BGR albedo: pupil and iris
    within PUPIL_DEG and IRIS_DEG of the forward axis (+z) through the eyeball's centre, sclera elsewhere."""
    direction = points - points.mean(0)
    angle = torch.rad2deg(torch.atan2(direction[:, :2].norm(dim=1), direction[:, 2]))
    albedo = torch.tensor(SCLERA).repeat(len(points), 1)
    albedo[angle < IRIS_DEG] = torch.tensor(IRIS)
    albedo[angle < PUPIL_DEG] = torch.tensor(PUPIL)
    return albedo
