"""``python -m convert quantize``: a Keras checkpoint -> full-integer int8 TFLite (and a float twin).

Full-integer post-training quantisation with a representative set of Training
faces, preprocessed exactly as in training. Only builtin int8 kernels are
allowed, so the model runs in tflite-runtime 2.14 as well as ai-edge-litert:
weights-only ("dynamic range") quantisation would emit FULLY_CONNECTED v12,
which 2.14 refuses to load.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from convert.data import Split, default_data_dir, load_splits
from device.preprocess import CROP_MARGIN, EMOTIONS, FACE_SIZE, quantize_input

__all__ = [
    "QuantizedModel",
    "add_arguments",
    "convert_float",
    "convert_int8",
    "describe",
    "main",
    "min_runtime_version",
    "op_versions",
    "operator_name",
    "quantize",
    "representative_faces",
    "tflite_schema",
    "write_atomic",
    "write_json",
]

log = logging.getLogger(__name__)

#: The box feeds one face per invoke; a fixed batch keeps every tensor static.
INPUT_SHAPE = (1, FACE_SIZE, FACE_SIZE, 1)


@dataclass(frozen=True)
class QuantizedModel:
    """The two models ``quantize`` wrote, each with its contract metadata JSON beside it."""

    int8_path: Path
    float_path: Path
    int8_metadata: dict[str, Any]
    float_metadata: dict[str, Any]
    calibration_faces: int


def representative_faces(split: Split, count: int, seed: int = 0) -> np.ndarray:
    """``count`` Training faces drawn evenly over the classes, so rare ones are calibrated too."""
    rng = np.random.default_rng(seed)
    per_class = max(1, count // 7)
    picked = []
    for label in range(7):
        idx = np.flatnonzero(split.labels == label)
        picked.extend(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    rest = np.setdiff1d(np.arange(len(split)), picked)
    short = max(0, count - len(picked))
    picked.extend(rng.choice(rest, size=min(short, len(rest)), replace=False))
    return split.faces[np.sort(np.array(picked, dtype=np.int64))]


@contextmanager
def _converter(model) -> Iterator:
    """A converter for ``model`` exported with a fixed batch of one face."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="moodbox-export-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec(INPUT_SHAPE, tf.float32, name="face")])
        yield tf.lite.TFLiteConverter.from_saved_model(tmp)


def convert_float(model) -> bytes:
    """The float32 TFLite model (benchmarks and the float-vs-int8 comparison)."""
    with _converter(model) as converter:
        return converter.convert()


def convert_int8(model, faces: np.ndarray) -> bytes:
    """Full-integer int8 TFLite calibrated on equalised uint8 ``faces`` (N, 48, 48)."""
    import tensorflow as tf

    # The same real values the network was trained on: pixel / 255.
    real = quantize_input(faces, 0.0, 0, np.float32)

    def representative():
        for face in real:
            yield [face[np.newaxis]]

    with _converter(model) as converter:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return converter.convert()


def tflite_schema() -> ModuleType:
    """The TFLite flatbuffer schema from whichever runtime this environment has."""
    for name in ("ai_edge_litert.schema_py_generated", "tensorflow.lite.python.schema_py_generated"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("reading .tflite metadata needs ai-edge-litert or tensorflow")


def min_runtime_version(model_bytes: bytes) -> str:
    """The converter's ``min_runtime_version`` metadata entry (e.g. ``"2.3.0"``)."""
    schema = tflite_schema()
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"min_runtime_version":
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return bytes(data).split(b"\0", 1)[0].decode("ascii")
    raise ValueError("the model has no min_runtime_version metadata")


def operator_name(code) -> str:
    """The builtin operator name (``"CONV_2D"``) of a flatbuffer OperatorCode."""
    schema = tflite_schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    # Codes below 127 sit in the deprecated int8 field, newer ones only in the int32 field.
    op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    return names.get(op, str(op))


def op_versions(model_bytes: bytes) -> dict[str, int]:
    """Builtin operator name -> version, as a runtime checks them when it loads the model."""
    model = tflite_schema().Model.GetRootAsModel(model_bytes, 0)
    ops: dict[str, int] = {}
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        name = operator_name(code)
        ops[name] = max(ops.get(name, 0), code.Version())
    return ops


def describe(model_path: Path, name: str, params: int, macs: int) -> dict[str, Any]:
    """The metadata contract the box checks (``device.emotion``) for the .tflite at ``model_path``.

    ``ship`` adds the evaluation figures, data splits and training run to it.
    """
    from device.emotion import METADATA_FORMAT, load_runtime

    content = model_path.read_bytes()
    interpreter = load_runtime().interpreter(model_content=content)
    interpreter.allocate_tensors()
    sha = hashlib.sha256(content).hexdigest()
    created = datetime.now(timezone.utc)
    return {
        "format": METADATA_FORMAT,
        "name": name,
        "version": f"{created:%Y%m%d}-{sha[:8]}",
        "labels": list(EMOTIONS),
        "input": {**_tensor_spec(interpreter.get_input_details()[0]), "real_range": [0.0, 1.0]},
        "output": _tensor_spec(interpreter.get_output_details()[0]),
        "preprocessing": {"equalize_hist": True, "crop_margin": CROP_MARGIN, "face_size": FACE_SIZE, "color": "gray"},
        "sha256": sha,
        "size_bytes": len(content),
        "min_runtime_version": min_runtime_version(content),
        "ops": op_versions(content),
        "params": params,
        "macs": macs,
        "flip_tta": False,
        "zoom_tta": [],
        "created": created.isoformat(timespec="seconds"),
    }


def _tensor_spec(details: dict[str, Any]) -> dict[str, Any]:
    scale, zero_point = details["quantization"]
    return {"shape": [int(v) for v in details["shape"]], "dtype": np.dtype(details["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point)}


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())


def quantize(
    keras_path: Path, training: Split, out_dir: Path, name: str, samples: int = 500, seed: int = 0
) -> QuantizedModel:
    """Write ``<out_dir>/<name>.tflite`` (int8) and ``<name>_float.tflite``, each with its ``.json``."""
    import keras

    from convert.model import count_macs

    model = keras.models.load_model(keras_path, compile=False)
    params, macs = int(model.count_params()), count_macs(model)
    faces = representative_faces(training, samples, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    int8_path, float_path = out_dir / f"{name}.tflite", out_dir / f"{name}_float.tflite"
    log.info("calibrating %s on %d Training faces", keras_path, len(faces))
    write_atomic(int8_path, convert_int8(model, faces))
    write_atomic(float_path, convert_float(model))
    metas = []
    for path in (int8_path, float_path):
        meta = describe(path, model.name, params, macs)
        write_json(path.with_suffix(".json"), meta)
        metas.append(meta)
    return QuantizedModel(int8_path, float_path, metas[0], metas[1], len(faces))


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside, then rename: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="Keras checkpoint, e.g. runs/moodnet/best.keras")
    parser.add_argument("--data", default=str(default_data_dir() / "fer2013.csv.gz"),
                        help="training data for calibration: Kaggle CSV or image-folder root (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("build"), help="output folder (default: %(default)s)")
    parser.add_argument("--name", default="emotion_int8", help="file stem of the int8 model (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=500, help="calibration faces (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    training = load_splits(args.data)["Training"]
    result = quantize(args.model, training, args.out, args.name, args.samples)
    for path, meta in ((result.int8_path, result.int8_metadata), (result.float_path, result.float_metadata)):
        spec = meta["input"]
        print(f"{path}: {meta['size_bytes']:,} bytes, input {spec['dtype']} scale {spec['scale']:.6f} "
              f"zero-point {spec['zero_point']}, min runtime {meta['min_runtime_version']}")
    return 0
