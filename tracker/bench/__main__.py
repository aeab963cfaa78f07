"""``python -m tracker.bench <subcommand> [options]``; subcommands: render, live, network."""

from __future__ import annotations

import argparse

from tracker.bench import live, network, render


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tracker.bench", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    render.add_parser(subparsers)
    live.add_parser(subparsers)
    network.add_parser(subparsers)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
