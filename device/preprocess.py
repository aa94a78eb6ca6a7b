"""The face contract shared by the box and the training tools.

Everything that turns pixels into model input lives here, and ``convert/``
imports it, so training and inference cannot drift apart. The FER2013 copy we
train on was histogram-equalised by its redistributor; equalising every crop,
in training and on the box, makes camera frames and original Kaggle pixels look
like the training data and makes the model less sensitive to room lighting.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "CROP_MARGIN",
    "EMOTIONS",
    "FACE_SIZE",
    "crop_square",
    "face_pixels",
    "quantize_input",
    "tta_views",
    "zoom_face",
]

#: FER2013 class order: the model's output index i is EMOTIONS[i].
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Side of the square grayscale face the model sees.
FACE_SIZE = 48

#: Extra border around a Haar box, as a fraction of its side. Haar boxes cut
#: at the brows and the chin; FER2013 faces show a little forehead and jaw.
CROP_MARGIN = 0.1


def crop_square(gray: np.ndarray, box: tuple[int, int, int, int], margin: float = CROP_MARGIN) -> np.ndarray:
    """Cut a square around ``box`` (x, y, w, h), grown by ``margin`` per side.

    Parts of the square outside the frame are filled by replicating the border,
    so a face at the edge keeps its proportions instead of being stretched.
    """
    x, y, w, h = box
    side = max(w, h)
    grow = int(round(side * margin))
    cx, cy = x + w / 2.0, y + h / 2.0
    half = side / 2.0 + grow
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    x1, y1 = int(round(cx + half)), int(round(cy + half))
    height, width = gray.shape[:2]
    pad_l, pad_t = max(0, -x0), max(0, -y0)
    pad_r, pad_b = max(0, x1 - width), max(0, y1 - height)
    crop = gray[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    if pad_l or pad_t or pad_r or pad_b:
        crop = cv2.copyMakeBorder(crop, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REPLICATE)
    return crop


def face_pixels(gray_face: np.ndarray) -> np.ndarray:
    """A grayscale face crop of any size -> the equalised 48x48 uint8 face the model sees."""
    if gray_face.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale crop, got shape {gray_face.shape}")
    face = np.asarray(gray_face, dtype=np.uint8)
    if face.shape != (FACE_SIZE, FACE_SIZE):
        shrinking = face.shape[0] > FACE_SIZE
        face = cv2.resize(
            face, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    return cv2.equalizeHist(face)


def quantize_input(faces: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Equalised uint8 faces (N, 48, 48) -> the model's input tensor (N, 48, 48, 1).

    The model's real input value is pixel / 255. For an int8 or uint8 input the
    tensor's scale and zero-point map that back to integers; for a float model
    (scale 0) the real value is fed directly.
    """
    real = faces.astype(np.float32)[..., np.newaxis] / 255.0
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or scale == 0:
        return real.astype(dtype if dtype.kind == "f" else np.float32)
    info = np.iinfo(dtype)
    q = np.round(real / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def zoom_face(faces: np.ndarray, factor: float) -> np.ndarray:
    """Equalised faces (N, 48, 48) scaled by ``factor`` about their centre, borders reflected.

    Below 1 the face shrinks and more of its surroundings (reflected) show, like
    a wider crop margin; above 1 it fills more of the frame.
    """
    centre = (FACE_SIZE - 1) / 2.0
    matrix = cv2.getRotationMatrix2D((centre, centre), 0.0, factor)
    return np.stack([
        cv2.warpAffine(face, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT_101)
        for face in faces
    ]) if len(faces) else faces


def tta_views(faces: np.ndarray, flip: bool, zooms: tuple[float, ...] = ()) -> list[np.ndarray]:
    """The batches a test-time-augmented classification averages over.

    In this order: the faces, their mirror (with ``flip``), then each zoom of
    the faces and, with ``flip``, its mirror. The order is part of the contract:
    the evaluation reads the flip-only figure from the first two views.
    """
    views = []
    for factor in (1.0, *zooms):
        view = faces if factor == 1.0 else zoom_face(faces, factor)
        views.append(view)
        if flip:
            # Equalisation commutes with a mirror, so flipping the equalised face is exact.
            views.append(np.ascontiguousarray(view[:, :, ::-1]))
    return views
