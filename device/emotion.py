"""The emotion classifier: one TFLite interpreter, checked against its metadata before use.

A model is only ever served after it passed every check: its bytes hash to the
sha256 in the metadata JSON beside it, its labels are FER2013's order, its
input is one 48x48 grayscale face whose real value is pixel/255, its output is
7 probabilities, and a test inference gives a probability distribution. The
interpreter is created once per model, never per frame; ``reload`` builds and
checks the new one on the side and swaps only when it passed, so a bad model
never replaces a good one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device.events import Box, ModelLoaded
from device.preprocess import (
    CROP_MARGIN,
    EMOTIONS,
    FACE_SIZE,
    crop_square,
    face_pixels,
    quantize_input,
    tta_views,
)

if TYPE_CHECKING:
    from device.config import Config

__all__ = [
    "INPUT_SHAPE",
    "METADATA_FORMAT",
    "EmotionClassifier",
    "ModelError",
    "ModelInfo",
    "Runtime",
    "load_runtime",
    "metadata_path",
]

log = logging.getLogger(__name__)

METADATA_FORMAT = "moodbox-emotion-model/1"
INPUT_SHAPE = (1, FACE_SIZE, FACE_SIZE, 1)
_DTYPES = ("int8", "uint8", "float32")
#: A softmax output quantised to int8 sums to 1 within 7 half-steps of 1/256.
_SUM_TOLERANCE = 0.05


class ModelError(Exception):
    """A model was refused; the message names the file, the check and what was expected vs found."""


@dataclass(frozen=True)
class Runtime:
    """The TFLite interpreter implementation in use."""

    name: str  # "ai_edge_litert", "tflite_runtime" or "tensorflow"
    version: str
    interpreter: Callable[..., Any]  # Interpreter(model_content=..., num_threads=...)

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def load_runtime() -> Runtime:
    """LiteRT when importable, else tflite-runtime (numpy 1.x stacks), else full TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return Runtime("ai_edge_litert", _dist_version("ai-edge-litert"), Interpreter)
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return Runtime("tflite_runtime", _dist_version("tflite-runtime"), Interpreter)
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelError(
            "no TFLite runtime installed: install ai-edge-litert (numpy 2) or tflite-runtime 2.14 (numpy 1.26)"
        ) from None
    return Runtime("tensorflow", tf.__version__, tf.lite.Interpreter)


def metadata_path(model: str | Path) -> Path:
    """The metadata JSON that must sit beside ``model``: same stem, ``.json``."""
    return Path(model).with_suffix(".json")


@dataclass(frozen=True)
class ModelInfo:
    """What the box tells the world about the model it serves (ModelLoaded, stats, MQTT)."""

    path: str
    name: str
    version: str
    sha256: str
    size_bytes: int
    input_dtype: str
    accuracy: float | None  # PrivateTest accuracy from the metadata, int8, with this box's TTA where measured
    runtime: str  # e.g. "ai_edge_litert 2.3.0"
    flip_tta: bool  # whether this box averages with the mirrored face
    zoom_tta: tuple[float, ...]  # the zooms of the face it also averages over

    def loaded_event(self) -> ModelLoaded:
        return ModelLoaded(path=self.path, version=self.version, sha256=self.sha256, accuracy=self.accuracy)


@dataclass(frozen=True)
class _Model:
    """One checked model and its interpreter; replaced whole, never mutated."""

    info: ModelInfo
    interpreter: Any
    content: bytes  # kept alive for the interpreter, which may read from the buffer
    input_index: int
    input_dtype: np.dtype
    input_scale: float
    input_zero_point: int
    output_index: int
    output_scale: float
    output_zero_point: int


def _refuse(path: Path, problem: str) -> ModelError:
    return ModelError(f"model {path} refused: {problem}")


def _read_metadata(path: Path) -> dict[str, Any]:
    meta_file = metadata_path(path)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _refuse(path, f"metadata {meta_file.name} not found beside it (every model needs its JSON)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"metadata {meta_file.name} unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise _refuse(path, f"metadata {meta_file.name} is not a JSON object")
    if meta.get("format") != METADATA_FORMAT:
        raise _refuse(path, f"metadata format expected {METADATA_FORMAT!r}, found {meta.get('format')!r}")
    return meta


def _field(path: Path, meta: dict[str, Any], *keys: str) -> Any:
    value: Any = meta
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise _refuse(path, f"metadata lacks '{'.'.join(keys[: depth + 1])}'")
        value = value[key]
    return value


def _check_metadata(path: Path, meta: dict[str, Any], content: bytes) -> None:
    """Everything that can be checked before the bytes reach an interpreter."""
    expected_sha = str(_field(path, meta, "sha256")).lower()
    found_sha = hashlib.sha256(content).hexdigest()
    if found_sha != expected_sha:
        raise _refuse(path, f"sha256 mismatch: metadata says {expected_sha}, file is {found_sha} "
                            f"({len(content)} bytes); the file is damaged or the JSON belongs to another model")
    labels = _field(path, meta, "labels")
    if list(labels) != list(EMOTIONS):
        raise _refuse(path, f"labels expected {list(EMOTIONS)} (FER2013 order), found {labels}")
    shape = _field(path, meta, "input", "shape")
    if list(shape) != list(INPUT_SHAPE):
        raise _refuse(path, f"metadata input shape expected {list(INPUT_SHAPE)}, found {shape}")
    dtype = _field(path, meta, "input", "dtype")
    if dtype not in _DTYPES:
        raise _refuse(path, f"metadata input dtype expected one of {list(_DTYPES)}, found {dtype!r}")
    real_range = meta["input"].get("real_range", [0.0, 1.0])
    if [float(v) for v in real_range] != [0.0, 1.0]:
        raise _refuse(path, f"input real_range expected [0.0, 1.0] (pixel/255), found {real_range}")
    prep = _field(path, meta, "preprocessing")
    # The box always equalises 48x48 grayscale crops (device.preprocess); a model
    # trained on anything else would silently see the wrong pixels.
    wanted = {"equalize_hist": True, "face_size": FACE_SIZE, "color": "gray"}
    for key, value in wanted.items():
        if prep.get(key) != value:
            raise _refuse(path, f"preprocessing.{key} expected {value!r}, found {prep.get(key)!r}")


def _check_tensors(path: Path, meta: dict[str, Any], interpreter: Any) -> tuple[dict, dict]:
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise _refuse(path, f"expected 1 input and 1 output tensor, found {len(inputs)} and {len(outputs)}")
    inp, out = inputs[0], outputs[0]
    shape = tuple(int(v) for v in inp["shape"])
    if shape != INPUT_SHAPE:
        raise _refuse(path, f"input shape expected {INPUT_SHAPE}, model has {shape}")
    dtype = np.dtype(inp["dtype"]).name
    if dtype != meta["input"]["dtype"]:
        raise _refuse(path, f"input dtype: metadata says {meta['input']['dtype']}, model has {dtype}")
    scale, zero_point = inp["quantization"]
    if dtype != "float32":
        if scale <= 0:
            raise _refuse(path, f"{dtype} input without quantisation parameters (scale {scale})")
        meta_zp = meta["input"].get("zero_point", zero_point)
        meta_scale = meta["input"].get("scale", scale)
        if int(meta_zp) != int(zero_point) or abs(float(meta_scale) - scale) > 0.01 * scale:
            raise _refuse(path, f"input quantisation: metadata says scale {meta_scale}, zero-point {meta_zp}; "
                                f"model has scale {scale}, zero-point {zero_point}")
    values = int(np.prod(out["shape"]))
    if values != len(EMOTIONS):
        raise _refuse(path, f"output expected {len(EMOTIONS)} values, model has {values} "
                            f"(shape {[int(v) for v in out['shape']]})")
    out_dtype = np.dtype(out["dtype"]).name
    if out_dtype not in _DTYPES:
        raise _refuse(path, f"output dtype expected one of {list(_DTYPES)}, model has {out_dtype}")
    return inp, out


def _accuracy(meta: dict[str, Any], flip_tta: bool, zoom_tta: tuple[float, ...]) -> float | None:
    """The metadata's PrivateTest figure for the views this box averages, else the plain int8 one."""
    accuracy = meta.get("accuracy")
    private = accuracy.get("private_test") if isinstance(accuracy, dict) else None
    if not isinstance(private, dict):
        return None
    if zoom_tta:
        measured = flip_tta and tuple(meta.get("zoom_tta") or ()) == zoom_tta
        value = private.get("int8_zoom_tta") if measured else None
    else:
        value = private.get("int8_flip_tta") if flip_tta else None
    value = private.get("int8") if value is None else value
    return float(value) if isinstance(value, (int, float)) else None


@contextmanager
def _malformed_metadata(path: Path) -> Iterator[None]:
    """Metadata with the right keys but wrong kinds of values is refused, not a crash."""
    try:
        yield
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise _refuse(path, f"metadata malformed: {exc!r}") from None


def _probe_face() -> np.ndarray:
    """A deterministic face-like test input: a radial gradient, equalised like any crop."""
    yy, xx = np.mgrid[0:FACE_SIZE, 0:FACE_SIZE]
    radius = np.hypot(yy - FACE_SIZE / 2, xx - FACE_SIZE / 2)
    return face_pixels((255 - radius * (255 / radius.max())).astype(np.uint8))


def _load(path: Path, runtime: Runtime, threads: int, flip_tta: bool, zoom_tta: tuple[float, ...]) -> _Model:
    """Read, check, load and test one model; raises ModelError naming the first failed check."""
    meta = _read_metadata(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise _refuse(path, f"cannot read it: {exc.strerror or exc}") from None
    # Hash before the interpreter sees the bytes: a damaged flatbuffer can crash it.
    with _malformed_metadata(path):
        _check_metadata(path, meta, content)
    try:
        interpreter = runtime.interpreter(model_content=content, num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise _refuse(path, f"{runtime} cannot load it: {exc}") from None
    with _malformed_metadata(path):
        inp, out = _check_tensors(path, meta, interpreter)
    out_scale, out_zero_point = out["quantization"]
    info = ModelInfo(
        path=str(path),
        name=str(meta.get("name", path.stem)),
        version=str(meta.get("version", "unknown")),
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        input_dtype=np.dtype(inp["dtype"]).name,
        accuracy=_accuracy(meta, flip_tta, zoom_tta),
        runtime=str(runtime),
        flip_tta=flip_tta,
        zoom_tta=zoom_tta,
    )
    model = _Model(
        info=info,
        interpreter=interpreter,
        content=content,
        input_index=int(inp["index"]),
        input_dtype=np.dtype(inp["dtype"]),
        input_scale=float(inp["quantization"][0]),
        input_zero_point=int(inp["quantization"][1]),
        output_index=int(out["index"]),
        output_scale=float(out_scale),
        output_zero_point=int(out_zero_point),
    )
    try:
        raw = _invoke(model, _probe_face()[np.newaxis])[0]
    except (ValueError, RuntimeError) as exc:
        raise _refuse(path, f"test inference failed on {runtime}: {exc}") from None
    total = float(raw.sum())
    if not np.all(np.isfinite(raw)) or raw.min() < -1e-6 or abs(total - 1.0) > _SUM_TOLERANCE:
        raise _refuse(path, f"output is not a probability distribution (sum {total:.3f}, min {raw.min():.3f}); "
                            "the model must end in softmax")
    if meta.get("flip_tta") and not flip_tta:
        log.info("model %s was evaluated with flip-TTA; [model] flip_tta = true would match its figures", path.name)
    if meta.get("zoom_tta") and tuple(meta["zoom_tta"]) != zoom_tta:
        log.info("model %s was evaluated with zooms %s; [model] zoom_tta = %s would match its figures",
                 path.name, meta["zoom_tta"], list(meta["zoom_tta"]))
    return model


def _invoke(model: _Model, faces: np.ndarray) -> np.ndarray:
    """Equalised uint8 faces (N, 48, 48) -> dequantised model outputs (N, 7), not renormalised."""
    batch = quantize_input(faces, model.input_scale, model.input_zero_point, model.input_dtype)
    raw = np.empty((len(faces), len(EMOTIONS)), dtype=np.float64)
    for i in range(len(faces)):
        model.interpreter.set_tensor(model.input_index, batch[i : i + 1])
        model.interpreter.invoke()
        raw[i] = model.interpreter.get_tensor(model.output_index).reshape(-1)
    if model.output_scale > 0:
        raw = (raw - model.output_zero_point) * model.output_scale
    return raw


def _normalise(raw: np.ndarray) -> np.ndarray:
    probs = np.clip(raw, 0.0, None)
    totals = probs.sum(axis=1, keepdims=True)
    # An all-zero row cannot come from a softmax; it gets no opinion rather than a NaN.
    return np.where(totals > 0, probs / np.where(totals > 0, totals, 1.0), 1.0 / probs.shape[1])


def _tta_text(flip: bool, zooms: tuple[float, ...]) -> str:
    parts = (["flip"] if flip else []) + [f"zoom {z:g}" for z in zooms]
    return f", TTA {' + '.join(parts)}" if parts else ""


class EmotionClassifier:
    """Faces -> 7 FER2013 probabilities, through one checked model that can be swapped at run time.

    Thread-safe: one lock serialises inference (a TFLite interpreter is not
    re-entrant) and the swap in ``reload``; checking a new model happens
    outside the lock, so classification goes on meanwhile.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 1,
        flip_tta: bool = False,
        zoom_tta: tuple[float, ...] = (),
        crop_margin: float = CROP_MARGIN,
        runtime: Runtime | None = None,
    ) -> None:
        self._runtime = runtime or load_runtime()
        self._threads = threads
        self._flip_tta = flip_tta
        self._zoom_tta = tuple(zoom_tta)
        self._crop_margin = crop_margin
        self._lock = threading.Lock()
        self._model = _load(Path(path), self._runtime, threads, flip_tta, self._zoom_tta)
        self._log_loaded("loaded")

    @classmethod
    def from_config(cls, config: Config, runtime: Runtime | None = None) -> EmotionClassifier:
        return cls(
            config.resolve(config.model.path),
            threads=config.model.threads,
            flip_tta=config.model.flip_tta,
            zoom_tta=tuple(config.model.zoom_tta),
            crop_margin=config.detector.crop_margin,
            runtime=runtime,
        )

    @property
    def info(self) -> ModelInfo:
        return self._model.info

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def flip_tta(self) -> bool:
        return self._flip_tta

    @property
    def zoom_tta(self) -> tuple[float, ...]:
        return self._zoom_tta

    def classify(self, gray: np.ndarray, box: Box) -> tuple[float, ...]:
        """The face at ``box`` (x, y, w, h) in a grayscale frame -> 7 probabilities summing to 1."""
        x, y, w, h = box
        height, width = gray.shape[:2]
        # crop_square pads a box that is partly outside, but one wholly outside has
        # nothing to pad from and would come back as an arbitrary image.
        if w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise ValueError(f"face box {box} lies outside the {width}x{height} frame")
        face = face_pixels(crop_square(gray, box, self._crop_margin))
        return tuple(float(p) for p in self.classify_faces(face[np.newaxis])[0])

    def classify_faces(
        self, faces: np.ndarray, flip_tta: bool | None = None, zoom_tta: tuple[float, ...] | None = None
    ) -> np.ndarray:
        """Preprocessed faces (N, 48, 48) uint8, as ``face_pixels`` makes them -> probabilities (N, 7).

        With test-time augmentation the result is the mean of the views'
        distributions (``tta_views``). ``flip_tta`` and ``zoom_tta`` override the
        configured ones, so an evaluation or a benchmark can measure each.
        """
        faces = np.asarray(faces)
        if faces.ndim != 3 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE) or faces.dtype != np.uint8:
            raise ValueError(f"expected uint8 faces of shape (N, {FACE_SIZE}, {FACE_SIZE}), "
                             f"got {faces.dtype} {faces.shape}")
        flip = self._flip_tta if flip_tta is None else flip_tta
        zooms = self._zoom_tta if zoom_tta is None else tuple(zoom_tta)
        views = tta_views(faces, flip, zooms)
        with self._lock:
            total = sum(_normalise(_invoke(self._model, view)) for view in views)
        return _normalise(total) if len(views) > 1 else total

    def reload(self, path: str | Path | None = None) -> ModelInfo:
        """Check the model at ``path`` (default: the current path again) fully, then swap it in.

        Raises ModelError if any check fails; the model already loaded keeps serving.
        """
        target = Path(path) if path is not None else Path(self._model.info.path)
        model = _load(target, self._runtime, self._threads, self._flip_tta, self._zoom_tta)
        with self._lock:
            self._model = model
        self._log_loaded("reloaded")
        return model.info

    def _log_loaded(self, verb: str) -> None:
        info = self._model.info
        accuracy = f"{info.accuracy:.1%}" if info.accuracy is not None else "n/a"
        log.info("%s model %s version %s (sha256 %s, %s input, PrivateTest %s) on %s, %d thread(s)%s",
                 verb, info.name, info.version, info.sha256[:12], info.input_dtype, accuracy, info.runtime,
                 self._threads, _tta_text(self._flip_tta, self._zoom_tta))
