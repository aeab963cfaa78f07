"""``python -m train``: two-stage N2FNet training on synthetic normal maps.

Same command on one device or many: ``torchrun --nproc_per_node N -m train ...`` runs
DistributedDataParallel with one process per GPU (or CPU process with gloo).
"""

from __future__ import annotations

import argparse
import sys

from tracker.errors import TrackerError
from tracker.live.options import positive_int
from train.cli import (
    Progress,
    add_output_options,
    checkpoints_note,
    run,
    writable_folder,
)
from train.config import SamplerConfig, TrainConfig, checkpoint_train_config


def build_parser() -> argparse.ArgumentParser:
    d, s = TrainConfig(), SamplerConfig()
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("head model")
    g.add_argument("--head-model", choices=("ict", "flame"), default=d.head_model, help="head model to regress")
    g.add_argument("--head-model-path", default=None, help="ICT npz (default: found or fetched as README's Quick start says: N2F_ICT_MODEL, shared folder, cache, download) or FLAME folder")
    g = p.add_argument_group("network")
    g.add_argument("--backbone", default=d.backbone, help="timm name: vit_large_patch16_dinov3 (paper), vit_small_patch16_dinov3, resnet18, mobilenetv3_large_100, ...")
    g.add_argument("--backbone-weights", default=None, help="pretrained backbone weights file (timm or original DINOv3 format); nothing is downloaded")
    g.add_argument("--input-size", type=positive_int, default=d.input_size, help="normal-map crop size S_out")
    g.add_argument("--use-mask-input", action="store_true", help="feed the face mask as a 4th input channel")
    g.add_argument("--token-dim", type=positive_int, default=d.token_dim, help="token width for CNN backbones")
    g = p.add_argument_group("schedule")
    g.add_argument("--stages", default="1,2", help="stages to run, in order: '1,2', '1' or '2'")
    g.add_argument("--stage1-steps", type=positive_int, default=d.stage1_steps)
    g.add_argument("--stage2-steps", type=positive_int, default=d.stage2_steps)
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="per process")
    g.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction, help="linear warm-up share of each stage, then cosine")
    g.add_argument("--lr-backbone", type=float, default=None, help="default: 1e-6 (paper) with --backbone-weights, 1e-3 when training from scratch")
    g.add_argument("--lr-stem", type=float, default=d.lr_stem, help="first conv / patch embedding (stage 1)")
    g.add_argument("--lr-flame-module", type=float, default=d.lr_flame_module, help="stage 1")
    g.add_argument("--lr-camera-module", type=float, default=d.lr_camera_module, help="stage 2")
    g.add_argument(
        "--param-weight",
        action="append",
        default=[],
        metavar="GROUP=LAMBDA",
        help="override L_param's weight of a parameter group (repeatable), e.g. identity=25; defaults: train.losses.PARAM_WEIGHTS",
    )
    g.add_argument(
        "--freeze-tokens",
        action="store_true",
        help="stage 1 trains only the FLAME module, the backbone's weights and normalisation statistics stay as they are "
        "(with --init: retrain a checkpoint's FLAME module and keep its trained camera module valid)",
    )
    g = p.add_argument_group("synthetic data (paper leaves these open; recorded in checkpoints)")
    g.add_argument("--image-size", type=positive_int, default=s.image_size, help="S_orig of the original image")
    g.add_argument("--focal-mean", type=float, default=s.focal_mean, help="focal / S_orig, Gaussian mean")
    g.add_argument("--focal-std", type=float, default=s.focal_std)
    g.add_argument("--principal-std", type=float, default=s.principal_std, help="principal point / S_orig, std about the centre")
    g.add_argument("--alpha", type=float, default=s.alpha, help="DECA crop padding factor")
    g.add_argument("--crop-shift-std", type=float, default=s.crop_shift_std, help="crop centre jitter, fraction of the side")
    g.add_argument("--crop-scale-std", type=float, default=s.crop_scale_std, help="crop side log-scale jitter")
    g.add_argument("--normal-frame", choices=("camera", "head"), default=s.normal_frame, help="frame of the normal maps")
    g.add_argument(
        "--surface",
        choices=("mesh", "mediapipe"),
        default=s.surface,
        help="mesh: the head model's face rendered from its own mesh (paper); mediapipe: as the live MediaPipe cue renders it (runtime-matched, for the embedded cue)",
    )
    g.add_argument("--proxy-position-mm", type=float, default=s.proxy_position_mm, help="mediapipe surface: per-landmark noise across the view")
    g.add_argument("--proxy-depth-mm", type=float, default=s.proxy_depth_mm, help="mediapipe surface: per-landmark noise along the view")
    g.add_argument("--proxy-depth-scale-std", type=float, default=s.proxy_depth_scale_std, help="mediapipe surface: log-normal scale of the relative depth")
    g.add_argument("--proxy-smoothing-mm", type=float, default=s.proxy_smoothing_mm, help="mediapipe surface: width of the noise's smoothing kernel")
    g = p.add_argument_group("run")
    g.add_argument("--val-every", type=positive_int, default=d.val_every)
    g.add_argument("--val-size", type=positive_int, default=d.val_size, help="fixed synthetic validation samples")
    g.add_argument("--val-seed", type=int, default=d.val_seed)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--log-every", type=positive_int, default=d.log_every)
    g.add_argument("--out-dir", default=d.out_dir, help="metrics.csv, best_stage1.pt, best_stage2.pt, last.pt")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    g.add_argument("--resume", default=None, help="continue a run from OUT/last.pt exactly as it was configured (weights, optimiser, step; other flags except --device are ignored)")
    g.add_argument("--init", default=None, help="start from a checkpoint's weights (e.g. stage 2 after a separate stage-1 run)")
    add_output_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig; a TrackerError for settings that do not fit together."""
    try:
        sampler = SamplerConfig(
            image_size=args.image_size,
            output_size=args.input_size,
            focal_mean=args.focal_mean,
            focal_std=args.focal_std,
            principal_std=args.principal_std,
            alpha=args.alpha,
            crop_shift_std=args.crop_shift_std,
            crop_scale_std=args.crop_scale_std,
            normal_frame=args.normal_frame,
            surface=args.surface,
            proxy_position_mm=args.proxy_position_mm,
            proxy_depth_mm=args.proxy_depth_mm,
            proxy_depth_scale_std=args.proxy_depth_scale_std,
            proxy_smoothing_mm=args.proxy_smoothing_mm,
        )
    except ValueError as error:
        raise TrackerError(str(error)) from None
    weights = {}
    for item in args.param_weight:
        group, _, value = item.partition("=")
        try:
            weights[group.strip()] = float(value)
        except ValueError:
            raise TrackerError(f"--param-weight expects GROUP=NUMBER, got {item!r}") from None
    stages = tuple(x.strip() for x in args.stages.split(","))
    if any(x not in ("1", "2") for x in stages) or len(set(stages)) < len(stages):
        raise TrackerError(f"--stages expects '1,2', '1' or '2', got {args.stages!r}")
    return TrainConfig(
        param_weights=weights or None,
        head_model=args.head_model,
        head_model_path=args.head_model_path,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        input_size=args.input_size,
        use_mask_input=args.use_mask_input,
        token_dim=args.token_dim,
        stages=tuple(int(x) for x in stages),
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        batch_size=args.batch_size,
        warmup_fraction=args.warmup_fraction,
        lr_backbone=args.lr_backbone,
        lr_stem=args.lr_stem,
        lr_flame_module=args.lr_flame_module,
        lr_camera_module=args.lr_camera_module,
        freeze_tokens=args.freeze_tokens,
        val_every=args.val_every,
        val_size=args.val_size,
        val_seed=args.val_seed,
        seed=args.seed,
        out_dir=args.out_dir,
        device=args.device,
        log_every=args.log_every,
        sampler=sampler,
    )


def train(args: argparse.Namespace, progress: Progress) -> None:
    """The run of ``args``: the output folder checked first, then the heavy imports and the set-up."""
    if args.resume:
        from tracker.n2fnet.checkpoint import load_checkpoint

        state = load_checkpoint(args.resume)
        if "optimizer" not in state or "scheduler" not in state:
            raise TrackerError(
                f"{args.resume} holds weights only, no optimiser state, so it cannot be resumed: resume from a run's last.pt, "
                "or start a new run from these weights with --init"
            )
        config = checkpoint_train_config(state, f"checkpoint {args.resume}")
        config.device = args.device
    else:
        config = config_from_args(args)
    writable_folder(config.out_dir, "the resumed run's folder" if args.resume else "--out-dir")
    from train.trainer import Trainer

    trainer = Trainer(config, resume=args.resume, init=args.init)
    progress.began(lambda: checkpoints_note(config.out_dir, resume=True))
    trainer.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: train(args, progress), "training", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
