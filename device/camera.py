"""Frame sources: Pi camera, USB webcam, replayed files, behind one small interface.

Every backend is a :class:`FrameSource` (open, blocking read, close) wrapped in
a :class:`CaptureThread`, which reads in its own thread and keeps only the
newest frame, so the single-threaded main loop always analyses the present and
memory never grows. A source that fails or stalls is closed and reopened with
exponential backoff; the loop polls ``camera.state`` (``ok``, ``camera_lost``
with a reason, ``ended`` after a finite replay, ``off``) instead of catching errors.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import cv2
import numpy as np

from device.config import CameraConfig

__all__ = [
    "AUTO_DEVICE",
    "Camera",
    "CameraError",
    "CameraStatus",
    "CaptureThread",
    "Frame",
    "FrameSource",
    "IMAGE_SUFFIXES",
    "OpenCVSource",
    "Picamera2Source",
    "ReplaySource",
    "open_camera",
]

log = logging.getLogger(__name__)

#: The webcam ``source = "auto"`` falls back to when no Pi camera answers.
AUTO_DEVICE = "/dev/video0"
#: Files a replay folder plays, in file-name order; anything else is ignored.
IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})
#: First wait before reopening a lost camera; doubles up to ``reopen_max_s``.
BACKOFF_START_S = 0.5


class CameraError(RuntimeError):
    """A camera cannot be opened or read; the message says which and why."""


class CameraStatus(NamedTuple):
    """What the camera is doing; ``state, detail = camera.state`` works.

    ``state`` is a CameraState name ("starting", "ok", "camera_lost", "off") or
    "ended": a replay without ``loop`` has handed out its last frame.
    """

    state: str
    detail: str = ""


@dataclass(frozen=True)
class Frame:
    """One captured image: BGR (H, W, 3) or grayscale (H, W) uint8."""

    image: np.ndarray
    timestamp: float  # time.monotonic() when the frame arrived, seconds
    seq: int  # 1, 2, 3 ... per open; a gap means frames were skipped

    @property
    def gray(self) -> np.ndarray:
        """The frame as grayscale; free for sources that already deliver it (picamera2's Y plane)."""
        if self.image.ndim == 2:
            return self.image
        return cv2.cvtColor(self.image, cv2.COLOR_BGR2GRAY)


@runtime_checkable
class Camera(Protocol):
    """What the main loop uses: open, newest frame, state, close."""

    @property
    def state(self) -> CameraStatus: ...

    def open(self) -> None: ...

    def latest(self, timeout: float) -> Frame | None:
        """The newest frame not returned before, waiting up to ``timeout`` s; None if none came."""
        ...

    def close(self) -> None: ...


class FrameSource(Protocol):
    """One backend. ``read`` blocks for at most about one frame or its read timeout."""

    name: str
    #: True when ``read`` itself waits for the next frame (a sensor); False for files,
    #: which the capture thread paces at the configured fps.
    paced: bool

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None:
        """The next image; None at the end of a finite input; raises when the source is lost."""
        ...

    def close(self) -> None: ...


class Picamera2Source:
    """Raspberry Pi camera via picamera2 (libcamera).

    Frames come from a YUV420 ``lores`` stream: its first ``height`` rows are the
    Y plane, already grayscale, so no colour conversion runs on the Pi. Every
    capture has a numeric ``wait`` so a wedged camera raises instead of hanging.
    """

    paced = True

    def __init__(self, width: int, height: int, fps: float, read_timeout_s: float) -> None:
        self.name = "picamera2"
        self._size = (width, height)
        self._fps = fps
        self._timeout = read_timeout_s
        self._camera = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2  # lazy: only installed on a Pi
        except ImportError as exc:
            raise CameraError(f"picamera2 is not installed ({exc}); on a Pi: apt install python3-picamera2") from None
        if not Picamera2.global_camera_info():
            raise CameraError("libcamera lists no camera (is the ribbon cable seated?)")
        camera = Picamera2()
        try:
            config = camera.create_video_configuration(
                main={"size": self._size},
                lores={"size": self._size, "format": "YUV420"},
                display=None,
                encode=None,
                controls={"FrameRate": self._fps},
            )
            camera.configure(config)
            camera.start()
        except Exception:
            camera.close()
            raise
        self._camera = camera

    def read(self) -> np.ndarray | None:
        if self._camera is None:
            raise CameraError("picamera2 is not open")
        width, height = self._size
        try:
            yuv = self._camera.capture_array("lores", wait=self._timeout)
        except TimeoutError:
            raise CameraError(f"no frame from the Pi camera in {self._timeout:g} s") from None
        # Rows past ``height`` hold U and V; columns past ``width`` are stride padding.
        return np.ascontiguousarray(yuv[:height, :width])

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            try:
                camera.stop()
            finally:
                camera.close()


class OpenCVSource:
    """A V4L2 webcam, by index ("0") or device path ("/dev/video1")."""

    paced = True

    def __init__(self, device: str, width: int, height: int, fps: float, read_timeout_s: float) -> None:
        self._target: int | str = int(device) if device.isdigit() else device or 0
        self.name = f"opencv {self._target}"
        self._size = (width, height)
        self._fps = fps
        self._timeout = read_timeout_s
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        if isinstance(self._target, str) and not Path(self._target).exists():
            raise CameraError(f"{self._target} does not exist")
        # OpenCV's V4L2 backend ignores CAP_PROP_READ_TIMEOUT_MSEC and waits 10 s per
        # missing frame unless this is set before its first read.
        os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", str(max(1, math.ceil(self._timeout))))
        capture = cv2.VideoCapture(self._target, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"V4L2 cannot open {self._target}")
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        capture.set(cv2.CAP_PROP_FPS, self._fps)
        self._capture = capture

    def read(self) -> np.ndarray | None:
        if self._capture is None:
            raise CameraError(f"{self.name} is not open")
        ok, image = self._capture.read()
        if not ok:
            raise CameraError(f"{self.name}: read failed or timed out")
        return image

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()


class ReplaySource:
    """A video file, or a folder of images read in file-name order."""

    paced = False

    def __init__(self, path: str | Path, loop: bool) -> None:
        self.path = Path(path)
        self.name = f"replay {self.path}"
        self._loop = loop
        self._files: list[Path] = []
        self._index = 0
        self._video: cv2.VideoCapture | None = None

    def open(self) -> None:
        if self.path.is_dir():
            self._files = self._list()
            self._index = 0
        elif self.path.is_file():
            video = cv2.VideoCapture(str(self.path))
            if not video.isOpened():
                video.release()
                raise CameraError(f"{self.path} is not a readable video")
            self._video = video
        else:
            raise CameraError(f"replay input {self.path} not found")

    def _list(self) -> list[Path]:
        try:
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise CameraError(f"cannot list {self.path}: {exc.strerror}") from None
        if not files:
            raise CameraError(f"{self.path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files

    def read(self) -> np.ndarray | None:
        return self._read_video() if self._video is not None else self._read_image()

    def _read_image(self) -> np.ndarray | None:
        for _ in range(len(self._files) + 1):  # bounded: a folder of only bad files must not spin
            if self._index >= len(self._files):
                if not self._loop:
                    return None
                self._files = self._list()  # pick up files added or removed since the last pass
                self._index = 0
            path = self._files[self._index]
            self._index += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image
            if not path.exists():
                raise CameraError(f"{path} disappeared")
            log.warning("replay: skipping unreadable image %s", path)
        raise CameraError(f"no readable image in {self.path}")

    def _read_video(self) -> np.ndarray | None:
        assert self._video is not None
        ok, image = self._video.read()
        if ok:
            return image
        if not self._loop:
            return None
        # Reopening is the one rewind that works for every container and codec.
        self.close()
        self.open()
        assert self._video is not None
        ok, image = self._video.read()
        if not ok:
            raise CameraError(f"{self.path} has no readable frames")
        return image

    def close(self) -> None:
        video, self._video = self._video, None
        if video is not None:
            video.release()


class CaptureThread:
    """Reads a source in its own thread, keeping only the newest frame.

    ``state`` turns "ok" on frames and "camera_lost" on a failed read or reopen
    (seen by the capture thread) or a stall (seen by ``latest``), whose detail
    says why and when the next attempt is.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        fps: float,
        read_timeout_s: float = 2.0,
        reopen_max_s: float = 30.0,
        backoff_start_s: float = BACKOFF_START_S,
    ) -> None:
        self.source = source
        self._interval = 1.0 / fps
        self._read_timeout = read_timeout_s
        self._reopen_max = reopen_max_s
        self._backoff_start = backoff_start_s
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lingering: threading.Thread | None = None  # a closed thread still stuck in a read
        self._frame: Frame | None = None
        self._opened_at = 0.0
        self._delivered = 0
        self._ended = False  # the source has no more frames
        self._end_told = False  # ... and ``latest`` has said so
        self._state = CameraStatus("off")
        self._state_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def state(self) -> CameraStatus:
        # "ended" only after ``latest`` has said None, so a loop that checks the
        # state right after ``latest`` still processes the last frame.
        if self._end_told:
            return CameraStatus("ended", self.name)
        return self._state

    def open(self) -> None:
        """Open the source now (raising CameraError with the reason) and start reading."""
        if self._thread is not None:
            return
        if self._lingering is not None and self._lingering.is_alive():
            raise CameraError(f"{self.name}: the previous capture is still stuck in a read; try again later")
        try:
            self.source.open()
        except Exception as exc:
            self.source.close()
            raise CameraError(f"{self.name}: {exc}") from None
        with self._cond:
            self._frame, self._delivered, self._ended, self._end_told = None, 0, False, False
        self._stop.clear()
        self._opened_at = time.monotonic()
        self._set_state(CameraStatus("starting", self.name))
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()

    def latest(self, timeout: float) -> Frame | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._undelivered():
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or self._ended:
                    break
                self._cond.wait(left)
            else:
                assert self._frame is not None
                self._delivered = self._frame.seq
                return self._frame
            self._end_told = self._ended
            last = None if self._ended else self._frame.timestamp if self._frame is not None else self._opened_at
        self._check_stall(last)
        return None

    def _undelivered(self) -> bool:
        return self._frame is not None and self._frame.seq > self._delivered

    def _check_stall(self, last: float | None) -> None:
        """Report a read stuck inside a driver, which the capture thread cannot see itself."""
        if self._thread is None or last is None or self._state.state not in ("starting", "ok"):
            return
        silent = time.monotonic() - last
        if silent > max(2 * self._read_timeout, 3 * self._interval):
            self._set_state(CameraStatus("camera_lost", f"no frame for {silent:.1f} s"))

    def close(self, timeout: float = 1.5) -> None:
        """Stop reading and release the device (the thread closes it after its current read)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        with self._cond:
            self._end_told = False
            self._cond.notify_all()
        thread.join(timeout)
        self._lingering = thread if thread.is_alive() else None
        if thread.is_alive():
            log.warning("camera %s still in a read after %.1f s; released when it returns", self.name, timeout)
        self._set_state(CameraStatus("off"))

    def _set_state(self, state: CameraStatus) -> None:
        # Both threads report (the reader its losses, the consumer a stall); a
        # closed camera stays "off" whatever a late read says.
        with self._state_lock:
            if state == self._state or (self._stop.is_set() and state.state != "off"):
                return
            self._state = state
        if state.state == "camera_lost":
            log.warning("camera %s lost: %s", self.name, state.detail)
        elif state.state == "ok":
            log.info("camera %s ok", self.name)

    def _publish(self, image: np.ndarray) -> None:
        with self._cond:
            seq = self._frame.seq + 1 if self._frame is not None else 1
            self._frame = Frame(image, time.monotonic(), seq)
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = self._backoff_start
        attempt = 0
        is_open = True
        next_due = time.monotonic()
        try:
            while not self._stop.is_set():
                if not is_open:
                    try:
                        self.source.open()
                        is_open = True
                    except Exception as exc:
                        self.source.close()
                        attempt += 1
                        backoff = self._lost(f"reopen failed: {exc}", attempt, backoff)
                        continue
                try:
                    image = self.source.read()
                except Exception as exc:
                    self.source.close()
                    is_open = False
                    attempt += 1
                    backoff = self._lost(str(exc), attempt, backoff)
                    continue
                if image is None:
                    log.info("camera %s: end of input", self.name)
                    with self._cond:
                        self._ended = True
                        self._cond.notify_all()
                    return
                self._publish(image)
                self._set_state(CameraStatus("ok", self.name))
                backoff, attempt = self._backoff_start, 0
                if not self.source.paced:
                    next_due = max(next_due + self._interval, time.monotonic() - self._interval)
                    self._stop.wait(max(0.0, next_due - time.monotonic()))
        finally:
            self.source.close()

    def _lost(self, reason: str, attempt: int, backoff: float) -> float:
        """Report the loss, wait ``backoff`` (or until closed), return the next backoff."""
        self._set_state(CameraStatus("camera_lost", f"{reason}; retry {attempt} in {backoff:.2g} s"))
        self._stop.wait(backoff)
        return min(backoff * 2, self._reopen_max)


def _source_for(config: CameraConfig, path: Path | None) -> FrameSource:
    if config.source == "picamera2":
        return Picamera2Source(config.width, config.height, config.fps, config.read_timeout_s)
    if config.source == "opencv":
        return OpenCVSource(config.path, config.width, config.height, config.fps, config.read_timeout_s)
    if not (path or config.path):
        raise CameraError("camera.source = 'replay' needs camera.path (a video file or an image folder)")
    return ReplaySource(path or config.path, config.loop)


def open_camera(config: CameraConfig, path: Path | None = None) -> CaptureThread:
    """Build and open the configured camera; raises CameraError saying what was tried.

    ``path`` is ``camera.path`` already resolved against the config file's folder
    (``Config.resolve``); ``auto`` tries picamera2, then AUTO_DEVICE.
    """

    def capture(source: FrameSource) -> CaptureThread:
        return CaptureThread(
            source,
            fps=config.fps,
            read_timeout_s=config.read_timeout_s,
            reopen_max_s=config.reopen_max_s,
        )

    if config.source != "auto":
        camera = capture(_source_for(config, path))
        camera.open()
        return camera
    tried = []
    for source in (
        Picamera2Source(config.width, config.height, config.fps, config.read_timeout_s),
        OpenCVSource(AUTO_DEVICE, config.width, config.height, config.fps, config.read_timeout_s),
    ):
        camera = capture(source)
        try:
            camera.open()
        except CameraError as exc:
            tried.append(str(exc))
            continue
        log.info("camera: using %s", source.name)
        return camera
    raise CameraError("No camera found: " + "; ".join(tried))
