"""A grid of camera-frame normal maps of random heads (``python -m tracker.render grid`` writes it as a PNG).

    render_grid(head, rows, cols, size, seed, frame="camera") -> (rows * size, cols * size, 3) uint8

Each tile is a head drawn from the model's priors (identity and expression), turned by Gaussian
Euler angles (pitch 15, yaw 20, roll 10 degrees: the paper's camera distribution), 1 m in front
of a camera with focal 3.5 x size (the whole head in view), rendered by the project's rasteriser.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from tracker.head_models import HeadModel


def render_grid(head: HeadModel, rows: int, cols: int, size: int, seed: int, frame: str = "camera") -> np.ndarray:
    """(rows * size, cols * size, 3) uint8 image of ``rows * cols`` random heads."""
    import torch

    from tracker.geometry.camera import FLIP
    from tracker.geometry.rotations import euler_to_matrix
    from tracker.render import normals_to_rgb, render_normal_map

    count = rows * cols
    generator = torch.Generator(device=head.device).manual_seed(seed)
    params = head.sample_params(count, generator=generator)
    vertices = head.decode(params)
    std = torch.tensor([15.0, 20.0, 10.0], device=head.device) * math.pi / 180
    rotation = euler_to_matrix(torch.randn(count, 3, generator=generator, device=head.device) * std)
    translation = torch.tensor([[0.0, 0.0, 1.0]], device=head.device).expand(count, 3)
    focal = torch.full((count, 2), 3.5 * size, device=head.device)
    principal = torch.full((count, 2), size / 2, device=head.device)
    # aim at the landmarks' centre so every face sits in the middle of its tile
    centre = head.landmarks(vertices, params, rotation).mean(1) * torch.tensor(FLIP, device=head.device)
    translation = translation - (rotation @ centre[..., None])[..., 0] * torch.tensor([1.0, 1.0, 0.0], device=head.device)
    normals, mask = render_normal_map(vertices, head.render_faces, rotation, translation, focal, principal, (size, size), frame=frame)
    tiles = normals_to_rgb(normals, mask).cpu().numpy()  # (N, S, S, 3)
    return tiles.reshape(rows, cols, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(rows * size, cols * size, 3)
