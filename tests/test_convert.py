"""convert/: loaders, metrics, the train -> quantize -> ship chain, flash, and the shipped model.

The chain runs for real in ``.venv-convert`` (TensorFlow) on a generated CSV of
a few hundred synthetic faces; its int8 model is then loaded in this
environment's ai-edge-litert and, when present, in tflite-runtime 2.14
(``.venv-tflite``). Flash installs that model into temporary "boxes": a local
folder, a box reached through a fake ssh/scp runner that executes the remote
script here, and a real mosquitto broker with a stand-in daemon answering
``reload_model`` as the MQTT contract (device/topics.py) says.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import CONVERT_VENV, REPO, TFLITE_VENV, fer2013_dir, venv_python
from convert import evaluate as ev
from convert import flash as fl
from convert.data import Split, folder_label, load_csv, load_folder
from convert.quantize import min_runtime_version, op_versions, representative_faces
from convert.ship import ACCURACY_BAR, headline_variant
from device.preprocess import EMOTIONS, face_pixels

SHIPPED = REPO / "models" / "emotion_int8.tflite"
BAR = ACCURACY_BAR
#: tflite-runtime 2.14 knows FULLY_CONNECTED up to v11; weights-only quantisation would emit v12.
TFLITE_214 = (2, 14, 0)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


# -- synthetic data --------------------------------------------------------------------------------


def synthetic_raw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` raw (unequalised) 48x48 faces whose class k is a bright band at height k of 7."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 7
    faces = rng.integers(0, 120, (n, 48, 48)).astype(np.uint8)
    for face, label in zip(faces, labels):
        top, bottom = label * 48 // 7, (label + 1) * 48 // 7
        face[top:bottom] = rng.integers(180, 256, (bottom - top, 48))
    return faces, labels


def write_csv(path: Path, parts: dict[str, int], seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A Kaggle-layout CSV (gzipped when ``path`` ends in .gz); returns the raw faces per usage."""
    rows, raw = [], {}
    for i, (usage, n) in enumerate(parts.items()):
        faces, labels = synthetic_raw(n, seed + i)
        raw[usage] = (faces, labels)
        rows += [(int(label), " ".join(map(str, face.ravel())), usage) for face, label in zip(faces, labels)]
    pd.DataFrame(rows, columns=["emotion", "pixels", "Usage"]).to_csv(path, index=False)
    return raw


# -- loaders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny.csv", "tiny.csv.gz"])
def test_load_csv_plain_and_gzip(tmp_path, name):
    raw = write_csv(tmp_path / name, {"Training": 21, "PublicTest": 7, "PrivateTest": 14})
    if name.endswith(".gz"):
        with gzip.open(tmp_path / name, "rb") as f:
            assert f.read(20).startswith(b"emotion,pixels,Usage")
    splits = load_csv(tmp_path / name)
    assert {u: len(s) for u, s in splits.items()} == {"Training": 21, "PublicTest": 7, "PrivateTest": 14}
    for usage, (faces, labels) in raw.items():
        np.testing.assert_array_equal(splits[usage].labels, labels)
        # Every face goes through THE preprocessing (equalisation), never around it.
        np.testing.assert_array_equal(splits[usage].faces, np.stack([face_pixels(f) for f in faces]))
        assert splits[usage].faces.dtype == np.uint8
    only = load_csv(tmp_path / name, usages=("PrivateTest",))
    assert list(only) == ["PrivateTest"]


def test_load_csv_refuses_other_tables(tmp_path):
    (tmp_path / "bad.csv").write_text("label,pixels\n3,1 2 3\n")
    with pytest.raises(ValueError, match="not a FER2013 CSV"):
        load_csv(tmp_path / "bad.csv")


def _png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_load_folder_maps_names_to_fer2013_indices(tmp_path):
    rng = np.random.default_rng(1)
    # Alphabetical order would give Neutral index 4 and sad index 5; FER2013 has them at 6 and 4.
    layout = {"train": ["Angry", "Neutral", "sad", "Happy", "disgust"], "test": ["Neutral", "sad"],
              "validation": ["surprise", "Fear"]}
    index = {"Angry": 0, "disgust": 1, "Fear": 2, "Happy": 3, "sad": 4, "surprise": 5, "Neutral": 6}
    expected: dict[str, list[tuple[int, np.ndarray]]] = {}
    for split_dir, classes in layout.items():
        for cls in classes:
            for k in range(2):
                image = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # not 48x48: must be resized
                _png(tmp_path / split_dir / cls / f"{k}.png", image)
                expected.setdefault(split_dir, []).append((index[cls], face_pixels(image)))
    (tmp_path / "train" / "sad" / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("ignored")

    splits = load_folder(tmp_path)
    assert set(splits) == {"Training", "PrivateTest", "PublicTest"}
    assert folder_label("Neutral") == 6 and folder_label("sad") == 4 and folder_label("NEUTRAL") == 6
    assert EMOTIONS[6] == "neutral" and EMOTIONS[4] == "sad"
    for split_dir, usage in (("train", "Training"), ("test", "PrivateTest"), ("validation", "PublicTest")):
        got = sorted(zip(splits[usage].labels.tolist(), [f.tobytes() for f in splits[usage].faces]))
        want = sorted((label, face.tobytes()) for label, face in expected[split_dir])
        assert got == want
    assert splits["PrivateTest"].counts() == {"angry": 0, "disgust": 0, "fear": 0, "happy": 0, "sad": 2,
                                              "surprise": 0, "neutral": 2}


def test_load_folder_refuses_unknown_classes_and_layouts(tmp_path):
    _png(tmp_path / "train" / "bored" / "0.png", np.zeros((48, 48), np.uint8))
    with pytest.raises(ValueError, match="unknown emotion folder 'bored'"):
        load_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no train/"):
        load_folder(empty)


# -- metrics and calibration set -------------------------------------------------------------------


def test_score_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 3, 6, 6])
    predicted = np.array([0, 1, 1, 1, 3, 3, 6, 0])
    m = ev.score(labels, predicted)
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.recall[0] == pytest.approx(1 / 2) and m.precision[0] == pytest.approx(1 / 2)
    assert m.recall[1] == pytest.approx(1.0) and m.precision[1] == pytest.approx(2 / 3)
    assert m.recall[2] == 0.0 and m.f1[2] == 0.0
    assert m.support == (2, 2, 1, 1, 0, 0, 2)
    assert m.confusion[0] == (1, 1, 0, 0, 0, 0, 0) and m.confusion[6] == (1, 0, 0, 0, 0, 0, 1)
    f1 = [0.5, 0.8, 0.0, 2 * 0.5 * 1 / 1.5, 0.0, 0.0, 2 * 1 * 0.5 / 1.5]
    assert m.macro_f1 == pytest.approx(np.mean(f1))
    doc = m.to_json()
    assert doc["per_class"]["neutral"]["recall"] == pytest.approx(0.5) and len(doc["confusion"]) == 7


def test_representative_faces_cover_every_class():
    labels = np.array([3] * 500 + [1] * 4 + [0, 2, 4, 5, 6] * 20)
    faces = np.zeros((len(labels), 48, 48), np.uint8)
    faces[:, 0, 0], faces[:, 0, 1] = np.divmod(np.arange(len(labels)), 256)  # each face carries its index
    picked_faces = representative_faces(Split(faces, labels), 70)
    assert len(picked_faces) == 70
    picked = labels[picked_faces[:, 0, 0].astype(int) * 256 + picked_faces[:, 0, 1]]
    assert all((picked == k).sum() >= min(10, (labels == k).sum()) for k in range(7))


# -- the chain: train -> quantize -> ship (in .venv-convert) ---------------------------------------


def _convert_cli(python: Path, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(python), "-m", "convert", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"convert {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny moodnet trained 1 epoch, quantised and shipped; returns the folder holding it all."""
    python = venv_python(CONVERT_VENV)
    root = tmp_path_factory.mktemp("chain")
    write_csv(root / "tiny.csv.gz", {"Training": 280, "PublicTest": 70, "PrivateTest": 70})
    write_csv(root / "original.csv", {"PublicTest": 70, "PrivateTest": 70}, seed=1)
    _convert_cli(python, "train", "--data", str(root / "tiny.csv.gz"), "--out", str(root / "run"), "--epochs", "1",
                 "--width", "8", "--limit", "210", "--batch-size", "32", "--keep-epochs", cwd=root)
    # ship = quantize (into --build) + evaluate + write; one TensorFlow start instead of two.
    shipped = _convert_cli(python, "ship", "--model", str(root / "run" / "best.keras"),
                           "--data", str(root / "tiny.csv.gz"), "--original", str(root / "original.csv"),
                           "--out", str(root / "models"), "--docs", str(root / "docs"), "--build", str(root / "build"),
                           "--samples", "70", "--flip-tta", "--zoom-tta", "0.93", cwd=root)
    (root / "stdout.txt").write_text(shipped)
    return root


def test_train_keeps_every_epoch_when_asked(chain):
    kept = chain / "run" / "epochs" / "epoch-01.keras"
    assert kept.read_bytes() == (chain / "run" / "last.keras").read_bytes()


def test_quantize_writes_int8_and_float_with_contract_metadata(chain):
    for stem, dtype in (("emotion_int8", "int8"), ("emotion_int8_float", "float32")):
        model = chain / "build" / f"{stem}.tflite"
        meta = json.loads(model.with_suffix(".json").read_text())
        assert meta["input"]["dtype"] == dtype and meta["output"]["dtype"] == dtype
        assert meta["sha256"] == ev.sha256_file(model)
    shipped = chain / "models" / "emotion_int8.tflite"
    assert (chain / "build" / "emotion_int8.tflite").read_bytes() == shipped.read_bytes()
    assert f"sha256 {ev.sha256_file(shipped)[:12]}" in (chain / "stdout.txt").read_text()


def test_shipped_tiny_model_metadata(chain):
    model = chain / "models" / "emotion_int8.tflite"
    meta = json.loads((chain / "models" / "emotion_int8.json").read_text())
    assert meta["format"] == "moodbox-emotion-model/1" and meta["name"] == "moodnet8"
    assert meta["labels"] == list(EMOTIONS)
    assert meta["input"]["shape"] == [1, 48, 48, 1] and meta["input"]["dtype"] == "int8"
    assert meta["input"]["real_range"] == [0.0, 1.0]
    # Real value pixel/255: scale 1/255 and zero-point -128, so pixel p -> p - 128.
    assert meta["input"]["scale"] == pytest.approx(1 / 255, rel=1e-3) and meta["input"]["zero_point"] == -128
    assert meta["output"]["shape"] == [1, 7] and meta["output"]["dtype"] == "int8"
    assert meta["preprocessing"] == {"equalize_hist": True, "crop_margin": 0.1, "face_size": 48, "color": "gray"}
    assert meta["sha256"] == ev.sha256_file(model) and meta["size_bytes"] == model.stat().st_size
    assert meta["sha256"][:8] in meta["version"]
    assert version(meta["min_runtime_version"]) <= TFLITE_214
    assert meta["ops"].get("FULLY_CONNECTED", 0) < 12 and "DEQUANTIZE" not in meta["ops"]
    assert meta["params"] > 10_000 and meta["macs"] > meta["params"]
    assert meta["flip_tta"] is True and meta["zoom_tta"] == [0.93]
    assert meta["data"] == {"source": "tiny.csv.gz", "train": "Training", "tune": "PublicTest",
                            "report": "PrivateTest", "original_test": "original.csv"}
    private = meta["accuracy"]["private_test"]
    for variant in ("", "_flip_tta", "_zoom_tta"):
        for key in ("float", "int8", "macro_f1_int8", "macro_f1_float"):
            assert 0.0 <= private[key + variant] <= 1.0
        assert set(private["recall_int8" + variant]) == set(EMOTIONS)
    assert private["faces"] == 70
    assert {"public_test", "private_test_original", "public_test_original"} <= set(meta["accuracy"])
    headline = private["int8_zoom_tta"]
    assert meta["release"]["status"] == ("final" if headline >= BAR else "provisional")
    assert meta["speed"]["int8"]["ms_median"] > 0 and meta["speed"]["int8"]["threads"] == 1
    # The box's flip + zoom TTA: the face, its mirror, the zoom and its mirror.
    assert meta["speed"]["int8"]["views"] == 1 and meta["speed"]["int8_tta"]["views"] == 4
    assert meta["training"]["config"]["width"] == 8 and meta["training"]["epochs_run"] == 1
    assert meta["training"]["train_seconds"] > 0
    assert meta["calibration_faces"] == 70
    # The float model for a warm restart (convert train --init), without optimiser state.
    float_model = chain / "models" / meta["float_model"]["file"]
    assert float_model.name == "emotion_int8_float.keras"
    assert meta["float_model"]["sha256"] == ev.sha256_file(float_model)
    assert meta["float_model"]["size_bytes"] < 6 * meta["params"] + 200_000  # float32 weights, no Adam moments


def test_shipped_tiny_model_docs(chain):
    docs = chain / "docs"
    for name in ("confusion_private_test.png", "confusion_private_test_flip_tta.png",
                 "confusion_private_test_zoom_tta.png", "curves.png"):
        assert (docs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(docs / "confusion_private_test.csv", index_col=0)
    assert list(table.columns) == list(EMOTIONS) and list(table.index) == list(EMOTIONS)
    assert table.to_numpy().sum() == 70 and (table.sum(axis=1).to_numpy() == 10).all()
    report = json.loads((docs / "report.json").read_text())
    meta = json.loads((chain / "models" / "emotion_int8.json").read_text())
    assert report["metadata"] == meta
    assert report["int8"]["results"]["private_test"]["plain"]["accuracy"] == meta["accuracy"]["private_test"]["int8"]


def test_tiny_model_in_ai_edge_litert(chain):
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed in this environment")
    from ai_edge_litert.interpreter import Interpreter

    model = chain / "models" / "emotion_int8.tflite"
    interpreter = Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert list(inp["shape"]) == [1, 48, 48, 1] and list(out["shape"]) == [1, 7]
    # Both schema readers (LiteRT's here, TensorFlow's in the chain) see the same model.
    meta = json.loads(model.with_suffix(".json").read_text())
    assert min_runtime_version(model.read_bytes()) == meta["min_runtime_version"]
    assert op_versions(model.read_bytes()) == meta["ops"]

    # evaluate, in-process on LiteRT: the same figures as the chain measured under tf.lite, within a face.
    splits = ev.load_eval_splits(chain / "tiny.csv.gz", chain / "original.csv")
    report = ev.evaluate(model, splits, flip_tta=True, zoom_tta=(0.93,))
    assert report["runtime"].startswith("ai_edge_litert")
    for key, result in report["results"].items():
        for variant in ("plain", "flip_tta", "zoom_tta"):
            figure = meta["accuracy"][key]["int8" + ("" if variant == "plain" else f"_{variant}")]
            assert result[variant].accuracy == pytest.approx(figure, abs=1.5 / 70), (key, variant)
        assert sum(result["plain"].support) == 70


def test_tiny_model_in_tflite_runtime_214(chain):
    python = venv_python(TFLITE_VENV)
    script = (
        "import json, sys, numpy as np\n"
        "from importlib.metadata import version\n"
        "from tflite_runtime.interpreter import Interpreter\n"
        "i = Interpreter(model_path=sys.argv[1], num_threads=1); i.allocate_tensors()\n"
        "a, b = i.get_input_details()[0], i.get_output_details()[0]\n"
        "i.set_tensor(a['index'], np.zeros(a['shape'], a['dtype'])); i.invoke()\n"
        "y = i.get_tensor(b['index'])\n"
        "print(json.dumps({'version': version('tflite-runtime'),"
        " 'in': [str(np.dtype(a['dtype'])), a['shape'].tolist()], 'out': [str(np.dtype(b['dtype'])), y.shape]}))\n"
    )
    done = subprocess.run([str(python), "-c", script, str(chain / "models" / "emotion_int8.tflite")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["version"].startswith("2.14")
    assert answer["in"] == ["int8", [1, 48, 48, 1]] and answer["out"] == ["int8", [1, 7]]


def test_evaluate_cli_without_tensorflow(chain, tmp_path):
    """``evaluate`` on a .tflite runs in the box's environment: no TensorFlow, no matplotlib needed."""
    model = chain / "models" / "emotion_int8.tflite"
    done = subprocess.run([sys.executable, "-m", "convert", "evaluate", "--model", str(model),
                           "--data", str(chain / "tiny.csv.gz"), "--original", str(chain / "original.csv"),
                           "--out", str(tmp_path), "--run", str(chain / "run"), "--zoom-tta", "0.93"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "private_test_original" in done.stdout and "ms/face" in done.stdout
    assert "flip-TTA" in done.stdout and "flip + zoom TTA" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sha256"] == ev.sha256_file(model)
    assert report["speed"]["threads"] == 1
    assert set(report["results"]) == {"public_test", "private_test", "public_test_original", "private_test_original"}
    assert (tmp_path / "confusion_private_test.csv").exists()


def test_random_erasing_blanks_one_bounded_rectangle_per_chosen_face():
    check = ("import numpy as np, tensorflow as tf; from convert.train import random_erasing;"
             "tf.random.set_seed(0); out = random_erasing(tf.zeros([400, 48, 48, 1]), 0.5).numpy()[..., 0];"
             "hit = out != 0; area = hit.reshape(400, -1).mean(1); rows, cols = hit.any(2), hit.any(1);"
             "box = all(h.sum() == r.sum() * c.sum() for h, r, c in zip(hit, rows, cols));"
             "print(round(float((area > 0).mean()), 2), float(area.max()), box)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([str(venv_python(CONVERT_VENV)), "-c", check], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    chosen, largest, rectangles = done.stdout.split()
    assert 0.4 <= float(chosen) <= 0.6  # about half the faces, as asked
    assert float(largest) <= 0.25  # at most 20 % of the face, plus rounding to whole pixels
    assert rectangles == "True"  # noise fills one axis-aligned rectangle, nothing else


def test_train_init_warm_restarts_from_a_model(chain, tmp_path):
    """``--init`` copies a model's weights into a fresh run; a model of another width is refused by name."""
    python = venv_python(CONVERT_VENV)
    data, first = str(chain / "tiny.csv.gz"), chain / "run" / "best.keras"
    # lr 0: AdamW (decoupled decay scales with the lr too) leaves the conv kernels exactly as loaded.
    out = _convert_cli(python, "train", "--data", data, "--out", str(tmp_path / "warm"), "--epochs", "1",
                       "--width", "8", "--limit", "64", "--batch-size", "32", "--lr", "0", "--init", str(first),
                       cwd=tmp_path)
    assert f"starting from the weights of {first}" in out
    compare = ("import sys, keras, numpy as np; a, b = (keras.models.load_model(p, compile=False) for p in sys.argv[1:]);"
               "kernels = lambda m: [l.get_weights()[0] for l in m.layers if isinstance(l, keras.layers.Conv2D)];"
               "print(all(np.array_equal(x, y) for x, y in zip(kernels(a), kernels(b))))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    same = subprocess.run([str(python), "-c", compare, str(first), str(tmp_path / "warm" / "last.keras")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert same.stdout.strip() == "True", same.stderr[-2000:]

    refused = subprocess.run([str(python), "-m", "convert", "train", "--data", data, "--out", str(tmp_path / "bad"),
                              "--epochs", "1", "--width", "16", "--limit", "64", "--init", str(first)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert f"--init {first}: moodnet8 does not fit moodnet16" in refused.stderr


_UNFOLD_CHECK = """
import sys
from pathlib import Path
import keras, numpy as np
from convert.data import load_csv
from convert.model import moodnet
from convert.warmstart import load_initial_weights

data, tflite, keras_path, width = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
splits = load_csv(data)
training = splits["Training"].faces[..., None] / np.float32(255)
faces = splits["PrivateTest"].faces[..., None] / np.float32(255)
unfolded = moodnet(width)
load_initial_weights(unfolded, tflite, training)
trained = keras.models.load_model(keras_path, compile=False)
features = lambda m: keras.Model(m.inputs, m.layers[-3].output).predict(faces, verbose=0)  # global average pool
a, b = features(unfolded), features(trained)
print(np.linalg.norm(a - b) / np.linalg.norm(b))
print((unfolded.predict(faces, verbose=0).argmax(1) == trained.predict(faces, verbose=0).argmax(1)).mean())
# Training mode: each BatchNorm now uses the batch's statistics, which its own were set from.
for layer in unfolded.layers:
    if isinstance(layer, keras.layers.Dropout):
        layer.rate = 0.0
c = np.asarray(keras.Model(unfolded.inputs, unfolded.layers[-3].output)(faces, training=True))
print(np.linalg.norm(c - a) / np.linalg.norm(a))
"""


def test_train_init_unfolds_a_shipped_int8_model(chain, tmp_path):
    """``--init model.tflite``: the int8 weights, BatchNorm unfolded, give the float model's features back."""
    python = venv_python(CONVERT_VENV)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    tflite, data = chain / "models" / "emotion_int8.tflite", str(chain / "tiny.csv.gz")
    done = subprocess.run([str(python), "-c", _UNFOLD_CHECK, data, str(tflite), str(chain / "run" / "best.keras"), "8"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"starting from the weights of {tflite} (the int8 model, unfolded)" in done.stdout
    relative_error, agreement, training_mode_error = map(float, done.stdout.split()[-3:])
    assert relative_error < 0.05  # int8 weight rounding; a transposed or unscaled kernel is off by ~100 %
    assert agreement >= 0.95
    assert training_mode_error < 0.05, training_mode_error  # BatchNorm left at identity would be far off

    refused = subprocess.run([str(python), "-c", _UNFOLD_CHECK, data, str(tflite), str(chain / "run" / "best.keras"),
                              "16"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert (f"--init {tflite}: its layers do not fit moodnet16: weighted layer 1 is ('CONV_2D', (3, 3, 1, 8)), "
            "moodnet16 needs ('CONV_2D', (3, 3, 1, 16))") in refused.stderr


_AVERAGE_CHECK = """
import sys
from pathlib import Path
import keras, numpy as np
from convert.average import average
from convert.model import moodnet
from convert.warmstart import channel_statistics

tmp = Path(sys.argv[1])
paths = []
for seed in (1, 2):
    keras.utils.set_random_seed(seed)
    model = moodnet(8)
    for norm in (l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)):
        norm.gamma.assign(np.random.default_rng(seed).uniform(0.5, 2.0, norm.gamma.shape))
    model.save(tmp / f"epoch-{seed}.keras")
    paths.append(tmp / f"epoch-{seed}.keras")
faces = np.random.default_rng(0).random((300, 48, 48, 1), dtype=np.float32)
average(paths, faces, tmp / "average.keras")
merged, *epochs = (keras.models.load_model(p, compile=False) for p in [tmp / "average.keras", *paths])
convs = lambda m: [l.kernel.numpy() for l in m.layers if isinstance(l, keras.layers.Conv2D)]
print(all(np.allclose(k, (a + b) / 2) for k, a, b in zip(convs(merged), *map(convs, epochs))))
norms = [l for l in merged.layers if isinstance(l, keras.layers.BatchNormalization)]
measured = channel_statistics(merged, [n.input for n in norms], faces)
print(max(float(np.abs(n.moving_variance.numpy() - var).max() / var.max()) for n, (_, var) in zip(norms, measured)))
print((tmp / "average.json").read_text().replace(" ", "").replace(chr(10), ""))
try:
    keras.utils.set_random_seed(3)
    moodnet(16).save(tmp / "wide.keras")
    average([paths[0], tmp / "wide.keras"], faces, tmp / "refused.keras")
except ValueError as exc:
    print(exc)
"""


def test_average_means_the_weights_and_remeasures_batchnorm(tmp_path):
    python = venv_python(CONVERT_VENV)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([str(python), "-c", _AVERAGE_CHECK, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    kernels_are_means, variance_error, sidecar, refused = done.stdout.strip().splitlines()[-4:]
    assert json.loads(sidecar) == {"averaged": ["epoch-1.keras", "epoch-2.keras"], "batchnorm_faces": 300}
    assert kernels_are_means == "True"
    # Each BatchNorm holds the statistics of its input in the averaged net, the layers before it included.
    assert float(variance_error) < 1e-3
    assert refused == "the models are of different architectures: ['moodnet16', 'moodnet8']"


def _warm_run(tmp_path: Path, init: Path, seconds: float) -> Path:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"config": {"init": str(init)}, "epoch": 3, "best_epoch": 2,
                                 "best_val_accuracy": 0.5, "train_seconds": seconds}))
    return state


@pytest.mark.parametrize("stem", ["emotion_int8.tflite", "emotion_int8_float.keras"])
def test_ship_records_the_warm_restart_lineage(tmp_path, stem):
    """A run started with --init names the shipped model it grew from and sums the training time."""
    from convert.ship import _training_summary

    parent = tmp_path / stem
    parent.write_bytes(b"the parent model")
    sha = ev.sha256_file(parent)
    described = {"sha256": sha} if stem.endswith(".tflite") else {"sha256": "ab" * 32, "float_model": {"sha256": sha}}
    (tmp_path / "emotion_int8.json").write_text(json.dumps(
        {**described, "version": "20261125-0aec356a", "training": {"epochs_run": 50, "train_seconds": 5117.5}}))
    summary = _training_summary(_warm_run(tmp_path, parent, 100.0))
    assert summary["initial_model"] == {"file": stem, "version": "20261125-0aec356a",
                                        "sha256": described["sha256"], "epochs_run": 50, "total_train_seconds": 5117.5}
    assert summary["total_train_seconds"] == 5217.5

    model = tmp_path / "average.keras"
    (tmp_path / "average.json").write_text(json.dumps({"averaged": ["epoch-39.keras", "epoch-40.keras"]}))
    summary = _training_summary(_warm_run(tmp_path, parent, 100.0), model)
    assert summary["averaged"] == {"averaged": ["epoch-39.keras", "epoch-40.keras"]}

    parent.write_bytes(b"another model in its place")  # the metadata no longer describes it: no lineage
    summary = _training_summary(_warm_run(tmp_path, parent, 100.0))
    assert "initial_model" not in summary and "total_train_seconds" not in summary


# -- flash -----------------------------------------------------------------------------------------


@pytest.fixture
def shipped(chain, tmp_path):
    """A private copy of the tiny shipped model pair, free to tamper with."""
    folder = tmp_path / "ship"
    folder.mkdir()
    for suffix in (".tflite", ".json"):
        shutil.copyfile(chain / "models" / f"emotion_int8{suffix}", folder / f"moodnet{suffix}")
    return folder / "moodnet.tflite"


@pytest.fixture
def box(tmp_path):
    """A box's model folder already holding an (old) model pair."""
    folder = tmp_path / "box" / "models"
    folder.mkdir(parents=True)
    (folder / "emotion_int8.tflite").write_bytes(b"old model")
    (folder / "emotion_int8.json").write_text('{"old": true}')
    return folder


def _installed(box: Path, model: Path) -> bool:
    return ((box / "emotion_int8.tflite").read_bytes() == model.read_bytes()
            and (box / "emotion_int8.json").read_bytes() == model.with_suffix(".json").read_bytes())


def test_parse_target():
    assert fl.parse_target("pi@moodbox.local") == fl.Target("pi@moodbox.local", fl.DEFAULT_BOX_DIR, "emotion_int8")
    assert fl.parse_target("pi@10.0.0.7:/srv/models/") == fl.Target("pi@10.0.0.7", "/srv/models", "emotion_int8")
    assert fl.parse_target("pi@box:/srv/m/mine.tflite") == fl.Target("pi@box", "/srv/m", "mine")
    assert fl.parse_target("some/dir") == fl.Target(None, "some/dir", "emotion_int8")
    assert fl.parse_target("/x/y/other.tflite") == fl.Target(None, "/x/y", "other")
    assert fl.parse_target("./pi@box").login is None  # a path, not a login


def test_flash_local_installs_atomically_and_keeps_the_old_pair(shipped, box, capsys):
    assert fl.flash(shipped, fl.parse_target(str(box)), reload="none") == 0
    assert _installed(box, shipped)
    assert (box / "emotion_int8.tflite.prev").read_bytes() == b"old model"
    assert (box / "emotion_int8.json.prev").read_text() == '{"old": true}'
    assert sorted(p.name for p in box.iterdir()) == ["emotion_int8.json", "emotion_int8.json.prev",
                                                      "emotion_int8.tflite", "emotion_int8.tflite.prev"]
    assert "reload_model" in capsys.readouterr().out
    # What the box will do with it: its own classifier accepts the installed pair.
    from device.emotion import EmotionClassifier

    assert EmotionClassifier(box / "emotion_int8.tflite").info.sha256 == ev.sha256_file(shipped)


def _untouched(box: Path) -> bool:
    return sorted(p.name for p in box.iterdir()) == ["emotion_int8.json", "emotion_int8.tflite"] and \
        (box / "emotion_int8.tflite").read_bytes() == b"old model"


@pytest.mark.parametrize("damage, message", [
    (lambda meta: meta.update(sha256="0" * 64), "sha256 mismatch"),
    (lambda meta: meta.update(labels=sorted(EMOTIONS)), "labels"),
    (lambda meta: meta["accuracy"].pop("private_test"), "no PrivateTest accuracy"),
    (lambda meta: meta.update(min_runtime_version="2.16.0"), "newer than tflite-runtime 2.14"),
    (lambda meta: meta["input"].update(shape=[1, 64, 64, 1]), "input shape"),
])
def test_flash_refuses_a_bad_model_and_changes_nothing(shipped, box, damage, message):
    meta_path = shipped.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    damage(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(fl.FlashError, match=message):
        fl.flash(shipped, fl.parse_target(str(box)), reload="none")
    assert _untouched(box)


def test_flash_refuses_a_missing_folder_and_a_missing_metadata(shipped, box, tmp_path):
    with pytest.raises(fl.FlashError, match="no such folder"):
        fl.flash(shipped, fl.parse_target(str(tmp_path / "nowhere")), reload="none")
    shipped.with_suffix(".json").unlink()
    with pytest.raises(fl.FlashError, match="metadata .* not found"):
        fl.flash(shipped, fl.parse_target(str(box)), reload="none")
    assert _untouched(box)


def test_flash_cli_exit_codes(shipped, box):
    run = [sys.executable, "-m", "convert", "flash", str(box), "--model", str(shipped), "--reload", "none"]
    done = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _installed(box, shipped)
    done = subprocess.run([*run[:4], str(box), "--model", str(box / "nothing.tflite")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "flash refused" in done.stdout


class FakeBox:
    """Plays ``user@host`` for flash's runner: scp copies here, ssh runs its command with bash here,
    and systemctl is only recorded (answering ``restart_rc``)."""

    login = "pi@moodbox"

    def __init__(self, corrupt_upload: bool = False, restart_rc: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.corrupt_upload = corrupt_upload
        self.restart_rc = restart_rc

    def __call__(self, argv):
        argv = list(argv)
        self.calls.append(argv)
        if argv[0] == "scp":
            src, dst = argv[-2], argv[-1]
            assert dst.startswith(self.login + ":"), dst
            shutil.copyfile(src, dst.split(":", 1)[1])
            if self.corrupt_upload and dst.endswith(".tflite"):
                with open(dst.split(":", 1)[1], "r+b") as f:
                    f.seek(100)
                    f.write(b"\xff\xff")
            return subprocess.CompletedProcess(argv, 0, "", "")
        assert argv[0] == "ssh" and argv[-2] == self.login, argv
        if "systemctl" in argv[-1]:
            return subprocess.CompletedProcess(argv, self.restart_rc, "", "" if not self.restart_rc else "denied")
        return subprocess.run(["bash", "-c", argv[-1]], capture_output=True, text=True, timeout=60)


def test_flash_over_ssh_with_a_fake_box(shipped, box):
    fake = FakeBox()
    target = fl.parse_target(f"{fake.login}:{box}")
    assert fl.flash(shipped, target, reload="auto", runner=fake, sudo=False) == 0
    assert _installed(box, shipped)
    assert (box / "emotion_int8.tflite.prev").read_bytes() == b"old model"
    mktemp, scp_model, scp_meta, install, restart = fake.calls
    assert mktemp[0] == "ssh" and mktemp[-1].startswith("mktemp -d /tmp/moodbox-flash.")
    stage = Path(scp_model[-1].split(":", 1)[1]).parent
    assert scp_model[-2] == str(shipped) and scp_meta[-2] == str(shipped.with_suffix(".json"))
    assert not stage.exists()  # the box cleans its staging folder
    script = install[-1]
    assert f"mv -f {box}/.emotion_int8.tflite.new {box}/emotion_int8.tflite" in script
    assert json.loads(shipped.with_suffix(".json").read_text())["sha256"] in script
    assert restart[-1] == "systemctl restart moodbox.service"
    assert all("ControlMaster=auto" in " ".join(call) for call in fake.calls)


def test_flash_over_ssh_refuses_a_damaged_upload(shipped, box):
    fake = FakeBox(corrupt_upload=True)
    with pytest.raises(fl.FlashError, match="does not match sha256"):
        fl.flash(shipped, fl.parse_target(f"{fake.login}:{box}"), runner=fake, sudo=False)
    assert _untouched(box)
    assert len(fake.calls) == 4  # no restart after a failed install


def test_flash_over_ssh_uses_sudo_and_reports_a_failed_restart(shipped, box, capsys):
    target = fl.parse_target(f"{FakeBox.login}:{box}")
    script = fl.remote_install_script("/tmp/moodbox-flash.abc", target, "ab" * 32, sudo=True)
    assert f"sudo -n mv -f {box}/.emotion_int8.json.new {box}/emotion_int8.json" in script
    assert fl.restart_command(target, sudo=True)[-1] == "sudo -n systemctl restart moodbox.service"
    fake = FakeBox(restart_rc=1)
    assert fl.flash(shipped, target, reload="restart", runner=fake, sudo=False) == 2
    assert _installed(box, shipped)
    assert "restart the service yourself" in capsys.readouterr().out


class StandInDaemon:
    """Answers ``<base>/set/reload_model`` as the daemon does: payload checked by device.topics, answer on
    ``<base>/response`` echoing the transaction."""

    def __init__(self, host: str, port: int, base: str, ok: bool = True) -> None:
        import paho.mqtt.client as mqtt

        from device.topics import RESPONSE, command_topic, parse_payload, response_payload, topic

        self.requests: list = []
        self.subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stand-in-daemon")

        def on_message(client, userdata, message):
            request = parse_payload("reload_model", message.payload, 1024)
            self.requests.append(request)
            body = response_payload("reload_model", ok, "" if ok else "sha256 mismatch", request.transaction)
            client.publish(topic(base, RESPONSE), json.dumps(body), qos=1)

        client.on_message = on_message
        client.on_subscribe = lambda *args: self.subscribed.set()
        client.on_connect = lambda c, *args: c.subscribe(command_topic(base, "reload_model"), qos=1)
        client.connect(host, port)
        client.loop_start()
        self.client = client
        assert self.subscribed.wait(10), "stand-in daemon did not subscribe"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_flash_asks_the_daemon_over_mqtt(shipped, box, tmp_path):
    from broker import Broker

    with Broker(tmp_path / "broker") as broker:
        settings = fl.MqttSettings(broker.host, broker.port, "moodbox/test", timeout_s=10)
        daemon = StandInDaemon(broker.host, broker.port, "moodbox/test")
        try:
            assert fl.flash(shipped, fl.parse_target(str(box)), reload="auto", mqtt=settings) == 0
        finally:
            daemon.stop()
        assert len(daemon.requests) == 1 and daemon.requests[0].value is None
        assert daemon.requests[0].transaction.startswith("flash-")
        assert _installed(box, shipped)

        refusing = StandInDaemon(broker.host, broker.port, "moodbox/test", ok=False)
        try:
            assert fl.flash(shipped, fl.parse_target(str(box)), mqtt=settings) == 2
        finally:
            refusing.stop()
        # Nobody listening: the model is installed, the reload is reported as not done.
        quiet = fl.MqttSettings(broker.host, broker.port, "moodbox/nobody", timeout_s=1)
        with pytest.raises(fl.FlashError, match="no answer"):
            fl.request_reload(quiet)


# -- the shipped model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_model():
    if not SHIPPED.exists():
        pytest.skip(f"{SHIPPED.relative_to(REPO)} has not been shipped yet (python -m convert ship)")
    return SHIPPED


def test_shipped_model_matches_its_metadata(shipped_model):
    meta = json.loads(shipped_model.with_suffix(".json").read_text())
    assert meta["sha256"] == ev.sha256_file(shipped_model)
    assert meta["size_bytes"] == shipped_model.stat().st_size
    assert meta["labels"] == list(EMOTIONS)
    assert version(meta["min_runtime_version"]) <= TFLITE_214
    if "float_model" in meta:
        assert meta["float_model"]["sha256"] == ev.sha256_file(shipped_model.parent / meta["float_model"]["file"])
    # A model below the bar may ship only if its metadata says it is provisional.
    variant = headline_variant(meta["flip_tta"], tuple(meta.get("zoom_tta", ())))
    headline = meta["accuracy"]["private_test"][ev.figure_key("int8", variant)]
    assert meta["release"]["status"] == ("final" if headline >= BAR else "provisional"), meta["release"]
    # The same faces with their original pixels, equalised by the model's preprocessing, score the same
    # as the box runs the model; a preprocessing mismatch would show as originals scoring worse.
    if "private_test_original" in meta["accuracy"]:
        original, equalised = meta["accuracy"]["private_test_original"], meta["accuracy"]["private_test"]
        gap = original[ev.figure_key("int8", variant)] - equalised[ev.figure_key("int8", variant)]
        assert abs(gap) < 0.01, f"original pixels differ by {100 * gap:+.2f} pt"
        plain_gap = original["int8"] - equalised["int8"]
        assert plain_gap > -0.01, f"original pixels score {100 * plain_gap:+.2f} pt worse without TTA"


def test_shipped_model_private_test_accuracy(shipped_model):
    data = fer2013_dir() / "fer2013.csv.gz"
    if not data.exists():
        pytest.skip(f"FER2013 not found at {data.parent}: set MOODBOX_FER2013 to check the shipped model's accuracy")
    meta = json.loads(shipped_model.with_suffix(".json").read_text())
    claimed = meta["accuracy"]["private_test"]
    splits = ev.eval_splits(data.name, load_csv(data, usages=("PrivateTest",)))
    zooms = tuple(meta.get("zoom_tta", ()))
    result = ev.evaluate(shipped_model, splits, flip_tta=meta["flip_tta"], zoom_tta=zooms)["results"]["private_test"]
    variant = headline_variant(meta["flip_tta"], zooms)
    measured = result[variant].accuracy
    headline = claimed[ev.figure_key("int8", variant)]
    assert measured >= headline - 0.005, f"PrivateTest {measured:.4f}, metadata claims {headline:.4f}"
    if meta["release"]["status"] == "final":
        assert measured >= BAR, f"PrivateTest {measured:.4f} is below the {BAR:.0%} bar"
