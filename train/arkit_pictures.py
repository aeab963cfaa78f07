"""``python -m train.arkit_pictures --checkpoint C --out DIR``: for every ARKit shape that we move and
MediaPipe's blendshape model (the peer, ``train.arkit_peer``) does not, the video frames where our
weight is highest, beside the frame where it is lowest, so that one can see whether the face makes
the shape (real range the peer lacks) or not (crosstalk to remove); for every shape both move that
the two systems disagree on (negative agreement), the frames where ours is highest beside those
where the peer's is, so that one can see which system the face agrees with.

Per real video (``--videos`` or the shared folder's): every frame tracked in order (smoothing on, as
the app) with the peer beside it; shapes whose weight moves (standard deviation above
``MOVING_SD``) in ours and not in the peer's; per shape a row: the frame of its lowest weight, then
``PEAKS`` frames of its highest (at least ``PEAK_SPACING`` frames apart), the face cropped, each
labelled with our weight and the peer's; per disagreeing shape a row of our two highest frames
and the peer's two highest. One JPEG per video.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.fitting.arkit import ARKIT_NAMES
from train.arkit_peer import MOVING_SD, ArkitPeer, default_peer_path, shape_agreement
from train.cli import Progress, run, writable_folder
from train.evaluate_real import build_parser as evaluate_parser
from train.evaluate_real import data_folder, video_options, video_paths
from train.landmark_pictures import write_jpeg

PEAKS = 3
PEAK_SPACING = 15
TILE = 200


class WeightLog:
    """Pipeline sink: per frame with a face, our raw weights (52,), the peer's (52,) and the face's window."""

    def __init__(self, peer: ArkitPeer) -> None:
        self.peer, self.index, self.ours, self.theirs, self.windows = peer, [], [], [], []

    def __call__(self, result) -> None:
        from tracker.outputs.overlay import face_window

        theirs = self.peer(result.frame.image, 1000.0 * result.frame.timestamp)
        if not result.faces or result.faces[0].avatar is None:
            return
        height, width = result.frame.image.shape[:2]
        self.index.append(result.frame.index)
        self.ours.append(result.faces[0].avatar.raw_weights)
        self.theirs.append(theirs)
        self.windows.append(face_window(result.faces[0], width, height))


def peer_silent_shapes(ours: np.ndarray, theirs: np.ndarray) -> list[str]:
    """(T, 52) our weights and the peer's -> the shapes ours move (sd > MOVING_SD) and the peer's do not."""
    moving = spread(ours) > MOVING_SD
    still = ~(spread(theirs) > MOVING_SD)  # NaN (a shape the peer lacks) counts as still
    return [name for k, name in enumerate(ARKIT_NAMES) if moving[k] and still[k]]


def spread(weights: np.ndarray) -> np.ndarray:
    """(T, 52) -> (52,) each shape's standard deviation over its finite values (NaN: none)."""
    return np.array([np.nanstd(column) if np.isfinite(column).any() else np.nan for column in weights.T])


def peak_rows(series: np.ndarray, count: int = PEAKS, spacing: int = PEAK_SPACING) -> list[int]:
    """(T,) -> the rows of the ``count`` highest values, each at least ``spacing`` rows from the others."""
    chosen: list[int] = []
    for row in np.argsort(-series):
        if all(abs(int(row) - c) >= spacing for c in chosen):
            chosen.append(int(row))
        if len(chosen) == count:
            break
    return chosen


def video_picture(args: argparse.Namespace, path: Path, peer_model: Path) -> np.ndarray:
    """The picture of one video (module docstring)."""
    import cv2

    from tracker.live.face_tracker import FaceTracker
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import MediaClockSource, open_source

    tracker = FaceTracker.from_options(video_options(args))
    peer = ArkitPeer(peer_model)
    log = WeightLog(peer)
    try:
        Pipeline(MediaClockSource(open_source(path, realtime=False)), tracker, [log], mode="sequential", max_frames=args.max_frames).run()
    finally:
        tracker.close()
        peer.close()
    if not log.index:
        raise TrackerError(f"{path.name}: no face")
    ours, theirs = np.stack(log.ours), np.stack(log.theirs)
    shapes = peer_silent_shapes(ours, theirs)
    disagreeing = {name: r for name, r in shape_agreement(ours, theirs).items() if r < 0}
    if not shapes and not disagreeing:
        raise TrackerError(f"{path.name}: every shape we move, the peer moves too, and no shape both move disagrees")
    rows: list[tuple[str, list[tuple[str, int]], str]] = []  # (shape, [(tile label, log row)], note)
    for name in shapes:
        k = ARKIT_NAMES.index(name)
        picked = [("lowest", int(np.argmin(ours[:, k])))] + [("high", row) for row in peak_rows(ours[:, k])]
        rows.append((name, picked, f"sd peer {spread(theirs)[k]:.3f}"))
    for name, r in disagreeing.items():
        k = ARKIT_NAMES.index(name)
        picked = [("ours high", row) for row in peak_rows(ours[:, k], 2)] + [("peer high", row) for row in peak_rows(np.nan_to_num(theirs[:, k]), 2)]
        rows.append((name, picked, f"agreement r {r:.2f}"))
    frames = _frames(path, {log.index[row] for _, picked, _ in rows for _, row in picked})
    lines = []
    for name, picked, note in rows:
        k = ARKIT_NAMES.index(name)
        tiles = []
        for kind, row in picked:
            x0, y0, x1, y1 = log.windows[row]
            image = cv2.resize(frames[log.index[row]][y0:y1, x0:x1], (TILE, TILE), interpolation=cv2.INTER_AREA)
            label = f"{kind} {log.index[row]}: {ours[row, k]:.2f} / {theirs[row, k]:.2f}"
            cv2.putText(image, label, (4, TILE - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(image)
        head = np.zeros((TILE, TILE, 3), np.uint8)
        for line, text in enumerate((name, f"sd ours {spread(ours)[k]:.3f}", note, "(ours / peer)")):
            cv2.putText(head, text, (6, 30 + 26 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        lines.append(np.concatenate([head, *tiles] + [np.zeros_like(head)] * (PEAKS + 1 - len(tiles)), 1))
    print(f"{path.name}: {len(shapes)} shapes we move and the peer does not: {', '.join(shapes) or 'none'}")
    print(f"{path.name}: {len(disagreeing)} shapes both move that disagree: " + (", ".join(f"{n} (r {r:.2f})" for n, r in disagreeing.items()) or "none"))
    return np.concatenate(lines, 0)


def _frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """The frames ``indices`` of the video ``path`` (decoded in order)."""
    from tracker.live.sources import open_source

    found = {}
    with open_source(path, realtime=False) as source:
        for frame in source:
            if frame.index in indices:
                found[frame.index] = frame.image
            if len(found) == len(indices):
                break
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = evaluate_parser()
    parser.prog = "python -m train.arkit_pictures"
    parser.description = __doc__
    parser.add_argument("--out", required=True, help="folder for the pictures")
    return parser


def pictures(args: argparse.Namespace, progress: Progress) -> None:
    """The material, the peer model and --out checked first; then one picture per video."""
    folder = data_folder(args.data)
    paths = video_paths(args, folder)
    peer_model = Path(args.arkit_peer).expanduser() if args.arkit_peer else default_peer_path()
    if peer_model is None or not peer_model.is_file():
        raise TrackerError(f"the pictures need the peer model: give --arkit-peer FILE ({peer_model or 'none in the shared folder'} not found)")
    out = writable_folder(args.out, "--out")
    written: list[Path] = []
    progress.began(lambda: f"the {len(written)} pictures listed above are complete")
    for path in paths:
        try:
            picture = video_picture(args, path, peer_model)
        except TrackerError as error:
            print(f"skipped: {error}")
            continue
        written.append(write_jpeg(out / f"{path.stem}_arkit.jpg", picture))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: pictures(args, progress), "the pictures", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
