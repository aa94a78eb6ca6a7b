"""Starting weights for ``convert train --init``: a float ``.keras`` model or a shipped int8 ``.tflite``.

A box, or a checkout whose run folders are gone, often keeps only the shipped
``.tflite``. Its weights are still all there, int8 with a scale per output
channel, but the converter folded each BatchNorm into the convolution before
it: kernel * gamma / sigma, and a bias beta - mean * gamma / sigma. Unfolding
gives that convolution the dequantised folded kernel and sets its BatchNorm so
that it adds the folded bias and otherwise passes the convolution's output
through: exactly in inference mode, and in training mode up to how a batch's
statistics differ from those of the Training faces measured here. Training can
then go on from where the shipped model stopped, with a fresh schedule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert.data import Split
from convert.quantize import operator_name, tflite_schema

__all__ = ["channel_statistics", "load_initial_weights", "statistics_faces", "tflite_layers"]

#: Layer kind -> the TFLite builtin operator the converter turns it into.
_OPERATORS = {"Conv2D": "CONV_2D", "Dense": "FULLY_CONNECTED"}


def _dequantize(model, subgraph, index: int) -> np.ndarray:
    """The real values of a constant int8 (weights) or int32 (bias) tensor."""
    schema = tflite_schema()
    tensor = subgraph.Tensors(index)
    dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
             schema.TensorType.FLOAT32: np.float32}.get(tensor.Type())
    if dtype is None:
        raise ValueError(f"tensor {tensor.Name().decode()}: unexpected type {tensor.Type()}")
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
    values = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(tensor.ShapeAsNumpy()).astype(np.float32)
    quant = tensor.Quantization()
    if dtype is np.float32 or quant is None or quant.ScaleLength() == 0:
        return values
    shape = [1] * values.ndim
    shape[quant.QuantizedDimension()] = -1
    scale = quant.ScaleAsNumpy().reshape(shape)
    zero_point = quant.ZeroPointAsNumpy().reshape(shape) if quant.ZeroPointLength() else 0
    return (values - zero_point) * scale


def tflite_layers(model_bytes: bytes) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(operator, kernel, bias)`` of every convolution and dense layer, in graph order, in Keras layout."""
    model = tflite_schema().Model.GetRootAsModel(model_bytes, 0)
    subgraph = model.Subgraphs(0)
    layers = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        name = operator_name(model.OperatorCodes(op.OpcodeIndex()))
        if name not in _OPERATORS.values():
            continue
        _, weights, bias = op.InputsAsNumpy()[:3]
        kernel = _dequantize(model, subgraph, weights)
        # TFLite keeps output channels first: conv OHWI -> HWIO, dense (out, in) -> (in, out).
        kernel = kernel.transpose(1, 2, 3, 0) if name == "CONV_2D" else kernel.T
        layers.append((name, kernel, _dequantize(model, subgraph, bias)))
    return layers


def _unfold_tflite(model, path: Path, faces: np.ndarray) -> None:
    import keras

    weighted = [layer for layer in model.layers if type(layer).__name__ in _OPERATORS]
    found = tflite_layers(path.read_bytes())
    expected = [(_OPERATORS[type(layer).__name__], tuple(layer.kernel.shape)) for layer in weighted]
    shapes = [(name, kernel.shape) for name, kernel, _ in found]
    if shapes != expected:
        first = next((i for i, (a, b) in enumerate(zip(shapes, expected)) if a != b), min(len(shapes), len(expected)))
        have = shapes[first] if first < len(shapes) else "nothing"
        want = expected[first] if first < len(expected) else "nothing"
        raise ValueError(f"its layers do not fit {model.name}: weighted layer {first + 1} is {have}, "
                         f"{model.name} needs {want}")
    following = {id(a): b for a, b in zip(model.layers, model.layers[1:])}
    folded = []  # (BatchNormalization, folded bias, the conv layer whose output it normalises)
    for layer, (_, kernel, bias) in zip(weighted, found):
        after = following.get(id(layer))
        if isinstance(after, keras.layers.BatchNormalization) and not layer.use_bias:
            layer.kernel.assign(kernel)
            # Identity plus the bias for now; the statistics below make it identity in training mode too.
            ones, zeros = np.ones_like(bias), np.zeros_like(bias)
            after.set_weights([ones, bias, zeros, ones - after.epsilon])
            folded.append((after, bias, layer))
        else:
            layer.set_weights([kernel, bias])
    if not folded:
        return
    statistics = channel_statistics(model, [conv.output for _, _, conv in folded], faces)
    for (norm, bias, _), (mean, var) in zip(folded, statistics):
        # gamma * (y - mean) / sqrt(var + eps) + beta == y + bias, for these statistics.
        norm.set_weights([np.sqrt(var + norm.epsilon), mean + bias, mean, var])


def channel_statistics(model, tensors: list, faces: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and variance of each of ``model``'s inner ``tensors`` over ``faces``, in inference mode."""
    import keras

    probe = keras.Model(model.inputs, tensors)
    # Summed batch by batch: all eight conv outputs of 4,096 faces at once would take 4 GB.
    sums = [np.zeros((2, tensor.shape[-1])) for tensor in tensors]
    for start in range(0, len(faces), 256):
        outputs = probe(faces[start:start + 256], training=False)
        for total, output in zip(sums, outputs if len(tensors) > 1 else [outputs]):
            values = np.asarray(output, dtype=np.float64).reshape(-1, total.shape[1])
            total += (values.sum(axis=0), np.square(values).sum(axis=0))
    statistics = []
    for tensor, (total, square) in zip(tensors, sums):
        count = len(faces) * int(np.prod(tensor.shape[1:-1]))
        mean = total / count
        statistics.append((mean.astype(np.float32), np.maximum(square / count - np.square(mean), 0.0).astype(np.float32)))
    return statistics


def statistics_faces(split: Split, count: int, seed: int) -> np.ndarray:
    """``count`` faces of ``split`` drawn at random, as (N, 48, 48, 1) floats in [0, 1]: what BatchNorm is measured on."""
    picked = np.random.default_rng(seed).choice(len(split), min(count, len(split)), replace=False)
    return split.faces[np.sort(picked)][..., None] / np.float32(255)


def load_initial_weights(model, path: Path, faces: np.ndarray) -> None:
    """Copy the weights of the model at ``path`` into ``model``; a different architecture is refused.

    ``faces`` (N, 48, 48, 1) float in [0, 1], Training faces: the statistics that
    unfolding a ``.tflite`` sets its BatchNorm layers from.
    """
    import keras

    if not path.exists():
        raise SystemExit(f"--init {path}: no such file")
    try:
        if path.suffix == ".tflite":
            _unfold_tflite(model, path, faces)
            source = "the int8 model, unfolded"
        else:
            loaded = keras.models.load_model(path, compile=False)
            source = loaded.name
            try:
                model.set_weights(loaded.get_weights())
            except ValueError as exc:
                raise ValueError(f"{loaded.name} does not fit {model.name}: {exc}") from None
    except ValueError as exc:
        raise SystemExit(f"--init {path}: {exc} (check --arch and --width)") from None
    print(f"starting from the weights of {path} ({source})", flush=True)
