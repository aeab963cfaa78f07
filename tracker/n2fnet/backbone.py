"""Backbones that turn a (masked) normal map into a token sequence T (B, N, d), built through timm.

Two families:
    ViT    timm DINOv3 ViTs (``vit_large_patch16_dinov3`` is the paper's ViT-L/16, d = 1024, and
           the smaller ``vit_{small,base}_patch16_dinov3``); the class and register tokens are
           dropped with timm's own ``num_prefix_tokens``, the patch tokens are T.
    CNN    any timm CNN with ``features_only`` (e.g. ``resnet18``, ``mobilenetv3_large_100``); its
           last feature map (B, C, h, w) becomes h*w tokens, projected to ``token_dim`` by a 1x1 conv.

Nothing downloads: pretrained weights come from a user-given file (timm's state dict or the
original DINOv3 release format, .pth/.pt/.safetensors) and must fit the chosen architecture.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path

import torch
from torch import nn

from tracker.errors import TrackerError
from tracker.files.safe_load import load_torch_file


class Backbone(nn.Module):
    """Image (B, C, H, W) -> tokens (B, N, dim). ``stem`` is the first conv (patch embedding);
    ``new_parameters`` are layers added on top of the timm model (never pretrained)."""

    dim: int
    timm_model: nn.Module

    @property
    def stem(self) -> nn.Conv2d:
        return next(m for m in self.timm_model.modules() if isinstance(m, nn.Conv2d))

    def new_parameters(self) -> list[nn.Parameter]:
        return []


class ViTBackbone(Backbone):
    """A timm ViT; tokens are its normalised patch tokens (prefix tokens removed)."""

    def __init__(self, name: str, in_chans: int, img_size: int) -> None:
        super().__init__()
        import timm  # here, not at the top: importing timm costs about 1.5 s (it loads torchvision and torch._dynamo)

        self.timm_model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, img_size=img_size)
        self.dim = self.timm_model.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.timm_model.forward_features(images)  # (B, prefix + N, d)
        return tokens[:, self.timm_model.num_prefix_tokens :]


class CNNBackbone(Backbone):
    """A timm CNN; its last feature map's cells are the tokens, projected to ``token_dim``, plus a
    learned position embedding (attention and pooling are blind to where a token came from, and
    the camera module needs to know where the face is)."""

    def __init__(self, name: str, in_chans: int, img_size: int, token_dim: int) -> None:
        super().__init__()
        import timm

        self.timm_model = timm.create_model(name, pretrained=False, features_only=True, out_indices=(-1,), in_chans=in_chans)
        channels = self.timm_model.feature_info.channels()[-1]
        grid = -(-img_size // self.timm_model.feature_info.reduction()[-1])
        self.project = nn.Conv2d(channels, token_dim, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, token_dim) * 0.02)
        self.dim = token_dim

    def new_parameters(self) -> list[nn.Parameter]:
        return [*self.project.parameters(), self.pos_embed]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.project(self.timm_model(images)[-1])  # (B, d, h, w)
        return features.flatten(2).transpose(1, 2) + self.pos_embed


def is_vit(name: str) -> bool:
    return name.startswith(("vit_", "eva", "deit", "beit"))


def create_backbone(name: str, in_chans: int = 3, img_size: int = 256, token_dim: int = 256) -> Backbone:
    """Build a backbone by timm name, without weights. ``token_dim`` applies to CNNs only."""
    import timm

    if name not in timm.list_models():
        raise TrackerError(f"unknown backbone '{name}': use a timm model name, e.g. vit_large_patch16_dinov3, vit_small_patch16_dinov3, resnet18")
    if is_vit(name):
        return ViTBackbone(name, in_chans, img_size)
    return CNNBackbone(name, in_chans, img_size, token_dim)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (.safetensors, or a torch file read with weights_only=True)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrackerError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # malformed file
            raise TrackerError(f"cannot read backbone weights {path}: {err}") from err
    else:
        state = load_torch_file(path, "backbone weights", "Use the model's published weights file (a .safetensors file where there is one).")
    for key in ("model_ema", "model", "module", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrackerError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load pretrained weights into ``backbone`` (timm or original DINOv3 key names).

    The stem may take more input channels than the weights (e.g. normals + mask): the pretrained
    kernels fill the first channels and the rest start at zero. Anything else that does not fit
    raises TrackerError naming the mismatching keys.
    """
    model = backbone.timm_model
    state = read_state_dict(path)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None and not isinstance(backbone, CNNBackbone):
        with contextlib.redirect_stdout(io.StringIO()):  # timm prints per skipped zero qkv bias
            state = filter_fn(state, model)
    own = model.state_dict()
    stem_key = next(k for k, p in model.named_parameters() if p is backbone.stem.weight)
    state = _fit_stem(state, own, stem_key)
    wrong_shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong_shape or missing or len(unexpected) > 0.5 * len(own):
        details = "; ".join(
            part
            for part in (
                f"wrong shapes: {wrong_shape[:5]}" if wrong_shape else "",
                f"missing: {missing[:5]} ({len(missing)} in all)" if missing else "",
                f"unexpected: {unexpected[:5]} ({len(unexpected)} in all)" if unexpected else "",
            )
            if part
        )
        raise TrackerError(f"weights {path} do not fit backbone '{type(model).__name__}': {details}. Use the weights of the same architecture (timm name) as --backbone")
    model.load_state_dict({k: v for k, v in state.items() if k in own})


def _fit_stem(state: dict, own: dict, stem_key: str) -> dict:
    """Pad the stem kernel (O, C_in, k, k) with zero input channels when the model has more."""
    weight = state.get(stem_key)
    target = own[stem_key]
    if weight is None or weight.shape == target.shape:
        return state
    if weight.shape[0] == target.shape[0] and weight.shape[1] < target.shape[1] and weight.shape[2:] == target.shape[2:]:
        padded = torch.zeros_like(target)
        padded[:, : weight.shape[1]] = weight
        return {**state, stem_key: padded}
    return state
