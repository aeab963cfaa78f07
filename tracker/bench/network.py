"""Network-runtime benchmark: ms per N2FNet call in each runtime (torch eager, onnxruntime,
openvino, openvino-int8), in one process, on the same real cue maps.

    python -m tracker.bench network [--checkpoint C] [--video V] [--frames N] [--threads 1]

The frames of the video go through the tracker's CPU stage (MediaPipe, crop, cue) once; the
network inputs of the frames with a face are then fed to every runtime, in turns (round after
round, the runtimes' order rotated each round, so a busy moment of the machine is shared out).
Per runtime: median and p95 ms per call (one face), the speed-up over torch eager, the largest
difference of its outputs from torch's on these inputs, and how its network was made (exported
now / read from the cache; ``--fresh`` exports into a temporary folder to time the first use; the
int8 copy is read from beside the checkpoint, and skipped with a line saying why when the
checkpoint has none of its own, unless asked for by ``--runtimes``). Then the int8 copy's speed-up
over openvino's float32. Last line: ``torch_ms=<a> onnxruntime_ms=<b> openvino_ms=<c>
openvino_int8_ms=<d>`` (medians; only the runtimes run).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from tracker.files.paths import shared_dir
from tracker.live.face_tracker import FaceTracker
from tracker.live.options import DEFAULT_CHECKPOINT, TrackerOptions
from tracker.live.results import NetworkInputs
from tracker.live.sources import open_source
from tracker.n2fnet import RUNTIMES
from tracker.n2fnet.runtime import (
    NoInt8Copy,
    Runner,
    available_runtimes,
    check_runtime,
    create_runner,
    output_difference,
)


def default_video() -> str | None:
    shared = shared_dir()
    path = shared / "real-faces" / "videos" / "single_face.mp4" if shared else None
    return str(path) if path is not None and path.is_file() else None


def real_inputs(tracker: FaceTracker, video: str, frames: int) -> list[NetworkInputs]:
    """The network inputs of the first ``frames`` frames of ``video`` that have a face."""
    inputs = []
    with open_source(video) as source:
        for index, frame in enumerate(source):
            if index >= frames:
                break
            prepared = tracker.prepare(frame)
            if prepared.inputs is not None:
                inputs.append(prepared.inputs)
    return inputs


def _call(runner: Runner, inputs: NetworkInputs):
    with torch.no_grad():
        return runner(inputs.normals, inputs.focal, inputs.principal, inputs.mask)


def time_runners(runners: dict[str, Runner], inputs: list[NetworkInputs], rounds: int) -> dict[str, list[float]]:
    """ms per call of each runner: ``rounds`` rounds over every input, runners in rotated order."""
    for runner in runners.values():  # warm-up
        for item in inputs[:3]:
            _call(runner, item)
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            for item in inputs:
                start = time.perf_counter()
                _call(runners[name], item)
                times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def run(args: argparse.Namespace) -> None:
    """The ``network`` subcommand: print each runtime's ms per call, then the summary line."""
    torch.set_num_threads(max(1, args.threads))
    video = args.video or default_video()
    if video is None:
        raise SystemExit("--video V: no default clip (the shared real-faces folder was not found; set N2F_SHARED_DIR)")
    asked = args.runtimes.split(",") if args.runtimes else []
    names = asked or list(available_runtimes())
    for name in names:
        check_runtime(name)
    if "torch" not in names:
        names.insert(0, "torch")
    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    options = TrackerOptions(checkpoint=checkpoint, ict_model=args.ict_model, runtime="torch", smoothing=False, crop_smoothing=True, refine=False)
    tracker = FaceTracker.from_options(options)
    try:
        inputs = real_inputs(tracker, video, args.frames)
    finally:
        tracker.close()
    if not inputs:
        raise SystemExit(f"no face found in the first {args.frames} frames of {video}")
    net = tracker.net
    size = net.config.input_size
    print(f"checkpoint {checkpoint}: {net.config.backbone}, {size} px; {len(inputs)} real cue maps from {video}; "
          f"{args.threads} thread(s); installed runtimes: {', '.join(available_runtimes())}")
    folder = tempfile.TemporaryDirectory(prefix="n2f-bench-") if args.fresh else None
    runners: dict[str, Runner] = {}
    try:
        for name in names:
            start = time.perf_counter()
            try:
                runner = create_runner(net, name, threads=args.threads, cache=folder.name if folder else True, checkpoint=checkpoint)
            except NoInt8Copy as error:
                if name in asked:
                    raise SystemExit(f"--runtimes {name}: {error}") from None
                print(f"{name:13s} skipped: {error}")
                continue
            runners[name] = runner
            if name != "torch":
                print(f"{name:13s} network {runner.origin}: export/convert {runner.setup_s:.2f} s, load + check {runner.load_s:.2f} s, "
                      f"set-up in all {time.perf_counter() - start:.2f} s ({runner.path or 'in memory'})")
        reference = [_call(runners["torch"], item) for item in inputs]
        errors = {name: max(output_difference(_call(runner, item), want) for item, want in zip(inputs, reference)) for name, runner in runners.items()}
        times = time_runners(runners, inputs, args.rounds)
    finally:
        if folder is not None:
            folder.cleanup()
    medians = {name: float(np.median(values)) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:13s} {medians[name]:7.2f} ms median  {float(np.percentile(values, 95)):7.2f} ms p95  "
              f"x{medians['torch'] / medians[name]:.2f} vs torch eager  max |diff| from torch {errors[name]:.1e}  ({len(values)} calls)")
    if "openvino" in medians and "openvino-int8" in medians:
        print(f"openvino-int8 x{medians['openvino'] / medians['openvino-int8']:.2f} vs openvino (float32)")
    print(" ".join(f"{name.replace('-', '_')}_ms={medians[name]:.1f}" for name in RUNTIMES if name in medians))
