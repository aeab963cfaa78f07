"""N2FNet: masked normal map -> head-model parameters (FLAME module) and camera (camera module).

    T      = Backbone(N_face [, S_face])                       (B, N, d)
    Omega  = g_F(Pool(Block_F(T)))   split into the regressed parameter groups
    C      = g_C(Pool(Block_C(T)))   -> R (6D -> matrix) and t

Block = one transformer-encoder layer (width d, 16 heads, FFN 4d, GELU), Pool = mean over tokens,
g = MLP (d -> d -> out). The camera's translation is parameterised through the given crop
intrinsics (they are inputs, not estimates): the module predicts (u, v, log k) for the camera
anchor A, a head-frame point: its depth ``z_A = k * f_x / S``, its position
``(x_A, y_A) = ((u, v) * S/2 + S/2 - c) * z_A / f``, and ``t = (x_A, y_A, z_A) - R F A`` — u, v are
where A projects in the crop (in [-1, 1]), k is depth per unit of normalised focal. A DECA crop
shows every head at about the same size, so k and (u, v) are what the normal map determines.
A = the head origin (older checkpoints) puts the face where the rotation says: ICT's origin lies
10 cm behind the face, so a 7 degree rotation error moves the face 1.3 cm sideways; A at the
face's landmarks (``N2FNet.set_camera_anchor``) leaves a rotation error only turning the face
about itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from tracker.errors import TrackerError
from tracker.geometry.camera import FLIP, focal_xy
from tracker.geometry.rotations import identity_6d, rotation_6d_to_matrix
from tracker.head_models.base import HeadModel
from tracker.head_models.flame import EXPRESSION_SPACE, SHAPE_SPACE
from tracker.head_models.ict_source import ICT_LIGHT
from tracker.n2fnet.backbone import create_backbone

# Parameter groups the FLAME module regresses, per head model (the rest stay neutral; the global
# pose is the camera module's job), each with the (smallest, largest) size a head model gives it:
# FLAME's full shape and expression spaces (a model file may hold fewer), its 6D jaw rotation and
# two eyelid weights; ICT-FaceKit's identities and expressions. A checkpoint's groups are held to
# these bounds before its network is built (``tracker.n2fnet.checkpoint``).
GROUP_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "flame": {"shape": (1, SHAPE_SPACE), "jaw": (6, 6), "expression": (1, EXPRESSION_SPACE), "eyelids": (2, 2)},
    "ict": {"identity": (1, ICT_LIGHT.num_identities), "expression": (1, ICT_LIGHT.num_expressions)},
}
REGRESSED_GROUPS = {head: tuple(groups) for head, groups in GROUP_SIZES.items()}


@dataclass
class N2FNetConfig:
    """Everything needed to rebuild the network (stored in checkpoints)."""

    head_model: str  # "flame" | "ict"
    groups: dict[str, int]  # regressed group -> size, in output order
    backbone: str = "resnet18"
    input_size: int = 256
    use_mask_input: bool = False
    token_dim: int = 256  # CNN backbones only; ViTs use their embedding width
    heads: int = 16
    depth_per_focal: float = 0.23  # k at zero output, metres per unit of focal / S (DECA crop of a face at 1 m: f/S ~ 4.35)
    camera_anchor: tuple[float, float, float] = (0.0, 0.0, 0.0)  # A, head frame, metres (the module docstring)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class N2FNetOutput:
    params: dict[str, torch.Tensor] | None  # {group: (B, size)}
    rotation_6d: torch.Tensor | None  # (B, 6)
    rotation: torch.Tensor | None  # (B, 3, 3)
    translation: torch.Tensor | None  # (B, 3) metres, camera frame


class ParameterModule(nn.Module):
    """Tokens (B, N, d) -> (B, out): transformer-encoder layer, mean pool, 2-layer MLP."""

    def __init__(self, dim: int, out_features: int, heads: int = 16) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=4 * dim, activation="gelu", batch_first=True, norm_first=True, dropout=0.0
        )
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_features))
        nn.init.zeros_(self.mlp[-1].weight)  # start at the prior mean / the neutral pose
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(self.block(tokens)).mean(dim=1)
        return self.mlp(pooled)


class N2FNet(nn.Module):
    """Normal map (B, 3, S, S) [+ mask (B, 1, S, S)] and crop intrinsics -> N2FNetOutput."""

    def __init__(self, config: N2FNetConfig) -> None:
        super().__init__()
        self.config = config
        in_chans = 4 if config.use_mask_input else 3
        self.backbone = create_backbone(config.backbone, in_chans=in_chans, img_size=config.input_size, token_dim=config.token_dim)
        dim = self.backbone.dim
        if dim % config.heads:
            raise TrackerError(f"the network settings do not fit together: n2fnet.heads is {config.heads}, expected a divisor of the {config.backbone} token width {dim}")
        self.flame_module = ParameterModule(dim, sum(config.groups.values()), config.heads)
        self.camera_module = ParameterModule(dim, 9, config.heads)  # 6D rotation offset + (u, v, log k)
        self.register_buffer("rotation_6d_at_zero", identity_6d(1), persistent=False)
        self.register_buffer("camera_anchor", torch.tensor(config.camera_anchor, dtype=torch.float32), persistent=False)  # from the config
        # neutral value of every regressed coefficient (identity 6D for rotations): outputs are offsets
        self.register_buffer("param_offset", torch.zeros(sum(config.groups.values())))

    @classmethod
    def for_head_model(cls, head: HeadModel, **config) -> "N2FNet":
        """Build for ``head``: regress its REGRESSED_GROUPS, starting at their neutral values."""
        groups = {g: head.param_groups[g].size for g in REGRESSED_GROUPS[head.name] if g in head.param_groups}
        net = cls(N2FNetConfig(head_model=head.name, groups=groups, **config))
        neutral = head.neutral_params(1, device="cpu")
        net.param_offset.copy_(torch.cat([neutral[g][0] for g in groups]))
        return net

    def forward(
        self,
        normals: torch.Tensor,
        focal: torch.Tensor,
        principal: torch.Tensor,
        mask: torch.Tensor | None = None,
        modules: tuple[str, ...] = ("flame", "camera"),
    ) -> N2FNetOutput:
        """normals (B, 3, S, S), focal (B, 2) px, principal (B, 2) px, mask (B, 1, S, S) or None.

        ``modules`` picks the heads to run (training stage 1 needs only "flame", stage 2 only
        "camera"); the output fields of a skipped head are None.
        """
        if self.config.use_mask_input:
            if mask is None:
                raise ValueError("this N2FNet was built with use_mask_input=True: pass the face mask")
            normals = torch.cat((normals, mask), dim=1)
        return self.heads(self.backbone(normals), focal, principal, modules)

    def heads(self, tokens: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor, modules: tuple[str, ...] = ("flame", "camera")) -> N2FNetOutput:
        """Backbone tokens (B, N, d) -> the output of the ``modules`` heads (``forward`` after the
        backbone; ``train.head_tuning`` trains the heads on cached tokens through it)."""
        params = rotation_6d = rotation = translation = None
        if "flame" in modules:
            raw = self.flame_module(tokens) + self.param_offset
            params = dict(zip(self.config.groups, raw.split(list(self.config.groups.values()), dim=-1)))
        if "camera" in modules:
            rotation_6d, rotation, translation = self.camera_from_output(self.camera_module(tokens), focal, principal)
        return N2FNetOutput(params, rotation_6d, rotation, translation)

    def camera_from_output(self, raw: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor):
        """(B, 9) camera-module output -> rotation 6D (B, 6), rotation (B, 3, 3), translation (B, 3)."""
        rotation_6d = self.rotation_6d_at_zero + raw[:, :6]
        rotation = rotation_6d_to_matrix(rotation_6d)
        size = self.config.input_size
        focal = focal_xy(focal)
        depth = self.config.depth_per_focal * torch.exp(raw[:, 8]) * focal[:, 0] / size  # (B,)
        centre_px = raw[:, 6:8] * (size / 2) + size / 2
        anchor = torch.cat(((centre_px - principal) * depth[:, None] / focal, depth[:, None]), dim=-1)  # A in the camera frame
        return rotation_6d, rotation, anchor - rotation @ (self.camera_anchor * self.camera_anchor.new_tensor(FLIP))

    def set_camera_anchor(self, point: tuple[float, float, float]) -> None:
        """Make the head-frame ``point`` (m) the camera module's anchor A; the module's outputs
        keep their meaning only for the same A, so it needs training after a change."""
        self.config.camera_anchor = tuple(float(v) for v in point)
        self.camera_anchor.copy_(torch.tensor(self.config.camera_anchor))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group: stem (first conv / patch embedding), token_layers
        (layers added on a CNN: token projection, position embedding), backbone (the rest of it),
        flame_module, camera_module."""
        stem = list(self.backbone.stem.parameters())
        new = self.backbone.new_parameters()
        special = {id(p) for p in stem + new}
        return {
            "stem": stem,
            "token_layers": new,
            "backbone": [p for p in self.backbone.parameters() if id(p) not in special],
            "flame_module": list(self.flame_module.parameters()),
            "camera_module": list(self.camera_module.parameters()),
        }
