"""The classifier with real TFLite interpreters: a tiny int8 model built here, and the shipped one when present."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import tiny_model
from conftest import REPO, TFLITE_VENV, venv_python
from device.config import parse_config
from device.emotion import EmotionClassifier, ModelError, Runtime, load_runtime
from device.preprocess import EMOTIONS, crop_square, face_pixels, tta_views, zoom_face

SHIPPED = REPO / "models" / "emotion_int8.tflite"
FER_FACES = 500  # the first PrivateTest rows of the original-pixel test file


@pytest.fixture(scope="session")
def eval_set(tiny_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(tiny_dir / tiny_model.EVAL_FACES), np.load(tiny_dir / tiny_model.EVAL_LABELS)


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> EmotionClassifier:
    return EmotionClassifier(tiny_dir / "tiny_int8.tflite")


def copy_model(tiny_dir: Path, stem: str, dest: Path, name: str | None = None) -> Path:
    """A private copy of a built model and its metadata, safe to damage."""
    target = dest / f"{name or stem}.tflite"
    shutil.copyfile(tiny_dir / f"{stem}.tflite", target)
    shutil.copyfile(tiny_dir / f"{stem}.json", target.with_suffix(".json"))
    return target


def edit_metadata(model: Path, edit) -> None:
    meta = json.loads(model.with_suffix(".json").read_text())
    edit(meta)
    tiny_model.write_metadata(model, meta)


def renormalised(p: np.ndarray) -> np.ndarray:
    return p / p.sum(axis=1, keepdims=True)


def run_in_venv(python: Path, model: Path, faces: np.ndarray, tmp_path: Path) -> tuple[np.ndarray, str]:
    """Classify ``faces`` with ``model`` under another interpreter stack; returns (probs, runtime)."""
    np.save(tmp_path / "faces.npy", faces)
    script = (
        "import sys, numpy as np\n"
        "from device.emotion import EmotionClassifier\n"
        "c = EmotionClassifier(sys.argv[1])\n"
        "np.save(sys.argv[3], c.classify_faces(np.load(sys.argv[2])))\n"
        "print(c.runtime)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [str(python), "-c", script, str(model), str(tmp_path / "faces.npy"), str(tmp_path / "probs.npy")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(tmp_path / "probs.npy"), result.stdout.strip().splitlines()[-1]


# --- runtime -------------------------------------------------------------------------------------

def test_runtime_is_the_first_importable_one_with_its_version():
    runtime = load_runtime()
    order = [("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"), ("tensorflow", None)]
    name, dist = next((n, d) for n, d in order if importlib.util.find_spec(n) is not None)
    assert runtime.name == name
    if dist:
        assert runtime.version == importlib.metadata.version(dist)
    assert str(runtime) == f"{runtime.name} {runtime.version}"


def test_no_runtime_at_all_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    for module in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter",
                   "tensorflow"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModelError, match="no TFLite runtime installed: install ai-edge-litert"):
        load_runtime()


# --- the tiny int8 model -------------------------------------------------------------------------

def test_tiny_int8_model_loads_and_reports_its_metadata(tiny: EmotionClassifier, tiny_dir: Path):
    path = tiny_dir / "tiny_int8.tflite"
    meta = json.loads(path.with_suffix(".json").read_text())
    info = tiny.info
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
    assert (info.version, info.name, info.input_dtype) == (meta["version"], "tiny_int8", "int8")
    assert info.accuracy == meta["accuracy"]["private_test"]["int8"]
    assert info.runtime == str(tiny.runtime)
    event = info.loaded_event()
    assert (event.path, event.version, event.sha256, event.accuracy) == (str(path), info.version, info.sha256,
                                                                         info.accuracy)


def test_int8_probabilities_match_the_float_keras_model(tiny: EmotionClassifier, tiny_dir: Path, eval_set):
    faces, labels = eval_set
    probs = tiny.classify_faces(faces)
    assert probs.shape == (len(faces), len(EMOTIONS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs.argmax(axis=1) == labels).mean() >= 0.95
    # Same answers as the Keras model before quantisation: only possible if the
    # input went through the tensor's scale/zero-point and the output was dequantised.
    reference = np.load(tiny_dir / tiny_model.FLOAT_PROBS)
    assert np.abs(probs - reference).max() < 0.02


def test_float_model_is_served_too(tiny_dir: Path, eval_set):
    classifier = EmotionClassifier(tiny_dir / "tiny_float.tflite")
    assert classifier.info.input_dtype == "float32"
    reference = np.load(tiny_dir / tiny_model.FLOAT_PROBS)
    np.testing.assert_allclose(classifier.classify_faces(eval_set[0]), renormalised(reference), atol=1e-5)


def test_classify_in_a_frame_goes_through_the_shared_preprocessing(tiny: EmotionClassifier, eval_set):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320)).astype(np.uint8)
    box = (100, 60, 90, 90)
    got = tiny.classify(frame, box)
    assert isinstance(got, tuple) and len(got) == len(EMOTIONS)
    assert sum(got) == pytest.approx(1.0)
    manual = tiny.classify_faces(face_pixels(crop_square(frame, box))[np.newaxis])[0]
    assert got == tuple(manual)
    # A face at the frame's corner is padded, not stretched, and still classified.
    assert len(tiny.classify(frame, (-20, -20, 60, 60))) == len(EMOTIONS)


def test_faces_pasted_into_a_frame_are_recognised(tiny_dir: Path, eval_set):
    classifier = EmotionClassifier(tiny_dir / "tiny_int8.tflite", crop_margin=0.0)
    faces, labels = eval_set
    rng = np.random.default_rng(1)
    hits = 0
    for face, label in zip(faces[:30], labels[:30]):
        frame = rng.integers(0, 256, (240, 320)).astype(np.uint8)
        # Upscaled and darkened: the box's own equalisation has to undo it.
        frame[50:146, 80:176] = np.kron(face, np.ones((2, 2), dtype=np.uint8)) // 3 + 20
        hits += int(np.argmax(classifier.classify(frame, (80, 50, 96, 96))) == label)
    assert hits >= 28


def test_bad_inputs_are_refused_clearly(tiny: EmotionClassifier):
    frame = np.zeros((120, 160), dtype=np.uint8)
    with pytest.raises(ValueError, match="outside the 160x120 frame"):
        tiny.classify(frame, (500, 500, 40, 40))
    with pytest.raises(ValueError, match="2-D grayscale"):
        tiny.classify(np.zeros((120, 160, 3), dtype=np.uint8), (10, 10, 40, 40))
    with pytest.raises(ValueError, match=r"uint8 faces of shape \(N, 48, 48\)"):
        tiny.classify_faces(np.zeros((48, 48), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 faces"):
        tiny.classify_faces(np.zeros((2, 48, 48), dtype=np.float32))


def test_flip_tta_averages_with_the_mirrored_face(tiny_dir: Path, tiny: EmotionClassifier, eval_set):
    faces, labels = eval_set
    tta = EmotionClassifier(tiny_dir / "tiny_int8.tflite", flip_tta=True)
    plain, mirrored = tiny.classify_faces(faces), tiny.classify_faces(np.ascontiguousarray(faces[:, :, ::-1]))
    np.testing.assert_allclose(tta.classify_faces(faces), renormalised(plain + mirrored), atol=1e-12)
    np.testing.assert_allclose(tta.classify_faces(faces, flip_tta=False), plain, atol=1e-12)
    np.testing.assert_allclose(tiny.classify_faces(faces, flip_tta=True), renormalised(plain + mirrored), atol=1e-12)
    assert (tta.classify_faces(faces).argmax(axis=1) == labels).mean() >= 0.95
    assert tta.flip_tta and not tiny.flip_tta


def test_zoom_face_scales_about_the_centre():
    face = np.zeros((1, 48, 48), dtype=np.uint8)
    face[0, 12:36, 12:36] = 255  # a 24 px square in the middle
    for factor, side in ((0.85, 20), (0.93, 22), (1.25, 30)):
        zoomed = zoom_face(face, factor)[0]
        rows, cols = np.nonzero(zoomed > 127)
        assert rows.max() - rows.min() + 1 == pytest.approx(side, abs=1), factor
        assert (rows.min() + rows.max()) / 2 == pytest.approx(23.5, abs=0.5)  # still centred
        assert (cols.min() + cols.max()) / 2 == pytest.approx(23.5, abs=0.5)
    # Zoomed out, the border is the face reflected, not black: no new dark frame for the model.
    out = zoom_face(np.full((1, 48, 48), 200, dtype=np.uint8), 0.85)
    assert out.min() == 200


def test_tta_views_are_the_face_its_mirror_and_each_zoom():
    faces = np.random.default_rng(3).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    views = tta_views(faces, flip=True, zooms=(0.93, 1.1))
    assert len(views) == 6 and len(tta_views(faces, flip=False, zooms=(0.93,))) == 2
    np.testing.assert_array_equal(views[0], faces)
    np.testing.assert_array_equal(views[1], faces[:, :, ::-1])
    np.testing.assert_array_equal(views[2], zoom_face(faces, 0.93))
    np.testing.assert_array_equal(views[3], zoom_face(faces, 0.93)[:, :, ::-1])
    np.testing.assert_array_equal(views[5], zoom_face(faces, 1.1)[:, :, ::-1])
    assert tta_views(faces, flip=False) == [faces]


def test_zoom_tta_averages_over_every_view(tiny_dir: Path, tiny: EmotionClassifier, eval_set):
    faces, labels = eval_set
    tta = EmotionClassifier(tiny_dir / "tiny_int8.tflite", flip_tta=True, zoom_tta=(0.93,))
    views = [tiny.classify_faces(view) for view in tta_views(faces, True, (0.93,))]
    np.testing.assert_allclose(tta.classify_faces(faces), renormalised(sum(views)), atol=1e-12)
    np.testing.assert_allclose(tta.classify_faces(faces, zoom_tta=()), renormalised(views[0] + views[1]), atol=1e-12)
    np.testing.assert_allclose(tiny.classify_faces(faces, zoom_tta=(0.93,)), renormalised(views[0] + views[2]),
                               atol=1e-12)
    assert not np.allclose(views[2], views[0])  # the zoomed face is another view, not a copy
    assert (tta.classify_faces(faces).argmax(axis=1) == labels).mean() >= 0.95
    assert tta.zoom_tta == (0.93,) and tiny.zoom_tta == ()


def test_tta_reports_the_matching_accuracy(tiny_dir: Path, tmp_path: Path):
    path = copy_model(tiny_dir, "tiny_int8", tmp_path)
    edit_metadata(path, lambda m: (m["accuracy"]["private_test"].update(int8=0.71, int8_flip_tta=0.73,
                                                                         int8_zoom_tta=0.75),
                                   m.update(flip_tta=True, zoom_tta=[0.93])))
    assert EmotionClassifier(path).info.accuracy == 0.71
    assert EmotionClassifier(path, flip_tta=True).info.accuracy == 0.73
    assert EmotionClassifier(path, flip_tta=True, zoom_tta=(0.93,)).info.accuracy == 0.75
    # Views the model was not evaluated with get the plain figure, not a borrowed one.
    assert EmotionClassifier(path, flip_tta=True, zoom_tta=(0.9,)).info.accuracy == 0.71
    assert EmotionClassifier(path, zoom_tta=(0.93,)).info.accuracy == 0.71


def test_from_config_resolves_the_path_and_uses_the_settings(tiny_dir: Path, tmp_path: Path):
    (tmp_path / "m").mkdir()
    path = copy_model(tiny_dir, "tiny_int8", tmp_path / "m")
    text = ('[model]\npath = "m/tiny_int8.tflite"\nthreads = 2\nflip_tta = true\nzoom_tta = [0.9, 1.1]\n'
            '[detector]\ncrop_margin = 0.0\n')
    classifier = EmotionClassifier.from_config(parse_config(text, "test.toml", tmp_path))
    assert classifier.info.path == str(path.resolve())
    assert classifier.flip_tta and classifier.zoom_tta == (0.9, 1.1)
    face = np.kron(np.load(tiny_dir / tiny_model.EVAL_FACES)[0], np.ones((2, 2), dtype=np.uint8))
    # crop_margin 0: the box is the whole face, so the frame path equals the face path.
    np.testing.assert_allclose(classifier.classify(face, (0, 0, 96, 96)),
                               classifier.classify_faces(face_pixels(face)[np.newaxis])[0])


# --- refusals --------------------------------------------------------------------------------------

def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _not_a_model(path: Path) -> None:
    path.write_bytes(b"this is not a flatbuffer" * 40)
    edit_metadata(path, lambda m: m.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest()))


def _alphabetical_labels(path: Path) -> None:
    edit_metadata(path, lambda m: m.update(labels=sorted(EMOTIONS)))


def _meta(**changes):
    def apply(path: Path) -> None:
        def edit(meta):
            for dotted, value in changes.items():
                *parents, key = dotted.split("__")
                target = meta
                for parent in parents:
                    target = target[parent]
                if value is None:
                    del target[key]
                else:
                    target[key] = value
        edit_metadata(path, edit)
    return apply


REFUSALS = {
    "corrupted file": ("tiny_int8", _corrupt, r"sha256 mismatch: metadata says [0-9a-f]{64}, file is [0-9a-f]{64}"),
    "truncated file": ("tiny_int8", _truncate, r"sha256 mismatch.*\(1000 bytes\)"),
    "not a tflite file": ("tiny_int8", _not_a_model, r"cannot load it"),
    "alphabetical labels": ("tiny_int8", _alphabetical_labels,
                            r"labels expected \['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral'\] "
                            r"\(FER2013 order\), found \['angry', 'disgust', 'fear', 'happy', 'neutral', 'sad'"),
    "unknown format": ("tiny_int8", _meta(format="something/2"), r"metadata format expected 'moodbox-emotion-model/1'"),
    "no sha256": ("tiny_int8", _meta(sha256=None), r"metadata lacks 'sha256'"),
    "metadata dtype": ("tiny_int8", _meta(input__dtype="uint8"), r"input dtype: metadata says uint8, model has int8"),
    "unknown dtype": ("tiny_int8", _meta(input__dtype="int16"), r"metadata input dtype expected one of"),
    "no equalisation": ("tiny_int8", _meta(preprocessing__equalize_hist=False),
                        r"preprocessing.equalize_hist expected True, found False"),
    "other real range": ("tiny_int8", _meta(input__real_range=[-1.0, 1.0]), r"real_range expected \[0.0, 1.0\]"),
    "zero-point": ("tiny_int8", _meta(input__zero_point=0), r"input quantisation: metadata says scale .*zero-point 0"),
    "malformed metadata": ("tiny_int8", _meta(preprocessing="gray"), r"metadata malformed"),
    "32x32 input": ("wrong_shape_int8", lambda p: None,
                    r"metadata input shape expected \[1, 48, 48, 1\], found \[1, 32, 32, 1\]"),
    "32x32 input, metadata lies": ("wrong_shape_int8", _meta(input__shape=[1, 48, 48, 1]),
                                   r"input shape expected \(1, 48, 48, 1\), model has \(1, 32, 32, 1\)"),
    "5 outputs": ("five_classes_int8", lambda p: None, r"output expected 7 values, model has 5 \(shape \[1, 5\]\)"),
    "no softmax": ("logits_int8", lambda p: None, r"output is not a probability distribution .*must end in softmax"),
    "non-numeric scale": ("tiny_int8", _meta(input__scale="1/255"), r"metadata malformed"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_model_is_refused_naming_the_check(case: str, tiny_dir: Path, tmp_path: Path):
    stem, damage, message = REFUSALS[case]
    path = copy_model(tiny_dir, stem, tmp_path, name="candidate")
    damage(path)
    with pytest.raises(ModelError, match=message) as info:
        EmotionClassifier(path)
    assert str(path) in str(info.value)


def test_missing_or_unreadable_metadata_is_refused(tiny_dir: Path, tmp_path: Path):
    path = copy_model(tiny_dir, "tiny_int8", tmp_path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelError, match="metadata tiny_int8.json unreadable"):
        EmotionClassifier(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="metadata tiny_int8.json not found beside it"):
        EmotionClassifier(path)
    shutil.copyfile(tiny_dir / "tiny_int8.json", tmp_path / "missing.json")
    with pytest.raises(ModelError, match="cannot read it"):
        EmotionClassifier(tmp_path / "missing.tflite")


# --- reload ----------------------------------------------------------------------------------------

def test_reload_with_a_bad_model_keeps_serving_the_old_one(tiny_dir: Path, tmp_path: Path, eval_set):
    faces = eval_set[0][:20]
    path = copy_model(tiny_dir, "tiny_int8", tmp_path)
    classifier = EmotionClassifier(path)
    before_info, before = classifier.info, classifier.classify_faces(faces)
    _corrupt(path)  # a copy gone wrong, in place
    with pytest.raises(ModelError, match="sha256 mismatch"):
        classifier.reload()
    with pytest.raises(ModelError, match="output expected 7 values"):
        classifier.reload(copy_model(tiny_dir, "five_classes_int8", tmp_path))
    assert classifier.info == before_info
    np.testing.assert_array_equal(classifier.classify_faces(faces), before)
    # A good model swaps in.
    info = classifier.reload(tiny_dir / "tiny_float.tflite")
    assert info == classifier.info and info.input_dtype == "float32" and info.sha256 != before_info.sha256
    np.testing.assert_allclose(classifier.classify_faces(faces), before, atol=0.05)


def test_one_interpreter_per_model_never_per_frame(tiny_dir: Path):
    real = load_runtime()
    created = []

    def counting(**kwargs):
        created.append(kwargs)
        return real.interpreter(**kwargs)

    classifier = EmotionClassifier(tiny_dir / "tiny_int8.tflite", threads=2,
                                   runtime=Runtime(real.name, real.version, counting))
    frame = np.random.default_rng(2).integers(0, 256, (120, 160)).astype(np.uint8)
    for _ in range(50):
        classifier.classify(frame, (40, 20, 60, 60))
    assert len(created) == 1 and created[0]["num_threads"] == 2
    classifier.reload()
    assert len(created) == 2


def test_reload_while_classifying_from_another_thread(tiny_dir: Path, eval_set):
    faces, labels = eval_set[0][:10], eval_set[1][:10]
    classifier = EmotionClassifier(tiny_dir / "tiny_int8.tflite")
    stop, errors, results = threading.Event(), [], []

    def classify_loop():
        while not stop.is_set():
            try:
                results.append(classifier.classify_faces(faces))
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    worker = threading.Thread(target=classify_loop)
    worker.start()
    try:
        for i in range(6):
            classifier.reload(tiny_dir / ("tiny_float.tflite" if i % 2 == 0 else "tiny_int8.tflite"))
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not errors
    assert results
    for probs in results:
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
        assert (probs.argmax(axis=1) == labels).mean() >= 0.9


# --- the numpy 1.26 + tflite-runtime 2.14 stack (Bookworm) -----------------------------------------

def test_tflite_runtime_stack_gives_the_same_probabilities(tiny_dir: Path, tiny: EmotionClassifier, eval_set,
                                                          tmp_path: Path):
    python = venv_python(TFLITE_VENV)
    faces = eval_set[0]
    probs, runtime = run_in_venv(python, tiny_dir / "tiny_int8.tflite", faces, tmp_path)
    assert runtime.startswith("tflite_runtime 2.14")
    assert np.abs(probs - tiny.classify_faces(faces)).max() <= 0.02


# --- the shipped model on real FER2013 faces -------------------------------------------------------

@pytest.fixture(scope="module")
def shipped() -> EmotionClassifier:
    if not SHIPPED.exists():
        pytest.skip(f"{SHIPPED.relative_to(REPO)} not there yet: it is trained and flashed by `python -m convert`")
    # The FER2013 image is the whole face crop: no margin, so the box is the image.
    return EmotionClassifier(SHIPPED, crop_margin=0.0)


@pytest.fixture(scope="module")
def private_test(fer2013: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first PrivateTest faces with their ORIGINAL (unequalised) pixels, and their labels."""
    path = fer2013 / "fer2013_original_test.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} not found: it holds the original-pixel PublicTest/PrivateTest faces")
    faces, labels = [], []
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["Usage"] == "PrivateTest":
                faces.append(np.array(row["pixels"].split(), dtype=np.uint8).reshape(48, 48))
                labels.append(int(row["emotion"]))
                if len(labels) == FER_FACES:
                    break
    return np.stack(faces), np.array(labels)


def test_shipped_model_on_original_fer2013_faces(shipped: EmotionClassifier, private_test):
    raw, labels = private_test
    probs = np.array([shipped.classify(face, (0, 0, 48, 48)) for face in raw])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(shipped.classify_faces(np.stack([face_pixels(f) for f in raw])), probs)
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    print(f"\nshipped model: {accuracy:.1%} on the first {len(labels)} PrivateTest faces (original pixels)")
    majority = np.bincount(labels).max() / len(labels)
    assert accuracy > majority + 0.2  # clearly above chance (1/7) and above always-happy
    if shipped.info.accuracy is not None:
        assert accuracy >= shipped.info.accuracy - 0.08  # agrees with its own report within sampling noise


def test_shipped_model_on_the_tflite_runtime_stack(shipped: EmotionClassifier, private_test, tmp_path: Path):
    python = venv_python(TFLITE_VENV)
    faces = np.stack([face_pixels(f) for f in private_test[0][:100]])
    probs, runtime = run_in_venv(python, SHIPPED, faces, tmp_path)
    assert runtime.startswith("tflite_runtime 2.14")
    litert = shipped.classify_faces(faces)
    # Both run int8 kernels, but not the same ones (XNNPACK vs the reference ops): rounding
    # differs by a few output steps (1/256) on some faces; the answers must not.
    difference = np.abs(probs - litert)
    print(f"\ntflite-runtime vs LiteRT: mean {difference.mean():.4f}, max {difference.max():.4f}, "
          f"top-1 agreement {(probs.argmax(1) == litert.argmax(1)).mean():.0%}")
    assert difference.mean() <= 0.004
    assert difference.max() <= 0.04
    assert (probs.argmax(1) == litert.argmax(1)).mean() >= 0.97
