"""``python -m train.offline_curves --videos VIDEO --out curves.png``: the mouth opening of one
video as MediaPipe's points, the live tracker and the offline tracker (``tracker.offline``) give
it, frame by frame, in one picture.

The opening is the inner-lip gap over the outer-eye-corner distance (``train.evaluate_real.openings``)
of our projected 68 landmarks, and of MediaPipe's 68 subset on the same frames (the reference).
Top: the whole video; bottom: the ``--window`` frames around its widest mouth. The legend gives
each curve's Pearson r with MediaPipe's and its lag (the peak of the cross-correlation, frames,
+ late). Both trackers are built as ``train.evaluate_real`` builds them from the same options.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.live.options import positive_int
from train.cli import Progress, run, writable_file
from train.evaluate_real import build_parser as evaluate_parser
from train.evaluate_real import data_folder, openings, video_options, video_paths


def mouth_curves(args: argparse.Namespace, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"MediaPipe" | "live" | "offline": ((T,) frame indices, (T,) mouth openings)} over the frames
    where the first face was found."""
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import MediaClockSource, open_source
    from tracker.offline.two_pass import OfflineTracker

    kept: dict[str, dict[int, np.ndarray]] = {"MediaPipe": {}, "live": {}, "offline": {}}

    def keep(name: str):
        def sink(result) -> None:
            if result.faces:
                kept[name][result.frame.index] = result.faces[0].landmarks68
                kept["MediaPipe"][result.frame.index] = result.faces[0].mesh_landmarks68
        return sink

    tracker = FaceTracker.from_options(video_options(args))
    try:
        Pipeline(MediaClockSource(open_source(path, realtime=False)), tracker, [keep("live")], mode="sequential", max_frames=args.max_frames).run()
        OfflineTracker(tracker).track(lambda: MediaClockSource(open_source(path, realtime=False)), lambda source: [keep("offline")], args.max_frames)
    finally:
        tracker.close()
    if not kept["live"]:
        raise TrackerError(f"{path.name}: no face in any frame")
    curves = {}
    for name, points in kept.items():
        indices = np.array(sorted(points))
        curves[name] = (indices, openings(np.stack([points[i] for i in indices]))[0])
    return curves


def plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, window: int) -> bytes:
    """The picture (module docstring) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from train.arkit_peer import correlation, subframe_lag

    frames, reference = curves["MediaPipe"]
    middle = int(frames[np.argmax(reference)])
    start = max(int(frames[0]), middle - window // 2)
    styles = {"MediaPipe": ("black", 2.2), "live": ("tab:orange", 1.3), "offline": ("tab:blue", 1.3)}
    figure, axes = pyplot.subplots(2, 1, figsize=(12, 7), constrained_layout=True)
    for name, (indices, values) in curves.items():
        colour, width = styles[name]
        label = name if name == "MediaPipe" else (
            f"{name}: r {correlation(values, reference):.3f}, lag {subframe_lag(values, reference):+.2f} frames")
        for axis, shown in zip(axes, (np.ones(len(indices), bool), (indices >= start) & (indices < start + window))):
            axis.plot(indices[shown], values[shown], color=colour, linewidth=width, label=label)
    axes[0].set_title(f"{title}: mouth opening (inner-lip gap / outer-eye-corner distance)")
    axes[1].set_title(f"frames {start}-{start + window - 1}, around the widest mouth")
    for axis in axes:
        axis.set_xlabel("frame")
        axis.set_ylabel("opening")
        axis.grid(alpha=0.3)
    axes[0].legend(loc="upper right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = evaluate_parser()
    parser.prog = "python -m train.offline_curves"
    parser.description = __doc__
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--window", type=positive_int, default=150, help="frames in the close-up (default 150)")
    return parser  # --videos, --max-frames, the tracker's options and --verbose come with evaluate_real's


def curves_picture(args: argparse.Namespace, progress: Progress) -> None:
    """The first video of --videos (or of the shared folder) tracked both ways; the picture written
    whole or not at all."""
    paths = video_paths(args, data_folder(args.data) if not args.videos else Path())  # the shared folder only when no video is named
    out = writable_file(args.out, "--out")
    import torch

    from tracker.files.atomic_write import atomic_write

    torch.set_num_threads(max(1, args.threads))
    progress.began(lambda: "no picture was written")
    picture = plot(mouth_curves(args, paths[0]), paths[0].name, args.window)
    try:
        atomic_write(out, picture)
    except OSError as error:
        raise TrackerError(f"--out: cannot write {out} ({error.strerror or error})") from None
    print(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: curves_picture(args, progress), "the picture", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
