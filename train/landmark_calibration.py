"""``python -m train.landmark_calibration``: do the head model's 68 landmark definitions follow the
iBUG convention the way 2D annotators (here dlib's 68-point model) place it?

Every dlib example photo is tracked with refinement (the mesh fitted to MediaPipe's landmarks, as
``train.evaluate_real`` does), the fitted face-region vertices are projected into the photo, and
for every iBUG point the error of each skin vertex (``narrow_face``: lids, not eyeballs) near
the model's own landmark (within ``--radius``
mm on the neutral head) is measured against the annotations, in % of the inter-ocular distance.
Choices are mirror-symmetric: a point and its mirror image (iBUG's left/right pairs) take a
vertex and its mirror vertex, chosen together; a midline point (nose bridge, tip, lip centres,
chin) stays on the midline.

Calibration uses the ``training`` XML's faces only; the ``testing`` XML's faces say how far it
generalises (a different set of people and photos). A point is replaced only when the best
vertex lowers the training error by at least ``--min-gain`` % of the inter-ocular distance.
Prints the per-point table and the 68 vertex indices (``--json`` writes them).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tracker.errors import TrackerError
from tracker.live.options import TrackerOptions
from train.cli import Progress, add_output_options, run, writable_file
from train.evaluate_real import (
    DEFAULT_UPSCALE,
    IMAGE_MAX_FACES,
    annotated_faces,
    data_folder,
    tracked_photos,
)

if TYPE_CHECKING:
    import torch

# iBUG-68 mirror pairs (0-based): point k <-> MIRROR[k]
MIRROR = (
    *range(16, -1, -1),  # jaw 0-16
    *range(26, 16, -1),  # brows 17-26
    27, 28, 29, 30, 35, 34, 33, 32, 31,  # nose
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,  # eyes
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lips
    64, 63, 62, 61, 60, 67, 66, 65,  # inner lips
)


@dataclass
class PhotoFace:
    """One detected annotated face: split, annotation (68, 2) px, inter-ocular px, projected
    candidate vertices (C, 2) px."""

    split: str
    truth: np.ndarray
    ocular: float
    projected: np.ndarray


def collect(tracker, faces, candidates: torch.Tensor, upscale: float) -> list[PhotoFace]:
    """Track every photo; per matched face, project the ``candidates`` (C,) vertex ids."""
    from tracker.outputs.overlay import project_vertices
    from train import metrics

    out = []
    for photo in tracked_photos(tracker, faces, upscale):
        for annotation, index, _ in photo.matches:
            if index is None:
                continue
            projected = project_vertices(photo.result.faces[index], photo.result.focal, photo.result.principal)[candidates.numpy()] / upscale
            ocular = float(np.linalg.norm(annotation.points[metrics.RIGHT_EYE_OUTER] - annotation.points[metrics.LEFT_EYE_OUTER]))
            out.append(PhotoFace(annotation.split, annotation.points, ocular, projected))
    return out


def mirror_vertices(neutral: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(V, 3) neutral, (C,) vertex ids -> (C,) index into ``ids`` of each one's mirror (x -> -x)."""
    points = neutral[ids]
    mirrored = points * np.array([-1.0, 1.0, 1.0])
    distance = ((mirrored[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return distance.argmin(1)


def calibrate(faces: list[PhotoFace], current: np.ndarray, candidates: np.ndarray, neutral: np.ndarray, radius_m: float, min_gain: float):
    """-> (chosen (68,) vertex ids, rows of (point, old vertex, new vertex, train/test old/new %))."""
    position = {int(v): i for i, v in enumerate(candidates)}
    mirror = mirror_vertices(neutral, candidates)
    train = [f for f in faces if f.split == "training"]
    test = [f for f in faces if f.split != "training"]

    def errors(split: list[PhotoFace], point: int) -> np.ndarray:  # (C,) mean % over the split
        return np.mean([np.linalg.norm(f.projected - f.truth[point], axis=1) / f.ocular * 100.0 for f in split], axis=0)

    chosen = current.copy()
    rows = []
    done: set[int] = set()
    for point in range(68):
        if point in done:
            continue
        partner = MIRROR[point]
        done |= {point, partner}
        near = np.linalg.norm(neutral[candidates] - neutral[current[point]], axis=1) <= radius_m
        if partner == point:  # a midline point stays on the midline
            near &= np.abs(neutral[candidates, 0]) < 5e-4
        train_cost = errors(train, point) + (errors(train, partner)[mirror] if partner != point else 0.0)
        old = position[int(current[point])]
        best = int(np.flatnonzero(near)[np.argmin(train_cost[near])])
        pairs = 2 if partner != point else 1
        if (train_cost[old] - train_cost[best]) / pairs >= min_gain:
            chosen[point] = candidates[best]
            if partner != point:
                chosen[partner] = candidates[mirror[best]]
        for k in {point, partner}:
            before, after = position[int(current[k])], position[int(chosen[k])]
            rows.append((k, int(current[k]), int(chosen[k]), errors(train, k)[before], errors(train, k)[after], errors(test, k)[before], errors(test, k)[after]))
    return chosen, sorted(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.landmark_calibration", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="N2FNet checkpoint (default: the shipped one)")
    p.add_argument("--ict-model", help="ICT-FaceKit model (default: as python -m app.live finds it)")
    p.add_argument("--data", help="real-face material folder (default: the shared folder's real-faces/)")
    p.add_argument("--landmarks", default="jawline", help="the ICT landmark set to start from (default: jawline, upstream's)")
    p.add_argument("--radius", type=float, default=15.0, help="candidate vertices within this many mm of the current landmark")
    p.add_argument("--min-gain", type=float, default=0.5, help="replace a point only when training NME drops by this much (%% IOD)")
    p.add_argument("--json", help="write the chosen indices and the table here")
    add_output_options(p)
    return p


def calibration(args: argparse.Namespace, progress: Progress) -> None:
    """The material and --json checked first; then the photos tracked, the points chosen and printed."""
    folder = data_folder(args.data)
    json_path = writable_file(args.json, "--json") if args.json else None
    import torch

    from tracker.files.atomic_write import atomic_write
    from tracker.head_models.ict import CONTOURS, contour_landmarks
    from tracker.live.face_tracker import FaceTracker

    if args.landmarks not in CONTOURS:
        raise TrackerError(f"--landmarks must be one of {', '.join(CONTOURS)}, got {args.landmarks!r}")
    torch.set_num_threads(1)
    options = TrackerOptions(checkpoint=args.checkpoint, ict_model=args.ict_model, max_faces=IMAGE_MAX_FACES, smoothing=False, photos=True)
    tracker = FaceTracker.from_options(options)
    try:
        head = tracker.head
        if head.name != "ict":
            raise TrackerError("the calibration is written for ICT's landmark vertices: give an ICT checkpoint")
        head.landmark_indices = torch.from_numpy(contour_landmarks(head.multipie_indices, args.landmarks))
        neutral = head.decode(head.neutral_params(1))[0].double().numpy()
        candidates = torch.nonzero(head.region_masks["narrow_face"]).flatten()  # skin: lids, not eyeballs
        current = head.landmark_indices.numpy()
        candidates = torch.unique(torch.cat((candidates, torch.from_numpy(current))))
        progress.began("nothing was written (the table and --json come at the end)")
        faces = collect(tracker, annotated_faces(folder / "dlib-faces"), candidates, DEFAULT_UPSCALE)
    finally:
        tracker.close()
    chosen, rows = calibrate(faces, current, candidates.numpy(), neutral, args.radius * 1e-3, args.min_gain)
    splits = {s: sum(f.split == s for f in faces) for s in ("training", "testing")}
    print(f"faces: {splits['training']} training (calibration), {splits['testing']} testing (check); errors in % of the inter-ocular distance")
    print("| point | vertex | new vertex | train before | train after | test before | test after |")
    print("|---|---|---|---|---|---|---|")
    for k, old, new, tb, ta, sb, sa in rows:
        print(f"| {k} | {old} | {new if new != old else '='} | {tb:.2f} | {ta:.2f} | {sb:.2f} | {sa:.2f} |")
    for name, group in (("NME-68", range(68)), ("NME-51", range(17, 68)), ("jaw", range(17))):
        pick = [r for r in rows if r[0] in group]
        print(f"{name}: training {np.mean([r[3] for r in pick]):.2f} -> {np.mean([r[4] for r in pick]):.2f}, "
              f"testing {np.mean([r[5] for r in pick]):.2f} -> {np.mean([r[6] for r in pick]):.2f}")
    print("indices:", ", ".join(str(int(v)) for v in chosen))
    if json_path is not None:
        atomic_write(json_path, json.dumps({"indices": [int(v) for v in chosen], "rows": rows}, indent=1).encode())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda progress: calibration(args, progress), "the calibration", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
