"""Live-pipeline benchmark: FPS and latency of MediaPipe alone, the pipeline run sequentially, and
the pipeline with overlapping stages, on a video file.

    python -m tracker.bench live --video clip.mp4 [--checkpoint C | --untrained resnet18] [--device cuda] [--flame-dir DIR] [--rounds N]

Runs, each on the same frames, one after the other in this process:
    mediapipe   FaceMeshDetector.detect on frames decoded beforehand (no decode in the timing);
                latency = the detect call
    sequential  Pipeline(mode="sequential"): read, detect, crop, cue, network, decode, smooth,
                sinks, one frame at a time
    async       Pipeline(mode="async"): the same stages in their threads (and on CUDA, pinned
                double-buffered uploads on a copy stream)
The pipelines read the file as fast as they can (every frame), so FPS is throughput; their
latency is ``processing`` (the pipeline taking the frame -> result), since a file read ahead has
no meaningful capture time. ``--realtime`` paces the file at its frame rate instead, like a
camera: then FPS is capped by the source and latency is capture -> result.

With ``--flame-dir`` the pipelines with refinement also run with FLAME fitted (with an ICT
checkpoint FLAME from its mean face, ``FaceTracker``'s other-head-model path; with a FLAME
checkpoint its own), and the FLAME / ICT fps ratios are printed.

``--rounds N`` runs every pipeline N times, one of each per round, each round starting at another
pipeline (so a slow spell of the machine, or of a process that has run many pipelines, falls on
all of them alike), and reports each pipeline's median run by fps, with the range of its fps over
the rounds.

The network's weights do not change its speed: without a checkpoint, ``--untrained BACKBONE``
times an untrained network of that backbone (said so in the output). Last line:
``mediapipe_fps=<a> sequential_fps=<b> async_fps=<c>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tracker.face.detection import FaceMeshDetector
from tracker.head_models import load_head_model
from tracker.live.face_tracker import FaceTracker
from tracker.live.options import TrackerOptions
from tracker.live.pipeline import Pipeline, PipelineStats, StatsSnapshot
from tracker.live.sources import open_source
from tracker.n2fnet import N2FNet
from tracker.n2fnet.checkpoint import save_checkpoint
from tracker.n2fnet.runtime import check_device


def decode_frames(video: str, limit: int | None) -> list[np.ndarray]:
    with open_source(video) as source:
        frames = []
        for frame in source:
            frames.append(frame.image)
            if limit is not None and len(frames) >= limit:
                break
    return frames


def time_mediapipe(frames: list[np.ndarray]) -> tuple[float, float, float, float]:
    """-> (fps, latency p50 ms, p95 ms, detection rate) of FaceMeshDetector.detect alone."""
    with FaceMeshDetector() as detector:
        detector.detect(frames[0])  # graph start-up
        detector.reset()
        times, found = [], 0
        start = time.perf_counter()
        for image in frames:
            t0 = time.perf_counter()
            found += bool(detector.detect(image))
            times.append((time.perf_counter() - t0) * 1000.0)
        total = time.perf_counter() - start
    return len(frames) / total, float(np.percentile(times, 50)), float(np.percentile(times, 95)), found / len(frames)


def untrained_checkpoint(args: argparse.Namespace, folder: str) -> Path:
    """An untrained ICT network of ``--untrained``'s backbone and ``--input-size``, saved as a
    checkpoint in ``folder`` (the training defaults for the crop and camera)."""
    head = load_head_model("ict", args.ict_model)
    net = N2FNet.for_head_model(head, backbone=args.untrained, input_size=args.input_size)
    path = Path(folder) / f"untrained_{args.untrained}.pt"
    save_checkpoint(path, {"model": net.state_dict(), "n2fnet": net.config.to_dict(), "head_model": {"name": "ict", "path": None}})
    return path


def time_pipeline(args: argparse.Namespace, checkpoint: str | Path, mode: str, frames: int, refine: bool = True,
                  flame_dir: str | None = None) -> tuple[StatsSnapshot, float]:
    """One pipeline run (FLAME fitted with ``flame_dir``) -> (stats over every frame, wall-clock fps)."""
    options = TrackerOptions(checkpoint=checkpoint, ict_model=args.ict_model, flame_dir=flame_dir, device=args.device, runtime=args.runtime, refine=refine)
    tracker = FaceTracker.from_options(options)
    source = open_source(args.video, realtime=True if args.realtime else None)
    pipeline = Pipeline(source, tracker, [], mode=mode, max_frames=frames, stats=PipelineStats(frames))
    start = time.perf_counter()
    try:
        stats = pipeline.run()
    finally:
        tracker.close()
    return stats, stats.frames_out / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    check_device(args.device)
    if not args.checkpoint and not args.untrained:
        raise SystemExit("give --checkpoint C, or --untrained BACKBONE to time an untrained network of that backbone")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    frames = decode_frames(args.video, args.frames)
    count = len(frames)
    height, width = frames[0].shape[:2]
    network = f"checkpoint {args.checkpoint}" if args.checkpoint else f"UNTRAINED {args.untrained} at {args.input_size} px (timing only)"
    print(f"video {args.video}: {count} frames {width}x{height}; network: {network}; device {args.device}; runtime {args.runtime}; torch threads {torch.get_num_threads()}")
    mp_fps, mp_p50, mp_p95, rate = time_mediapipe(frames)
    print(f"mediapipe   {mp_fps:7.1f} fps  latency p50 {mp_p50:6.1f} ms  p95 {mp_p95:6.1f} ms  faces in {100 * rate:.1f}% of frames")
    runs: dict[tuple[str, object], list[tuple[StatsSnapshot, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="n2f-bench-") as folder:
        checkpoint = args.checkpoint or untrained_checkpoint(args, folder)
        pipelines = [(mode, refine, flame_dir) for refine, flame_dir in [(False, None), (True, None)] + ([(True, args.flame_dir)] if args.flame_dir else [])
                     for mode in ("sequential", "async")]
        for round_ in range(args.rounds):
            shift = round_ * len(pipelines) // args.rounds  # each round starts elsewhere: no pipeline always runs last
            for mode, refine, flame_dir in pipelines[shift:] + pipelines[:shift]:
                key = (mode, "flame" if flame_dir else refine)
                runs.setdefault(key, []).append(time_pipeline(args, checkpoint, mode, count, refine, flame_dir))
    fps = {}
    for mode, refine, flame_dir in pipelines:
        kind = "flame" if flame_dir else refine
        timed = runs[mode, kind]
        ordered = sorted(timed, key=lambda run: run[1])
        stats, fps[mode, kind] = ordered[len(ordered) // 2]  # the median run (the upper one of an even count)
        p50, p95 = (stats.latency_p50_ms, stats.latency_p95_ms) if args.realtime else (stats.processing_p50_ms, stats.processing_p95_ms)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in stats.stage_ms.items())
        name = f"{mode} {'FLAME refine' if kind == 'flame' else 'refine' if kind else 'no-refine'}"
        spread = f" (rounds {ordered[0][1]:.1f}-{ordered[-1][1]:.1f})" if len(ordered) > 1 else ""
        print(f"{name:23s} {fps[mode, kind]:7.1f} fps{spread}  latency p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  faces in {100 * stats.detection_rate:.1f}%  "
              f"dropped {stats.dropped}  stage ms: {stages}")
    for refine in (False, True):
        print(f"async/sequential speed-up ({'refine' if refine else 'no refine'}): {fps['async', refine] / fps['sequential', refine]:.2f}x")
    for mode in ("sequential", "async"):
        print(f"{mode}: fps with refinement / without: {fps[mode, True] / fps[mode, False]:.3f}")
    flame = ""
    if args.flame_dir:
        for mode in ("sequential", "async"):
            print(f"{mode}: fps with FLAME fitted / with ICT (both refined): {fps[mode, 'flame'] / fps[mode, True]:.3f}")
        flame = f" flame_sequential_fps={fps['sequential', 'flame']:.1f} flame_async_fps={fps['async', 'flame']:.1f}"
    print(f"mediapipe_fps={mp_fps:.1f} sequential_fps={fps['sequential', True]:.1f} async_fps={fps['async', True]:.1f} "
          f"sequential_no_refine_fps={fps['sequential', False]:.1f} async_no_refine_fps={fps['async', False]:.1f}{flame}")
