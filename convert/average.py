"""``python -m convert average``: one model from the weights of a run's last epochs, averaged.

Late in a cosine schedule the epochs wander around a minimum; their mean sits
nearer its centre than any one of them (stochastic weight averaging). The
BatchNorm statistics of the averaged net are not the average of the epochs'
statistics, so they are measured again on Training faces, layer by layer. Which
epochs to average is decided on PublicTest, like everything else.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from convert.data import default_data_dir, load_splits
from convert.quantize import write_json
from convert.warmstart import channel_statistics, statistics_faces

__all__ = ["add_arguments", "average", "main"]


def average(paths: list[Path], faces: np.ndarray, out: Path) -> None:
    """Write the mean of the models at ``paths`` to ``out``, BatchNorm re-measured on ``faces`` (N, 48, 48, 1) in [0, 1]."""
    import keras

    if not paths:
        raise ValueError("no models to average")
    models = [keras.models.load_model(path, compile=False) for path in paths]
    names = {model.name for model in models}
    if len(names) > 1:
        raise ValueError(f"the models are of different architectures: {sorted(names)}")
    merged = models[-1]
    weights = [model.get_weights() for model in models]
    merged.set_weights([np.mean(layer, axis=0) for layer in zip(*weights)])
    # In order: each layer's input depends on the statistics of the ones before it.
    for norm in (layer for layer in merged.layers if isinstance(layer, keras.layers.BatchNormalization)):
        [(mean, var)] = channel_statistics(merged, [norm.input], faces)
        gamma, beta, _, _ = norm.get_weights()
        norm.set_weights([gamma, beta, mean, var])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.keras")
    merged.save(tmp)
    tmp.replace(out)
    # What ship records in the model's training summary.
    write_json(out.with_suffix(".json"), {"averaged": [path.name for path in paths], "batchnorm_faces": len(faces)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", type=Path, help=".keras models of one architecture, e.g. "
                                                             "runs/moodnet/epochs/epoch-3*.keras")
    parser.add_argument("--data", default=str(default_data_dir() / "fer2013.csv.gz"),
                        help="Training faces for the BatchNorm statistics (default: %(default)s)")
    parser.add_argument("--faces", type=int, default=4096, help="how many (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="the averaged .keras model")


def main(args: argparse.Namespace) -> int:
    faces = statistics_faces(load_splits(args.data)["Training"], args.faces, seed=0)
    average(args.models, faces, args.out)
    print(f"{args.out}: the mean of {len(args.models)} models, BatchNorm measured on {len(faces)} Training faces")
    return 0
