"""The seed's approach, reproduced for timing: a Keras float CNN called with ``model.predict``.

Two measurements, both in one TensorFlow process (it takes seconds to import):

- per face: ``model.predict`` on one 48x48 image, as the seed classified each
  face, and a direct ``model(x)`` call for reference (how much is predict's
  per-call overhead rather than arithmetic);
- per frame: the seed's loop. Every frame is resized to 600x500, converted to
  grayscale, searched with the Haar cascade at scaleFactor 1.3 over the whole
  frame, and each face is cropped, resized to 48x48 and passed to ``predict``.

The network is the paper's CNN (``convert.model.paper_cnn``: 2.35 M
parameters) with untrained weights: the time does not depend on their values.
``predict`` runs with ``verbose=0``, so the seed is not charged for printing its
progress bars. Needs TensorFlow and OpenCV (``.venv-convert``)::

    .venv-convert/bin/python -m bench.seed_baseline --frames DIR
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["SEED_FRAME_SIZE", "SEED_SCALE_FACTOR", "main", "measure"]

#: What the seed's loop did to every frame before detection.
SEED_FRAME_SIZE = (600, 500)
SEED_SCALE_FACTOR = 1.3
SEED_MIN_NEIGHBORS = 5


def _seed_loop(model, frames: list, count: int, warmup: int) -> dict[str, Any]:
    import cv2
    import numpy as np

    from bench.timing import summarise

    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    if cascade.empty():
        raise RuntimeError("the Haar cascade did not load")

    def one(frame) -> int:
        frame = cv2.resize(frame, SEED_FRAME_SIZE)
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        faces = cascade.detectMultiScale(gray, scaleFactor=SEED_SCALE_FACTOR, minNeighbors=SEED_MIN_NEIGHBORS)
        for x, y, w, h in np.asarray(faces).reshape(-1, 4):
            roi = cv2.resize(gray[y : y + h, x : x + w], (48, 48))
            model.predict(roi[np.newaxis, :, :, np.newaxis].astype(np.float32) / 255.0, verbose=0)
        return len(faces)

    for frame in frames[:warmup]:
        one(frame)
    samples, faces = [], 0
    started = time.perf_counter()
    for frame in itertools.islice(itertools.cycle(frames), count):
        t0 = time.perf_counter()
        faces += one(frame)
        samples.append((time.perf_counter() - t0) * 1000.0)
    elapsed = time.perf_counter() - started
    return {"frames": count, "seconds": round(elapsed, 3), "fps": round(count / elapsed, 3),
            "faces_per_frame": round(faces / count, 3), "ms_per_frame": summarise(samples).as_dict(),
            "cv2": cv2.__version__, "cv2_threads": cv2.getNumThreads(),
            "frame_size": list(SEED_FRAME_SIZE), "scale_factor": SEED_SCALE_FACTOR,
            "min_neighbors": SEED_MIN_NEIGHBORS}


def measure(frames_dir: Path | None, predict_runs: int, loop_frames: int, warmup: int = 3) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from bench.timing import time_calls
    from convert.model import paper_cnn

    model = paper_cnn()
    face = np.random.default_rng(0).random((1, 48, 48, 1), dtype=np.float32)
    result: dict[str, Any] = {
        "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
        "params": int(model.count_params()),
        "tf_threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                       "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "predict": time_calls(lambda: model.predict(face, verbose=0), predict_runs, warmup).as_dict(),
        "call": time_calls(lambda: model(face, training=False).numpy(), predict_runs, warmup).as_dict(),
    }
    if frames_dir is not None:
        from bench.replay import load_frames

        result["loop"] = _seed_loop(model, load_frames(frames_dir), loop_frames, warmup)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=Path, help="replay folder for the per-frame loop (omit: per face only)")
    parser.add_argument("--predict-runs", type=int, default=50)
    parser.add_argument("--loop-frames", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.frames, args.predict_runs, args.loop_frames, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
