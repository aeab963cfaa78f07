"""``python -m train.finetune``: the paper's real-data fine-tuning, both stages, on a DATASET folder.

    stage 1  backbone + FLAME module on pseudo-GT parameters (paper: CelebA-HQ with Pixel3DMM fits)
    stage 2  camera module with L_render, lambda_lmk = 10000 (paper: 300W landmarks, Pixel3DMM
             normals and FaRL masks as pseudo-GT)

The folder format is in ``train/real_data.py``. The run starts from a trained checkpoint, keeps
its network, head model and synthetic settings, and writes metrics.csv and checkpoints to
--out-dir: ``last.pt`` holds the fine-tuned weights (use it); ``best_stage{N}.pt`` is the best on
the synthetic validation set, which here only guards against forgetting. The backbone learning
rate defaults to the paper's 1e-6 (the backbone is trained by now).
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
from train.config import PAPER_LR_BACKBONE, checkpoint_train_config

REAL_LANDMARK_WEIGHT = 10000.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="trained N2FNet checkpoint to start from")
    p.add_argument("--data", required=True, help="DATASET folder (format: train/real_data.py)")
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr-backbone", type=float, default=PAPER_LR_BACKBONE)
    p.add_argument("--lr-stem", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--lr-flame-module", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--lr-camera-module", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--landmark-weight", type=float, default=REAL_LANDMARK_WEIGHT, help="lambda_lmk on real data")
    p.add_argument("--pose-weights", type=float, nargs=2, metavar=("ROTATION", "TRANSLATION"), default=(0.0, 0.0),
                   help="stage 2: also supervise the camera with the samples' known poses (poses/NAME.json; synthetic faces: their own), "
                   "weights of train.losses.pose_loss's chordal rotation and relative translation terms (default 0 0: L_render alone, the paper's)")
    p.add_argument("--max-fit-nme", type=float, default=None, help="leave out pseudo-GT samples whose fit_nme51 (quality.csv of train.pseudo_gt) is above this, in %%")
    p.add_argument("--real-fraction", type=float, default=1.0, help="share of every batch drawn from --data; the rest are fresh synthetic faces of the checkpoint's distribution, against forgetting it (default 1: real only, the paper's recipe)")
    p.add_argument("--val-every", type=positive_int, default=500)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    add_output_options(p)
    return p


def finetune(args: argparse.Namespace, progress: Progress) -> None:
    """The run of ``args``: the output folder checked first, then the heavy imports, the network
    and the folder's samples (each checked as it is read, ``train.real_data``)."""
    if not 0 < args.real_fraction <= 1:
        raise TrackerError(f"--real-fraction must be in (0, 1], got {args.real_fraction}")
    writable_folder(args.out_dir, "--out-dir")
    from tracker.n2fnet.checkpoint import load_checkpoint
    from train.losses import PoseWeights, RenderWeights
    from train.real_data import MixedSource, RealDataset
    from train.synthetic import SyntheticSampler
    from train.trainer import Trainer

    state = load_checkpoint(args.checkpoint)
    config = checkpoint_train_config(state, f"checkpoint {args.checkpoint}")
    config.stages = (args.stage,)
    config.stage1_steps = config.stage2_steps = args.steps
    config.batch_size, config.val_every, config.out_dir = args.batch_size, args.val_every, args.out_dir
    config.device, config.seed, config.backbone_weights = args.device, args.seed, None
    config.head_model_path = state.get("head_model", {}).get("path")
    config.lr_backbone = args.lr_backbone
    for name in ("lr_stem", "lr_flame_module", "lr_camera_module"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    trainer = Trainer(
        config, init=args.checkpoint, render_weights=RenderWeights(landmarks=args.landmark_weight), pose_weights=PoseWeights(*args.pose_weights)
    )
    focal = SyntheticSampler(trainer.head, config.sampler, seed=args.seed).typical_crop_focal()
    real = RealDataset(
        args.data, config.input_size, focal, stage=args.stage, device=trainer.device, seed=args.seed + trainer.rank, max_fit_nme=args.max_fit_nme,
        param_sizes={name: group.size for name, group in trainer.head.param_groups.items()},
    )
    trainer.data = real if args.real_fraction >= 1 else MixedSource(real, trainer.data, args.real_fraction)
    print(f"fine-tuning stage {args.stage} on {len(real)} samples of {args.data}", flush=True)
    progress.began(lambda: checkpoints_note(args.out_dir))
    trainer.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: finetune(args, progress), "fine-tuning", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
