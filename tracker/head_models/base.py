"""The head-model interface every downstream part uses (sampler, N2FNet heads, losses, metrics, sinks).

A head model is an ``nn.Module`` with
    name            "flame" | "ict" | ...
    param_groups    ordered {group name: ParamGroup(size, prior)}; parameters travel as a dict
                    {group name: (B, size) tensor}; a group left out takes its neutral value
    faces           (F, 3) long buffer, triangles of the full mesh
    render_faces    (F', 3) the triangles drawn into normal maps (e.g. without see-through layers)
    decode(params)  -> vertices (B, V, 3) in metres, head frame: +x to the subject's left
                    (viewer's right), +y up, +z out of the face (towards a frontal viewer)
    landmarks(vertices, params, view_rotation) -> (B, 68, 3), iBUG-68 order
    region_masks    {region: (V,) bool}: at least face, eyes, nose, mouth, ears
    .to(device)     moves every buffer (plain nn.Module semantics)
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass

import torch
from torch import nn

from tracker.geometry.rotations import euler_to_rotation_6d, identity_6d

REQUIRED_REGIONS = ("face", "eyes", "nose", "mouth", "ears")
IDENTITY_GROUPS = ("identity", "shape")  # a head model's identity group, first found (ICT, FLAME)


def default_identity_group(groups: Container[str]) -> str | None:
    """The identity group among ``groups`` (names): "identity" (ICT), else "shape" (FLAME), else None."""
    return next((group for group in IDENTITY_GROUPS if group in groups), None)


@dataclass(frozen=True)
class GaussianPrior:
    """Independent N(mean, std^2) per coefficient."""

    std: float
    mean: float = 0.0

    def sample(self, batch: int, size: int, generator=None, device=None) -> torch.Tensor:
        noise = torch.randn(batch, size, generator=generator, device=device)
        return self.mean + self.std * noise

    def neutral(self, batch: int, size: int, device=None) -> torch.Tensor:
        return torch.full((batch, size), float(self.mean), device=device)

    def expected(self, batch: int, size: int, device=None) -> torch.Tensor:
        return self.neutral(batch, size, device)


@dataclass(frozen=True)
class UniformPrior:
    """Independent U(low, high) per coefficient; neutral value ``low`` (e.g. a relaxed blendshape)."""

    low: float
    high: float

    def sample(self, batch: int, size: int, generator=None, device=None) -> torch.Tensor:
        u = torch.rand(batch, size, generator=generator, device=device)
        return self.low + (self.high - self.low) * u

    def neutral(self, batch: int, size: int, device=None) -> torch.Tensor:
        return torch.full((batch, size), float(self.low), device=device)

    def expected(self, batch: int, size: int, device=None) -> torch.Tensor:
        return torch.full((batch, size), (self.low + self.high) / 2, device=device)


@dataclass(frozen=True)
class SparseUniformPrior:
    """Each coefficient is active with probability ``active``, then U(low, high); else ``low``.

    Suits blendshape rigs (ICT's ARKit shapes): real expressions use a few shapes at a time, and
    all 53 half-on at once is no face anyone makes.
    """

    active: float
    low: float = 0.0
    high: float = 1.0

    def sample(self, batch: int, size: int, generator=None, device=None) -> torch.Tensor:
        u = torch.rand(batch, size, generator=generator, device=device)
        on = torch.rand(batch, size, generator=generator, device=device) < self.active
        return torch.where(on, self.low + (self.high - self.low) * u, torch.full_like(u, self.low))

    def neutral(self, batch: int, size: int, device=None) -> torch.Tensor:
        return torch.full((batch, size), float(self.low), device=device)

    def expected(self, batch: int, size: int, device=None) -> torch.Tensor:
        mean = self.low + self.active * (self.high - self.low) / 2
        return torch.full((batch, size), mean, device=device)


@dataclass(frozen=True)
class RotationPrior:
    """Rotation(s) in 6D from Gaussian Euler angles (x, y, z) with stds in degrees.

    ``size`` is 6 per joint (e.g. 12 for two eyes); all-zero stds give the identity.
    """

    std_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def sample(self, batch: int, size: int, generator=None, device=None) -> torch.Tensor:
        joints = size // 6
        std = torch.tensor(self.std_deg, device=device) * (math.pi / 180.0)
        euler = torch.randn(batch, joints, 3, generator=generator, device=device) * std
        return euler_to_rotation_6d(euler).reshape(batch, size)

    def neutral(self, batch: int, size: int, device=None) -> torch.Tensor:
        return identity_6d(batch, size // 6, device=device).reshape(batch, size)

    def expected(self, batch: int, size: int, device=None) -> torch.Tensor:
        """The identity: the rotation about which the angles are symmetric."""
        return self.neutral(batch, size, device)


Prior = GaussianPrior | UniformPrior | SparseUniformPrior | RotationPrior


@dataclass(frozen=True)
class ParamGroup:
    """One named block of a head model's parameters: ``size`` coefficients and their prior."""

    size: int
    prior: Prior
    description: str = ""

    def sample(self, batch: int, generator=None, device=None) -> torch.Tensor:
        """(batch, size) draws from the prior."""
        return self.prior.sample(batch, self.size, generator=generator, device=device)

    def neutral(self, batch: int, device=None) -> torch.Tensor:
        """(batch, size) neutral value (zero coefficients, identity rotations)."""
        return self.prior.neutral(batch, self.size, device=device)

    def mean(self, batch: int, device=None) -> torch.Tensor:
        """(batch, size) the prior's mean (the "predict the mean parameters" baseline)."""
        return self.prior.expected(batch, self.size, device=device)


class HeadModel(nn.Module):
    """Base class: subclasses fill ``param_groups``, register ``faces`` and region masks, and
    implement ``decode`` and ``landmarks``."""

    name: str = "head"
    param_groups: dict[str, ParamGroup]
    faces: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self._region_names: list[str] = []

    # -- regions -----------------------------------------------------------------------------
    def register_regions(self, masks: dict[str, torch.Tensor]) -> None:
        """Store (V,) bool masks as buffers so they follow ``.to(device)``."""
        for region, mask in masks.items():
            self.register_buffer(f"region_{region}", mask.to(torch.bool), persistent=False)
            if region not in self._region_names:
                self._region_names.append(region)

    @property
    def region_masks(self) -> dict[str, torch.Tensor]:
        """{region: (V,) bool} on the model's device."""
        return {r: getattr(self, f"region_{r}") for r in self._region_names}

    @property
    def render_faces(self) -> torch.Tensor:
        """(F', 3) triangles drawn into normal maps and masks (default: the whole mesh)."""
        return self.faces

    # -- parameters --------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.faces.device

    def sample_params(self, batch: int, generator=None, device=None) -> dict[str, torch.Tensor]:
        """{group: (batch, size)} drawn from every group's prior."""
        device = self.device if device is None else device
        return {k: g.sample(batch, generator=generator, device=device) for k, g in self.param_groups.items()}

    def neutral_params(self, batch: int = 1, device=None) -> dict[str, torch.Tensor]:
        """{group: (batch, size)} neutral values."""
        device = self.device if device is None else device
        return {k: g.neutral(batch, device=device) for k, g in self.param_groups.items()}

    def complete_params(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fill missing groups with neutral values; reject unknown groups and wrong sizes."""
        unknown = set(params) - set(self.param_groups)
        if unknown:
            raise KeyError(f"{self.name}: unknown parameter groups {sorted(unknown)}; known: {list(self.param_groups)}")
        if not params:
            raise ValueError(f"{self.name}: give at least one parameter group to fix the batch size")
        first = next(iter(params.values()))
        batch, device = first.shape[0], first.device
        out = {}
        for key, group in self.param_groups.items():
            value = params.get(key)
            if value is None:
                value = group.neutral(batch, device=device).to(first.dtype)
            elif value.shape != (batch, group.size):
                raise ValueError(f"{self.name}: group '{key}' must be ({batch}, {group.size}), got {tuple(value.shape)}")
            out[key] = value
        return out

    # -- geometry ----------------------------------------------------------------------------
    def decode(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """{group: (B, size)} -> vertices (B, V, 3) in metres."""
        raise NotImplementedError

    def decode_vertices(self, params: dict[str, torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
        """{group: (B, size)}, (N,) vertex indices -> (B, N, 3): those vertices alone (models that
        can, ICT, skip the rest of the mesh; by default the whole mesh is decoded)."""
        return self.decode(params)[:, indices]

    def decode_landmarks(self, params: dict[str, torch.Tensor], view_rotation: torch.Tensor | None = None) -> torch.Tensor:
        """{group: (B, size)} -> (B, 68, 3) landmarks, without the whole mesh where the model can
        (``landmarks`` of ``decode`` by default)."""
        return self.landmarks(self.decode(params), params, view_rotation)

    def landmarks(
        self,
        vertices: torch.Tensor,
        params: dict[str, torch.Tensor] | None = None,
        view_rotation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, V, 3) vertices -> (B, 68, 3) landmarks.

        ``view_rotation`` (B, 3, 3) is the head's rotation relative to a frontal camera view; models
        with a pose-dependent jaw contour (FLAME) use it with the params' own head rotations.
        """
        raise NotImplementedError

    def forward(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.decode(params)
