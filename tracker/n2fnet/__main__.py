"""``python -m tracker.n2fnet <subcommand> [options]``; subcommands: checkpoint, runtime, quantize.

    python -m tracker.n2fnet checkpoint runs/NAME/best_stage2.pt assets/n2fnet_ict_resnet18.pt
    python -m tracker.n2fnet runtime [CHECKPOINT] [--runtime all|onnxruntime|openvino]
    python -m tracker.n2fnet quantize assets/n2fnet_ict_resnet18.pt --calibration DATA_DIR [--samples 300] [--out X.int8.xml]

The command lines are here and the work in ``tracker.n2fnet.<subcommand>``, imported only once the
command line is parsed: ``--help`` answers before torch loads (about 1.5 s).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

EXPORTED = ("onnxruntime", "openvino")  # the runtimes that export the network into the cache (tracker.n2fnet.runtime)
DEFAULT_SAMPLES = 300  # calibration samples of the int8 copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracker.n2fnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_checkpoint_parser(subparsers)
    add_runtime_parser(subparsers)
    add_quantize_parser(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


def add_checkpoint_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``checkpoint`` subcommand."""
    description = "Export a training checkpoint as a small release checkpoint (int8 per-channel weights, no optimiser)."
    parser = subparsers.add_parser("checkpoint", help=description, description=description)
    parser.add_argument("source", help="training checkpoint, e.g. runs/NAME/best_stage2.pt")
    parser.add_argument("out", help="release checkpoint to write, e.g. assets/n2fnet_ict_resnet18.pt")
    parser.set_defaults(run=export_checkpoint)


def add_runtime_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``runtime`` subcommand."""
    description = "Export a checkpoint's network into the cache now (e.g. while building an image); print where, its size and its parity with PyTorch."
    parser = subparsers.add_parser("runtime", help=description, description=description)
    parser.add_argument("checkpoint", nargs="?", help="N2FNet checkpoint (default: the shipped assets/n2fnet_ict_resnet18.pt)")
    parser.add_argument("--runtime", choices=("all", *EXPORTED), default="all", help="the runtime to export for (default: every one installed)")
    parser.set_defaults(run=export_networks)


def add_quantize_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``quantize`` subcommand."""
    description = "Make the int8 OpenVINO copy of a checkpoint's network (--runtime openvino-int8), beside it."
    parser = subparsers.add_parser("quantize", help=description, description=description)
    parser.add_argument("checkpoint", help="N2FNet checkpoint, e.g. assets/n2fnet_ict_resnet18.pt")
    parser.add_argument("--calibration", required=True, help="fine-tuning folder of real cue maps (normals/, masks/, cameras/; train/real_data.py's format)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"calibration samples, evenly spaced by name (default {DEFAULT_SAMPLES})")
    parser.add_argument("--out", help="the int8 copy to write (default: beside the checkpoint, NAME.int8.xml: where --runtime openvino-int8 reads it)")
    parser.set_defaults(run=make_int8_copy)


def export_checkpoint(args: argparse.Namespace) -> int:
    """``checkpoint``: ``tracker.n2fnet.checkpoint.export_release``; 2 on a TrackerError."""
    from tracker.errors import TrackerError
    from tracker.n2fnet.checkpoint import export_release

    try:
        export_release(args.source, args.out)
    except TrackerError as error:
        print(f"error: {error}")
        return 2
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")
    return 0


def export_networks(args: argparse.Namespace) -> int:
    """``runtime``: export the checkpoint's network for each runtime into the cache now, print where,
    its size and its parity (``tracker.n2fnet.runtime.create_runner``)."""
    from tracker.errors import TrackerError
    from tracker.n2fnet.checkpoint import load_checkpoint, model_from_checkpoint
    from tracker.n2fnet.runtime import (
        INSTALL,
        SHIPPED_CHECKPOINT,
        create_runner,
        installed,
    )

    checkpoint = Path(args.checkpoint) if args.checkpoint else SHIPPED_CHECKPOINT
    names = [n for n in EXPORTED if installed(n)] if args.runtime == "all" else [args.runtime]
    try:
        net = model_from_checkpoint(load_checkpoint(checkpoint))
        for name in names:
            runner = create_runner(net, name)
            files = [runner.path] + ([runner.path.with_suffix(".bin")] if name == "openvino" else [])
            size = sum(f.stat().st_size for f in files) / 1e6
            print(f"{name}: {runner.origin} {runner.path} ({size:.1f} MB; export {runner.setup_s:.1f} s, load + check {runner.load_s:.1f} s; "
                  f"max |diff| from torch on the probe {runner.parity_error():.1e})")
    except TrackerError as error:
        print(f"error: {error}")
        return 2
    if not names:
        print(f"no exporting runtime installed: {INSTALL['openvino']} or {INSTALL['onnxruntime']}")
    return 0


def make_int8_copy(args: argparse.Namespace) -> int:
    """``quantize``: calibrate, quantise, write and read back the int8 copy (``tracker.n2fnet.quantize``);
    2 without NNCF or on a TrackerError."""
    try:
        import nncf  # noqa: F401  (checked before the minutes of work)
    except ImportError:
        print('error: making the int8 copy needs NNCF: pip install -e ".[quantize]" (nncf==3.4.0)')
        return 2
    from tracker.errors import TrackerError
    from tracker.n2fnet import runtime as rt
    from tracker.n2fnet.checkpoint import load_checkpoint, model_from_checkpoint
    from tracker.n2fnet.quantize import (
        int8_metadata,
        output_differences,
        quantize,
        read_calibration,
        write,
    )

    out = Path(args.out) if args.out else rt.int8_path(args.checkpoint)
    command = ["python", "-m", "tracker.n2fnet", "quantize", args.checkpoint, "--calibration", args.calibration]
    command += (["--samples", str(args.samples)] if args.samples != DEFAULT_SAMPLES else []) + (["--out", args.out] if args.out else [])
    start = time.perf_counter()
    try:
        net = model_from_checkpoint(load_checkpoint(args.checkpoint))
        inputs, calibration = read_calibration(args.calibration, net, args.samples)
    except TrackerError as error:
        print(f"error: {error}")
        return 2
    print(f"calibration: {calibration}")
    model = quantize(net, inputs)
    differences = output_differences(model, net, inputs)
    metadata = int8_metadata(net, args.checkpoint, calibration, shlex.join(command))
    try:
        write(model, out, metadata)
    except TrackerError as error:
        print(f"error: {error}")
        return 2
    size = (out.stat().st_size + out.with_suffix(".bin").stat().st_size) / 1e6
    print(f"wrote {out} and {out.with_suffix('.bin').name} ({size:.1f} MB) in {time.perf_counter() - start:.0f} s; network digest {metadata['digest'][:12]}")
    print("largest |int8 - torch| on the calibration samples: " + ", ".join(f"{k} {v:.3g}" for k, v in differences.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
