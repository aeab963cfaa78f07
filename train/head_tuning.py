"""``python -m train.head_tuning``: train N2FNet's two heads together on cached backbone tokens.

The paper's stages train the FLAME module and the camera module apart, and stage 2 rasterises
the predicted face at every step (about 0.8 s per batch of 16 on two CPU cores). With the
backbone frozen its tokens depend on the sample alone, so they are computed once for a fixed set
(a real pseudo-GT folder of ``train.pseudo_gt`` and fresh synthetic faces), and both heads then
train for many epochs at a small fraction of that cost. Per sample:

    L = L_param(Omega, Omega*)                                   face-displacement metric
      + lambda_lmk * MSE(P(R F lmk3D(Omega) + t), lmk*_2D)       normalised crop coordinates
      + pose_loss(R, t; R*, t*)                                  chordal + depth-relative

The landmark term runs through both heads (the predicted face's landmarks under the predicted
camera: what NME measures without the refinement); no mesh is rasterised (ICT's landmarks are a
linear map of its parameters, ``HeadModel.decode_landmarks``). Real samples need params,
landmarks and a pose (``train.pseudo_gt`` writes all three); synthetic faces bring their own.
Checkpoints as ``python -m train`` writes them (``last.pt``: the tuned network; ``best_stage2.pt``:
best synthetic-validation landmark error), with the run's settings under "head_tuning". The
training itself is ``train.head_tuner``.
"""

from __future__ import annotations

import argparse
import sys
import time

from tracker.errors import TrackerError
from tracker.live.options import positive_int
from train.cli import (
    Progress,
    add_output_options,
    checkpoints_note,
    run,
    writable_folder,
)
from train.config import HeadTuningConfig, checkpoint_train_config


def build_parser() -> argparse.ArgumentParser:
    d = HeadTuningConfig()
    p = argparse.ArgumentParser(prog="python -m train.head_tuning", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="trained N2FNet checkpoint to start from (its backbone stays as it is)")
    p.add_argument("--data", required=True, help="pseudo-GT folder of train.pseudo_gt (params, landmarks and poses; format: train/real_data.py)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--steps", type=positive_int, default=d.steps)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--real-fraction", type=float, default=d.real_fraction, help="share of every batch from --data, the rest synthetic")
    p.add_argument("--synthetic-samples", type=positive_int, default=d.synthetic_samples, help="synthetic faces encoded once (the checkpoint's own distribution)")
    p.add_argument("--modules", nargs="+", choices=("flame", "camera"), default=list(d.modules), help="heads to train")
    p.add_argument("--lr-flame-module", type=float, default=d.lr_flame_module)
    p.add_argument("--lr-camera-module", type=float, default=d.lr_camera_module)
    p.add_argument("--landmark-weight", type=float, default=d.landmark_weight, help="lambda_lmk (normalised crop coordinates; 10000 is the paper's real-data weight)")
    p.add_argument("--pose-weights", type=float, nargs=2, metavar=("ROTATION", "TRANSLATION"), default=list(d.pose_weights), help="train.losses.pose_loss's weights (0 0: off)")
    p.add_argument("--camera-anchor", choices=("keep", "face"), default="keep",
                   help="the camera module's anchor (tracker/n2fnet/model.py): keep the checkpoint's, or move it to the face (face_anchor; the camera module then relearns its outputs)")
    p.add_argument("--max-fit-nme", type=float, default=None, help="leave out pseudo-GT samples whose fit_nme51 (quality.csv) is above this, in %%")
    p.add_argument("--val-every", type=positive_int, default=d.val_every)
    p.add_argument("--log-every", type=positive_int, default=d.log_every)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=d.seed)
    add_output_options(p)
    return p


def tune(args: argparse.Namespace, progress: Progress) -> None:
    """The run of ``args``: settings and the output folder checked first, then the heavy imports,
    the network, the token sets and the training."""
    config = HeadTuningConfig(
        steps=args.steps, batch_size=args.batch_size, real_fraction=args.real_fraction, synthetic_samples=args.synthetic_samples,
        modules=tuple(args.modules), lr_flame_module=args.lr_flame_module, lr_camera_module=args.lr_camera_module,
        landmark_weight=args.landmark_weight, pose_weights=tuple(args.pose_weights), max_fit_nme=args.max_fit_nme,
        val_every=args.val_every, log_every=args.log_every, seed=args.seed,
    )
    if not 0 < config.real_fraction <= 1:
        raise TrackerError(f"--real-fraction must be in (0, 1], got {config.real_fraction}")
    writable_folder(args.out_dir, "--out-dir")
    import torch

    from tracker.n2fnet.checkpoint import load_checkpoint
    from train.head_tuner import (
        HeadTuner,
        face_anchor,
        real_token_set,
        synthetic_token_set,
    )
    from train.real_data import RealDataset
    from train.synthetic import SyntheticSampler
    from train.trainer import Trainer

    state = load_checkpoint(args.checkpoint)
    train_config = checkpoint_train_config(state, f"checkpoint {args.checkpoint}")
    train_config.out_dir, train_config.device, train_config.seed, train_config.backbone_weights = args.out_dir, args.device, args.seed, None
    train_config.head_model_path = state.get("head_model", {}).get("path")
    trainer = Trainer(train_config, init=args.checkpoint)
    if args.camera_anchor == "face":
        trainer.net.set_camera_anchor(face_anchor(trainer.head))
    started = time.perf_counter()
    focal = SyntheticSampler(trainer.head, train_config.sampler, seed=args.seed).typical_crop_focal()  # for a folder without intrinsics
    sizes = {name: group.size for name, group in trainer.head.param_groups.items()}
    dataset = RealDataset(args.data, train_config.input_size, focal, stage=1, device=trainer.device, max_fit_nme=args.max_fit_nme, param_sizes=sizes)
    real = real_token_set(trainer.net, dataset)
    synthetic = synthetic_token_set(trainer.net, trainer.data, config.synthetic_samples) if config.real_fraction < 1 else real.take(torch.arange(0))
    print(f"encoded {len(real)} real samples of {args.data} and {len(synthetic)} synthetic faces in {time.perf_counter() - started:.0f} s", flush=True)
    tuner = HeadTuner(trainer, real, synthetic, config, {"checkpoint": str(args.checkpoint), "data": str(args.data), "camera_anchor": trainer.net.config.camera_anchor})
    progress.began(lambda: checkpoints_note(args.out_dir))
    tuner.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: tune(args, progress), "head tuning", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
