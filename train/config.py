"""The settings of the training command lines, as plain dataclasses.

Light to import (no torch): the parsers of ``python -m train``, ``train.finetune`` and
``train.head_tuning`` take their defaults from here, so ``--help`` answers at once; the modules
that train (``train.trainer``, ``train.synthetic``, ``train.head_tuner``) use the same classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tracker.errors import TrackerError

PAPER_LR_BACKBONE = 1e-6
SCRATCH_LR_BACKBONE = 1e-3


@dataclass
class SamplerConfig:
    """Camera and crop distributions of the synthetic data (see ``train.synthetic``)."""

    image_size: int = 512
    output_size: int = 256
    focal_mean: float = 1.0
    focal_std: float = 0.1
    principal_std: float = 0.02
    rotation_std_deg: tuple[float, float, float] = (15.0, 20.0, 10.0)
    translation_mean: tuple[float, float, float] = (0.0, 0.0, 1.0)
    translation_std: tuple[float, float, float] = (0.02, 0.02, 0.2)
    min_depth: float = 0.4
    alpha: float = 1.4
    crop_shift_std: float = 0.03
    crop_scale_std: float = 0.05
    normal_frame: str = "camera"
    surface: str = "mesh"
    proxy_position_mm: float = 1.5
    proxy_depth_mm: float = 3.0
    proxy_depth_scale_std: float = 0.15
    proxy_smoothing_mm: float = 20.0

    def __post_init__(self) -> None:
        if self.surface not in ("mesh", "mediapipe"):
            raise ValueError(f"surface must be 'mesh' or 'mediapipe', got {self.surface!r}")
        if self.surface == "mediapipe" and self.normal_frame != "camera":
            raise ValueError("the MediaPipe surface renders normals in the camera frame (as the live cue does); use normal_frame='camera'")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainConfig:
    """All training settings (stored in checkpoints); ``python -m train --help`` documents them."""

    head_model: str = "ict"
    head_model_path: str | None = None
    backbone: str = "resnet18"
    backbone_weights: str | None = None
    input_size: int = 256
    use_mask_input: bool = False
    token_dim: int = 256
    stages: tuple[int, ...] = (1, 2)
    stage1_steps: int = 200_000
    stage2_steps: int = 20_000
    batch_size: int = 16
    warmup_fraction: float = 0.02
    lr_backbone: float | None = None  # None: 1e-6 with pretrained weights (paper), 1e-3 from scratch
    lr_stem: float = 1e-3
    lr_flame_module: float = 1e-3
    lr_camera_module: float = 1e-4
    param_weights: dict[str, float] | None = None  # L_param's lambda per group (None: PARAM_WEIGHTS of the head model)
    freeze_tokens: bool = False  # stage 1 trains the FLAME module alone on the backbone's tokens as they are
    val_every: int = 500
    val_size: int = 64
    val_seed: int = 1234
    seed: int = 0
    out_dir: str = "runs/n2fnet"
    device: str = "auto"
    log_every: int = 50
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        values["sampler"] = SamplerConfig(**values.get("sampler", {}))
        values["stages"] = tuple(values.get("stages", (1, 2)))
        return cls(**values)

    def backbone_lr(self) -> float:
        if self.lr_backbone is not None:
            return self.lr_backbone
        return PAPER_LR_BACKBONE if self.backbone_weights else SCRATCH_LR_BACKBONE


def checkpoint_train_config(state: dict, source: str) -> TrainConfig:
    """The TrainConfig a checkpoint (as ``load_checkpoint`` reads it) was trained with; a
    TrackerError naming ``source`` when it records none."""
    if "train" not in state:
        raise TrackerError(
            f"{source} records no training settings (its \"train\" entry): start from a checkpoint that "
            "python -m train, train.finetune or train.head_tuning wrote"
        )
    return TrainConfig.from_dict(state["train"])


@dataclass
class HeadTuningConfig:
    """The settings of a ``train.head_tuning`` run (stored in its checkpoints under "head_tuning")."""

    steps: int = 8_000
    batch_size: int = 64
    real_fraction: float = 0.5
    synthetic_samples: int = 16_384
    modules: tuple[str, ...] = ("flame", "camera")
    lr_flame_module: float = 3e-4
    lr_camera_module: float = 1e-3
    warmup_fraction: float = 0.02
    landmark_weight: float = 10_000.0
    pose_weights: tuple[float, float] = (1000.0, 10_000.0)
    max_fit_nme: float | None = None
    val_every: int = 1000
    log_every: int = 200
    seed: int = 0
