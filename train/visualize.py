"""``python -m train.visualize --checkpoint C --out preview.png``: one row per held-out synthetic
sample: input normal map N*_face | the predicted mesh rendered with the predicted camera | the
ground-truth mesh rendered with the ground-truth camera, each with its 68 landmarks (predicted
in red, ground truth in green on the input)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from tracker.errors import TrackerError
from tracker.geometry import camera
from tracker.head_models import load_head_model
from tracker.render import normals_to_rgb, render_normal_map
from tracker.n2fnet.checkpoint import load_checkpoint, model_from_checkpoint
from train.synthetic import SamplerConfig, SyntheticSampler
from train.trainer import pick_device


def _tile(normals: torch.Tensor, mask: torch.Tensor, landmarks: list[tuple[torch.Tensor, str]]) -> Image.Image:
    """(S, S, 3) normals, (S, S) mask, [(68, 2) points, colour] -> RGB tile."""
    image = Image.fromarray(normals_to_rgb(normals, mask).cpu().numpy())
    draw = ImageDraw.Draw(image)
    for points, colour in landmarks:
        for x, y in points.tolist():
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
    return image


@torch.no_grad()
def preview(checkpoint: str, samples: int, seed: int, device: str = "auto") -> np.ndarray:
    """(samples * S, 3 * S, 3) uint8 grid."""
    state = load_checkpoint(checkpoint)
    dev = pick_device(device)
    head = load_head_model(state["head_model"]["name"], state["head_model"].get("path")).to(dev)
    net = model_from_checkpoint(state).to(dev)
    config = SamplerConfig(**state["sampler"])
    batch = SyntheticSampler(head, config, seed=seed).sample(samples)
    out = net(batch.normals, batch.focal, batch.principal, batch.mask if net.config.use_mask_input else None)
    vertices = head.decode(out.params)
    size = (config.output_size, config.output_size)
    faces = head.render_faces
    pred_normals, pred_mask = render_normal_map(vertices, faces, out.rotation, out.translation, batch.focal, batch.principal, size, config.normal_frame)
    gt_normals, gt_mask = render_normal_map(batch.vertices, faces, batch.rotation, batch.translation, batch.focal, batch.principal, size, config.normal_frame)
    pred_lmk = camera.project(camera.head_to_camera(head.landmarks(vertices, out.params, out.rotation), out.rotation, out.translation), batch.focal, batch.principal)
    rows = []
    for i in range(samples):
        tiles = (
            _tile(batch.normals[i].permute(1, 2, 0), batch.mask[i, 0], [(batch.landmarks_2d[i], "lime"), (pred_lmk[i], "red")]),
            _tile(pred_normals[i], pred_mask[i], [(pred_lmk[i], "red")]),
            _tile(gt_normals[i], gt_mask[i], [(batch.landmarks_2d[i], "lime")]),
        )
        rows.append(np.concatenate([np.asarray(t) for t in tiles], axis=1))
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.visualize", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="n2fnet_preview.png")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=987654, help="held-out seed")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        grid = preview(args.checkpoint, args.samples, args.seed, args.device)
    except TrackerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Image.fromarray(grid).save(args.out)
    print(f"wrote {args.out}: input | predicted | ground truth, {args.samples} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
