"""The tracker's stage after the network, ICT against FLAME on the same frames: ms per frame of
``FaceTracker.finish`` and of its parts (smooth, refine, decode, avatar), one CPU thread.

    python -m tracker.bench finish --video clip.mp4 --flame-dir DIR [--checkpoint C] [--frames N] [--passes 3]

Every frame is prepared (MediaPipe, crop, cue) and run through the network once, by the ICT
tracker; both trackers then finish the same stored outputs, ``--passes`` times each, alternating
(a fresh track state per pass), and the fastest pass of each counts. What differs between the two
pipelines is this stage only, so the difference is FLAME's cost per frame, free of the
run-to-run noise of whole-pipeline timings (``tracker.bench live``). The sequential pipeline's
other stages are timed too, from the same preparation, for the expected FLAME / ICT fps ratio.
Last line: ``ict_ms=<a> flame_ms=<b> difference_ms=<b-a> expected_ratio=<r>``.
"""

from __future__ import annotations

import argparse
import time

import torch

from tracker.live.face_tracker import FaceTracker
from tracker.live.options import TrackerOptions
from tracker.live.results import RawOutput
from tracker.live.sources import open_source

PARTS = ("smooth", "refine", "decode", "avatar")


def prepared_frames(tracker: FaceTracker, video: str, limit: int | None) -> tuple[list, float]:
    """Every frame of ``video`` (at most ``limit``) prepared and through the network -> ([(Prepared,
    RawOutput | None)], mean ms per frame of those stages)."""
    frames, started = [], time.perf_counter()
    with open_source(video, realtime=False) as source:
        for frame in source:
            prepared = tracker.prepare(frame)
            raw = tracker.run_network(prepared.inputs) if prepared.inputs is not None else None
            frames.append((prepared, None if raw is None else RawOutput(*raw)))
            if limit is not None and len(frames) >= limit:
                break
    return frames, (time.perf_counter() - started) * 1000.0 / max(len(frames), 1)


def finish_pass(tracker: FaceTracker, frames: list) -> tuple[float, dict[str, float]]:
    """One pass of ``tracker.finish`` over ``frames`` from a fresh state -> (ms per frame, {part: ms per frame})."""
    tracker.reset()
    parts = dict.fromkeys(PARTS, 0.0)
    started = time.perf_counter()
    for prepared, raw in frames:
        timings = tracker.finish(prepared, raw).timings
        for part in PARTS:
            parts[part] += timings.get(part, 0.0)
    total = (time.perf_counter() - started) * 1000.0 / len(frames)
    return total, {part: value / len(frames) for part, value in parts.items()}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if args.passes < 1:
        raise SystemExit(f"--passes must be at least 1, got {args.passes}")
    common = {"checkpoint": args.checkpoint, "ict_model": args.ict_model, "runtime": args.runtime}
    trackers = {"ICT": FaceTracker.from_options(TrackerOptions(**common)),
                "FLAME": FaceTracker.from_options(TrackerOptions(**common, flame_dir=args.flame_dir))}
    try:
        frames, before_ms = prepared_frames(trackers["ICT"], args.video, args.frames)
        if not frames:
            raise SystemExit(f"{args.video} gave no frames")
        faces = sum(bool(prepared.crops) for prepared, _ in frames)
        print(f"video {args.video}: {len(frames)} frames, {faces} with a face; detect + crop + cue + network: {before_ms:.2f} ms per frame; "
              f"{args.passes} passes each, the fastest counts; one thread")
        best: dict[str, tuple[float, dict[str, float]]] = {}
        for _ in range(args.passes):
            for name, tracker in trackers.items():
                total, parts = finish_pass(tracker, frames)
                if name not in best or total < best[name][0]:
                    best[name] = (total, parts)
    finally:
        for tracker in trackers.values():
            tracker.close()
    for name, (total, parts) in best.items():
        print(f"{name:6s} finish {total:6.2f} ms per frame  " + "  ".join(f"{part} {value:.2f}" for part, value in parts.items()))
    ict, flame = best["ICT"][0], best["FLAME"][0]
    ratio = (before_ms + ict) / (before_ms + flame)
    print(f"FLAME costs {flame - ict:.2f} ms per frame more; a sequential pipeline of {before_ms + ict:.1f} ms per frame (ICT) "
          f"runs at about {ratio:.2f}x ICT's fps with FLAME")
    print(f"ict_ms={ict:.2f} flame_ms={flame:.2f} difference_ms={flame - ict:.2f} expected_ratio={ratio:.3f}")
