"""DECA-style square face crops and the camera of a crop (N2FNet eqs. 6-9), batched.

A crop is a square box ``(x0, y0, side)`` (B, 3) in the original image's pixel coordinates
(continuous, origin at the top-left corner: see ``tracker.geometry.camera``), resampled to
``out_size`` x ``out_size`` pixels. The map from original to crop pixels is
``u' = (u - x0) * s``, ``v' = (v - y0) * s`` with ``s = out_size / side``.

Crop camera (eqs. 6-9): rotation and translation are unchanged; in pixels of the crop
``focal' = focal * s`` and ``principal' = (principal - (x0, y0)) * s``. In the paper's normalised
form this is ``f* = f_orig * S_orig / side`` (focal divided by the image size before and after).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tracker.geometry.camera import focal_xy


def square_box_from_landmarks(landmarks_2d: torch.Tensor, alpha: float) -> torch.Tensor:
    """(B, N, 2) pixel landmarks -> (B, 3) boxes (x0, y0, side).

    The landmarks' min/max bounding box (x0, y0, w, h) gives a square of side ``max(w, h) * alpha``
    centred on the box centre (DECA's crop; alpha is the padding factor).
    """
    low = landmarks_2d.min(dim=1).values
    high = landmarks_2d.max(dim=1).values
    centre = (low + high) / 2
    side = (high - low).max(dim=-1).values * alpha
    return torch.cat((centre - side[:, None] / 2, side[:, None]), dim=-1)


def crop_intrinsics(
    focal: torch.Tensor, principal: torch.Tensor, box: torch.Tensor, out_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel intrinsics of the original image -> pixel intrinsics of the crop.

    focal (B,), (B, 1) or (B, 2); principal (B, 2); box (B, 3) -> ((B, 2), (B, 2)).
    """
    scale = out_size / box[:, 2:3]
    return focal_xy(focal) * scale, (principal - box[:, :2]) * scale


def crop_images(images: torch.Tensor, box: torch.Tensor, out_size: int, mode: str = "bilinear") -> torch.Tensor:
    """(B, C, H, W) images, (B, 3) boxes -> (B, C, out_size, out_size) crops (zeros outside).

    Crop pixel centre (j + 0.5, i + 0.5) samples the original at ``x0 + (j + 0.5) / s``.
    """
    _, _, height, width = images.shape
    steps = (torch.arange(out_size, device=images.device, dtype=images.dtype) + 0.5) / out_size  # (S,)
    xs = box[:, None, 0] + steps[None] * box[:, None, 2]  # (B, S) original pixel x
    ys = box[:, None, 1] + steps[None] * box[:, None, 2]
    grid_x = (xs / width * 2 - 1)[:, None, :].expand(-1, out_size, -1)
    grid_y = (ys / height * 2 - 1)[:, :, None].expand(-1, -1, out_size)
    grid = torch.stack((grid_x, grid_y), dim=-1)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
