"""``python -m convert evaluate``: score a .tflite or .keras model on FER2013 splits.

Accuracy, macro-F1, per-class precision/recall and the confusion matrix, with
and without test-time augmentation (the mirrored face, then zooms of the face
and their mirrors, as the box does it), on PublicTest and
PrivateTest of the training CSV and, when present, on the same faces with
their original (unequalised) pixels. A .tflite model (with its metadata JSON
beside it) runs through the box's own ``EmotionClassifier`` in whichever TFLite
runtime this environment has, so it needs no TensorFlow; a .keras model does.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from convert.data import Split, default_data_dir, load_csv, load_folder
from device.preprocess import EMOTIONS, FACE_SIZE, quantize_input, tta_views

__all__ = [
    "ORIGINAL_TEST_NAME",
    "SPLIT_KEYS",
    "VARIANTS",
    "Metrics",
    "Predictor",
    "add_arguments",
    "add_data_arguments",
    "add_zoom_argument",
    "eval_splits",
    "evaluate",
    "evaluate_split",
    "figure_key",
    "keras_predictor",
    "load_eval_splits",
    "main",
    "ms_per_face",
    "original_path",
    "plot_confusion",
    "plot_history",
    "predictor_for",
    "report_json",
    "score",
    "sha256_file",
    "tflite_predictor",
    "write_artifacts",
    "write_confusion_csv",
]

log = logging.getLogger(__name__)

#: Report keys for the FER2013 usages; "_original" marks the unequalised copy.
SPLIT_KEYS = {"PublicTest": "public_test", "PrivateTest": "private_test"}
#: The original-pixel test CSV that sits beside the training CSV in ../shared.
ORIGINAL_TEST_NAME = "fer2013_original_test.csv.gz"
#: Result variant -> the words for it in titles: no TTA, the mirror, the mirror and the zooms.
VARIANTS = {"plain": "", "flip_tta": "flip-TTA", "zoom_tta": "flip + zoom TTA"}


def figure_key(kind: str, variant: str) -> str:
    """The metadata key of one figure of a variant: ``int8``, ``int8_flip_tta``, ``macro_f1_float_zoom_tta``."""
    return kind if variant == "plain" else f"{kind}_{variant}"


@dataclass(frozen=True)
class Predictor:
    """Equalised uint8 faces (N, 48, 48) -> class probabilities (N, 7)."""

    predict: Callable[[np.ndarray], np.ndarray]
    runtime: str  # e.g. "ai-edge-litert 2.3.0"


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    macro_f1: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted class

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": {
                name: {"precision": p, "recall": r, "f1": f, "support": s}
                for name, p, r, f, s in zip(EMOTIONS, self.precision, self.recall, self.f1, self.support)
            },
            "confusion": [list(row) for row in self.confusion],
        }


def score(labels: np.ndarray, predicted: np.ndarray) -> Metrics:
    """Metrics of ``predicted`` class indices against true ``labels`` (FER2013 order)."""
    n = len(EMOTIONS)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    hits = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(hits / confusion.sum(axis=0))
        recall = np.nan_to_num(hits / confusion.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return Metrics(
        accuracy=float(hits.sum() / max(1, confusion.sum())),
        macro_f1=float(f1.mean()),
        precision=tuple(float(v) for v in precision),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
        support=tuple(int(v) for v in confusion.sum(axis=1)),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
    )


def tflite_predictor(model: str | Path, threads: int = 1) -> Predictor:
    """The box's own classifier: its metadata checks, input quantisation and dequantisation."""
    from device.emotion import EmotionClassifier

    classifier = EmotionClassifier(model, threads=threads)
    return Predictor(lambda faces: classifier.classify_faces(faces, flip_tta=False, zoom_tta=()),
                     str(classifier.runtime))


def keras_predictor(model: str | Path) -> Predictor:
    """The float Keras model, batched (needs TensorFlow)."""
    import keras

    net = keras.models.load_model(model, compile=False)

    def predict(faces: np.ndarray) -> np.ndarray:
        real = quantize_input(faces, 0.0, 0, np.float32)
        return np.asarray(net.predict(real, batch_size=256, verbose=0), dtype=np.float32)

    return Predictor(predict, f"keras {keras.__version__}")


def predictor_for(model: str | Path, threads: int = 1) -> Predictor:
    suffix = Path(model).suffix
    if suffix == ".tflite":
        return tflite_predictor(model, threads)
    if suffix == ".keras":
        return keras_predictor(model)
    raise ValueError(f"{model}: expected a .tflite or .keras model")


def evaluate_split(
    predictor: Predictor, split: Split, flip_tta: bool, zoom_tta: tuple[float, ...] = ()
) -> dict[str, Any]:
    """``plain`` metrics; with ``flip_tta`` the mirrored-and-averaged ones; with ``zoom_tta`` also
    those averaged over the zooms (and their mirrors, with ``flip_tta``), as the box would."""
    views = [predictor.predict(view) for view in tta_views(split.faces, flip_tta, zoom_tta)]
    # The box averages the views' normalised distributions; their sum has the same argmax,
    # and each smaller set of views is a prefix of the larger one, so no pass runs twice.
    result: dict[str, Any] = {"faces": len(split), "plain": score(split.labels, views[0].argmax(axis=1))}
    if flip_tta:
        result["flip_tta"] = score(split.labels, (views[0] + views[1]).argmax(axis=1))
    if zoom_tta:
        result["zoom_tta"] = score(split.labels, sum(views).argmax(axis=1))
    return result


def eval_splits(
    source: str, loaded: dict[str, Split], original: str | Path | None = None
) -> dict[str, tuple[str, Split]]:
    """Report key -> (source file name, split) for PublicTest and PrivateTest, plus the original pixels."""
    splits = {SPLIT_KEYS[u]: (source, loaded[u]) for u in SPLIT_KEYS if u in loaded and len(loaded[u])}
    if original:
        original = Path(original)
        for usage, split in load_csv(original, tuple(SPLIT_KEYS)).items():
            if len(split):
                splits[f"{SPLIT_KEYS[usage]}_original"] = (original.name, split)
    if not splits:
        raise ValueError(f"{source}: no PublicTest or PrivateTest faces to evaluate on")
    return splits


def load_eval_splits(data: str | Path, original: str | Path | None) -> dict[str, tuple[str, Split]]:
    """``eval_splits`` of the CSV or image folder at ``data``."""
    data = Path(data)
    loaded = load_folder(data) if data.is_dir() else load_csv(data, tuple(SPLIT_KEYS))
    return eval_splits(data.name, loaded, original)


def ms_per_face(model: str | Path, threads: int = 1, runs: int = 200, flip_tta: bool = False,
                zoom_tta: tuple[float, ...] = ()) -> dict[str, Any]:
    """Median and 90th-percentile time of the box's classifier on one face, after a warm-up,
    with the given test-time augmentation (default: one pass)."""
    from device.emotion import EmotionClassifier

    classifier = EmotionClassifier(model, threads=threads, flip_tta=flip_tta, zoom_tta=zoom_tta)
    face = np.random.default_rng(0).integers(0, 256, (1, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    for _ in range(20):
        classifier.classify_faces(face)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        classifier.classify_faces(face)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"runtime": str(classifier.runtime), "threads": threads, "ms_median": float(np.median(times)),
            "ms_p90": float(np.percentile(times, 90)), "runs": runs,
            "views": len(tta_views(face, flip_tta, zoom_tta))}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_confusion_csv(metrics: Metrics, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *EMOTIONS])
        for name, row in zip(EMOTIONS, metrics.confusion):
            writer.writerow([name, *row])


def plot_confusion(metrics: Metrics, path: Path, title: str) -> None:
    """Row-normalised confusion matrix (recall on the diagonal), counts in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array(metrics.confusion)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), rate in np.ndenumerate(rates):
        ax.text(j, i, f"{rate:.2f}\n{counts[i, j]}", ha="center", va="center", fontsize=7,
                color="white" if rate > 0.5 else "black")
    ax.set_title(f"{title}\naccuracy {metrics.accuracy:.1%}, macro-F1 {metrics.macro_f1:.3f}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_history(state_path: Path, path: Path) -> None:
    """Loss and accuracy per epoch from a run's ``state.json``, best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    state = json.loads(Path(state_path).read_text())
    history = state["history"]
    if not history:
        raise ValueError(f"{state_path}: no epochs recorded yet")
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, key, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, [h.get(key) for h in history], ".-", label=f"Training {label} (augmented)")
        ax.plot(epochs, [h.get(f"val_{key}") for h in history], ".-", label=f"PublicTest {label}")
        ax.axvline(state.get("best_epoch", 0), color="grey", linestyle=":", label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    config = state.get("config", {})
    fig.suptitle(f"{config.get('arch', '?')} width {config.get('width', '?')}: "
                 f"best PublicTest {state.get('best_val_accuracy', float('nan')):.1%} "
                 f"at epoch {state.get('best_epoch', '?')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate(
    model: str | Path,
    splits: dict[str, tuple[str, Split]],
    flip_tta: bool = True,
    threads: int = 1,
    zoom_tta: tuple[float, ...] = (),
) -> dict[str, Any]:
    """The report of ``model`` on each split; ``report_json`` makes it plain JSON."""
    predictor = predictor_for(model, threads)
    results = {}
    for key, (source, split) in splits.items():
        started = time.perf_counter()
        result = evaluate_split(predictor, split, flip_tta, zoom_tta)
        log.info("%s on %s: %s (%.0f s)", Path(model).name, key, _accuracies(result), time.perf_counter() - started)
        results[key] = {"source": source, **result}
    return {
        "model": str(model),
        "sha256": sha256_file(model),
        "runtime": predictor.runtime,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }


def _accuracies(result: dict[str, Any]) -> str:
    return ", ".join(f"{VARIANTS[v] or 'accuracy'} {result[v].accuracy:.4f}" for v in VARIANTS if v in result)


def report_json(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with every Metrics turned into plain JSON."""
    def convert(value: Any) -> Any:
        if isinstance(value, Metrics):
            return value.to_json()
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(report)


def write_artifacts(report: dict[str, Any], out_dir: Path, keys: Iterable[str] | None = None,
                    plot_keys: Iterable[str] | None = None, prefix: str = "") -> list[Path]:
    """Confusion matrix CSVs of ``keys`` (default all) in ``report``, PNGs of ``plot_keys`` (default the same).

    Returns the files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(report["results"] if keys is None else keys)
    plot_keys = set(keys if plot_keys is None else plot_keys)
    written = []
    for key in keys:
        result = report["results"][key]
        for variant, words in VARIANTS.items():
            if variant not in result:
                continue
            stem = figure_key(f"{prefix}confusion_{key}", variant)
            write_confusion_csv(result[variant], out_dir / f"{stem}.csv")
            written.append(out_dir / f"{stem}.csv")
            if key in plot_keys:
                title = f"{Path(report['model']).name} on {key}" + (f" ({words})" if words else "")
                plot_confusion(result[variant], out_dir / f"{stem}.png", title)
                written.append(out_dir / f"{stem}.png")
    return written


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data`` and ``--original``, shared with ``ship``; ``original_path`` resolves the latter."""
    parser.add_argument("--data", type=Path, default=default_data_dir() / "fer2013.csv.gz",
                        help="Kaggle CSV or image-folder root (default: %(default)s)")
    parser.add_argument("--original", default=None,
                        help=f"original-pixel test CSV (default: {ORIGINAL_TEST_NAME} beside --data if present; "
                             "'' to skip)")


def add_zoom_argument(parser: argparse.ArgumentParser) -> None:
    """``--zoom-tta``, shared with ``ship``."""
    parser.add_argument("--zoom-tta", type=float, nargs="*", default=[], metavar="FACTOR",
                        help="also evaluate averaged over the face zoomed by these factors and, with flip-TTA, "
                             "their mirrors (the box's [model] zoom_tta), e.g. --zoom-tta 0.93")


def original_path(args: argparse.Namespace) -> Path | None:
    if args.original is None:
        candidate = args.data.parent / ORIGINAL_TEST_NAME
        return candidate if candidate.exists() else None
    return Path(args.original) if args.original else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help=".tflite or .keras model")
    add_data_arguments(parser)
    parser.add_argument("--no-flip-tta", dest="flip_tta", action="store_false",
                        help="skip the horizontal-flip test-time augmentation pass")
    add_zoom_argument(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for report.json and confusion matrices (default: print only)")
    parser.add_argument("--run", type=Path, default=None, help="run folder whose state.json to plot as curves")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default: %(default)s)")
    parser.add_argument("--no-timing", dest="timing", action="store_false", help="skip the ms-per-face benchmark")


def main(args: argparse.Namespace) -> int:
    zooms = tuple(args.zoom_tta)
    report = evaluate(args.model, load_eval_splits(args.data, original_path(args)), args.flip_tta, args.threads,
                      zooms)
    if args.timing and args.model.suffix == ".tflite":
        report["speed"] = ms_per_face(args.model, args.threads)
    for key, result in report["results"].items():
        print(f"{key:>24}: {_accuracies(result)}  macro-F1 {result['plain'].macro_f1:.4f}")
    if "speed" in report:
        print(f"{report['speed']['ms_median']:.2f} ms/face ({report['speed']['runtime']}, "
              f"{report['speed']['threads']} thread)")
    if args.out:
        plots = _has_matplotlib()
        if not plots:
            log.warning("matplotlib is not installed here: writing confusion CSVs without PNGs")
        written = write_artifacts(report, args.out, plot_keys=None if plots else ())
        if args.run and plots:
            plot_history(args.run / "state.json", args.out / "curves.png")
            written.append(args.out / "curves.png")
        (args.out / "report.json").write_text(json.dumps(report_json(report), indent=1) + "\n")
        print(f"wrote {args.out / 'report.json'} and {len(written)} confusion/curve files")
    return 0
