"""``python -m train.landmark_pictures --out DIR``: pictures of our 68 landmarks against MediaPipe's
(videos) and dlib's (photos), with the refinement off (N2FNet alone) and on, side by side.

Per real video: the frames with the widest mouth, the most closed eyes (MediaPipe's openings,
``train.evaluate_real.openings``) and the middle frame, each tracked in order from the start
(smoothing on, as the app). Per dlib photo face: the face's neighbourhood. Colours: the shaded
mesh; ours magenta; MediaPipe's 68 yellow; dlib's annotation green (photos).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.live.options import options_from_args, positive_int
from train.cli import Progress, run, writable_folder
from train.evaluate_real import (
    annotated_faces,
    data_folder,
    image_options,
    openings,
    tracked_photos,
    video_paths,
)
from train.evaluate_real import (
    build_parser as evaluate_parser,
)

OURS, MEDIAPIPE, ANNOTATION = (255, 0, 255), (0, 255, 255), (0, 200, 0)
TILE = 320


def tile(image: np.ndarray, window: tuple[int, int, int, int], label: str) -> np.ndarray:
    import cv2

    x0, y0, x1, y1 = window
    out = cv2.resize(image[y0:y1, x0:x1], (TILE, TILE), interpolation=cv2.INTER_AREA)
    cv2.putText(out, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class Keep:
    """Sink keeping the results of the given frame indices (all when None), and every frame's
    MediaPipe 68 points."""

    def __init__(self, wanted: set[int] | None) -> None:
        self.wanted, self.results, self.mediapipe = wanted, {}, {}

    def __call__(self, result) -> None:
        if result.faces:
            self.mediapipe[result.frame.index] = result.faces[0].mesh_landmarks68
            if self.wanted is not None and result.frame.index in self.wanted:
                self.results[result.frame.index] = result


def video_picture(args, path: Path, max_frames: int | None) -> np.ndarray:
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import MediaClockSource, open_source
    from tracker.outputs.overlay import draw_mesh, draw_points, face_window

    first = Keep(None)
    trackers = {name: FaceTracker.from_options(options_from_args(args, max_faces=1, smoothing=True, refine=refine))
                for name, refine in (("N2FNet alone", False), ("N2FNet + refinement", True))}
    try:
        Pipeline(MediaClockSource(open_source(path, realtime=False)), trackers["N2FNet alone"], [first], mode="sequential", max_frames=max_frames).run()
        if not first.mediapipe:
            raise TrackerError(f"{path.name}: no face")
        indices = np.array(sorted(first.mediapipe))
        mouth, eye = openings(np.stack([first.mediapipe[i] for i in indices]))
        chosen = [int(indices[np.argmax(mouth)]), int(indices[np.argmin(eye)]), int(indices[len(indices) // 2])]
        rows = []
        kept = {}
        for name, tracker in trackers.items():
            tracker.reset()
            keep = Keep(set(chosen))
            Pipeline(MediaClockSource(open_source(path, realtime=False)), tracker, [keep], mode="sequential", max_frames=max_frames).run()
            kept[name] = keep.results
        for label, index in zip(("widest mouth", "eyes most closed", "middle"), chosen):
            tiles = []
            for name, tracker in trackers.items():
                result = kept[name][index]
                image = result.frame.image.copy()
                draw_mesh(image, result, tracker.head.render_faces, "shaded", 0.45)
                face = result.faces[0]
                draw_points(image, face.mesh_landmarks68, MEDIAPIPE)
                draw_points(image, face.landmarks68, OURS)
                tiles.append(tile(image, face_window(face, image.shape[1], image.shape[0]), f"{path.stem[:16]} {index} {label}: {name}"))
            rows.append(np.concatenate(tiles, 1))
        return np.concatenate(rows, 0)
    finally:
        for tracker in trackers.values():
            tracker.close()


def photo_picture(args, folder: Path, count: int) -> np.ndarray:
    import cv2

    from tracker.live.face_tracker import FaceTracker
    from tracker.outputs.overlay import draw_points

    faces = annotated_faces(folder / "dlib-faces")
    columns = {}
    for name, refine in (("N2FNet alone", False), ("N2FNet + refinement", True)):
        tracker = FaceTracker.from_options(image_options(args, refine=refine))
        tiles = []
        try:
            for photo in tracked_photos(tracker, faces, args.upscale):
                big = cv2.resize(photo.image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
                scale = 4.0 / args.upscale  # tracked pixels -> picture pixels
                for annotation, index, _ in photo.matches:
                    if index is None or len(tiles) >= count:
                        continue
                    face = photo.result.faces[index]
                    marked = big.copy()
                    draw_points(marked, annotation.points * 4.0, ANNOTATION, 3)
                    draw_points(marked, face.mesh_landmarks68 * scale, MEDIAPIPE, 3)
                    draw_points(marked, face.landmarks68 * scale, OURS, 3)
                    x0, y0, x1, y1 = annotation.box * 4.0
                    side = max(x1 - x0, y1 - y0) * 1.5
                    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                    window = [int(max(0, cx - side / 2)), int(max(0, cy - side / 2)), int(min(big.shape[1], cx + side / 2)), int(min(big.shape[0], cy + side / 2))]
                    tiles.append(tile(marked, window, f"{annotation.image.stem} {annotation.face}: {name}"))
                if len(tiles) >= count:
                    break
        finally:
            tracker.close()
        columns[name] = tiles
    rows = [np.concatenate(pair, 1) for pair in zip(*columns.values())]
    return np.concatenate(rows, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = evaluate_parser()
    parser.prog = "python -m train.landmark_pictures"
    parser.description = __doc__
    parser.add_argument("--out", required=True, help="folder for the pictures")
    parser.add_argument("--photo-faces", type=positive_int, default=8, help="dlib photo faces in the picture (default 8)")
    return parser  # --verbose comes with evaluate_real's options


def pictures(args: argparse.Namespace, progress: Progress) -> None:
    """The material and --out checked first; then the photo picture and one picture per video,
    each written whole or not at all."""
    folder = data_folder(args.data)
    paths = [] if args.images_only else video_paths(args, folder)
    out = writable_folder(args.out, "--out")
    import torch

    torch.set_num_threads(max(1, args.threads))
    written: list[Path] = []
    progress.began(lambda: f"the {len(written)} pictures listed above are complete")
    if not args.videos_only:
        written.append(write_jpeg(out / "photos.jpg", photo_picture(args, folder, args.photo_faces)))
    for path in paths:
        try:
            picture = video_picture(args, path, args.max_frames)
        except TrackerError as error:
            print(f"skipped: {error}")
            continue
        written.append(write_jpeg(out / f"{path.stem}.jpg", picture))


def write_jpeg(target: Path, picture: np.ndarray) -> Path:
    """``picture`` (BGR) to ``target`` whole or not at all; its path printed."""
    import cv2

    from tracker.files.atomic_write import atomic_write

    encoded, data = cv2.imencode(".jpg", picture)
    if not encoded:
        raise TrackerError(f"cannot encode {target} as JPEG")
    try:
        atomic_write(target, data.tobytes())
    except OSError as error:
        raise TrackerError(f"--out: cannot write {target} ({error.strerror or error})") from None
    print(target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: pictures(args, progress), "the pictures", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
