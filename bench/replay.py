"""The benchmark's camera input: the 640x480 one-face test photo, drifting a few pixels per frame.

A still photo would let the region search lock on trivially; a face that moves
a little, as a person in front of the box does, exercises it as the box does.
Every frame is computed from the committed photo, so each run sees the same input.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

__all__ = ["FACE_PHOTO", "load_frames", "write_replay"]

FACE_PHOTO = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "face_640x480.jpg"
#: Largest drift from the photo's own position, pixels.
DRIFT_PX = 12


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, shift, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def write_replay(folder: Path, frames: int = 30, photo: Path = FACE_PHOTO) -> Path:
    """Write ``frames`` JPEGs (frame_0000.jpg, ...) into ``folder`` for a replay camera; returns it."""
    image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"benchmark photo {photo} is missing or unreadable")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        phase = 2 * math.pi * i / frames
        frame = _shifted(image, DRIFT_PX * math.sin(phase), DRIFT_PX / 2 * math.sin(2 * phase))
        path = folder / f"frame_{i:04d}.jpg"
        if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"cannot write {path}")
    return folder


def load_frames(folder: Path) -> list[np.ndarray]:
    """The replay's frames, decoded once: the pipelines are timed without JPEG decoding."""
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(Path(folder).glob("*.jpg"))]
    if not frames or any(f is None for f in frames):
        raise ValueError(f"{folder} holds no readable .jpg frames")
    return frames
