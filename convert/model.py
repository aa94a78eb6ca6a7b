"""Keras architectures: the seed paper's CNN (the baseline) and Moodbox's own net."""

from __future__ import annotations

import keras
from keras import layers

from device.preprocess import EMOTIONS, FACE_SIZE

__all__ = ["ARCHITECTURES", "build", "count_macs"]


def paper_cnn() -> keras.Model:
    """The seed's CNN: 2.35 M parameters, 77 M MACs per face."""
    return keras.Sequential(
        [
            keras.Input((FACE_SIZE, FACE_SIZE, 1)),
            layers.Conv2D(32, 3, activation="relu"),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Conv2D(128, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(128, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(1024, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(len(EMOTIONS), activation="softmax"),
        ],
        name="paper",
    )


def moodnet(width: int = 32) -> keras.Model:
    """VGG-style stages of two 3x3 conv + BatchNorm + ReLU, widths w, 2w, 4w, 8w, then GAP.

    Plain convs quantise to int8 with almost no loss and run fast under XNNPACK;
    global average pooling keeps the head tiny, so most parameters sit in the
    deepest stage where the feature map is only 6x6. width=32: 1.18 M parameters.
    """
    inputs = keras.Input((FACE_SIZE, FACE_SIZE, 1))
    x = inputs
    for stage, filters in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
        if stage >= 2:
            x = layers.Dropout(0.1 * (stage - 1))(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(len(EMOTIONS), activation="softmax")(x)
    return keras.Model(inputs, outputs, name=f"moodnet{width}")


ARCHITECTURES = {"paper": paper_cnn, "moodnet": moodnet}


def build(arch: str, width: int = 32) -> keras.Model:
    if arch == "paper":
        return paper_cnn()
    if arch == "moodnet":
        return moodnet(width)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per face for the conv and dense layers."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            _, oh, ow, oc = layer.output.shape
            ic = layer.input.shape[-1]
            macs += kh * kw * ic * oh * ow * oc
        elif isinstance(layer, layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return int(macs)
