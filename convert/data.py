"""FER2013 loaders: the Kaggle CSV and the image-folder layout, both to FER2013 indices."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from device.preprocess import EMOTIONS, face_pixels

__all__ = ["Split", "default_data_dir", "load_csv", "load_folder", "load_splits"]

#: Folder names seen in the wild for each FER2013 class; mapped by name, never
#: by sorted position (alphabetical order puts neutral at 4 and sad at 5).
_FOLDER_ALIASES = {
    "angry": 0, "anger": 0,
    "disgust": 1, "disgusted": 1,
    "fear": 2, "fearful": 2, "scared": 2,
    "happy": 3, "happiness": 3,
    "sad": 4, "sadness": 4,
    "surprise": 5, "surprised": 5,
    "neutral": 6,
}
_FOLDER_SPLITS = {"train": "Training", "training": "Training", "validation": "PublicTest",
                  "val": "PublicTest", "publictest": "PublicTest", "test": "PrivateTest",
                  "privatetest": "PrivateTest"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm"}


@dataclass(frozen=True)
class Split:
    """Equalised 48x48 uint8 faces and their FER2013 labels."""

    faces: np.ndarray  # (N, 48, 48) uint8, already through face_pixels
    labels: np.ndarray  # (N,) int64 in FER2013 order

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(EMOTIONS)}


def default_data_dir() -> Path:
    """$MOODBOX_FER2013, else ../shared/data/fer2013 beside the checkout."""
    env = os.environ.get("MOODBOX_FER2013")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fer2013"


def _preprocess_all(raw: np.ndarray) -> np.ndarray:
    return np.stack([face_pixels(face) for face in raw]) if len(raw) else raw.reshape(0, 48, 48)


def load_csv(path: str | Path, usages: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")) -> dict[str, Split]:
    """Read a Kaggle ``emotion,pixels,Usage`` CSV (plain or .gz) into one Split per Usage."""
    table = pd.read_csv(path, dtype={"emotion": "int64", "pixels": "string", "Usage": "string"})
    missing = {"emotion", "pixels", "Usage"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a FER2013 CSV, missing columns {sorted(missing)}")
    splits = {}
    for usage in usages:
        rows = table[table["Usage"] == usage]
        raw = np.array([np.array(p.split(), dtype=np.uint8) for p in rows["pixels"]], dtype=np.uint8)
        raw = raw.reshape(-1, 48, 48)
        splits[usage] = Split(_preprocess_all(raw), rows["emotion"].to_numpy(dtype=np.int64))
    return splits


def folder_label(name: str) -> int:
    """FER2013 index for a class folder name such as ``Neutral`` or ``sad``."""
    try:
        return _FOLDER_ALIASES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown emotion folder {name!r}; expected one of {sorted(_FOLDER_ALIASES)}") from None


def load_folder(root: str | Path) -> dict[str, Split]:
    """Read the ``train/<class>/``, ``test/<class>/`` (and optional ``validation/``) layout."""
    root = Path(root)
    splits: dict[str, Split] = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        usage = _FOLDER_SPLITS.get(split_dir.name.lower())
        if usage is None:
            continue
        faces, labels = [], []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            label = folder_label(class_dir.name)
            for image_path in sorted(class_dir.iterdir()):
                if image_path.suffix.lower() not in _IMAGE_SUFFIXES:
                    continue
                gray = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
                if gray is None:
                    raise ValueError(f"{image_path}: not a readable image")
                faces.append(face_pixels(gray))
                labels.append(label)
        splits[usage] = Split(np.array(faces, dtype=np.uint8).reshape(-1, 48, 48), np.array(labels, dtype=np.int64))
    if not splits:
        raise ValueError(f"{root}: no train/, validation/ or test/ folders found")
    return splits


def load_splits(source: str | Path) -> dict[str, Split]:
    """A CSV file or an image-folder root, whichever ``source`` is."""
    source = Path(source)
    return load_folder(source) if source.is_dir() else load_csv(source)
