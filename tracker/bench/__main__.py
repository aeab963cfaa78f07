"""``python -m tracker.bench <subcommand> [options]``; subcommands: render, live, network, refine, finish.

The command lines are here and the benchmarks in ``tracker.bench.<subcommand>`` (``run(args)``),
imported only once the command line is parsed: ``--help`` answers before torch loads.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tracker.console import configure_logging
from tracker.errors import TrackerError
from tracker.n2fnet import RUNTIMES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tracker.bench", description=__doc__)
    parser.add_argument("--verbose", action="store_true",
                        help="also show the third-party libraries' log lines (MediaPipe/TFLite/absl, OpenCV, FFmpeg), hidden by default")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_render_parser(subparsers)
    add_live_parser(subparsers)
    add_network_parser(subparsers)
    add_refine_parser(subparsers)
    add_finish_parser(subparsers)
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=True)
    try:
        importlib.import_module(args.module).run(args)
    except TrackerError as error:
        sys.exit(f"error: {error}")


def add_render_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``render`` subcommand."""
    parser = subparsers.add_parser("render", help="ms per normal map (rasterise + interpolate normals + mask)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CPU, then CUDA when available)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per figure (median; default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cue-size", type=int, default=128, help="crop side of the MediaPipe cue timing (default 128)")
    parser.add_argument("--cue-repeats", type=int, default=None, help="timed cue calls per renderer (default 30 x --repeats; 0: skip)")
    parser.set_defaults(module="tracker.bench.render")


def add_live_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``live`` subcommand."""
    parser = subparsers.add_parser("live", help="FPS and latency: MediaPipe alone, pipeline sequential, pipeline async")
    parser.add_argument("--video", required=True, help="video file (or image folder)")
    parser.add_argument("--checkpoint", help="N2FNet checkpoint to time")
    parser.add_argument("--untrained", metavar="BACKBONE", help="time an untrained ICT network with this backbone instead (speed does not depend on weights)")
    parser.add_argument("--input-size", type=int, default=256, help="input size of the --untrained network (default 256)")
    parser.add_argument("--ict-model", help="ICT npz (default: found or fetched as README's Quick start says: N2F_ICT_MODEL, shared folder, cache, download)")
    parser.add_argument("--device", default="cpu", help="network device: cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--frames", type=int, help="use the first N frames (default: all)")
    parser.add_argument("--realtime", action="store_true", help="pace the file at its frame rate, like a camera")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the live app)")
    parser.add_argument("--runtime", default="auto", choices=("auto", *RUNTIMES),
                        help="network runtime, as the app's --runtime (default auto: the fastest installed on the CPU, torch on CUDA)")
    parser.add_argument("--flame-dir", help="also time the refined pipelines with FLAME fitted (these FLAME files), in the same run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every pipeline this many times, one of each per round, and report the median run (default 1)")
    parser.set_defaults(module="tracker.bench.live")


def add_network_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``network`` subcommand."""
    parser = subparsers.add_parser("network", help="ms per N2FNet call in each runtime (torch, onnxruntime, openvino, openvino-int8) on real cue maps")
    parser.add_argument("--checkpoint", help="N2FNet checkpoint (default: the shipped assets/n2fnet_ict_resnet18.pt)")
    parser.add_argument("--video", help="video whose frames give the cue maps (default: the shared real-faces single_face.mp4)")
    parser.add_argument("--frames", type=int, default=30, help="frames of the video to use (default 30)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds over all the cue maps, per runtime (default 5)")
    parser.add_argument("--runtimes", help=f"comma-separated, of {', '.join(RUNTIMES)} (default: every one installed; torch always runs, as the reference)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime (default 1, as the live app)")
    parser.add_argument("--fresh", action="store_true", help="export into a temporary folder, not the cache: times the first use")
    parser.add_argument("--ict-model", help="ICT npz (default: found as the README's Quick start says)")
    parser.set_defaults(module="tracker.bench.network")


def add_refine_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``refine`` subcommand."""
    parser = subparsers.add_parser("refine", help="ms per face per frame of the landmark refinement, FLAME (analytic) vs ICT, one thread")
    parser.add_argument("--frames", type=int, default=40, help="frames of the synthetic track per model (default 40)")
    parser.add_argument("--flame-dir", "--flame", dest="flame", help="FLAME folder (default: a generated FLAME-size model)")
    parser.add_argument("--ict-model", help="ICT npz (default: found as the README's Quick start says)")
    parser.add_argument("--autodiff-frames", type=int, default=2, help="frames timed through the old autodiff path (default 2; 0: skip)")
    parser.set_defaults(module="tracker.bench.refine")


def add_finish_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``finish`` subcommand."""
    parser = subparsers.add_parser("finish", help="ms per frame of the stage after the network (smooth, refine, decode, avatar), ICT against FLAME")
    parser.add_argument("--video", required=True, help="video file (or image folder)")
    parser.add_argument("--flame-dir", required=True, help="the FLAME files")
    parser.add_argument("--checkpoint", help="N2FNet checkpoint (default: the shipped assets/n2fnet_ict_resnet18.pt)")
    parser.add_argument("--ict-model", help="ICT npz (default: found as the README's Quick start says)")
    parser.add_argument("--runtime", default="auto", choices=("auto", *RUNTIMES), help="network runtime (default auto)")
    parser.add_argument("--frames", type=int, help="use the first N frames (default: all)")
    parser.add_argument("--passes", type=int, default=3, help="passes of each tracker over the frames, alternating; the fastest counts (default 3)")
    parser.set_defaults(module="tracker.bench.finish")


if __name__ == "__main__":
    main()
