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

Within an ICT group the error is measured by the face displacement it causes: the group's term
is lambda_g * e^T G e / n for the error e = pred - gt (B, n), with G (n, n) the Gram matrix of
the group's basis over the face-region vertices after the motions CD aligns away (translation,
rotation, uniform scale, linearised about the neutral face) are projected out, normalised to
mean diagonal 1 (so the group balance above holds for errors as wide as the prior). e^T G e is
then, up to that constant, the squared face-vertex displacement the error leaves after NoW-style
alignment, the quantity the evaluation measures. Plain MSE would weigh alike coefficients that
matter very unequally: ICT's identity modes differ widely (the first moves the face 2.7 mm RMS
per unit, the median one 0.13 mm), and the first is almost a pure scale, which a normal map
cannot show (2.6 mm RMS after rigid alignment, 0.7 mm after scaling); with equal weights 90 % of
the identity term is spent on modes the normal map can hardly show, and the first CPU runs
learned only jawOpen. FLAME keeps the paper's plain MSE.
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


def coefficient_metrics(head: HeadModel) -> dict[str, torch.Tensor]:
    """{group: (n, n)} L_param's face-displacement metric G per ICT linear group (see the module
    docstring; mean diagonal 1); nothing for FLAME (plain MSE)."""
    if head.name != "ict":
        return {}
    face = head.region_masks["face"]
    rest = head.neutral.reshape(head.num_vertices, 3)[face].double()
    rest = rest - rest.mean(0)
    axes = torch.eye(3, dtype=torch.float64, device=rest.device)
    motions = [axes[i].expand_as(rest) for i in range(3)]  # translations
    motions += [torch.linalg.cross(axes[i].expand_as(rest), rest) for i in range(3)]  # rotations
    motions.append(rest)  # uniform scale
    aligned_away, _ = torch.linalg.qr(torch.stack([m.reshape(-1) for m in motions], 1))  # (3V_face, 7)
    metrics = {}
    for group in PARAM_WEIGHTS["ict"]:
        basis = getattr(head, f"{group}_basis").reshape(-1, head.num_vertices, 3)[:, face].reshape(-1, 3 * int(face.sum())).double()
        residual = basis - (basis @ aligned_away) @ aligned_away.T  # (n, 3V_face)
        gram = residual @ residual.T
        metrics[group] = (gram / gram.diagonal().mean()).float()
    return metrics


def param_loss(
    pred: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    weights: dict[str, float],
    metrics: dict[str, torch.Tensor] | None = None,
):
    """{group: (B, n)} x2, {group: lambda} (e.g. ``PARAM_WEIGHTS["flame"]``), optional
    {group: (n, n)} metrics (``coefficient_metrics``; plain MSE for groups without one) ->
    (total scalar, {group: scalar}) for the groups in ``pred``."""
    metrics = metrics or {}
    terms = {}
    for g in pred:
        error = pred[g] - target[g]
        if g in metrics:
            squared = (error @ metrics[g].to(error)) * error  # (B, n): rows sum to e^T G e
        else:
            squared = error.square()
        terms[g] = weights[g] * squared.mean()
    return sum(terms.values()), terms


def cosine_distance_map(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean of 1 - cos over mask pixels. pred, target (B, 3, H, W); mask (B, 1, H, W) -> scalar."""
    cos = F.cosine_similarity(pred, target, dim=1, eps=eps)[:, None]
    return ((1 - cos) * mask).sum() / mask.sum().clamp_min(1.0)


def normalised_landmarks(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, N, 2) crop pixels -> [-1, 1] across the crop."""
    return pixels / size * 2 - 1


def landmark_mse(landmarks_px: torch.Tensor, target_px: torch.Tensor, size: int, visible: torch.Tensor | None = None) -> torch.Tensor:
    """L_render's landmark term before its lambda: the MSE per coordinate in normalised crop
    coordinates. landmarks_px, target_px (B, 68, 2) crop pixels; ``visible`` (B, 68) optionally
    drops unannotated landmarks -> scalar."""
    error = (normalised_landmarks(landmarks_px, size) - normalised_landmarks(target_px, size)).square().sum(-1)
    if visible is None:
        return error.mean() / 2
    return (error * visible).sum() / visible.sum().clamp_min(1.0) / 2


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
    terms = {
        "normal": weights.normal * cosine_distance_map(normals, target_normals, target_mask),
        "mask": weights.mask * F.mse_loss(mask, target_mask),
        "landmarks": weights.landmarks * landmark_mse(landmarks_px, target_landmarks_px, size, landmark_visible),
    }
    return sum(terms.values()), terms


@dataclass(frozen=True)
class PoseWeights:
    """Weights of the supervised camera term (0: off, the paper's stage 2 has none)."""

    rotation: float = 0.0
    translation: float = 0.0

    @property
    def active(self) -> bool:
        return self.rotation > 0 or self.translation > 0


def pose_loss(rotation: torch.Tensor, translation: torch.Tensor, target_rotation: torch.Tensor, target_translation: torch.Tensor, weights: PoseWeights):
    """Predicted vs known camera -> (total scalar, {term: scalar}): the mean squared chordal
    distance |R - R*|_F^2 (8 sin^2(theta / 2) for a rotation error theta) and the mean squared
    translation error relative to the target's depth, |t - t*|^2 / t*_z^2 (scale-free: a face at
    any distance counts alike). rotation, target_rotation (B, 3, 3); translation, target (B, 3)."""
    terms = {
        "rotation": weights.rotation * (rotation - target_rotation).square().sum((-2, -1)).mean(),
        "translation": weights.translation * ((translation - target_translation).square().sum(-1) / target_translation[:, 2].square().clamp_min(1e-6)).mean(),
    }
    return sum(terms.values()), terms
