"""The heads of N2FNet trained on cached backbone tokens: ``python -m train.head_tuning``'s work
(its module docstring says what and why).

``real_token_set`` / ``synthetic_token_set`` encode every sample once with the frozen backbone;
``HeadTuner`` then trains the FLAME and camera modules together on them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

import torch

from tracker.errors import TrackerError
from tracker.geometry import camera
from tracker.geometry.rotations import matrix_to_axis_angle
from tracker.n2fnet import N2FNet
from train import metrics
from train.config import HeadTuningConfig
from train.losses import PoseWeights, landmark_mse, param_loss, pose_loss
from train.real_data import RealDataset
from train.synthetic import SyntheticSampler
from train.trainer import Trainer, warmup_cosine

STAGE = 2  # checkpoints count as stage 2 (the camera is trained): their key figure is the landmark error


@dataclass
class TokenSet:
    """Cached samples: tokens (M, N, d) of the frozen backbone; focal, principal (M, 2) crop px;
    params {group: (M, n)}; landmarks_2d (M, 68, 2) crop px; landmark_visible (M, 68);
    rotation (M, 3, 3) and translation (M, 3) the camera (X = R F X_head + t)."""

    tokens: torch.Tensor
    focal: torch.Tensor
    principal: torch.Tensor
    params: dict[str, torch.Tensor]
    landmarks_2d: torch.Tensor
    landmark_visible: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor

    def __len__(self) -> int:
        return len(self.tokens)

    def take(self, index: torch.Tensor) -> TokenSet:
        """The (K,) ``index`` samples."""
        return TokenSet(**{f.name: _index(getattr(self, f.name), index) for f in fields(self)})

    @staticmethod
    def join(parts: list[TokenSet]) -> TokenSet:
        """Concatenate sets with the same parameter groups (a part's extra groups are dropped)."""
        groups = set.intersection(*(set(p.params) for p in parts))
        values = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(TokenSet) if f.name != "params"}
        return TokenSet(params={g: torch.cat([p.params[g] for p in parts]) for g in sorted(groups)}, **values)


def _index(value, index: torch.Tensor):
    return {k: v[index] for k, v in value.items()} if isinstance(value, dict) else value[index]


@torch.no_grad()
def encode(net: N2FNet, normals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) normals, (B, 1, S, S) mask -> (B, N, d) tokens of the backbone in eval mode."""
    net.backbone.eval()
    images = torch.cat((normals, mask), dim=1) if net.config.use_mask_input else normals
    return net.backbone(images)


def real_token_set(net: N2FNet, dataset: RealDataset, batch: int = 64) -> TokenSet:
    """Every sample of ``dataset`` (a stage-1 RealDataset: with params) encoded once; TrackerError
    when one lacks its landmarks or pose."""
    parts = []
    for start in range(0, len(dataset), batch):
        stems = dataset.stems[start : start + batch]
        items = [dataset.load(stem) for stem in stems]
        for stem, item in zip(stems, items):
            missing = [name for name, key in (("landmarks", "landmarks_2d"), ("poses", "rotation")) if key not in item]
            if missing:
                raise TrackerError(f"{dataset.folder}: sample {stem} has no {' or '.join(missing)}/ file; head tuning needs params, landmarks and a pose (train.pseudo_gt writes them)")
        b = dataset.stack(items)
        parts.append(TokenSet(encode(net, b.normals, b.mask), b.focal, b.principal, b.params, b.landmarks_2d, b.landmark_visible, b.rotation, b.translation))
    return TokenSet.join(parts)


def synthetic_token_set(net: N2FNet, sampler: SyntheticSampler, count: int, batch: int = 64) -> TokenSet:
    """``count`` fresh synthetic faces of ``sampler`` encoded once, with their ground truth."""
    parts = []
    for start in range(0, count, batch):
        b = sampler.sample(min(batch, count - start))
        visible = torch.ones(b.landmarks_2d.shape[:2], device=b.landmarks_2d.device)
        parts.append(TokenSet(encode(net, b.normals, b.mask), b.focal, b.principal, dict(b.params), b.landmarks_2d, visible, b.rotation, b.translation))
    return TokenSet.join(parts)


def face_anchor(head) -> tuple[float, float, float]:
    """The camera anchor at the face: the centroid of the mean face's 51 inner landmarks (head
    frame, m; ICT: 10.5 cm in front of its origin)."""
    landmarks = head.decode_landmarks(head.neutral_params(1, device=head.neutral.device))[0, 17:]
    return tuple(landmarks.mean(0).tolist())


def projected_landmarks(head, params: dict[str, torch.Tensor], rotation: torch.Tensor, translation: torch.Tensor, focal: torch.Tensor, principal: torch.Tensor) -> torch.Tensor:
    """Head-model parameters and a crop camera -> (B, 68, 2) projected landmarks, crop px."""
    landmarks = head.decode_landmarks(params, view_rotation=rotation)
    return camera.project_head(landmarks, rotation, translation, focal, principal)


class HeadTuner:
    """Trains ``trainer.net``'s heads on a real and a synthetic TokenSet (``run()`` -> last figures)."""

    def __init__(self, trainer: Trainer, real: TokenSet, synthetic: TokenSet, config: HeadTuningConfig, record: dict | None = None) -> None:
        self.trainer, self.real, self.synthetic, self.config = trainer, real, synthetic, config
        self.record = {"head_tuning": {**asdict(config), **(record or {})}}
        self.net, self.head = trainer.net, trainer.head
        self.size = self.net.config.input_size
        self.pose_weights = PoseWeights(*config.pose_weights)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.real_count = min(config.batch_size, max(1, round(config.batch_size * config.real_fraction)))
        groups = self.net.parameter_groups()
        trainable = {"flame": "flame_module", "camera": "camera_module"}
        unknown = set(config.modules) - set(trainable)
        if unknown or not config.modules:
            raise TrackerError(f"head tuning trains the heads {sorted(trainable)}, got {list(config.modules)}")
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in {trainable[m] for m in config.modules})
        lrs = {"flame_module": config.lr_flame_module, "camera_module": config.lr_camera_module}
        self.optimiser = torch.optim.Adam([{"params": groups[trainable[m]], "lr": lrs[trainable[m]], "name": trainable[m]} for m in config.modules])
        warmup = max(1, int(config.warmup_fraction * config.steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimiser, lambda s: warmup_cosine(s, config.steps, warmup))

    def batch(self) -> TokenSet:
        """``real_fraction`` of a batch from the real set, the rest from the synthetic one (with replacement)."""
        parts = [self.real.take(torch.randint(len(self.real), (self.real_count,), generator=self.generator))]
        if self.real_count < self.config.batch_size:
            parts.append(self.synthetic.take(torch.randint(len(self.synthetic), (self.config.batch_size - self.real_count,), generator=self.generator)))
        return TokenSet.join(parts)

    def loss(self, batch: TokenSet) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total scalar, {term: scalar}) of the module docstring's L on ``batch``."""
        out = self.net.heads(batch.tokens, batch.focal, batch.principal)
        groups = [g for g in out.params if g in batch.params]
        total, terms = param_loss({g: out.params[g] for g in groups}, {g: batch.params[g] for g in groups}, self.trainer.param_weights, self.trainer.coefficient_metrics)
        landmarks = projected_landmarks(self.head, out.params, out.rotation, out.translation, batch.focal, batch.principal)
        terms["landmarks"] = self.config.landmark_weight * landmark_mse(landmarks, batch.landmarks_2d, self.size, batch.landmark_visible)
        total = total + terms["landmarks"]
        if self.pose_weights.active:
            pose, pose_terms = pose_loss(out.rotation, out.translation, batch.rotation, batch.translation, self.pose_weights)
            total, terms = total + pose, {**terms, **pose_terms}
        return total, terms

    @torch.no_grad()
    def fit_figures(self, samples: TokenSet, prefix: str) -> dict[str, float]:
        """NME-51 (%, of the targets' eye corners) and rotation error (deg) on cached samples."""
        out = self.net.heads(samples.tokens, samples.focal, samples.principal)
        landmarks = projected_landmarks(self.head, out.params, out.rotation, out.translation, samples.focal, samples.principal)
        inner = samples.landmark_visible.bool().clone()
        inner[:, :17] = False
        return {
            f"{prefix}_nme51": 100 * metrics.nme(landmarks, samples.landmarks_2d, inner).mean().item(),
            f"{prefix}_rotation_deg": torch.rad2deg(matrix_to_axis_angle(out.rotation.transpose(-1, -2) @ samples.rotation).norm(dim=-1)).mean().item(),
        }

    def validate(self) -> dict[str, float]:
        result = self.trainer.validate(STAGE)
        probe = torch.linspace(0, len(self.real) - 1, min(512, len(self.real))).long()
        figures = self.fit_figures(self.real.take(probe), "real_train")
        self.trainer.log.write("val", STAGE, self.trainer.step, figures)
        return {**result, **figures}

    def run(self) -> dict[str, float]:
        cfg, trainer = self.config, self.trainer
        self.net.eval()  # the heads have neither dropout nor batch norm; the backbone does not run
        started, last = time.perf_counter(), {}
        trainer.step = 0
        self.validate()  # the starting figures
        while trainer.step < cfg.steps:
            loss, terms = self.loss(self.batch())
            if not math.isfinite(loss.item()):
                raise TrackerError(f"head tuning diverged at step {trainer.step} (loss {loss.item()}): lower the learning rates")
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
            self.scheduler.step()
            trainer.step += 1
            if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
                values = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}, "lr": self.optimiser.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
                trainer.log.write("train", STAGE, trainer.step, values)
            if trainer.step % cfg.val_every == 0 or trainer.step == cfg.steps:
                last = self.validate()
                trainer.save(STAGE, self.optimiser, self.scheduler, last, self.record)
        return last
