"""Haar face detection on real photos: placement, region search, largest face."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.config import DetectorConfig
from device.demo_input import demo_frames, load_astronaut
from device.faces import DetectorError, FaceDetector

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: Centre and side of the astronaut's face in face_640x480.jpg, checked by eye.
FACE_CENTRE = (291, 112)
FACE_SIDE = 86


def gray(name: str) -> np.ndarray:
    image = cv2.imread(str(FIXTURES / name), cv2.IMREAD_GRAYSCALE)
    assert image is not None, name
    return image


def centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The same scene with the camera panned: content moves by (dx, dy), edges replicated."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return gray("face_640x480.jpg")


@pytest.fixture(scope="module")
def no_face() -> np.ndarray:
    return gray("no_face_640x480.jpg")


@pytest.mark.parametrize("detect_width", [320, 640])
def test_finds_the_astronaut_where_she_is(face: np.ndarray, detect_width: int) -> None:
    detector = FaceDetector(DetectorConfig(detect_width=detect_width))
    box = detector.detect(face)
    assert detector.last_pass == "full"
    assert box is not None
    cx, cy = centre(box)
    assert abs(cx - FACE_CENTRE[0]) < 12 and abs(cy - FACE_CENTRE[1]) < 12, box
    assert 0.75 * FACE_SIDE < box[2] < 1.3 * FACE_SIDE, box


def test_no_face_in_a_photo_without_one(no_face: np.ndarray) -> None:
    detector = FaceDetector(DetectorConfig())
    assert detector.detect(no_face) is None
    assert detector.detect_all(no_face) == []


def test_region_search_follows_the_face_then_a_full_pass_runs(face: np.ndarray) -> None:
    detector = FaceDetector(DetectorConfig(region_frames=3))
    assert detector.detect(face) is not None and detector.last_pass == "full"
    passes = []
    for step in range(1, 4):
        box = detector.detect(shifted(face, 8 * step, 4 * step))
        passes.append(detector.last_pass)
        assert box is not None
        cx, cy = centre(box)
        assert abs(cx - (FACE_CENTRE[0] + 8 * step)) < 12 and abs(cy - (FACE_CENTRE[1] + 4 * step)) < 12
    assert passes == ["region", "region", "region"]
    detector.detect(face)
    assert detector.last_pass == "full"  # region_frames used up


def test_a_miss_in_the_region_falls_back_to_a_full_pass_in_the_same_call(
    face: np.ndarray, no_face: np.ndarray
) -> None:
    detector = FaceDetector(DetectorConfig(region_frames=4))
    assert detector.detect(face) is not None
    # The face jumped far outside the region: the region misses, the full pass finds it.
    moved = np.full_like(face, 128)
    moved[:, :300] = face[:, 150:450]
    box = detector.detect(moved)
    assert detector.last_pass == "region+full"
    assert box is not None and abs(centre(box)[0] - (FACE_CENTRE[0] - 150)) < 12
    # Gone altogether: region miss, full miss, and the next call starts with a full pass.
    assert detector.detect(no_face) is None and detector.last_pass == "region+full"
    detector.detect(face)
    assert detector.last_pass == "full"


def test_region_frames_zero_always_scans_the_whole_frame(face: np.ndarray) -> None:
    detector = FaceDetector(DetectorConfig(region_frames=0))
    passes = []
    for _ in range(3):
        detector.detect(face)
        passes.append(detector.last_pass)
    assert passes == ["full", "full", "full"]


def test_the_largest_face_wins(face: np.ndarray) -> None:
    portrait = cv2.cvtColor(load_astronaut(), cv2.COLOR_BGR2GRAY)
    scene = np.full((480, 960), 128, np.uint8)
    scene[:, :640] = face  # face side about 86 px
    small = cv2.resize(portrait, (288, 288), interpolation=cv2.INTER_AREA)  # face side about 54 px
    scene[100:388, 660:948] = small
    detector = FaceDetector(DetectorConfig(detect_width=960))
    faces = detector.detect_all(scene)
    assert len(faces) == 2, faces
    assert faces[0][2] > faces[1][2]
    assert centre(faces[1])[0] > 660  # the small one is on the right
    assert detector.detect(scene) == faces[0]


def test_detect_all_leaves_tracking_alone(face: np.ndarray) -> None:
    detector = FaceDetector(DetectorConfig())
    assert len(detector.detect_all(face)) == 1
    detector.detect(face)
    assert detector.last_pass == "full"  # detect_all did not arm the region search


def test_reset_forgets_the_last_face(face: np.ndarray) -> None:
    detector = FaceDetector(DetectorConfig())
    detector.detect(face)
    detector.reset()
    detector.detect(face)
    assert detector.last_pass == "full"


def test_demo_sequence_has_faces_then_none() -> None:
    detector = FaceDetector(DetectorConfig())
    hits = [detector.detect(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)) is not None for f in demo_frames(20, 10)]
    assert sum(hits[:20]) >= 18
    assert not any(hits[20:])


def test_colour_input_is_refused_clearly(face: np.ndarray) -> None:
    with pytest.raises(ValueError, match="grayscale"):
        FaceDetector(DetectorConfig()).detect(cv2.cvtColor(face, cv2.COLOR_GRAY2BGR))


def test_missing_cascade_says_which_opencv_to_install(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="opencv-python-headless<5"):
        FaceDetector(DetectorConfig(), cascade=tmp_path / "haarcascade_frontalface_default.xml")


def test_a_file_that_is_not_a_cascade_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "cascade.xml"
    bogus.write_text("<opencv_storage><nothing/></opencv_storage>")
    with pytest.raises(DetectorError, match="cannot load"):
        FaceDetector(DetectorConfig(), cascade=bogus)


def _ms(run, repeat: int = 40) -> float:
    """Median milliseconds per call: the machine is shared, so the mean would measure the neighbours."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


if __name__ == "__main__":
    # Timings (printed, never asserted): python tests/test_faces.py
    frame = gray("face_640x480.jpg")
    print(f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads, 640x480 frame with one face")
    for width in (640, 320):
        detector = FaceDetector(DetectorConfig(detect_width=width, region_frames=0))
        print(f"full frame, detect_width {width}: {_ms(lambda: detector.detect(frame)):.1f} ms")
        tracker = FaceDetector(DetectorConfig(detect_width=width, region_frames=100))
        tracker.detect(frame)
        print(f"region,     detect_width {width}: {_ms(lambda: tracker.detect(frame)):.1f} ms")
