"""``python -m tracker.head_models <subcommand> [options]``; subcommands: ict-source, ict-convert.

    python -m tracker.head_models ict-source [--download] [--url URL] [--from-checkout DIR]
    python -m tracker.head_models ict-convert ICT-FaceKit/ ict_face_model.npz

``ict-source`` prints where the ICT-FaceKit model is, fetching or converting it into the cache when
it is nowhere (``tracker.head_models.ict_source``: the search order); ``ict-convert`` packs an
upstream checkout into the npz the tracker loads (``tracker.head_models.ict_convert``). Neither
loads torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tracker.errors import TrackerError
from tracker.files.paths import cache_dir
from tracker.head_models.ict_convert import UPSTREAM_URL, convert
from tracker.head_models.ict_source import (
    DEFAULT_URL,
    DownloadError,
    convert_checkout,
    download_ict_model,
    existing_path,
    how_to_get,
    locate_ict_model,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracker.head_models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_ict_source_parser(subparsers)
    add_ict_convert_parser(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


def add_ict_source_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``ict-source`` subcommand."""
    description = ("Print where the ICT-FaceKit model is; fetch or convert it into the cache when it is nowhere "
                   "(search order: tracker.head_models.ict_source's docstring).")
    parser = subparsers.add_parser("ict-source", help=description, description=description)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--download", action="store_true", help=f"download and convert the pinned upstream archive into {cache_dir()} now, replacing a cached copy")
    action.add_argument("--from-checkout", type=Path, metavar="DIR", help="convert this ICT-FaceKit checkout into the cache (kept while the cache holds its conversion)")
    parser.add_argument("--url", help=f"the archive to download (default: $N2F_ICT_FACEKIT_URL or {DEFAULT_URL})")
    parser.set_defaults(run=ict_source)


def add_ict_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``ict-convert`` subcommand."""
    description = f"Pack an ICT-FaceKit checkout ({UPSTREAM_URL}, MIT licence) into the npz the tracker loads."
    parser = subparsers.add_parser("ict-convert", help=description, description=description)
    parser.add_argument("checkout", type=Path, help="the ICT-FaceKit repository folder (or its FaceXModel folder)")
    parser.add_argument("out", type=Path, help="the npz to write, e.g. ict_face_model.npz")
    parser.set_defaults(run=ict_convert)


def ict_source(args: argparse.Namespace) -> int:
    """``ict-source``: print the model's path (progress on stderr); 2 on a TrackerError."""

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.download:
            path = download_ict_model(args.url or os.environ.get("N2F_ICT_FACEKIT_URL") or DEFAULT_URL, log=log)
        elif args.from_checkout:
            path = convert_checkout(existing_path(args.from_checkout, "--from-checkout"), log=log)
        else:
            path = locate_ict_model(url=args.url, log=log)
    except DownloadError as err:
        print(f"error: {err}; are you offline?\n{how_to_get()}", file=sys.stderr)
        return 2
    except TrackerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


def ict_convert(args: argparse.Namespace) -> int:
    """``ict-convert``: write the packed npz; 2 on a TrackerError."""
    print(f"reading the ICT-FaceKit meshes in {args.checkout} (154 OBJ files, about a minute)")
    try:
        path = convert(args.checkout, args.out)
    except TrackerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}; point N2F_ICT_MODEL at it (keep upstream's LICENSE beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
