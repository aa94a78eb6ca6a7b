"""Cameras: replay from folders and real video files, newest-frame-only capture,
loss and reopen with backoff, quick release, and the auto fallback's error."""

from __future__ import annotations

import sys
import threading
import time
import tracemalloc
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from device import camera as camera_module
from device.camera import (
    CameraError,
    CameraStatus,
    CaptureThread,
    Frame,
    OpenCVSource,
    Picamera2Source,
    ReplaySource,
    open_camera,
)
from device.config import CameraConfig
from device.demo_input import write_demo_frames


def wait_for(predicate, timeout: float = 10.0) -> None:
    """Poll until ``predicate()`` holds; the bound only guards liveness."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def level(image: np.ndarray) -> int:
    return int(round(float(image.mean())))


def write_images(folder: Path, names_levels: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in names_levels.items():
        assert cv2.imwrite(str(folder / name), np.full((48, 64, 3), value, np.uint8))
    return folder


def write_video(path: Path, levels: list[int]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for value in levels:
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    return path


def drain(camera: CaptureThread, limit: int = 1000) -> list[Frame]:
    """Every frame ``latest`` hands out until the camera says the input ended."""
    frames = []
    for _ in range(limit):
        frame = camera.latest(timeout=5)
        if frame is None:
            assert camera.state.state == "ended"
            return frames
        assert camera.state.state == "ok"
        frames.append(frame)
    raise AssertionError("the input never ended")


class StateLog:
    """Polls ``camera.state`` like the main loop does, keeping each change."""

    def __init__(self, camera: CaptureThread) -> None:
        self.camera = camera
        self.states: list[CameraStatus] = []

    def poll(self) -> CameraStatus:
        state = self.camera.state
        if not self.states or self.states[-1] != state:
            self.states.append(state)
        return state

    def until(self, predicate, timeout: float = 10.0) -> None:
        wait_for(lambda: predicate(self.poll()), timeout)

    def names(self) -> list[str]:
        return [s.state for s in self.states]


class ScriptedSource:
    """A software stand-in for a camera: ``fail_reads`` reads raise, ``fail_opens`` reopens raise."""

    paced = False
    name = "scripted"

    def __init__(self, shape=(48, 64), fail_after: int | None = None, fail_reads: int = 0, fail_opens: int = 0):
        self.shape = shape
        self.fail_after = fail_after
        self.fail_reads = fail_reads
        self.fail_opens = fail_opens
        self.reads = self.opens = self.closes = 0
        self.is_open = False
        self.block = threading.Event()
        self.block.set()

    def open(self) -> None:
        if self.opens and self.fail_opens > 0:
            self.fail_opens -= 1
            raise OSError("device busy")
        self.opens += 1
        self.is_open = True

    def read(self) -> np.ndarray:
        assert self.is_open, "read on a closed source"
        self.block.wait()
        if self.fail_after is not None and self.reads >= self.fail_after and self.fail_reads > 0:
            self.fail_reads -= 1
            raise OSError("USB disconnect")
        self.reads += 1
        return np.full(self.shape, self.reads % 256, np.uint8)

    def close(self) -> None:
        if self.is_open:
            self.closes += 1
        self.is_open = False


# --- replay sources ---------------------------------------------------------------------------


def test_image_folder_plays_in_file_name_order(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "frames", {"b.png": 20, "a.jpg": 10, "c.bmp": 30, "0.png": 5})
    (folder / "notes.txt").write_text("not an image")
    source = ReplaySource(folder, loop=False)
    source.open()
    seen = [level(source.read()) for _ in range(4)]
    assert seen == [5, 10, 20, 30]
    assert source.read() is None
    source.close()


def test_image_folder_loops_and_picks_up_new_files(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "frames", {"1.png": 10, "2.png": 20})
    source = ReplaySource(folder, loop=True)
    source.open()
    assert [level(source.read()) for _ in range(2)] == [10, 20]
    write_images(folder, {"3.png": 30})
    assert [level(source.read()) for _ in range(4)] == [10, 20, 30, 10]


def test_unreadable_image_is_skipped(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "frames", {"1.png": 10, "3.png": 30})
    (folder / "2.png").write_bytes(b"not a png")
    source = ReplaySource(folder, loop=False)
    source.open()
    assert [level(source.read()), level(source.read())] == [10, 30]


def test_demo_input_replays_in_order(tmp_path: Path) -> None:
    folder = write_demo_frames(tmp_path / "demo", face_frames=3, empty_frames=2)
    assert sorted(p.name for p in folder.iterdir())[0] == "frame_0000.jpg"
    source = ReplaySource(folder, loop=False)
    source.open()
    frames = [source.read() for _ in range(5)]
    assert source.read() is None
    assert all(f.shape == (480, 640, 3) for f in frames)
    assert frames[0].std() > 40 and frames[-1].std() < 20  # the portrait, then the bare wall


def test_video_file_plays_then_ends_or_loops(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", [0, 50, 100, 150, 200])
    once = ReplaySource(video, loop=False)
    once.open()
    levels = [level(once.read()) for _ in range(5)]
    assert all(abs(got - want) <= 3 for got, want in zip(levels, [0, 50, 100, 150, 200])), levels
    assert once.read() is None
    once.close()
    looping = ReplaySource(video, loop=True)
    looping.open()
    levels = [level(looping.read()) for _ in range(7)]
    assert abs(levels[5] - 0) <= 3 and abs(levels[6] - 50) <= 3, levels
    looping.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "not found"),
        (lambda p: p, "holds no images"),
        (lambda p: (p / "clip.mp4").write_bytes(b"\0" * 64) and p / "clip.mp4", "not a readable video"),
    ],
)
def test_bad_replay_input_gets_a_clear_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(CameraError, match=message):
        open_camera(CameraConfig(source="replay", path="x"), path=make(tmp_path))


def test_replay_needs_a_path() -> None:
    with pytest.raises(CameraError, match="camera.path"):
        open_camera(CameraConfig(source="replay"))


# --- the capture thread -----------------------------------------------------------------------


def test_capture_thread_delivers_a_finite_input_then_reports_its_end(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "frames", {f"{i:02d}.png": 10 * i for i in range(1, 7)})
    camera = open_camera(CameraConfig(source="replay", path=str(folder), fps=50, loop=False))
    frames = drain(camera)
    levels = [level(f.image) for f in frames]
    # A consumer may miss frames (only the newest is kept) but never sees them out of order.
    assert levels == sorted(levels) and levels[-1] == 60
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})
    assert all(a.timestamp < b.timestamp for a, b in zip(frames, frames[1:]))
    assert camera.latest(timeout=0.1) is None and camera.state == ("ended", camera.name)
    camera.close()
    assert camera.state == ("off", "")


def test_looping_replay_keeps_going(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "frames", {"1.png": 10, "2.png": 20})
    camera = open_camera(CameraConfig(source="replay", path=str(folder), fps=100, loop=True))
    seqs = []
    while len(seqs) < 6:
        frame = camera.latest(timeout=5)
        assert frame is not None
        seqs.append(frame.seq)
    assert seqs[-1] > 2  # past the two files
    camera.close()


def test_a_real_video_file_through_open_camera(tmp_path: Path) -> None:
    video = write_video(tmp_path / "clip.avi", [0, 50, 100, 150, 200])
    camera = open_camera(CameraConfig(source="replay", path="clip.avi", fps=50, loop=False), path=video)
    frames = drain(camera)
    assert frames and abs(level(frames[-1].image) - 200) <= 3
    assert frames[-1].image.shape == (48, 64, 3)
    camera.close()


def test_a_slow_consumer_gets_the_newest_frame_and_memory_stays_flat() -> None:
    source = ScriptedSource(shape=(480, 640))
    camera = CaptureThread(source, fps=1000)
    tracemalloc.start()
    try:
        camera.open()
        first = camera.latest(timeout=5)
        assert first is not None
        baseline = tracemalloc.get_traced_memory()[0]
        wait_for(lambda: source.reads >= first.seq + 100)  # >100 frames of 300 KB produced meanwhile
        produced = source.reads
        frame = camera.latest(timeout=5)
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
        camera.close()
    assert frame is not None
    assert frame.seq >= produced - 1  # the newest, not the next in a queue
    assert frame.seq > first.seq + 50  # the frames in between were dropped
    assert grown < 5 * 640 * 480, f"memory grew by {grown} bytes"


def test_latest_returns_each_frame_once_and_none_on_timeout() -> None:
    source = ScriptedSource()
    camera = CaptureThread(source, fps=1000)
    camera.open()
    frame = camera.latest(timeout=5)
    assert frame is not None
    source.block.clear()  # the camera delivers nothing more
    time.sleep(0.01)
    newest = camera.latest(timeout=0.01)  # at most the one frame read before the block
    assert camera.latest(timeout=0.05) is None
    assert newest is None or newest.seq > frame.seq
    source.block.set()
    camera.close()


def test_failing_reads_reopen_with_backoff_and_report_lost_then_ok() -> None:
    source = ScriptedSource(fail_after=3, fail_reads=1, fail_opens=4)
    camera = CaptureThread(source, fps=200, backoff_start_s=0.05, reopen_max_s=0.2)
    states = StateLog(camera)
    camera.open()
    states.until(lambda s: s.state == "ok" and source.opens == 2)
    names = [n for n in states.names() if n != "starting"]
    assert names[0] == "ok" and names[-1] == "ok" and set(names[1:-1]) == {"camera_lost"}, names
    lost = [s.detail for s in states.states if s.state == "camera_lost"]
    assert "USB disconnect" in lost[0] and all("device busy" in d for d in lost[1:])
    # Each wait is at least 50 ms, so polling sees every retry: doubling, capped at reopen_max_s.
    retries = [d.rsplit("; ", 1)[1] for d in lost]
    assert retries == [f"retry {n} in {w:g} s" for n, w in enumerate([0.05, 0.1, 0.2, 0.2, 0.2], 1)]
    assert source.closes >= 1 and source.is_open
    assert camera.latest(timeout=5) is not None
    camera.close()
    assert camera.state.state == "off" and not source.is_open


def test_a_replay_folder_that_vanishes_and_returns(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "frames", {f"{i}.png": 10 * i for i in range(1, 4)})
    camera = CaptureThread(ReplaySource(folder, loop=True), fps=100, backoff_start_s=0.01, reopen_max_s=0.05)
    states = StateLog(camera)
    camera.open()
    assert camera.latest(timeout=5) is not None
    states.until(lambda s: s.state == "ok")
    hidden = folder.rename(tmp_path / "away")
    states.until(lambda s: s.state == "camera_lost" and "retry 3 " in s.detail)
    assert "not found" in camera.state.detail
    hidden.rename(folder)
    states.until(lambda s: s.state == "ok")
    frame = camera.latest(timeout=5)
    assert frame is not None and level(frame.image) in (10, 20, 30)
    names = [n for n in states.names() if n != "starting"]
    assert names[0] == "ok" and "camera_lost" in names and names[-1] == "ok", names
    camera.close()


def test_a_read_stuck_in_the_driver_is_reported_as_lost() -> None:
    source = ScriptedSource()
    camera = CaptureThread(source, fps=200, read_timeout_s=0.02)
    camera.open()
    assert camera.latest(timeout=5) is not None
    source.block.clear()
    wait_for(lambda: camera.latest(timeout=0.02) is None and camera.state.state == "camera_lost")
    assert "no frame for" in camera.state.detail
    source.block.set()
    wait_for(lambda: camera.state.state == "ok")
    camera.close()


def test_a_camera_that_never_delivers_a_first_frame_is_reported_as_lost() -> None:
    source = ScriptedSource()
    source.block.clear()
    camera = CaptureThread(source, fps=200, read_timeout_s=0.02)
    camera.open()
    assert camera.state.state == "starting"
    wait_for(lambda: camera.latest(timeout=0.02) is None and camera.state.state == "camera_lost")
    source.block.set()
    camera.close()


def test_close_releases_the_source_quickly_even_between_slow_frames(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "frames", {"1.png": 10, "2.png": 20})
    source = ReplaySource(folder, loop=True)
    camera = CaptureThread(source, fps=0.2)  # the thread sleeps 5 s between frames
    camera.open()
    assert camera.latest(timeout=5) is not None
    started = time.monotonic()
    camera.close()
    assert time.monotonic() - started < 1.0
    assert camera.state == ("off", "")
    assert camera.latest(timeout=0.01) is None  # closed: nothing, and no error
    camera.open()  # privacy off again: the same camera reopens
    assert camera.latest(timeout=5) is not None
    camera.close()


def test_frame_gray() -> None:
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 255  # pure red
    assert Frame(bgr, 0.0, 1).gray.shape == (4, 4)
    assert int(Frame(bgr, 0.0, 1).gray[0, 0]) == 76  # ITU-R 601 luma of red
    gray = np.zeros((4, 4), np.uint8)
    assert Frame(gray, 0.0, 1).gray is gray


# --- hardware backends and auto ---------------------------------------------------------------


def test_auto_without_any_camera_says_what_it_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    monkeypatch.setattr(camera_module, "AUTO_DEVICE", str(tmp_path / "video0"))
    with pytest.raises(CameraError) as info:
        open_camera(CameraConfig(source="auto"))
    message = str(info.value)
    assert message.startswith("No camera found: ")
    assert "picamera2 is not installed" in message and f"{tmp_path / 'video0'} does not exist" in message


def test_opencv_source_with_a_missing_device(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        open_camera(CameraConfig(source="opencv", path=str(tmp_path / "video7")))


def test_opencv_source_parses_index_and_path() -> None:
    assert OpenCVSource("", 640, 480, 10, 2).name == "opencv 0"
    assert OpenCVSource("2", 640, 480, 10, 2).name == "opencv 2"
    assert OpenCVSource("/dev/video1", 640, 480, 10, 2).name == "opencv /dev/video1"


class FakePicamera2:
    """picamera2's API surface that Picamera2Source uses, answering like libcamera does."""

    instances: list[FakePicamera2] = []
    stall = False

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        FakePicamera2.instances.append(self)

    @staticmethod
    def global_camera_info() -> list[dict]:
        return [{"Model": "imx708"}]

    def create_video_configuration(self, **kwargs):
        self.calls.append(("config", kwargs))
        return kwargs

    def configure(self, config) -> None:
        self.config = config

    def start(self) -> None:
        self.calls.append(("start",))

    def capture_array(self, name: str, wait=None) -> np.ndarray:
        self.calls.append(("capture", name, wait))
        if FakePicamera2.stall:
            raise TimeoutError
        width, height = self.config["lores"]["size"]
        stride = width + 32  # libcamera pads rows
        yuv = np.full((height * 3 // 2, stride), 200, np.uint8)
        yuv[:height, :width] = 90  # the Y plane
        return yuv

    def stop(self) -> None:
        self.calls.append(("stop",))

    def close(self) -> None:
        self.calls.append(("close",))


def test_picamera2_source_reads_the_lores_y_plane_with_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    FakePicamera2.instances.clear()
    source = Picamera2Source(320, 240, 5.0, read_timeout_s=1.5)
    source.open()
    image = source.read()
    assert image.shape == (240, 320) and image.flags.c_contiguous and (image == 90).all()
    fake = FakePicamera2.instances[0]
    config = fake.calls[0][1]
    assert config["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert config["controls"] == {"FrameRate": 5.0}
    assert ("capture", "lores", 1.5) in fake.calls
    FakePicamera2.stall = True
    try:
        with pytest.raises(CameraError, match="no frame from the Pi camera in 1.5 s"):
            source.read()
    finally:
        FakePicamera2.stall = False
    source.close()
    assert fake.calls[-2:] == [("stop",), ("close",)]


def test_picamera2_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(CameraError, match="apt install python3-picamera2"):
        open_camera(CameraConfig(source="picamera2"))
