"""``python -m convert <command>``: the model tool chain's command line.

train     train on FER2013 (resumable)                    needs TensorFlow
average   the mean weights of a run's last epochs         needs TensorFlow
quantize  Keras checkpoint -> full-int8 + float TFLite     needs TensorFlow
evaluate  score a .tflite (any TFLite runtime) or .keras model on PublicTest/PrivateTest
ship      quantize + evaluate + write models/<name>.tflite, its metadata JSON and docs
flash     validate a shipped model and install it on a box (local folder or user@host)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

__all__ = ["COMMANDS", "main"]

#: Subcommand -> (module, help). Each module has add_arguments(parser) and main(args) -> exit code,
#: and imports TensorFlow only inside the functions that need it.
COMMANDS = {
    "train": ("convert.train", "train on FER2013 (resumable)"),
    "average": ("convert.average", "one model from the mean weights of a run's last epochs (SWA)"),
    "quantize": ("convert.quantize", "full-integer int8 post-training quantisation of a .keras checkpoint"),
    "evaluate": ("convert.evaluate", "accuracy, macro-F1, per-class figures and confusion matrices"),
    "ship": ("convert.ship", "quantize + evaluate + write <out>/<name>.tflite and <name>.json"),
    "flash": ("convert.flash", "validate a model and install it on a box, then reload the daemon"),
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Without ai-edge-litert, TensorFlow's own interpreter runs the models; it works, it just says it is old.
    warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).main(args) or 0)
    except (OSError, ValueError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
