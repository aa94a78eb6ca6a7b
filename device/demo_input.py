"""The demo's camera input, made from one committed public-domain portrait.

``moodbox demo`` replays a short folder of 640x480 frames: the astronaut
portrait drifting and zooming a little (so detection and the region search
work on a moving face), then an empty scene (so the no_face path shows).
Everything is computed from the image, so the sequence is the same on every run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

__all__ = ["ASTRONAUT", "demo_frames", "load_astronaut", "write_demo_frames"]

#: NASA's portrait of Eileen Collins (public domain), see assets/README.md.
ASTRONAUT = Path(__file__).resolve().parent / "assets" / "astronaut.jpg"


def load_astronaut() -> np.ndarray:
    image = cv2.imread(str(ASTRONAUT), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"demo portrait {ASTRONAUT} is missing or unreadable; reinstall moodbox")
    return image


def _background(width: int, height: int) -> np.ndarray:
    """A plain wall with a soft vertical light falloff."""
    column = np.linspace(150, 100, height, dtype=np.float32)[:, np.newaxis]
    wall = np.repeat(column, width, axis=1)
    return cv2.merge([wall * 0.95, wall, wall * 1.05]).clip(0, 255).astype(np.uint8)


def demo_frames(
    face_frames: int = 60, empty_frames: int = 40, size: tuple[int, int] = (640, 480)
) -> Iterator[np.ndarray]:
    """BGR frames: ``face_frames`` with the portrait moving, then ``empty_frames`` without."""
    width, height = size
    portrait = load_astronaut()
    wall = _background(width, height)
    for i in range(face_frames):
        phase = 2 * math.pi * i / max(face_frames, 1)
        side = min(height, round(portrait.shape[0] * (1.2 + 0.05 * math.sin(phase))))
        scaled = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_AREA)
        x = round((width - side) / 2 + (width - side) / 3 * math.sin(phase))
        y = (height - side) // 2
        frame = wall.copy()
        frame[y : y + side, x : x + side] = scaled
        yield frame
    for _ in range(empty_frames):
        yield wall.copy()


def write_demo_frames(out_dir: Path, face_frames: int = 60, empty_frames: int = 40) -> Path:
    """Write the demo sequence as numbered JPEGs into ``out_dir``; returns it, for a replay camera.

    At the default 10 fps that is 6 s of face and 4 s without one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(demo_frames(face_frames, empty_frames)):
        path = out_dir / f"frame_{i:04d}.jpg"
        if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"cannot write {path}")
    return out_dir
