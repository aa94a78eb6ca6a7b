"""Moodbox's per-frame work on the replay, with the box's own detector and classifier.

Per frame, as ``device.app.Daemon.step`` does it: BGR -> grayscale, the
``FaceDetector`` (frame shrunk to ``detect_width``, a search near the last
face for ``region_frames`` frames between full passes), then the int8 model on
the face. Frames are decoded beforehand, as in the seed loop, so neither side
is charged for JPEG decoding.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2

from bench.replay import load_frames
from bench.timing import summarise
from device.config import DetectorConfig, ModelConfig
from device.emotion import EmotionClassifier
from device.faces import FaceDetector

__all__ = ["measure"]


def measure(frames_dir: Path, model: Path, count: int, warmup: int = 5,
            detector: DetectorConfig | None = None, threads: int = 1) -> dict[str, Any]:
    """Frames per second over ``count`` frames (the replay cycled), with the kinds of search that ran."""
    frames = load_frames(frames_dir)
    config = detector or DetectorConfig()
    faces = FaceDetector(config)
    box_model = ModelConfig()  # the test-time augmentation the box runs by default
    classifier = EmotionClassifier(model, threads=threads, flip_tta=box_model.flip_tta,
                                   zoom_tta=box_model.zoom_tta)

    def one(frame) -> bool:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        box = faces.detect(gray)
        if box is not None:
            classifier.classify(gray, box)
        return box is not None

    for frame in frames[:warmup]:
        one(frame)
    faces.reset()
    samples, found, by_pass = [], 0, defaultdict(list)
    started = time.perf_counter()
    for frame in itertools.islice(itertools.cycle(frames), count):
        t0 = time.perf_counter()
        found += one(frame)
        samples.append((time.perf_counter() - t0) * 1000.0)
        by_pass[faces.last_pass].append(samples[-1])
    elapsed = time.perf_counter() - started
    return {"frames": count, "seconds": round(elapsed, 3), "fps": round(count / elapsed, 3),
            "faces_per_frame": round(found / count, 3), "ms_per_frame": summarise(samples).as_dict(),
            "passes": {kind: len(ms) for kind, ms in by_pass.items()},
            "mean_ms_by_pass": {kind: round(sum(ms) / len(ms), 3) for kind, ms in by_pass.items()},
            "detect_width": config.detect_width, "scale_factor": config.scale_factor,
            "region_frames": config.region_frames, "runtime": str(classifier.runtime), "threads": threads,
            "cv2": cv2.__version__, "cv2_threads": cv2.getNumThreads()}
