"""``python -m train.pseudo_gt VIDEOS_OR_IMAGES --out DATA/``: pseudo ground truth for
``train.finetune`` from real faces, made by the live tracker itself.

Every frame of each video (written: every ``--every``-th) and every photo goes through the app's tracker
with the refinement on (``FaceTracker``: MediaPipe, the smoothed DECA crop, the embedded cue,
then the Levenberg-Marquardt fit of the head model to MediaPipe's landmarks, identity pooled per
track). The fit starts from the mean face, not from the network's prediction
(``refine_start="mean"``), so the labels do not inherit the network they will train; parameter
smoothing is off (no temporal term: each frame's own fit), crop smoothing on, as live.

Per tracked face NAME = ``{source}_{variant}_{frame:05d}_{face}`` it writes the folder format of
``train/real_data.py``:

    normals/NAME.png      the cue's normal map exactly as the network gets it: 16-bit RGB,
                          (n + 1) / 2 * 65535 (error below 1e-5)
    masks/NAME.png        the cue's mask (255 = face)
    params/NAME.npz       the refined head-model parameters, one array per group
    cameras/NAME.json     the crop intrinsics {"focal", "principal"} in crop pixels
    poses/NAME.json       the refined {"rotation" (3x3), "translation" (m)}: X = R F X_head + t
                          in the crop camera (the frame camera's axes)
    landmarks/NAME.txt    MediaPipe's 68 iBUG points in crop pixels
    quality.csv           per face: source, variant, frame, face, track, identity state,
                          refinement iterations, fit_nme51 (% of MediaPipe's inter-ocular
                          distance between the fitted head's 68 landmarks and MediaPipe's, jaw
                          left out) -- ``train.finetune --max-fit-nme`` leaves poor fits out

``--variants`` re-runs each source through frame transforms (a mirror image, in-plane rotations,
``flip_rot15`` combines them): MediaPipe and the fit label each transformed frame anew, so they
add poses and mirrored expressions with labels as good as the originals'.
``--split train`` takes the training side of ``train.real_split`` from the shared folder.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tracker.errors import TrackerError
from tracker.live.options import DEFAULT_CHECKPOINT, TrackerOptions, positive_int
from train.cli import Progress, add_output_options, run, writable_folder
from train.evaluate_real import data_folder, nme_percent
from train.real_split import split_paths

if TYPE_CHECKING:
    from tracker.live.results import FaceResult, TrackingResult

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
DEFAULT_VARIANTS = "none,flip,rot15,rot-15,flip_rot15,flip_rot-15"
PSEUDO_GT_ITERATIONS = 10  # refinement iterations per frame (the live default is 3)
MAX_PHOTO_FACES = 10
QUALITY_COLUMNS = ("name", "source", "variant", "frame", "face", "track", "identity_state", "refine_iterations", "fit_nme51")


@dataclass(frozen=True)
class Variant:
    """A frame transform: mirror (left-right) then rotate by ``degrees`` about the frame centre
    (counter-clockwise in the image), keeping the frame's size."""

    name: str
    flip: bool
    degrees: float

    @classmethod
    def parse(cls, name: str) -> Variant:
        if name == "none":
            return cls(name, False, 0.0)
        match = re.fullmatch(r"(flip)|(flip_)?rot(-?\d+(?:\.\d+)?)", name)
        if match is None:
            raise TrackerError(f"unknown variant {name!r}: use none, flip, rotN (degrees, e.g. rot15 or rot-15) or flip_rotN")
        return cls(name, match.group(1) is not None or match.group(2) is not None, float(match.group(3) or 0.0))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        if self.flip:
            image = image[:, ::-1]
        if self.degrees:
            height, width = image.shape[:2]
            matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), self.degrees, 1.0)  # about the centre, in pixel indices
            image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(image)


class PseudoGtWriter:
    """Writes tracked faces into a fine-tuning folder (module docstring), rows into quality.csv."""

    FOLDERS = ("normals", "masks", "params", "cameras", "poses", "landmarks")

    def __init__(self, out: str | Path, overwrite: bool = False) -> None:
        self.out = Path(out)
        if (self.out / "quality.csv").exists() and not overwrite:
            raise TrackerError(f"{self.out} already holds pseudo ground truth (quality.csv): pass --overwrite to add to it, or another --out")
        for name in self.FOLDERS:
            (self.out / name).mkdir(parents=True, exist_ok=True)
        new = not (self.out / "quality.csv").exists()
        self._file = (self.out / "quality.csv").open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(QUALITY_COLUMNS)
        self.count = 0

    def write(self, source: str, variant: str, frame: int, result: TrackingResult) -> None:
        """Every face of ``result`` as a sample; a TrackerError when the folder stops taking files
        (the samples written before are complete)."""
        for index, face in enumerate(result.faces):
            name = f"{source}_{variant}_{frame:05d}_{index}"
            try:
                self._write(name, result, face)
            except OSError as error:
                raise TrackerError(f"{self.out}: cannot write the sample {name} ({error.strerror or error}); the {self.count} written before it are complete") from None
            quality = float(nme_percent(face.landmarks68[None], face.mesh_landmarks68[None], with_jaw=False)[0])
            self._csv.writerow((name, source, variant, frame, index, face.track_id, face.identity_state, face.refine_iterations, f"{quality:.4f}"))
            self.count += 1

    def _write(self, name: str, result: TrackingResult, face: FaceResult) -> None:
        """The files of one face, its normal map last."""
        import torch

        from tracker.geometry.crop import crop_intrinsics

        size = face.crop.image.shape[0]
        focal, principal = crop_intrinsics(
            torch.from_numpy(result.focal)[None], torch.from_numpy(result.principal)[None], torch.from_numpy(face.crop_box)[None], size
        )
        _write_json(self.out / "cameras" / f"{name}.json", {"focal": focal[0].tolist(), "principal": principal[0].tolist()})
        _write_json(self.out / "poses" / f"{name}.json", {"rotation": face.rotation.tolist(), "translation": face.translation.tolist()})
        np.savez(self.out / "params" / f"{name}.npz", **{g: v.numpy().astype(np.float32) for g, v in face.params.items()})
        np.savetxt(self.out / "landmarks" / f"{name}.txt", face.crop.landmarks68, fmt="%.3f")
        _write_png(self.out / "masks" / f"{name}.png", (face.cue.mask > 0).astype(np.uint8) * 255)
        # the normal map last, whole or not at all: a sample is listed by it, so an interrupted run leaves none half-written
        normals = np.clip(np.rint((face.cue.normals + 1.0) / 2.0 * 65535.0), 0, 65535).astype(np.uint16)
        _write_png(self.out / "normals" / f"{name}.png", normals[..., ::-1])

    def close(self) -> None:
        self._file.close()


def _write_png(path: Path, image: np.ndarray) -> None:
    """A PNG written whole or not at all (``tracker.files.atomic_write``)."""
    import cv2

    from tracker.files.atomic_write import atomic_write

    encoded, data = cv2.imencode(".png", image)
    if not encoded:
        raise TrackerError(f"cannot encode {path} as PNG")
    atomic_write(path, data.tobytes())


def _write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values))


def _write_every(writer: PseudoGtWriter, source: str, variant: str, every: int, result: TrackingResult) -> None:
    """Pipeline sink: every ``every``-th frame's faces to ``writer``."""
    if result.frame.index % every == 0:
        writer.write(source, variant, result.frame.index, result)


def labelling_options(checkpoint: str, photos: bool, runtime: str, refine_iters: int) -> TrackerOptions:
    """The live tracker's settings for labelling: refinement from the mean face, per-frame fits
    (no parameter smoothing), the live crop smoothing for videos; photos in MediaPipe's static
    full-range mode."""
    return TrackerOptions(
        checkpoint=checkpoint,
        runtime=runtime,
        max_faces=MAX_PHOTO_FACES if photos else 1,
        smoothing=False,
        crop_smoothing=not photos,
        photos=photos,
        detector="full-range" if photos else "short-range",
        refine=True,
        refine_iters=refine_iters,
        refine_start="mean",
    )


def collect_sources(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """(videos, images) from the positional paths (files or folders) and ``--split``."""
    videos, images = [], []
    if args.split:
        folder = data_folder(args.data)
        videos += split_paths(folder, args.split, "videos")
        images += split_paths(folder, args.split, "images")
    for spec in args.sources:
        path = Path(spec)
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        if not path.exists():
            raise TrackerError(f"no such file or folder: {path}")
        for file in files:
            suffix = file.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                videos.append(file)
            elif suffix in IMAGE_SUFFIXES:
                images.append(file)
            elif not path.is_dir():
                raise TrackerError(f"{file}: not a video ({', '.join(VIDEO_SUFFIXES)}) or an image ({', '.join(IMAGE_SUFFIXES)})")
    if not videos and not images:
        raise TrackerError("no videos or images given: pass files or folders, or --split train")
    return videos, images


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.pseudo_gt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="*", help="video files, image files, or folders of them")
    p.add_argument("--out", required=True, help="the fine-tuning folder to write")
    p.add_argument("--split", choices=("train", "heldout"), help="add that side of train.real_split (from --data)")
    p.add_argument("--data", help="real-face material folder (default: the shared folder's real-faces/)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="the tracker's checkpoint: its crop rule, cue and head model (default: the shipped one)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"frame transforms, comma-separated (default: {DEFAULT_VARIANTS})")
    p.add_argument("--every", type=positive_int, default=1, help="write every N-th video frame (all are tracked)")
    p.add_argument("--max-frames", type=positive_int, help="at most this many frames of each video")
    p.add_argument("--refine-iters", type=positive_int, default=PSEUDO_GT_ITERATIONS, help=f"refinement iterations per frame (default {PSEUDO_GT_ITERATIONS})")
    p.add_argument("--runtime", default="torch", help="network runtime (default torch; the fit does not start from it)")
    p.add_argument("--overwrite", action="store_true", help="add to a folder that already holds pseudo ground truth")
    add_output_options(p)
    return p


def label(args: argparse.Namespace, progress: Progress) -> None:
    """Settings, sources and --out checked first; then every video, then every photo, tracked
    and written."""
    variants = [Variant.parse(v.strip()) for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise TrackerError("--variants names no variant: give e.g. none or none,flip")
    videos, images = collect_sources(args)
    writable_folder(args.out, "--out")
    writer = PseudoGtWriter(args.out, overwrite=args.overwrite)
    progress.began(lambda: f"the {writer.count} faces written to {args.out} are complete, each listed in quality.csv; add more with --overwrite")
    try:
        if videos:
            _label_videos(args, videos, variants, writer)
        if images:
            _label_photos(args, images, variants, writer)
    finally:
        writer.close()
    print(f"{writer.count} faces written to {args.out}")


def _label_videos(args: argparse.Namespace, videos: list[Path], variants: list[Variant], writer: PseudoGtWriter) -> None:
    from tracker.live.face_tracker import FaceTracker
    from tracker.live.pipeline import Pipeline
    from tracker.live.sources import MediaClockSource, open_source

    tracker = FaceTracker.from_options(labelling_options(args.checkpoint, False, args.runtime, args.refine_iters))
    try:
        for path in videos:
            for variant in variants:
                tracker.reset()
                before = writer.count
                source = MediaClockSource(open_source(path, realtime=False), transform=variant)
                sink = functools.partial(_write_every, writer, path.stem, variant.name, args.every)
                Pipeline(source, tracker, [sink], mode="sequential", max_frames=args.max_frames).run()
                print(f"{path.name} [{variant.name}]: {writer.count - before} faces", flush=True)
    finally:
        tracker.close()


def _label_photos(args: argparse.Namespace, images: list[Path], variants: list[Variant], writer: PseudoGtWriter) -> None:
    import cv2

    from tracker.live.face_tracker import FaceTracker

    tracker = FaceTracker.from_options(labelling_options(args.checkpoint, True, args.runtime, args.refine_iters))
    try:
        for path in images:
            image = cv2.imread(str(path))
            if image is None:
                raise TrackerError(f"cannot read the image {path}")
            before = writer.count
            for variant in variants:  # track_image starts each from a fresh state
                writer.write(path.stem, variant.name, 0, tracker.track_image(variant(image)))
            print(f"{path.name}: {writer.count - before} faces over {len(variants)} variants", flush=True)
    finally:
        tracker.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: label(args, progress), "labelling", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
