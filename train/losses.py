"""N2FNet's losses (paper section "Losses").

    L_param  = sum_g lambda_g * MSE(pred_g, gt_g)            FLAME: beta 10, theta 10, psi 100, gamma 10
    L_render = lambda_N * d_cos(N_face, N*_face) + lambda_S * MSE(S_face, S*_face)
             + lambda_lmk * MSE(lmk_2D, lmk*_2D)               lambda_N 1, lambda_S 10, lambda_lmk 100 (10000 real)

Reading of the paper's |.|^2: the mean squared error per coefficient (MSE), so the group weights
do not depend on how many coefficients a group has. Landmarks enter in normalised crop
coordinates (pixels / S * 2 - 1, i.e. [-1, 1] across the crop) so lambda_lmk does not depend on
the input size. d_cos is averaged over the pixels where the ground-truth face mask is on.
ICT (not in the paper) gets weights that give the paper's balance between the groups at the start
of training, when the network predicts the prior mean: there the FLAME terms are
shape 10 * 0.8^2 = 6.4 and expression 100 * 0.5^2 = 25; ICT's identity prior has variance 1 and
its sparse expression prior 0.2/3 - 0.1^2 = 0.057, hence identity 6.4 and expression 25 / 0.057
= 440. (With FLAME's weights ICT's identity term would dominate four to one, and it is the part
of the face a normal map shows least.)

Within an ICT group the coefficients are further weighted by how far each one moves the face:
w_i = ||B_i||^2 over the face-region vertices, normalised to mean 1 in the group (so the group
balance above is unchanged). ICT's identity modes are very unequal (the first moves the face by
2.7 mm RMS per unit, the median one by 0.13 mm) and so are its expressions (jawOpen 10.7 mm, the
median 1.0 mm); with equal weights 90 % of the identity term is spent on modes the normal map can
hardly show, and the first CPU runs learned only jawOpen. With these weights each group's term is
close to the mean squared face-vertex displacement the error causes, the quantity the evaluation
measures. FLAME keeps the paper's plain MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tracker.head_models.base import HeadModel

PARAM_WEIGHTS = {
    "flame": {"shape": 10.0, "jaw": 10.0, "expression": 100.0, "eyelids": 10.0},
    "ict": {"identity": 6.4, "expression": 440.0},
}


@dataclass(frozen=True)
class RenderWeights:
    normal: float = 1.0
    mask: float = 10.0
    landmarks: float = 100.0  # 10000 on real data


def coefficient_weights(head: HeadModel) -> dict[str, torch.Tensor]:
    """{group: (n,)} per-coefficient weights of L_param (mean 1 per group; see the module
    docstring): ICT's linear groups by their face-region displacement, nothing for FLAME."""
    if head.name != "ict":
        return {}
    face = head.region_masks["face"]
    weights = {}
    for group in PARAM_WEIGHTS["ict"]:
        basis = getattr(head, f"{group}_basis").reshape(-1, head.num_vertices, 3)[:, face]  # (n, V_face, 3)
        energy = basis.double().square().sum(dim=(1, 2))
        weights[group] = (energy / energy.mean()).float()
    return weights


def param_loss(
    pred: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    weights: dict[str, float],
    coefficient: dict[str, torch.Tensor] | None = None,
):
    """{group: (B, n)} x2, {group: lambda} (e.g. ``PARAM_WEIGHTS["flame"]``), optional
    {group: (n,)} per-coefficient weights (``coefficient_weights``) -> (total scalar,
    {group: scalar}) for the groups in ``pred``."""
    coefficient = coefficient or {}
    terms = {}
    for g in pred:
        squared = (pred[g] - target[g]).square()
        if g in coefficient:
            squared = squared * coefficient[g].to(squared)
        terms[g] = weights[g] * squared.mean()
    return sum(terms.values()), terms


def cosine_distance_map(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean of 1 - cos over mask pixels. pred, target (B, 3, H, W); mask (B, 1, H, W) -> scalar."""
    cos = F.cosine_similarity(pred, target, dim=1, eps=eps)[:, None]
    return ((1 - cos) * mask).sum() / mask.sum().clamp_min(1.0)


def normalised_landmarks(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, N, 2) crop pixels -> [-1, 1] across the crop."""
    return pixels / size * 2 - 1


def render_loss(
    normals: torch.Tensor,
    mask: torch.Tensor,
    landmarks_px: torch.Tensor,
    target_normals: torch.Tensor,
    target_mask: torch.Tensor,
    target_landmarks_px: torch.Tensor,
    size: int,
    weights: RenderWeights = RenderWeights(),
    landmark_visible: torch.Tensor | None = None,
):
    """Rendered prediction vs target -> (total scalar, {term: scalar}).

    normals (B, 3, H, W), mask (B, 1, H, W), landmarks_px (B, 68, 2) and the same for the target;
    ``landmark_visible`` (B, 68) optionally drops unannotated landmarks (real data).
    """
    lmk_error = (normalised_landmarks(landmarks_px, size) - normalised_landmarks(target_landmarks_px, size)).square().sum(-1)
    if landmark_visible is not None:
        lmk_term = (lmk_error * landmark_visible).sum() / landmark_visible.sum().clamp_min(1.0) / 2
    else:
        lmk_term = lmk_error.mean() / 2
    terms = {
        "normal": weights.normal * cosine_distance_map(normals, target_normals, target_mask),
        "mask": weights.mask * F.mse_loss(mask, target_mask),
        "landmarks": weights.landmarks * lmk_term,
    }
    return sum(terms.values()), terms
