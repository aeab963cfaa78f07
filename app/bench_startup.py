"""``python -m app.bench_startup --video clip.mp4``: how long the programs take to start.

    python -m app.bench_startup --video clip.mp4 [--runs 3] [--checkpoint C]

Timed from outside, each in a fresh process (nothing warm but the OS's file cache):
- ``python -m app.live --video CLIP --headless --max-frames 30``: launch to the moment its
  "first frame done" line arrives on the pipe, and launch to the end of the process; the line
  itself says what the time went to (imports, source, tracker set-up, first frame);
- ``python -m M --help`` for every command line of the project (best of ``--runs``).
Medians and ranges over ``--runs`` runs. No figure is asserted anywhere: this prints them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
COMMANDS = (
    "app.live", "app.bench_viewer", "app.bench_startup", "tracker.export", "tracker.takes recover", "tracker.bench",
    "tracker.render grid", "tracker.n2fnet checkpoint", "tracker.n2fnet runtime", "tracker.n2fnet quantize",
    "tracker.head_models ict-source", "tracker.head_models ict-convert", "train", "train.finetune", "train.head_tuning",
    "train.pseudo_gt", "train.evaluate", "train.evaluate_real", "train.landmark_calibration", "train.landmark_pictures",
    "train.visualize",
)


def first_frame(video: str, checkpoint: str | None) -> tuple[float, float, str]:
    """(s to the "first frame done" line, s to the process's end, that line) of one headless run."""
    command = [sys.executable, "-m", "app.live", "--video", video, "--headless", "--max-frames", "30"]
    command += ["--checkpoint", checkpoint] if checkpoint else []
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    first, line = float("nan"), ""
    for text in process.stdout:
        if "first frame done" in text and not line:
            first, line = time.monotonic() - start, text.strip()
    if process.wait() != 0:
        raise SystemExit(f"error: {' '.join(command)} failed (rc {process.returncode})")
    return first, time.monotonic() - start, line


def help_seconds(command: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", *command.split(), "--help"], cwd=PROJECT, capture_output=True, check=True)
    return time.monotonic() - start


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (range {min(values):.2f}-{max(values):.2f}, {len(values)} runs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench_startup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True, help="video file the headless runs track")
    parser.add_argument("--checkpoint", help="N2FNet checkpoint (default: the app's)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--no-help", action="store_true", help="skip the --help timings")
    args = parser.parse_args(argv)
    firsts, totals = [], []
    for _ in range(args.runs):
        first, total, line = first_frame(args.video, args.checkpoint)
        firsts.append(first)
        totals.append(total)
        print(f"first frame {first:.2f} s, process {total:.2f} s | {line}", flush=True)
    print(f"launch -> first tracked frame: {_spread(firsts)}; launch -> process end: {_spread(totals)}")
    if not args.no_help:
        for module in COMMANDS:
            print(f"python -m {module} --help: best {min(help_seconds(module) for _ in range(args.runs)):.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
