"""Per-face classification time through the box's own classifier, in whatever TFLite runtime is installed.

Timed: ``EmotionClassifier.classify_faces`` on one preprocessed 48x48 face,
i.e. quantise the input, invoke, dequantise the output: what the daemon does
per face after cropping. Run as a module it prints one JSON object, so another
virtual environment (numpy 1.26 + tflite-runtime 2.14) can be measured the same way::

    .venv-tflite/bin/python -m bench.per_face --model models/emotion_int8.tflite --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["measure", "main"]


def measure(model: Path, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Median/p90 ms per face, with the runtime and the model's input dtype."""
    import numpy as np

    from bench.timing import time_calls
    from device.emotion import EmotionClassifier
    from device.preprocess import FACE_SIZE

    classifier = EmotionClassifier(model, threads=threads)
    face = np.random.default_rng(0).integers(0, 256, (1, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    timing = time_calls(lambda: classifier.classify_faces(face, flip_tta=False, zoom_tta=()), runs, warmup)
    return {"runtime": str(classifier.runtime), "threads": threads, "dtype": classifier.info.input_dtype,
            "numpy": np.__version__, **timing.as_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.per_face", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.model, args.threads, args.runs, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
