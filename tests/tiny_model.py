"""A tiny but real full-int8 TFLite emotion model for tests, independent of the shipped one.

The box never needs TensorFlow; the tests need it once, to get a genuine
full-integer model from the same converter the shipped model goes through.
:func:`build` runs this file as a script under ``.venv-convert`` (TensorFlow)
and caches the result; the importable half is plain numpy.

The model is trained for a few seconds on synthetic "faces": class k is a
bright horizontal band at height k of 7. The bands survive histogram
equalisation and a horizontal flip, so the model must be fed correctly
quantised, equalised pixels to score well, and flip-TTA must not hurt it.
Its answers are soft on purpose (see ``_main``), so the output's
dequantisation matters too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["MODELS", "build", "metadata_for", "synthetic_faces", "write_metadata"]

REPO = Path(__file__).resolve().parent.parent

#: What the builder writes: file stem -> (input side, classes, int8?, trained?, softmax?).
MODELS = {
    "tiny_int8": (48, 7, True, True, True),
    "tiny_float": (48, 7, False, True, True),
    "wrong_shape_int8": (32, 7, True, False, True),
    "five_classes_int8": (48, 5, True, False, True),
    "logits_int8": (48, 7, True, False, False),
}
EVAL_FACES = "tiny_eval_faces.npy"  # (N, 48, 48) uint8, equalised
EVAL_LABELS = "tiny_eval_labels.npy"
FLOAT_PROBS = "tiny_float_probs.npy"  # the Keras model's own answers on EVAL_FACES


def synthetic_faces(n: int, seed: int, side: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """``n`` equalised uint8 faces (n, side, side) and their labels 0..6 (a bright band per class)."""
    from device.preprocess import face_pixels

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    faces = rng.integers(0, 150, (n, side, side)).astype(np.uint8)
    for face, label in zip(faces, labels):
        top, bottom = label * side // 7, (label + 1) * side // 7
        face[top:bottom] = rng.integers(170, 256, (bottom - top, side))
    if side == 48:
        faces = np.stack([face_pixels(face) for face in faces])
    return faces, labels


def metadata_for(model: Path, *, input_dtype: str, scale: float, zero_point: int, side: int = 48,
                 classes: int = 7, accuracy: float = 0.0) -> dict:
    """Metadata following the contract in models/<name>.json, describing ``model`` as it is."""
    data = model.read_bytes()
    return {
        "format": "moodbox-emotion-model/1",
        "name": model.stem,
        "version": "test-" + hashlib.sha256(data).hexdigest()[:7],
        "labels": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
        "input": {"shape": [1, side, side, 1], "dtype": input_dtype, "real_range": [0.0, 1.0],
                  "scale": scale, "zero_point": zero_point},
        "output": {"shape": [1, classes], "dtype": input_dtype},
        "preprocessing": {"equalize_hist": True, "crop_margin": 0.1, "face_size": 48, "color": "gray"},
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "min_runtime_version": "2.14.0",
        "params": 0,
        "macs": 0,
        "flip_tta": False,
        "zoom_tta": [],
        "data": {"source": "synthetic bands (tests/tiny_model.py)", "train": "synthetic", "tune": "none",
                 "report": "synthetic"},
        "accuracy": {"private_test": {"float": accuracy, "int8": accuracy, "int8_flip_tta": accuracy,
                                      "macro_f1_int8": accuracy},
                     "public_test": {"int8": accuracy}},
        "training": {"epochs": 3},
        "created": "2025-01-01T00:00:00+00:00",
    }


def write_metadata(model: Path, meta: dict) -> Path:
    path = model.with_suffix(".json")
    path.write_text(json.dumps(meta, indent=1))
    return path


def build(cache_root: Path, python: Path) -> Path:
    """The folder holding the built models, building them with ``python`` (TensorFlow) if not cached.

    The cache key is this file's own text, so editing the recipe rebuilds.
    """
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    done = cache_root / key
    if (done / "complete").exists():
        return done
    work = cache_root / f"{key}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(python), __file__, str(work)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"building the tiny model failed (rc {result.returncode}):\n{result.stderr[-4000:]}")
    (work / "complete").write_text(result.stdout)
    shutil.rmtree(done, ignore_errors=True)
    work.rename(done)
    for stale in cache_root.iterdir():  # builds of older recipes
        if stale != done and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return done


def _convert(model, representative: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        # Full-integer PTQ, the same recipe as the shipped model: int8 in, int8 out.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([representative[i : i + 1]] for i in range(len(representative)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def _main(out: Path) -> None:
    import keras
    import tensorflow as tf
    from keras import layers

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    faces, labels = synthetic_faces(1400, seed=1)
    x = faces[..., None].astype(np.float32) / 255.0
    eval_faces, eval_labels = synthetic_faces(140, seed=2)
    np.save(out / EVAL_FACES, eval_faces)
    np.save(out / EVAL_LABELS, eval_labels)

    def cnn(side: int, classes: int, softmax: bool = True):
        return keras.Sequential([
            keras.Input((side, side, 1)),
            layers.Conv2D(8, 3, strides=2, activation="relu"),
            layers.Conv2D(16, 3, strides=2, activation="relu"),
            layers.Flatten(),
            layers.Dense(classes, activation="softmax" if softmax else None),
        ])

    trained = cnn(48, 7)
    # Heavy label smoothing keeps the answers soft (top near 0.65), so a wrongly
    # dequantised output would show instead of hiding behind saturated 0/1 values.
    trained.compile(optimizer=keras.optimizers.Adam(3e-3),
                    loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.4))
    trained.fit(x, np.eye(7, dtype=np.float32)[labels], epochs=3, batch_size=32, verbose=0)
    float_probs = trained.predict(eval_faces[..., None].astype(np.float32) / 255.0, verbose=0)
    np.save(out / FLOAT_PROBS, float_probs)
    accuracy = float((float_probs.argmax(1) == eval_labels).mean())
    print(f"tiny model: float accuracy {accuracy:.3f} on {len(eval_labels)} synthetic faces")

    for stem, (side, classes, int8, is_trained, softmax) in MODELS.items():
        model = trained if is_trained else cnn(side, classes, softmax)
        representative = x[:200] if side == 48 else synthetic_faces(200, 3, side)[0][..., None] / np.float32(255)
        path = out / f"{stem}.tflite"
        path.write_bytes(_convert(model, representative.astype(np.float32) if int8 else None))
        interpreter = tf.lite.Interpreter(model_path=str(path))
        detail = interpreter.get_input_details()[0]
        scale, zero_point = detail["quantization"]
        meta = metadata_for(path, input_dtype=np.dtype(detail["dtype"]).name, scale=float(scale),
                            zero_point=int(zero_point), side=side, classes=classes, accuracy=accuracy)
        write_metadata(path, meta)


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
