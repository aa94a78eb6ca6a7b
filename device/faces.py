"""Haar face detection, tuned for one person in front of the box.

Detection is the loop's main cost, so frames are shrunk to ``detect_width``
first, and after a hit only a region around the last face is searched for a
few frames before the next full-frame pass. When several faces are in view the
largest (nearest) one wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from device.config import DetectorConfig
from device.events import Box

__all__ = ["DetectorError", "FaceDetector", "PassKind", "cascade_path"]

CASCADE = "haarcascade_frontalface_default.xml"

#: Which search ran: the whole frame, the region around the last face, or a
#: region miss followed by a full pass in the same call.
PassKind = Literal["full", "region", "region+full"]


class DetectorError(RuntimeError):
    """The Haar cascade is missing or unreadable."""


def cascade_path() -> Path:
    """The frontal-face cascade shipped inside the opencv wheel."""
    data = getattr(cv2, "data", None)
    if data is None:
        raise DetectorError(
            f"OpenCV {cv2.__version__} ships no Haar cascades (cv2.data is missing): "
            "install opencv-python-headless<5"
        )
    return Path(data.haarcascades) / CASCADE


class FaceDetector:
    """One cascade, loaded once, plus the memory of where the last face was.

    ``last_pass`` says which search the latest ``detect`` ran, for the loop's figures.
    """

    def __init__(self, config: DetectorConfig, cascade: Path | None = None) -> None:
        path = cascade or cascade_path()
        if not path.is_file():
            raise DetectorError(f"Haar cascade {path} not found: opencv-python-headless<5 ships it, 5.x does not")
        classifier = cv2.CascadeClassifier()
        try:
            loaded = classifier.load(str(path))
        except cv2.error as exc:
            raise DetectorError(f"cannot load Haar cascade {path}: {exc.err}") from None
        if not loaded or classifier.empty():
            raise DetectorError(f"cannot load Haar cascade {path}: not a cascade file")
        self._cascade = classifier
        self.config = config
        self._last: Box | None = None
        self._region_left = 0
        self.last_pass: PassKind | None = None

    def reset(self) -> None:
        """Forget the last face (the camera was reopened or the scene changed)."""
        self._last, self._region_left = None, 0

    def detect(self, gray: np.ndarray) -> Box | None:
        """The largest face in ``gray`` in full-frame pixels, searching near the last face when it can."""
        if self._last is not None and self._region_left > 0:
            self._region_left -= 1
            box = self._search_region(gray, self._last)
            if box is not None:
                self._last, self.last_pass = box, "region"
                return box
            self.last_pass = "region+full"
        else:
            self.last_pass = "full"
        faces = self._search(gray, (0, 0), None)
        box = faces[0] if faces else None
        self._last = box
        self._region_left = self.config.region_frames if box is not None else 0
        return box

    def detect_all(self, gray: np.ndarray) -> list[Box]:
        """Every face in a photo, largest first; leaves the tracking state alone."""
        return self._search(gray, (0, 0), None)

    def _search_region(self, gray: np.ndarray, last: Box) -> Box | None:
        x, y, w, h = last
        side = max(w, h) * self.config.region_scale
        cx, cy = x + w / 2, y + h / 2
        height, width = gray.shape[:2]
        x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
        x1, y1 = min(width, int(cx + side / 2)), min(height, int(cy + side / 2))
        # A face does not shrink by half between two frames a fraction of a second apart.
        faces = self._search(gray[y0:y1, x0:x1], (x0, y0), max(w, h) // 2, full_width=width)
        return faces[0] if faces else None

    def _search(
        self, gray: np.ndarray, offset: tuple[int, int], min_side: int | None, full_width: int | None = None
    ) -> list[Box]:
        """Faces in ``gray`` (a frame or a region of one) in full-frame pixels, largest first."""
        if gray.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
        height, width = gray.shape
        if height == 0 or width == 0:
            return []
        # The scale comes from the whole frame so a region is searched at the same resolution.
        scale = min(1.0, self.config.detect_width / (full_width or width))
        small = gray
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        min_size = round(max(self.config.min_size, min_side or 0) * scale)
        if min_size > min(small.shape):
            return []
        found = self._cascade.detectMultiScale(
            small,
            scaleFactor=self.config.scale_factor,
            minNeighbors=self.config.min_neighbors,
            minSize=(min_size, min_size),
        )
        ox, oy = offset
        boxes = [
            (ox + round(fx / scale), oy + round(fy / scale), round(fw / scale), round(fh / scale))
            for fx, fy, fw, fh in np.asarray(found).reshape(-1, 4).tolist()
        ]
        return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)
