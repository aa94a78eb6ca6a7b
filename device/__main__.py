"""``moodbox``: the box's command line.

Each module in COMMAND_MODULES adds its own subcommands through
``register(subparsers)``; a subcommand's ``func(args)`` returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from device import __version__

__all__ = ["COMMAND_MODULES", "main"]

COMMAND_MODULES = [
    "device.cli",
    "device.mqtt_cli",
    "device.music.cli",
    "device.doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moodbox", description="Emotion-aware music appliance.")
    parser.add_argument("--version", action="version", version=f"moodbox {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
