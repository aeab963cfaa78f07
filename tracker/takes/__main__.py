"""``python -m tracker.takes <subcommand> [options]``; subcommand: recover.

    python -m tracker.takes recover take.npz.partial [--out take.npz] [--force] [--delete-damaged]

``recover`` finalises the journal of an interrupted recording into its take npz
(``tracker.takes.recording.finalise_journal``; the journal format: docs/take-format.md). Exporting
a take is ``python -m tracker.export``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.takes.recording import (
    check_recovery_target,
    finalise_journal,
    recovered_take_path,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracker.takes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_recover_parser(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


def add_recover_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``recover`` subcommand."""
    description = "Finalise the journal of an interrupted recording into its take npz."
    parser = subparsers.add_parser("recover", help=description, description=description)
    parser.add_argument("journal", type=Path, help="the journal, e.g. take.npz.partial")
    parser.add_argument("--out", type=Path, default=None, help="the take to write (default: the journal's name without .partial)")
    parser.add_argument("--force", action="store_true", help="replace an existing take")
    parser.add_argument("--delete-damaged", action="store_true", help="delete the journal even when some of its records were damaged "
                        "(by default such a journal is kept beside the recovered take)")
    parser.set_defaults(run=recover)


def recover(args: argparse.Namespace) -> int:
    """``recover``: write the journal's take, print what it holds and any damage; 2 on a TrackerError."""
    try:
        out = args.out or recovered_take_path(args.journal)
        check_recovery_target(args.journal, out)
        if out.exists() and not args.force:
            raise TrackerError(f"{out} exists already: choose another --out or pass --force to replace it")
        scan = finalise_journal(args.journal, out, delete_damaged=args.delete_damaged)
    except TrackerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    take = scan.take
    with_face = len(np.unique(take.frame_index[take.face_found]))
    faces = f", {int(take.face_found.sum())} face records in {len(take.tracks())} tracks" if len(take) != take.frame_count else ""
    cut = f"; ignored {scan.cut} trailing bytes (a last record the recording never finished)" if scan.cut else ""
    print(f"wrote {out}: {take.frame_count} frames, {with_face} with a face{faces}{cut}")
    if not scan.whole:
        kept = "deleted as asked" if args.delete_damaged else "kept (pass --delete-damaged to delete it)"
        print(f"warning: {scan.damage()}; every intact record was recovered; the journal {args.journal} was {kept}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
