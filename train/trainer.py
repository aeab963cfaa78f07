"""Two-stage N2FNet training on synthetic normal maps (paper section "Two-stage training").

Stage 1: backbone + FLAME module with L_param (Adam; backbone lr 1e-6, its patch-embedding conv
1e-3, FLAME module 1e-3). Stage 2: backbone and FLAME module frozen, the camera module trained
with L_render (lr 1e-4). Linear warm-up then cosine annealing in each stage; batch 16; a fresh
synthetic batch every step. Periodic validation on a fixed synthetic set; the best checkpoint of
each stage is kept (``best_stage{1,2}.pt``), ``last.pt`` is written at every validation for
resuming. Under ``torchrun`` every process draws its own batches and gradients are averaged by
DistributedDataParallel; rank 0 validates, logs and saves.
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tracker.errors import TrackerError
from tracker.head_models import load_head_model
from tracker.n2fnet import N2FNet, N2FNetConfig, N2FNetOutput
from tracker.n2fnet.backbone import load_backbone_weights
from tracker.n2fnet.checkpoint import load_checkpoint, save_checkpoint
from tracker.n2fnet.runtime import check_device
from train import metrics
from train.config import SamplerConfig, TrainConfig
from train.losses import (
    PARAM_WEIGHTS,
    PoseWeights,
    RenderWeights,
    coefficient_metrics,
    param_loss,
    pose_loss,
    render_loss,
)
from train.real_data import RealBatch
from train.synthetic import SyntheticBatch, SyntheticSampler, make_proxy, render_face


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine annealing to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class CsvLog:
    """Long-format metrics CSV (kind, stage, step, metric, value): one row per figure, so train and
    validation figures share one file; mirrored to TensorBoard when it is installed."""

    COLUMNS = ("kind", "stage", "step", "metric", "value")

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tensorboard = _tensorboard_writer(path.parent)

    def write(self, kind: str, stage: int, step: int, values: dict[str, float]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(self.COLUMNS)
            writer.writerows((kind, stage, step, name, f"{value:.6g}") for name, value in values.items())
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"stage{stage}/{kind}/{name}", value, step)
        print(f"[{kind} stage {stage} step {step}] " + " ".join(f"{k}={v:.5g}" for k, v in values.items()), flush=True)


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def pick_device(name: str) -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" -> a device this machine has (``check_device``; TrackerError
    otherwise); CUDA without an index means this process's GPU (LOCAL_RANK under torchrun)."""
    device = check_device(name, allow_auto=True)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


class Trainer:
    """Runs the configured stages; ``run()`` returns the final validation metrics."""

    def __init__(
        self,
        config: TrainConfig,
        resume: str | None = None,
        init: str | None = None,
        data=None,
        render_weights: RenderWeights = RenderWeights(),
        pose_weights: PoseWeights = PoseWeights(),
    ) -> None:
        """``data``: a source with ``sample(batch)`` (default: the synthetic sampler), e.g. a
        ``train.real_data.RealDataset`` for fine-tuning; ``render_weights``: L_render's lambdas;
        ``pose_weights``: stage 2's supervised camera term (``train.losses.pose_loss``) on batches
        with a known camera (off by default: the paper's stage 2 is L_render alone)."""
        self.config = config
        self.render_weights = render_weights
        self.pose_weights = pose_weights
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = pick_device(config.device)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.is_main = self.rank == 0
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.seed + self.rank)

        self.head = load_head_model(config.head_model, config.head_model_path).to(self.device)
        self.coefficient_metrics = coefficient_metrics(self.head)
        self.param_weights = {**PARAM_WEIGHTS[self.head.name], **(config.param_weights or {})}
        unknown = set(self.param_weights) - set(self.head.param_groups)
        if unknown:
            raise TrackerError(f"param_weights name groups {sorted(unknown)} that the {self.head.name} model does not have ({list(self.head.param_groups)})")
        start = load_checkpoint(resume or init) if (resume or init) else None
        if start is not None:  # the network exactly as it was built, then its weights
            self.net = N2FNet(N2FNetConfig(**start["n2fnet"]))
            self.net.load_state_dict(start["model"])
        else:
            self.net = N2FNet.for_head_model(
                self.head,
                backbone=config.backbone,
                input_size=config.input_size,
                use_mask_input=config.use_mask_input,
                token_dim=config.token_dim,
            )
            if config.backbone_weights:
                load_backbone_weights(self.net.backbone, config.backbone_weights)
        self.net.to(self.device)
        sampler_config = SamplerConfig(**{**config.sampler.to_dict(), "output_size": config.input_size})
        self.config.sampler = sampler_config
        self.proxy = make_proxy(self.head, sampler_config)  # the runtime-matched surface, or None
        self.data = data if data is not None else SyntheticSampler(self.head, sampler_config, seed=config.seed * 1000 + self.rank, proxy=self.proxy)
        self.out_dir = Path(config.out_dir)
        self.log = CsvLog(self.out_dir / "metrics.csv") if self.is_main else None
        self.stage_index, self.step, self.best = 0, 0, {}
        self.resume_state = None
        if resume:
            self.resume_state = load_checkpoint(resume)
            self.net.load_state_dict(self.resume_state["model"])
            self.stage_index = config.stages.index(self.resume_state["stage"])
            self.step = self.resume_state["step"]
            self.best = dict(self.resume_state.get("best", {}))
        elif init:
            self.net.load_state_dict(load_checkpoint(init)["model"])
        self.validation = self._validation_set() if self.is_main else []

    # -- data ----------------------------------------------------------------------------------
    def _validation_set(self) -> list[SyntheticBatch]:
        """Fixed validation batches (same seed every run), rendered once."""
        sampler = SyntheticSampler(self.head, self.config.sampler, seed=self.config.val_seed, proxy=self.proxy)
        size, chunk = self.config.val_size, self.config.batch_size
        return [sampler.sample(min(chunk, size - i)) for i in range(0, size, chunk)]

    def _inputs(self, batch: SyntheticBatch | RealBatch):
        mask = batch.mask if self.config.use_mask_input else None
        return batch.normals, batch.focal, batch.principal, mask

    # -- stages --------------------------------------------------------------------------------
    def _stage_setup(self, stage: int):
        """Freeze/unfreeze for ``stage``; return (module to call, optimiser, scheduler, steps)."""
        cfg, groups = self.config, self.net.parameter_groups()
        stage1 = ("flame_module",) if cfg.freeze_tokens else ("stem", "token_layers", "backbone", "flame_module")
        trainable = {1: stage1, 2: ("camera_module",)}[stage]
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in trainable)
        lrs = {
            "stem": cfg.lr_stem,
            "token_layers": cfg.lr_flame_module,  # new layers on a CNN learn like the module they feed
            "backbone": cfg.backbone_lr(),
            "flame_module": cfg.lr_flame_module,
            "camera_module": cfg.lr_camera_module,
        }
        optimiser = torch.optim.Adam([{"params": groups[n], "lr": lrs[n], "name": n} for n in trainable if groups[n]])
        steps = cfg.stage1_steps if stage == 1 else cfg.stage2_steps
        warmup = max(1, int(cfg.warmup_fraction * steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, steps, warmup))
        module = DistributedDataParallel(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None) if self.distributed else self.net
        return module, optimiser, scheduler, steps

    def _set_modes(self, stage: int) -> None:
        self.net.train()
        if stage == 2 or self.config.freeze_tokens:  # frozen parts keep their normalisation statistics
            self.net.backbone.eval()
        if stage == 2:
            self.net.flame_module.eval()

    def stage_loss(self, module, stage: int, batch: SyntheticBatch | RealBatch):
        """Forward + loss of one stage -> (loss, {term: value}). Real pseudo-GT may lack groups
        (e.g. eyelids): L_param covers the groups the batch has."""
        if stage == 1:
            out: N2FNetOutput = module(*self._inputs(batch), modules=("flame",))
            groups = [g for g in out.params if g in batch.params]
            if not groups:
                raise TrackerError(f"the batch's parameters {sorted(batch.params)} include none of the regressed groups {list(out.params)}")
            return param_loss({g: out.params[g] for g in groups}, {g: batch.params[g] for g in groups}, self.param_weights, self.coefficient_metrics)
        out = module(*self._inputs(batch), modules=("flame", "camera"))
        with torch.no_grad():
            vertices = self.head.decode(out.params)
        rendered = render_face(
            self.head, vertices, out.params, out.rotation, out.translation, batch.focal, batch.principal, self.config.input_size, self.config.sampler.normal_frame, proxy=self.proxy
        )
        loss, terms = render_loss(
            rendered.normals,
            rendered.mask,
            rendered.landmarks_2d,
            batch.normals,
            batch.mask,
            batch.landmarks_2d,
            self.config.input_size,
            self.render_weights,
            landmark_visible=getattr(batch, "landmark_visible", None),
        )
        if self.pose_weights.active and batch.rotation is not None:
            pose, pose_terms = pose_loss(out.rotation, out.translation, batch.rotation, batch.translation, self.pose_weights)
            loss, terms = loss + pose, {**terms, **pose_terms}
        return loss, terms

    def run(self) -> dict:
        metrics_out: dict = {}
        for index in range(self.stage_index, len(self.config.stages)):
            stage = self.config.stages[index]
            self.stage_index = index
            metrics_out = self._run_stage(stage)
            self.step = 0
            self.resume_state = None
            self._load_best(stage)
        if self.distributed:
            dist.destroy_process_group()
        return metrics_out

    def _run_stage(self, stage: int) -> dict:
        module, optimiser, scheduler, steps = self._stage_setup(stage)
        if self.resume_state is not None and self.resume_state["stage"] == stage:
            optimiser.load_state_dict(self.resume_state["optimizer"])
            scheduler.load_state_dict(self.resume_state["scheduler"])
        self._set_modes(stage)
        started, last = time.perf_counter(), {}
        while self.step < steps:
            batch = self.data.sample(self.config.batch_size)
            loss, terms = self.stage_loss(module, stage, batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            self.step += 1
            if self.is_main and (self.step % self.config.log_every == 0 or self.step == steps):
                values = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
                values.update(lr=optimiser.param_groups[0]["lr"], seconds=time.perf_counter() - started)
                self.log.write("train", stage, self.step, values)
            if self.is_main and (self.step % self.config.val_every == 0 or self.step == steps):
                last = self.validate(stage)
                self.save(stage, optimiser, scheduler, last)
                self._set_modes(stage)
        return last

    def _load_best(self, stage: int) -> None:
        """Continue from the stage's best checkpoint (every process loads the same file)."""
        if self.distributed:
            dist.barrier()
        best = self.out_dir / f"best_stage{stage}.pt"
        if best.is_file():
            self.net.load_state_dict(load_checkpoint(best, map_location=self.device)["model"])

    # -- validation and checkpoints ------------------------------------------------------------
    @torch.no_grad()
    def validate(self, stage: int) -> dict:
        """Validation figures on the fixed set: vertex error (mm, face region, NoW-style aligned),
        landmark error (crop px) and NME; the stage's key metric decides the best checkpoint."""
        self.net.eval()
        face = self.head.region_masks["face"]
        vertex_mm, landmark_px, nme_values, baseline_mm = [], [], [], []
        for batch in self.validation:
            out = self.net(*self._inputs(batch))
            vertices = self.head.decode(out.params)
            vertex_mm.append(metrics.region_errors(vertices, batch.vertices, {"face": face})["face"])
            mean_face = self.head.decode({g: self.head.param_groups[g].mean(len(vertices), device=self.device) for g in out.params})
            baseline_mm.append(metrics.region_errors(mean_face, batch.vertices, {"face": face})["face"])
            rendered = render_face(
                self.head, vertices, out.params, out.rotation, out.translation, batch.focal, batch.principal, self.config.input_size, self.config.sampler.normal_frame, proxy=self.proxy
            )
            landmark_px.append((rendered.landmarks_2d - batch.landmarks_2d).norm(dim=-1).mean(-1))
            nme_values.append(metrics.nme(rendered.landmarks_2d, batch.landmarks_2d))
        result = {
            "vertex_error_mm": torch.cat(vertex_mm).mean().item(),
            "mean_params_vertex_error_mm": torch.cat(baseline_mm).mean().item(),
            "landmark_error_px": torch.cat(landmark_px).mean().item(),
            "nme": torch.cat(nme_values).mean().item(),
        }
        self.log.write("val", stage, self.step, result)
        return result

    def save(self, stage: int, optimiser, scheduler, result: dict, record: dict | None = None) -> None:
        """Write last.pt (resumable) and, when ``result`` improves the stage's key figure,
        best_stage{stage}.pt; ``record``: more entries for both (e.g. how the run was made)."""
        key = "vertex_error_mm" if stage == 1 else "landmark_error_px"
        best_key = f"stage{stage}"
        improved = best_key not in self.best or result[key] < self.best[best_key]
        if improved:
            self.best[best_key] = result[key]
        state = {
            "model": self.net.state_dict(),
            "n2fnet": self.net.config.to_dict(),
            "head_model": {"name": self.head.name, "path": self.config.head_model_path},
            "sampler": self.config.sampler.to_dict(),
            "train": self.config.to_dict(),
            "stage": stage,
            "step": self.step,
            "metrics": result,
            "best": dict(self.best),
            **(record or {}),
        }
        if improved:  # weights only: best checkpoints are for use, not for resuming
            save_checkpoint(self.out_dir / f"best_stage{stage}.pt", state)
        save_checkpoint(self.out_dir / "last.pt", {**state, "optimizer": optimiser.state_dict(), "scheduler": scheduler.state_dict()})
