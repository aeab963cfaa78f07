"""What every ``python -m train...`` command shares: its output checked before any heavy work, and
one way to end.

    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)        # light imports only: --help answers at once
                                                      # (build_parser calls add_output_options: --verbose)
        return run(lambda progress: _main(args, progress), "training", verbose=args.verbose)

A command's module imports only light modules at its top (the standard library, numpy,
``tracker.errors``, ``tracker.live.options``, ``train.config``, this module); torch, timm, OpenCV and the
project's heavy modules are imported inside the functions that use them, after the arguments are
parsed, so ``--help`` and an argument error answer at once (``tests/train/test_train_cli_safety.py``).

``writable_folder`` / ``writable_file`` prove an output can be written (the folder made, a probe
file created exclusively and removed) before the command loads a network or tracks a frame.
``run`` ends the command: a TrackerError is one ``error:`` line on stderr and rc 2; Ctrl-C (also
in a script's background job, which starts with it ignored) and SIGTERM are one line too, rc 2 while the command is still setting up (nothing of its work exists yet) and rc 130
once it has called ``progress.began(note)``, ``note`` saying what stays (checkpoints are written
whole or not at all, so those saved before Ctrl-C are intact).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tracker.console import configure_logging, interruptible
from tracker.errors import TrackerError


def writable_folder(path: str | Path, option: str) -> Path:
    """``path`` as a folder that takes new files: made with its parents, then a probe file created
    exclusively in it and removed. A TrackerError naming ``option`` when it cannot be."""
    folder = Path(path)
    _check_folder(folder, f"{option} {folder}")
    return folder


def writable_file(path: str | Path, option: str) -> Path:
    """``path`` as a file the command can write when its work is done: not a folder, in a folder
    that takes new files (as ``writable_folder``); an existing file is opened for appending (and
    left as it is), a new one created exclusively and removed. A TrackerError naming ``option``
    otherwise."""
    target = Path(path)
    label = f"{option} {target}"
    if target.is_dir():
        raise TrackerError(f"{label} is a folder; give the name of a file to write")
    _check_folder(target.parent, label)
    try:
        if target.exists():
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
        else:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            target.unlink()
    except OSError as error:
        raise TrackerError(f"{label}: cannot write it ({error.strerror or error}); give a file you can write") from None
    return target


def _check_folder(folder: Path, label: str) -> None:
    """Make ``folder`` (with its parents) and create and remove a probe file in it; a TrackerError
    starting with ``label`` when that fails."""
    try:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise TrackerError(f"{label}: {existing} is a file, not a folder; give a path in a folder you can write to")
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise TrackerError(f"{label}: cannot write in {folder} ({error.strerror or error}); give a path in a folder you can write to") from None


class Progress:
    """Whether a command's work has begun: ``began(note)`` once it has; ``note`` (a string, or a
    function giving one when asked) says what of the work stays after Ctrl-C."""

    def __init__(self) -> None:
        self._note: str | Callable[[], str] | None = None

    def began(self, note: str | Callable[[], str]) -> None:
        self._note = note

    @property
    def note(self) -> str | None:
        return self._note() if callable(self._note) else self._note


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: also show the third-party libraries' log lines (``tracker.console``)."""
    parser.add_argument("--verbose", action="store_true",
                        help="also show the third-party libraries' log lines (MediaPipe/TFLite/absl, OpenCV, FFmpeg), hidden by default")


def run(work: Callable[[Progress], None], activity: str, verbose: bool = False) -> int:
    """Run a command's ``work`` -> its exit status (module docstring); ``activity`` names the work
    for the Ctrl-C line ("training", "labelling", ...); ``verbose``: third-party log lines shown
    (``tracker.console.configure_logging``; the project's own at WARNING, as they were)."""
    configure_logging(verbose=verbose, quiet=True)
    progress = Progress()
    try:
        with interruptible():  # SIGTERM and a background job's Ctrl-C stop the same clean way
            work(progress)
    except TrackerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = progress.note
        if note is None:
            print(f"error: interrupted during start-up, before {activity} began", file=sys.stderr)
            return 2
        print(f"interrupted: {note}", file=sys.stderr)
        return 130
    return 0


def checkpoints_note(out_dir: str | Path, resume: bool = False) -> str:
    """What a training run's Ctrl-C leaves in ``out_dir``, said when it happens; ``resume``: say
    how ``python -m train`` continues it."""
    last = Path(out_dir) / "last.pt"
    if not last.is_file():
        return f"no checkpoint was saved yet in {out_dir} (the first comes with the first validation)"
    then = f"; continue with python -m train --resume {last}" if resume else ""
    return f"the checkpoints in {out_dir} are intact (last.pt: the weights of the last validation){then}"
