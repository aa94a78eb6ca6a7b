"""``python -m convert <command>``: the model tool chain's command line."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    from convert import train

    train.add_arguments(commands.add_parser("train", help="train on FER2013 (resumable)"))
    args = parser.parse_args(argv)
    if args.command == "train":
        return train.main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
