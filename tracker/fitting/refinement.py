"""Landmark-consistent refinement: N2FNet's prediction made to agree with MediaPipe's dense landmarks.

After N2FNet, a few Levenberg-Marquardt steps fit the head model to the 468 MediaPipe Face Mesh
points of the frame, through the head model's embedding of those points (``EmbeddedHead``). The
unknowns of one face in one frame ("locals") are the head pose in the frame camera (R, t) and the
per-frame groups (ICT: the 53 expression weights; FLAME: expression, jaw, eyelids); the identity
is shared by every frame of a track and pooled over them (``IdentityPool``).

Cost of one frame (r_k: point k's reprojection error in pixels over s_k = sigma_k f / Z_k, the
point's expected error at its depth; rho: Huber's loss at ``huber`` sigmas):

    data_weight * sum_k rho(|r_k|)                                     (the N embedded points, 2D)
  + |(l - l_net) / prior_std|^2                                        pull to N2FNet's locals (or the neutral ones)
  + |log(R R_prev^T)| / rot_std|^2 + |(t - t_prev) / trans_std|^2
  + |(l - l_prev) / temporal_std|^2                                    temporal term (video)
  + (i - i_pool)^T A_pool (i - i_pool) + |i / identity_std|^2          identity (calibrating)

``data_weight`` < 1 because MediaPipe's errors are smooth over the face (neighbouring points err
together; see ``train/mediapipe_proxy.py``), so 468 points carry far less than 468 independent
measurements. Bounded groups (ICT's expression weights in [0, 1]) are kept in range by projected
steps with an active set (a weight at a bound whose gradient points outward is held there).

Jacobians are analytic: dX/domega = -[R F P]_x for the left-multiplied rotation update
R <- exp([omega]_x) R, dX/dt = I, dX/dcoefficient = R F dP/dcoefficient, through the pinhole's
2x3 derivative. ICT is linear in its coefficients (``LinearEmbeddedHead``: fixed bases at the
embedded points). FLAME's Jacobians are analytic through its LBS (``FlameEmbeddedHead``,
``tracker.fitting.flame_embedded_head``); other models are linearised at every step by
forward-mode autodiff of their ``decode`` (``DecodedEmbeddedHead``).

Identity pooling: at the frame's solution the identity's normal equations are reduced to the
identity alone by eliminating the frame's locals (the Schur complement of the local block), so a
frame contributes the information it has about the identity once expression and pose have taken
what they can explain. That frame cost leaves out the temporal term: it pulls the locals towards
the previous frame's, which were fitted to the previous identity, so it would count that identity
again as evidence for itself, frame after frame (the pooled identity drifted from the truth with
every frame; tests/fitting/test_flame_recovery.py). It also takes the pull of the locals towards
the network's (or the neutral face's) at a quarter of its strength (``identity_prior_weight``):
at full strength, whatever the face does away from that prior in every frame (a mouth open more
often than closed, from the neutral face) is pooled into the identity. On synthetic FLAME heads
with MediaPipe-like noise (18 frames, 4 heads) the pooled identity is 5.6 mm from the truth at
full strength, 2.8 mm at a quarter and 2.4 mm at 1/100, against 3.6 mm for single frames; on the
real videos 1/100 also raised FLAME's mesh jitter by up to 12 %, a quarter by up to 4 %. Summed over frames, (A_pool, b_pool) is the identity's Gaussian
information; the pooled identity solves (A_pool + I / identity_std^2) i = b_pool. After
``calibration_frames`` frames the identity is locked.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.linalg.blas import dtrsm
from scipy.linalg.lapack import dposv
from threadpoolctl import ThreadpoolController

from tracker.errors import TrackerError
from tracker.fitting.flame_embedded_head import FlameSkinning
from tracker.geometry.camera import FLIP
from tracker.geometry.rotations import (
    axis_angle_to_rotation_6d,
    exp_rotation,
    log_rotation,
    rotation_6d_to_axis_angle,
    rotation_6d_to_matrix,
)
from tracker.head_models.base import (
    GaussianPrior,
    HeadModel,
    RotationPrior,
    SparseUniformPrior,
    UniformPrior,
    default_identity_group,
)
from tracker.head_models.flame import FLAME

DEFAULT_ITERATIONS = 3
MEDIAPIPE_POINTS = 468
# groups that are never refined per frame: the head's own root pose is the camera's (R, t)
POSE_GROUPS = ("global", "neck", "translation", "eyes")
# numpy's BLAS libraries, found once (a scan costs milliseconds)
_BLAS = ThreadpoolController()


def single_blas_thread():
    """Context manager: numpy's BLAS on one thread, for the refinement's small solves (they stall
    in a thread pool that MediaPipe and torch are also using), as the network runs on one torch thread."""
    return _BLAS.limit(limits=1, user_api="blas")


def solve_positive(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (n,) with a x = b for a (n, n) symmetric positive definite (Cholesky); LinAlgError if it is not."""
    _, x, info = dposv(a, b)
    if info != 0:
        raise np.linalg.LinAlgError(f"not positive definite (LAPACK dposv info {info})")
    return x


@dataclass(frozen=True)
class RefineSettings:
    """Weights and schedule of the refinement (see the module docstring for the cost).

    iterations        most LM iterations per frame (a new track's first frame gets twice as many)
    tolerance         stop when an accepted step lowers the cost by less than this fraction
    point_floor_mm    sigma_k = sqrt(spread_k^2 + floor^2): the embedding's per-point spread
                      (how much MediaPipe's placement of the point varies) plus a floor
    huber             Huber threshold, in sigmas
    data_weight       weight of the landmark term (MediaPipe's errors are correlated)
    prior_std         pull of the locals to the network's prediction, per coefficient
    prior_rotation_deg  the same for rotation groups (FLAME's jaw), degrees
    temporal_*        temporal term towards the previous frame's solution (0: off)
    shape_stds        (name prefix, prior_std, temporal_std) for the local coefficients whose
                      names start with the prefix (``EmbeddedHead.coefficient_names``), in order;
                      the prior_std only for a pull to a network's prediction (the neutral face's
                      stays ``prior_std``)
    identity_std      None: the head model's own identity prior std
    identity_prior_weight  weight of ``prior_std``'s pull in a frame's evidence for the identity
                      (``Refiner.identity_information``; module docstring)
    calibration_frames  frames pooled before the identity locks
    photo_rounds      identity updates in a single-frame (photo) fit
    """

    iterations: int = DEFAULT_ITERATIONS
    tolerance: float = 1e-3
    point_floor_mm: float = 1.0
    huber: float = 5.0
    data_weight: float = 0.2
    prior_std: float = 0.5
    prior_rotation_deg: float = 10.0
    temporal_rotation_deg: float = 1.5
    temporal_translation_mm: float = 4.0
    temporal_std: float = 0.5
    shape_stds: tuple[tuple[str, float, float], ...] = ()
    identity_std: float | None = None
    identity_prior_weight: float = 0.25
    calibration_frames: int = 30
    photo_rounds: int = 3

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise TrackerError(f"the refinement needs at least one iteration, got {self.iterations}")


# ICT's settings, chosen on the real videos beside MediaPipe's blendshape model (the ablation in
# docs/arkit-accuracy.md): the jaw follows the network's prediction and the previous frame at 0.25
# instead of 0.5. The network reads the whole lower face from the normal map, so jawOpen then
# follows the mouth better on every video (r up to 0.983 from 0.974) with 10-25 % less jitter and
# no lag, and the mesh's landmark figures stay as they were. The same pull on every shape helps
# eyeBlink more but costs the mesh's eye opening its agreement with MediaPipe (cap12 0.945 -> 0.876).
ICT_SETTINGS = RefineSettings(shape_stds=(("jaw", 0.25, 0.25),))


# The ICT fit that gives the ARKit weights, beside the mesh's fit (``TrackerOptions.arkit_from``
# "network", ``tracker.fitting.arkit_side_fit``): every shape follows an ICT network's prediction
# and the previous frame at 0.25. On the real videos its eyeBlink r passes MediaPipe's blendshape
# model's on three of four (docs/arkit-accuracy.md); the mesh's own fit would lose its lids'
# agreement with MediaPipe at these settings, so it stays at ICT_SETTINGS.
ARKIT_SETTINGS = RefineSettings(shape_stds=(("", 0.25, 0.25),))


def settings_for(head_model: str) -> RefineSettings:
    """The library's refinement settings for a head model by name: ICT_SETTINGS for "ict", else the defaults."""
    return ICT_SETTINGS if head_model == "ict" else RefineSettings()


# ----------------------------------------------------------------------------- head models


@dataclass(frozen=True)
class LocalGroup:
    """One per-frame group in the solver's vector: ``size`` solver coordinates (axis-angle, 3
    per joint, for rotation groups), bounds ``low``/``high`` (None: unbounded)."""

    name: str
    size: int
    rotation: bool
    low: float | None = None
    high: float | None = None


def refinement_groups(head: HeadModel) -> tuple[str | None, list[LocalGroup]]:
    """(identity group name or None, the per-frame groups) of ``head``."""
    identity = default_identity_group(head.param_groups)
    groups = []
    for name, group in head.param_groups.items():
        if name == identity or name in POSE_GROUPS:
            continue
        prior = group.prior
        if isinstance(prior, RotationPrior):
            groups.append(LocalGroup(name, group.size // 6 * 3, True))
        elif isinstance(prior, (UniformPrior, SparseUniformPrior)):
            groups.append(LocalGroup(name, group.size, False, prior.low, prior.high))
        else:
            groups.append(LocalGroup(name, group.size, False))
    return identity, groups


class EmbeddedHead:
    """A head model seen at its embedded MediaPipe points.

    mediapipe_ids (N,) which MediaPipe landmarks the N points are; sigma_m (N,) their expected
    error in metres; identity_group / identity_size; groups (per-frame ``LocalGroup``s), whose
    solver coordinates concatenate to the (L,) local vector; lower, upper (L,) bounds;
    coefficient_names (L,) the expression's shape names where the head model has them (ICT),
    else "<group><index>".
    """

    autodiff = False  # Jacobians by autodiff of the whole decode (tenths of a second per frame on a CPU)
    mediapipe_ids: np.ndarray
    sigma_m: np.ndarray
    identity_group: str | None
    identity_size: int
    groups: list[LocalGroup]
    identity_std: float

    def _setup(self, head: HeadModel, mediapipe_ids: np.ndarray, sigma_m: np.ndarray) -> None:
        self.head = head
        self.mediapipe_ids = np.asarray(mediapipe_ids, dtype=np.int64)
        self.sigma_m = np.asarray(sigma_m, dtype=np.float64)
        self.identity_group, self.groups = refinement_groups(head)
        self.identity_size = head.param_groups[self.identity_group].size if self.identity_group else 0
        prior = head.param_groups[self.identity_group].prior if self.identity_group else None
        self.identity_std = float(prior.std) if isinstance(prior, GaussianPrior) else 1.0
        self.local_size = sum(g.size for g in self.groups)
        self.lower = np.concatenate([np.full(g.size, -np.inf if g.low is None else g.low) for g in self.groups] or [np.zeros(0)])
        self.upper = np.concatenate([np.full(g.size, np.inf if g.high is None else g.high) for g in self.groups] or [np.zeros(0)])
        self.rotation_coords = np.concatenate([np.full(g.size, g.rotation) for g in self.groups] or [np.zeros(0, bool)])
        shape_names = list(getattr(head, "expression_names", ()))
        self.coefficient_names = [
            shape_names[i] if g.name == "expression" and len(shape_names) == g.size else f"{g.name}{i}" for g in self.groups for i in range(g.size)
        ]

    # -- parameters <-> solver vectors ----------------------------------------------------------
    def to_vectors(self, params: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """{group: (n,)} one face's parameters -> identity (K,), local (L,) float64 solver vectors."""
        identity = params[self.identity_group].double().cpu().numpy() if self.identity_group else np.zeros(0)
        parts = []
        for group in self.groups:
            value = params[group.name].double().cpu()
            if group.rotation:
                value = rotation_6d_to_axis_angle(value.reshape(-1, 6)).reshape(-1)
            parts.append(value.numpy())
        return identity, (np.concatenate(parts) if parts else np.zeros(0))

    def solution(self, params: dict[str, torch.Tensor], rotation_6d: torch.Tensor, translation: torch.Tensor) -> Solution:
        """A network's prediction of one face ({group: (n,)} of this head model, (6,), (3,)) -> the
        fit's Solution (groups the network leaves out completed as the head model's neutral)."""
        completed = self.head.complete_params({g: v[None] for g, v in params.items()})
        identity, local = self.to_vectors({g: v[0] for g, v in completed.items()})
        rotation = rotation_6d_to_matrix(rotation_6d[None].double())[0].numpy()
        return Solution(rotation, translation.double().numpy(), local, identity)

    def to_params(self, identity: np.ndarray, local: np.ndarray, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """Solver vectors -> {group: (n,)} (the refined groups and the identity only)."""
        params = {}
        if self.identity_group:
            params[self.identity_group] = torch.from_numpy(np.asarray(identity)).to(dtype)
        start = 0
        for group in self.groups:
            value = np.asarray(local[start : start + group.size])
            if group.rotation:  # each axis-angle -> the first two rows of its matrix (6D)
                value = np.concatenate([exp_rotation(omega)[:2].reshape(6) for omega in value.reshape(-1, 3)])
            params[group.name] = torch.from_numpy(value).to(dtype)
            start += group.size
        return params

    # -- geometry -------------------------------------------------------------------------------
    def points(self, identity: np.ndarray, local: np.ndarray) -> np.ndarray:
        """(K,), (L,) -> (N, 3) head-frame points, metres."""
        raise NotImplementedError

    def jacobians(self, identity: np.ndarray, local: np.ndarray, with_identity: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 3, L) d points / d local and (N, 3, K) d points / d identity (None unless asked)."""
        raise NotImplementedError


class LinearEmbeddedHead(EmbeddedHead):
    """A head model linear in its coefficients (ICT): points = mean + B_id i + B_loc l, exact."""

    def __init__(self, head: HeadModel, vertex_ids: torch.Tensor, bary: torch.Tensor, mediapipe_ids, sigma_m) -> None:
        self._setup(head, mediapipe_ids, sigma_m)
        if any(g.rotation for g in self.groups):
            raise TrackerError(f"{head.name} has rotation groups: use DecodedEmbeddedHead")
        ids, weights = vertex_ids.cpu().long(), bary.cpu().double()

        def embed(flat: torch.Tensor) -> np.ndarray:  # (C, V*3) -> (N, 3, C)
            per_vertex = flat.double().reshape(flat.shape[0], -1, 3)[:, ids]  # (C, N, 3 corners, 3)
            return (per_vertex * weights[None, :, :, None]).sum(2).permute(1, 2, 0).numpy()

        self.mean = embed(head.neutral.reshape(1, -1))[..., 0]
        self.identity_basis = np.ascontiguousarray(embed(head.identity_basis)) if self.identity_group else np.zeros((len(ids), 3, 0))
        self.local_basis = np.ascontiguousarray(embed(head.expression_basis))
        self._local_flat = self.local_basis.reshape(-1, self.local_size)
        self._base_of: tuple[bytes, np.ndarray] | None = None  # (identity bytes, mean + B_id i)

    @classmethod
    def supports(cls, head: HeadModel) -> bool:
        return hasattr(head, "identity_basis") and hasattr(head, "expression_basis") and set(head.param_groups) == {"identity", "expression"}

    def _base(self, identity: np.ndarray) -> np.ndarray:
        key = np.asarray(identity, dtype=np.float64).tobytes()
        if self._base_of is None or self._base_of[0] != key:
            flat = self.identity_basis.reshape(-1, self.identity_size) @ identity if self.identity_size else 0.0
            self._base_of = (key, self.mean.reshape(-1) + flat)
        return self._base_of[1]

    def points(self, identity: np.ndarray, local: np.ndarray) -> np.ndarray:
        return (self._base(identity) + self._local_flat @ local).reshape(-1, 3)

    def jacobians(self, identity, local, with_identity):
        return self.local_basis, (self.identity_basis if with_identity else None)


class DecodedEmbeddedHead(EmbeddedHead):
    """Any head model, through its ``decode``; Jacobians by forward-mode autodiff (torch.func).

    ``point_fn`` maps (1, V, 3) vertices to (1, N, 3) points (an embedding's ``points``, FLAME's
    ``mediapipe_landmarks``); the groups the solver does not touch stay neutral.
    """

    autodiff = True

    def __init__(self, head: HeadModel, point_fn, mediapipe_ids, sigma_m) -> None:
        self._setup(head, mediapipe_ids, sigma_m)
        self.point_fn = point_fn
        self.dtype = head.decode(head.neutral_params(1)).dtype

    def _decode(self, identity: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        params = {}
        if self.identity_group:
            params[self.identity_group] = identity[None]
        start = 0
        for group in self.groups:
            value = local[start : start + group.size]
            if group.rotation:
                value = axis_angle_to_rotation_6d(value.reshape(-1, 3)).reshape(-1)
            params[group.name] = value[None]
            start += group.size
        return self.point_fn(self.head.decode(params))[0]

    def _tensors(self, identity, local):
        return torch.as_tensor(identity, dtype=self.dtype), torch.as_tensor(local, dtype=self.dtype)

    @torch.no_grad()
    def points(self, identity, local):
        return self._decode(*self._tensors(identity, local)).double().numpy()

    def jacobians(self, identity, local, with_identity):
        ident, loc = self._tensors(identity, local)
        if with_identity and self.identity_group:
            j_id, j_loc = torch.func.jacfwd(self._decode, argnums=(0, 1))(ident, loc)
            return j_loc.double().numpy(), j_id.double().numpy()
        j_loc = torch.func.jacfwd(lambda l: self._decode(ident, l))(loc)
        return j_loc.double().numpy(), None


class FlameEmbeddedHead(DecodedEmbeddedHead):
    """FLAME at N barycentric points, analytic through its LBS (``FlameSkinning``); the decoded
    parent's methods stay as the reference.

    vertex_ids (N, 3), bary (N, 3): the points' triangles; fixed: {group: (size,)} for groups the
    solver does not touch (default neutral); pose_jacobian: pose correctives in the Jacobian too.
    """

    autodiff = False

    def __init__(self, head: FLAME, vertex_ids, bary, mediapipe_ids, sigma_m, fixed=None, pose_jacobian: bool = True) -> None:
        ids, weights = torch.as_tensor(vertex_ids).long(), torch.as_tensor(bary)
        self._setup(head, mediapipe_ids, sigma_m)
        self.point_fn = lambda v: (v[:, ids] * weights.to(v)[None, :, :, None]).sum(2)
        self.dtype = head.v_template.dtype
        self.skinning = FlameSkinning(head, vertex_ids, bary, self.groups, self.identity_size, fixed, pose_jacobian)

    def points(self, identity, local):
        return self.skinning.points(identity, local)

    def jacobians(self, identity, local, with_identity):
        return self.skinning.jacobians(identity, local, with_identity)

    def autodiff_reference(self) -> DecodedEmbeddedHead:
        """The same head (points, fixed groups, dtype) through the decode's forward-mode autodiff:
        the reference the analytic path is checked and timed against."""
        reference = copy.copy(self)
        reference.__class__ = DecodedEmbeddedHead
        return reference


def embedded_head(head: HeadModel, embedding=None, floor_mm: float = 1.0, analytic: bool = True) -> EmbeddedHead:
    """The ``EmbeddedHead`` of ``head``: ICT exactly linear; FLAME with the official
    ``mediapipe_landmark_embedding.npz`` (105 points) when loaded; otherwise through a
    ``MediaPipeEmbedding`` (468 points; None: computed or read from the cache). FLAME is
    ``FlameEmbeddedHead`` (analytic), or with ``analytic=False`` the autodiff reference."""
    flame = analytic and isinstance(head, FLAME)
    if embedding is None and getattr(head, "has_mediapipe", False):
        ids = head.mediapipe_indices.cpu().numpy()
        sigma = np.full(len(ids), floor_mm * 1e-3)
        if flame:
            corners = head.faces[head.mediapipe_lmk_faces_idx]
            return FlameEmbeddedHead(head, corners, head.mediapipe_lmk_bary_coords, ids, sigma)
        return DecodedEmbeddedHead(head, head.mediapipe_landmarks, ids, sigma)
    if embedding is None:
        from tracker.fitting.mediapipe_embedding import mediapipe_embedding

        embedding = mediapipe_embedding(head)
    ids = np.arange(MEDIAPIPE_POINTS)
    sigma = np.sqrt(embedding.spread_mm.double().numpy() ** 2 + floor_mm**2) * 1e-3
    if LinearEmbeddedHead.supports(head):
        return LinearEmbeddedHead(head, embedding.vertex_ids, embedding.bary, ids, sigma)
    if flame:
        return FlameEmbeddedHead(head, embedding.vertex_ids, embedding.bary, ids, sigma)
    return DecodedEmbeddedHead(head, embedding.to(head.device).points, ids, sigma)


# ----------------------------------------------------------------------------- solver


@dataclass
class Solution:
    """One face's refined state: rotation (3, 3) and translation (3,) in the frame camera
    (X_cam = R F X_head + t), local (L,) and identity (K,) solver vectors."""

    rotation: np.ndarray
    translation: np.ndarray
    local: np.ndarray
    identity: np.ndarray

    def copy(self) -> Solution:
        return Solution(self.rotation.copy(), self.translation.copy(), self.local.copy(), self.identity.copy())


@dataclass
class FrameProblem:
    """What one frame's fit needs besides the model: observed (N, 2) pixels of the embedded
    points, focal (2,) and principal (2,) pixels, the network's locals (L,) (None: no pull),
    the previous frame's solution (None: no temporal term), and the depth (m) at which a
    point's sigma is converted to pixels (None: the start's mean depth, set by ``refine_face``;
    fixed during the fit, so the cost is a plain weighted least-squares problem).
    ``prior_weight`` scales the pull towards ``prior_local`` (``RefineSettings.identity_prior_weight``);
    ``prior_from_network``: ``prior_local`` is a network's prediction, not the neutral face's
    (``RefineSettings.shape_stds`` apply)."""

    observed: np.ndarray
    focal: np.ndarray
    principal: np.ndarray
    prior_local: np.ndarray | None
    previous: Solution | None
    depth: float | None = None
    prior_weight: float = 1.0
    prior_from_network: bool = True


@dataclass
class _System:
    cost: float
    hessian: np.ndarray | None = None  # (6 + L, 6 + L)
    gradient: np.ndarray | None = None  # (6 + L,)
    jacobian: np.ndarray | None = None  # (2N, 6 + L) weighted rows sqrt(w) J
    residual: np.ndarray | None = None  # (2N,) sqrt(w) r
    projector: np.ndarray | None = None  # (N, 2, 3) d pixel / d X_cam over s_k, times sqrt(w), times R F


class Refiner:
    """Levenberg-Marquardt fits of one ``EmbeddedHead`` (pure functions of their inputs)."""

    def __init__(self, model: EmbeddedHead, settings: RefineSettings = RefineSettings()) -> None:
        self.model, self.settings = model, settings
        s = settings
        self.identity_std = s.identity_std if s.identity_std is not None else model.identity_std
        rotation = model.rotation_coords
        self.prior_precision = np.where(rotation, 1.0 / math.radians(s.prior_rotation_deg) ** 2, 1.0 / s.prior_std**2)
        self.temporal_precision = np.where(rotation, 1.0 / math.radians(s.temporal_rotation_deg) ** 2, 1.0 / s.temporal_std**2) if s.temporal_std > 0 else None
        self.neutral_precision = self.prior_precision.copy()  # the pull to the neutral face: no shape_stds
        for prefix, prior_std, temporal_std in s.shape_stds:
            chosen = np.array([name.startswith(prefix) for name in model.coefficient_names], bool)
            self.prior_precision[chosen] = 1.0 / prior_std**2
            if self.temporal_precision is not None:
                self.temporal_precision[chosen] = 1.0 / temporal_std**2
        self.rotation_precision = 1.0 / math.radians(s.temporal_rotation_deg) ** 2  # temporal, head rotation
        self.translation_precision = 1.0 / (s.temporal_translation_mm * 1e-3) ** 2  # temporal, head translation

    # -- cost and normal equations ---------------------------------------------------------------
    def system(self, sol: Solution, problem: FrameProblem, jacobian: bool = True) -> _System:
        """Cost at ``sol`` and, with ``jacobian``, the Gauss-Newton normal equations over
        [omega (3), t (3), local (L)]."""
        s, model = self.settings, self.model
        points = model.points(sol.identity, sol.local)
        rf = sol.rotation * FLIP  # R @ diag(FLIP)
        rotated = points @ rf.T
        x = rotated + sol.translation
        z = np.maximum(x[:, 2], 1e-6)
        fx, fy = problem.focal
        projected = np.stack((fx * x[:, 0] / z, fy * x[:, 1] / z), -1) + problem.principal
        depth = problem.depth if problem.depth is not None else float(z.mean())
        scale = model.sigma_m * (0.5 * (fx + fy)) / depth  # (N,) pixels per sigma
        residual = (projected - problem.observed) / scale[:, None]
        norm = np.linalg.norm(residual, axis=1)
        c = s.huber
        inlier = norm <= c
        rho = np.where(inlier, norm**2, 2.0 * c * norm - c * c)
        cost = s.data_weight * float(rho.sum()) + self._prior_cost(sol, problem)
        if not jacobian:
            return _System(cost)
        weight = s.data_weight * np.where(inlier, 1.0, c / np.maximum(norm, 1e-12))
        root = np.sqrt(weight) / scale
        d = np.zeros((len(z), 2, 3))
        d[:, 0, 0] = fx / z
        d[:, 1, 1] = fy / z
        d[:, 0, 2] = -fx * x[:, 0] / z**2
        d[:, 1, 2] = -fy * x[:, 1] / z**2
        d *= root[:, None, None]
        local_basis, _ = model.jacobians(sol.identity, sol.local, with_identity=False)
        j = np.empty((len(z), 2, 6 + model.local_size))
        # d X / d omega = -[v]_x with v = R F P: a row a of d gives a^T (-[v]_x) = (v x a)^T
        v0, v1, v2 = (rotated[:, k, None] for k in range(3))
        j[:, :, 0] = v1 * d[:, :, 2] - v2 * d[:, :, 1]
        j[:, :, 1] = v2 * d[:, :, 0] - v0 * d[:, :, 2]
        j[:, :, 2] = v0 * d[:, :, 1] - v1 * d[:, :, 0]
        j[:, :, 3:6] = d
        projector = d @ rf  # (N, 2, 3)
        np.matmul(projector, local_basis, out=j[:, :, 6:])
        j = j.reshape(2 * len(z), -1)
        r = (residual * np.sqrt(weight)[:, None]).reshape(-1)
        hessian = j.T @ j
        gradient = j.T @ r
        self._add_priors(hessian, gradient, sol, problem)
        return _System(cost, hessian, gradient, j, r, projector)

    def _prior_cost(self, sol: Solution, problem: FrameProblem) -> float:
        cost = 0.0
        if problem.prior_local is not None:
            cost += problem.prior_weight * float((self._pull(problem) * (sol.local - problem.prior_local) ** 2).sum())
        prev = problem.previous
        if prev is not None and self.temporal_precision is not None:
            phi = log_rotation(sol.rotation @ prev.rotation.T)
            step = sol.translation - prev.translation
            cost += self.rotation_precision * float(phi @ phi) + self.translation_precision * float(step @ step)
            cost += float((self.temporal_precision * (sol.local - prev.local) ** 2).sum())
        return cost

    def _pull(self, problem: FrameProblem) -> np.ndarray:
        """(L,) precision of the pull towards ``problem.prior_local`` (a network's or the neutral face's)."""
        return self.prior_precision if problem.prior_from_network else self.neutral_precision

    def _add_priors(self, hessian: np.ndarray, gradient: np.ndarray, sol: Solution, problem: FrameProblem) -> None:
        local = slice(6, None)
        diagonal = np.einsum("ii->i", hessian)  # writable view: every prior here is diagonal
        if problem.prior_local is not None:
            precision = problem.prior_weight * self._pull(problem)
            diagonal[local] += precision
            gradient[local] += precision * (sol.local - problem.prior_local)
        prev = problem.previous
        if prev is not None and self.temporal_precision is not None:
            diagonal[0:3] += self.rotation_precision
            gradient[0:3] += self.rotation_precision * log_rotation(sol.rotation @ prev.rotation.T)
            diagonal[3:6] += self.translation_precision
            gradient[3:6] += self.translation_precision * (sol.translation - prev.translation)
            diagonal[local] += self.temporal_precision
            gradient[local] += self.temporal_precision * (sol.local - prev.local)

    # -- steps -------------------------------------------------------------------------------
    def _free(self, sol: Solution, gradient: np.ndarray) -> np.ndarray:
        """(6 + L,) bool: coordinates the step may move (bounded ones at a bound whose descent
        direction points out of range are held)."""
        g = gradient[6:]
        held = ((sol.local <= self.model.lower + 1e-9) & (g > 0)) | ((sol.local >= self.model.upper - 1e-9) & (g < 0))
        return np.concatenate((np.ones(6, bool), ~held))

    def _apply(self, sol: Solution, delta: np.ndarray) -> Solution:
        local = np.clip(sol.local + delta[6:], self.model.lower, self.model.upper)
        return Solution(exp_rotation(delta[:3]) @ sol.rotation, sol.translation + delta[3:6], local, sol.identity.copy())

    def fit_local(self, sol: Solution, problem: FrameProblem, iterations: int) -> tuple[Solution, int, _System]:
        """LM on pose and locals, identity fixed -> (solution, iterations run, its system). The
        returned system may hold the cost only (the normal equations at an accepted step are formed
        when the next iteration needs them; ``complete`` forms them)."""
        current = self.system(sol, problem)
        damping = 1e-3
        done = 0
        for _ in range(iterations):
            current = self.complete(current, sol, problem)
            done += 1
            free = self._free(sol, current.gradient)
            h = current.hessian[np.ix_(free, free)]
            step = np.zeros_like(current.gradient)
            try:
                step[free] = -solve_positive(h + damping * np.diag(np.diag(h) + 1e-9), current.gradient[free])
            except np.linalg.LinAlgError:
                break
            candidate = self._apply(sol, step)
            trial = self.system(candidate, problem, jacobian=False)
            if trial.cost < current.cost:
                decrease = current.cost - trial.cost
                sol, previous_cost, current = candidate, current.cost, trial
                damping = max(damping / 3.0, 1e-7)
                if decrease < self.settings.tolerance * previous_cost:
                    break
            else:
                damping *= 8.0
        return sol, done, current

    def complete(self, system: _System, sol: Solution, problem: FrameProblem) -> _System:
        """``system`` (at ``sol``) with its normal equations, formed if it holds the cost only."""
        return system if system.hessian is not None else self.system(sol, problem)

    def identity_information(self, sol: Solution, problem: FrameProblem, system: _System) -> tuple[np.ndarray, np.ndarray]:
        """This frame's quadratic in the identity, locals eliminated: (A (K, K), b (K,)) with
        cost(i) ~ i^T A i - 2 b^T i + const (Schur complement of the local block at ``sol``)."""
        _, identity_basis = self.model.jacobians(sol.identity, sol.local, with_identity=True)
        j_id = np.matmul(system.projector, identity_basis).reshape(system.jacobian.shape[0], -1)  # (2N, K)
        free = self._free(sol, system.gradient)
        h_ll = system.hessian[np.ix_(free, free)]
        # h_ll = C C^T: h_il h_ll^-1 h_li = X^T X with X = C^-1 h_li (both symmetric products)
        factor = np.linalg.cholesky(h_ll + 1e-9 * np.eye(len(h_ll)))
        h_l = np.concatenate((system.jacobian[:, free].T @ j_id, system.gradient[free][:, None]), 1)  # (F, K + 1): h_li | g_l
        x_t = dtrsm(1.0, factor.T, h_l.T, side=1)  # (K + 1, F) X^T = h_l^T C^-T, Fortran order (no copies)
        x_id = x_t[:-1]
        schur = j_id.T @ j_id - x_id @ x_id.T
        reduced = j_id.T @ system.residual - x_id @ x_t[-1]
        return schur, schur @ sol.identity - reduced


# ----------------------------------------------------------------------------- per track


class IdentityPool:
    """One track's identity: the sum of its frames' identity information (``Refiner.
    identity_information``) and the resulting estimate; locks after ``calibration_frames``.

    ``given`` (K,): a fixed identity (state "given", nothing pooled).
    """

    def __init__(self, size: int, identity_std: float, calibration_frames: float, given: np.ndarray | None = None) -> None:
        self.information = np.zeros((size, size))
        self.vector = np.zeros(size)
        self.prior_precision = 1.0 / identity_std**2
        self.calibration_frames = calibration_frames
        self.frames = 0
        self.given = given is not None
        self.identity = np.zeros(size) if given is None else np.asarray(given, dtype=np.float64).copy()

    @property
    def state(self) -> str:
        if self.given:
            return "given"
        return "locked" if self.frames >= self.calibration_frames else "calibrating"

    @property
    def calibrating(self) -> bool:
        return self.state == "calibrating"

    def estimate(self, frame: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The identity of the pooled frames plus ``frame``'s (A, b) when given (not stored)."""
        a, b = self.information, self.vector
        if frame is not None:
            a, b = a + frame[0], b + frame[1]
        return solve_positive(a + self.prior_precision * np.eye(len(b)), b)

    def add(self, frame: tuple[np.ndarray, np.ndarray], estimate: np.ndarray | None = None) -> None:
        """Pool ``frame``'s (A, b); ``estimate``: ``estimate(frame)`` when already computed."""
        self.information += frame[0]
        self.vector += frame[1]
        self.frames += 1
        self.identity = self.estimate() if estimate is None else estimate.copy()


@dataclass
class TrackState:
    """The refinement's memory of one tracked face: its identity pool and last solution."""

    pool: IdentityPool
    last: Solution | None = None


@dataclass
class FrameFit:
    """One face's refined frame: ``solution``, ``iterations`` run, the identity ``state``
    ("calibrating", "locked", "given") after this frame."""

    solution: Solution
    iterations: int
    state: str


def refine_face(
    refiner: Refiner,
    track: TrackState,
    problem: FrameProblem,
    start: Solution,
    photo: bool = False,
) -> FrameFit:
    """Refine one face in one frame and update ``track`` (its pool and last solution).

    ``start``: the initial guess (the previous frame's solution or the network's prediction;
    its identity is replaced by the track's). ``photo``: a single still image (several identity
    rounds, no temporal term).
    """
    settings = refiner.settings
    sol = replace(start.copy(), identity=track.pool.identity.copy())
    if problem.depth is None:
        problem = replace(problem, depth=start_depth(refiner.model, sol))
    iterations = settings.iterations * (2 if track.last is None else 1)
    sol, done, _ = refiner.fit_local(sol, problem, iterations)
    if track.pool.calibrating:
        evidence = replace(problem, previous=None, prior_weight=settings.identity_prior_weight)  # module docstring
        frame_info = None
        for _ in range(settings.photo_rounds if photo else 1):
            frame_info = refiner.identity_information(sol, evidence, refiner.system(sol, evidence))
            sol.identity = track.pool.estimate(frame_info)
            sol, more, _ = refiner.fit_local(sol, problem, max(2, settings.iterations // 2))
            done += more
        track.pool.add(frame_info, sol.identity)  # the fits keep the identity: still estimate(frame_info)
        sol.identity = track.pool.identity.copy()
    track.last = sol
    return FrameFit(sol, done, track.pool.state)


def start_depth(model: EmbeddedHead, sol: Solution) -> float:
    """Mean camera-frame depth (m) of the embedded points at ``sol``."""
    points = model.points(sol.identity, sol.local) @ (sol.rotation * FLIP).T + sol.translation
    return float(points[:, 2].mean())


def initial_pose(model: EmbeddedHead, observed: np.ndarray, focal: np.ndarray, principal: np.ndarray, identity: np.ndarray, local: np.ndarray) -> Solution:
    """A frontal start without the network: R = I, depth from the observed points' width against
    the model's, centred on their centroid."""
    points = model.points(identity, local) * FLIP
    width_m = float(np.ptp(points[:, 0]))
    width_px = float(np.ptp(observed[:, 0]))
    depth = float(focal[0]) * width_m / max(width_px, 1e-6)
    centre_px = observed.mean(0)
    centre = np.array([(centre_px[0] - principal[0]) / focal[0] * depth, (centre_px[1] - principal[1]) / focal[1] * depth, depth])
    offset = points.mean(0)
    translation = centre - offset
    translation[2] = depth - offset[2]
    return Solution(np.eye(3), translation, local.copy(), identity.copy())


__all__ = [
    "ARKIT_SETTINGS",
    "DEFAULT_ITERATIONS",
    "ICT_SETTINGS",
    "DecodedEmbeddedHead",
    "EmbeddedHead",
    "FlameEmbeddedHead",
    "FrameFit",
    "FrameProblem",
    "IdentityPool",
    "LinearEmbeddedHead",
    "LocalGroup",
    "RefineSettings",
    "Refiner",
    "Solution",
    "TrackState",
    "embedded_head",
    "initial_pose",
    "refine_face",
    "refinement_groups",
    "settings_for",
    "single_blas_thread",
    "solve_positive",
    "start_depth",
]
