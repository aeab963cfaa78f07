"""``python -m tracker.render <subcommand> [options]``; subcommand: grid.

    python -m tracker.render grid [--out normals_grid.png] [--head-model ict|flame] [--rows 4] [--cols 4] [--size 256]

``grid`` writes a PNG grid of normal maps of random heads (``tracker.render.grid.render_grid``):
each tile a head drawn from the model's priors, turned by Gaussian Euler angles (pitch 15, yaw
20, roll 10 degrees: the paper's camera distribution), 1 m in front of a camera with focal
3.5 x size (the whole head in view), rendered by the project's rasteriser.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracker.render", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_grid_parser(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


def add_grid_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``grid`` subcommand."""
    description = "A PNG grid of camera-frame (or head-frame) normal maps of random heads."
    parser = subparsers.add_parser("grid", help=description, description=description)
    parser.add_argument("--out", default="normals_grid.png", help="PNG to write")
    parser.add_argument("--head-model", choices=("ict", "flame"), default="ict")
    parser.add_argument("--head-model-path", default=None, help="ICT npz (default: found or fetched as README's Quick start says: N2F_ICT_MODEL, shared folder, cache, download) or FLAME folder")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="tile size in pixels")
    parser.add_argument("--frame", choices=("camera", "head"), default="camera", help="normal frame")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=write_grid)


def write_grid(args: argparse.Namespace) -> int:
    """``grid``: render the grid and write it as a PNG; 2 when the head model cannot be loaded."""
    import torch
    from PIL import Image

    from tracker.errors import TrackerError
    from tracker.files.atomic_write import staged
    from tracker.head_models import load_head_model
    from tracker.render.grid import render_grid

    try:
        head = load_head_model(args.head_model, args.head_model_path)
    except TrackerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with torch.no_grad():
        grid = render_grid(head, args.rows, args.cols, args.size, args.seed, args.frame)
    with staged(args.out) as temporary:
        Image.fromarray(grid).save(temporary, format="PNG")
    print(f"wrote {args.out}: {args.rows}x{args.cols} {head.name} normal maps ({args.frame} frame), {grid.shape[1]}x{grid.shape[0]} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
