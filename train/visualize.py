"""``python -m train.visualize --checkpoint C --out preview.png``: one row per held-out synthetic
sample: input normal map N*_face | the predicted mesh rendered with the predicted camera | the
ground-truth mesh rendered with the ground-truth camera, each with its 68 landmarks (predicted
in red, ground truth in green on the input)."""

from __future__ import annotations

import argparse
import io
import sys
from typing import TYPE_CHECKING

from tracker.errors import TrackerError
from tracker.live.options import positive_int
from train.cli import Progress, add_output_options, run, writable_file

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image


def _tile(normals: torch.Tensor, mask: torch.Tensor, landmarks: list[tuple[torch.Tensor, str]]) -> Image.Image:
    """(S, S, 3) normals, (S, S) mask, [(68, 2) points, colour] -> RGB tile."""
    from PIL import Image, ImageDraw

    from tracker.render import normals_to_rgb

    image = Image.fromarray(normals_to_rgb(normals, mask).cpu().numpy())
    draw = ImageDraw.Draw(image)
    for points, colour in landmarks:
        for x, y in points.tolist():
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
    return image


def preview(checkpoint: str, samples: int, seed: int, device: str = "auto") -> np.ndarray:
    """(samples * S, 3 * S, 3) uint8 grid."""
    import numpy as np
    import torch

    from tracker.geometry import camera
    from tracker.head_models import load_head_model
    from tracker.n2fnet.checkpoint import load_checkpoint, model_from_checkpoint
    from tracker.render import render_normal_map
    from train.config import SamplerConfig
    from train.synthetic import SyntheticSampler
    from train.trainer import pick_device

    state = load_checkpoint(checkpoint)
    dev = pick_device(device)
    head = load_head_model(state["n2fnet"]["head_model"], state.get("head_model", {}).get("path")).to(dev)
    net = model_from_checkpoint(state).to(dev)
    config = SamplerConfig(**state.get("sampler", {}))
    with torch.no_grad():
        batch = SyntheticSampler(head, config, seed=seed).sample(samples)
        out = net(batch.normals, batch.focal, batch.principal, batch.mask if net.config.use_mask_input else None)
        vertices = head.decode(out.params)
        size = (config.output_size, config.output_size)
        faces = head.render_faces
        pred_normals, pred_mask = render_normal_map(vertices, faces, out.rotation, out.translation, batch.focal, batch.principal, size, config.normal_frame)
        gt_normals, gt_mask = render_normal_map(batch.vertices, faces, batch.rotation, batch.translation, batch.focal, batch.principal, size, config.normal_frame)
        pred_lmk = camera.project_head(head.landmarks(vertices, out.params, out.rotation), out.rotation, out.translation, batch.focal, batch.principal)
    rows = []
    for i in range(samples):
        tiles = (
            _tile(batch.normals[i].permute(1, 2, 0), batch.mask[i, 0], [(batch.landmarks_2d[i], "lime"), (pred_lmk[i], "red")]),
            _tile(pred_normals[i], pred_mask[i], [(pred_lmk[i], "red")]),
            _tile(gt_normals[i], gt_mask[i], [(batch.landmarks_2d[i], "lime")]),
        )
        rows.append(np.concatenate([np.asarray(t) for t in tiles], axis=1))
    return np.concatenate(rows, axis=0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.visualize", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="n2fnet_preview.png")
    p.add_argument("--samples", type=positive_int, default=4)
    p.add_argument("--seed", type=int, default=987654, help="held-out seed")
    p.add_argument("--device", default="auto")
    add_output_options(p)
    return p


def picture(args: argparse.Namespace, progress: Progress) -> None:
    """Check --out, render the grid, write it (whole or not at all)."""
    from PIL import Image

    from tracker.files.atomic_write import atomic_write

    out = writable_file(args.out, "--out")
    picture_format = Image.registered_extensions().get(out.suffix.lower())
    if picture_format is None:
        raise TrackerError(f"--out {out}: not a picture file name PIL knows; end it in .png or .jpg")
    progress.began(f"nothing was written to {out}")
    grid = preview(args.checkpoint, args.samples, args.seed, args.device)
    encoded = io.BytesIO()
    Image.fromarray(grid).save(encoded, format=picture_format)
    atomic_write(out, encoded.getvalue())
    print(f"wrote {args.out}: input | predicted | ground truth, {args.samples} samples")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: picture(args, progress), "the preview", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
