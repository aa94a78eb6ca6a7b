"""The daemon: wiring, lifecycle and the main loop.

One loop at ``[pipeline] fps`` takes the camera's newest frame, finds the
face, classifies it and feeds the stabiliser; everything else (music,
display, MQTT, log) hangs off the bus and runs on its own thread. The loop
owns the commands that change it: ``camera`` (privacy switch),
``reload_model`` and ``mood`` (a user override).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from device.bus import Bus, Output
from device.config import Config
from device.events import (
    CameraState,
    Command,
    CommandResult,
    ComponentState,
    FaceReading,
    PipelineStats,
    Shutdown,
)

__all__ = ["DAEMON_COMMANDS", "Daemon", "Parts", "install_signal_handlers"]

log = logging.getLogger(__name__)

#: Commands the loop itself answers; outputs own the rest (see Output.commands).
DAEMON_COMMANDS = frozenset({"camera", "reload_model", "mood"})
#: Camera states in which no new frames are expected, so their absence is not a hang.
_NO_FRAMES_EXPECTED = frozenset({"off", "camera_lost"})


@dataclass
class Parts:
    """The loop's collaborators, injected so every one can be a real software stand-in."""

    camera_factory: Callable[[], object]  # -> device.camera.Camera, opened
    detector: object  # device.faces.FaceDetector
    classifier: object  # device.emotion.EmotionClassifier
    stabiliser: object  # device.mood.Stabiliser
    notifier: object | None = None  # device.systemd.Notifier
    outputs: list[Output] = field(default_factory=list)


class _Timings:
    """Rolling per-stage milliseconds over the last few seconds of frames."""

    def __init__(self, size: int = 50) -> None:
        self.capture: deque[float] = deque(maxlen=size)
        self.detect: deque[float] = deque(maxlen=size)
        self.classify: deque[float] = deque(maxlen=size)
        self.ticks: deque[float] = deque(maxlen=size)
        self.frames = 0
        self.faces = 0

    @staticmethod
    def mean(values: deque[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    def fps(self) -> float:
        if len(self.ticks) < 2:
            return 0.0
        span = self.ticks[-1] - self.ticks[0]
        return (len(self.ticks) - 1) / span if span > 0 else 0.0


class Daemon:
    def __init__(self, config: Config, parts: Parts, bus: Bus | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.parts = parts
        self.bus = bus or Bus()
        self.clock = clock
        self.stop_event = threading.Event()
        self.timings = _Timings()
        self.face_present = False
        self.camera_on = True
        self.camera = None
        self.camera_state = ""
        self.end_of_input = False
        self._last_seq: int | None = None
        self._open_failures = 0
        self._open_retry_at = 0.0
        self._commands: queue.Queue[Command] = queue.Queue()
        self._owned: set[str] = set()  # command names some output answers
        self.bus.listen(self._take_command)

    # -- commands -------------------------------------------------------

    def _take_command(self, event: object) -> None:
        """Runs on the publisher's thread: queue our commands, refuse ones nobody owns."""
        if not isinstance(event, Command):
            return
        if event.name in DAEMON_COMMANDS:
            self._commands.put(event)
        elif event.name not in self._owned:
            self.bus.publish(CommandResult(event, ok=False, error=f"'{event.name}' is not available: "
                                           "the part that handles it is disabled or failed to start"))

    def _handle_command(self, command: Command) -> None:
        try:
            if command.name == "camera":
                self._set_camera(bool(command.value))
            elif command.name == "reload_model":
                self._reload_model(command.value)
            elif command.name == "mood":
                self._override_mood(command.value)
        except Exception as exc:  # a bad command is answered, never fatal
            log.warning("command %s failed: %s", command.name, exc)
            self.bus.publish(CommandResult(command, ok=False, error=str(exc)))
            return
        self.bus.publish(CommandResult(command, ok=True))

    def _set_camera(self, on: bool) -> None:
        if on == self.camera_on:
            return
        self.camera_on = on
        if on:
            self._open_camera()
        else:
            self._close_camera()
            self._publish_camera_state("off", "privacy switch")

    def _reload_model(self, path: str | None) -> None:
        classifier = self.parts.classifier
        target = path or str(self.config.resolve(self.config.model.path))
        try:
            classifier.reload(target)
        except Exception as exc:
            self.bus.publish(ComponentState("model", "refused", f"{exc}; still using the previous model", error=True))
            raise
        self._publish_model()

    def _override_mood(self, value) -> None:
        """value: None/"clear" ends an override; else (mood, minutes)."""
        stabiliser = self.parts.stabiliser
        now = self.clock()
        if value in (None, "clear"):
            change = stabiliser.cancel_override()
        else:
            mood, minutes = value
            change = stabiliser.override(mood, now + float(minutes) * 60.0)
        if change is not None:
            self.bus.publish(change)

    # -- camera ---------------------------------------------------------

    def _publish_camera_state(self, state: str, detail: str = "") -> None:
        if state != self.camera_state:
            self.camera_state = state
            self.bus.publish(CameraState(state, detail))

    def _open_camera(self) -> None:
        """Open the camera; when none can be opened, say so and try again later, with backoff."""
        if not self.camera_state or self.camera_state == "off":
            self._publish_camera_state("starting")
        try:
            self.camera = self.parts.camera_factory()
        except Exception as exc:
            self.camera = None
            self._open_failures += 1
            delay = min(self.config.camera.reopen_max_s, 2.0 ** (self._open_failures - 1))
            self._open_retry_at = self.clock() + delay
            self._publish_camera_state("camera_lost", f"{exc} (retrying in {delay:.0f} s)")
        else:
            self._open_failures = 0

    def _close_camera(self) -> None:
        if self.camera is not None:
            self.camera.close()
            self.camera = None

    def _publish_model(self) -> None:
        self.bus.publish(self.parts.classifier.info.loaded_event())

    # -- the loop -------------------------------------------------------

    def start(self) -> None:
        """Open the camera, start outputs; READY once the model and camera are up."""
        for output in self.parts.outputs:
            self.bus.attach(output)
            self._owned |= output.commands
        self._publish_model()
        self._open_camera()
        if self.parts.notifier is not None:
            self.parts.notifier.ready()
            self.parts.notifier.status("running: waiting for a face")

    def step(self) -> bool:
        """One pass of the loop. Returns True when a new frame was processed."""
        while not self._commands.empty():
            self._handle_command(self._commands.get_nowait())
        if not self.camera_on:
            return False
        if self.camera is None:
            if self.clock() >= self._open_retry_at:
                self._open_camera()
            return False
        started = self.clock()
        frame = self.camera.latest(timeout=1.0 / self.config.pipeline.fps)
        state, detail = self.camera.state
        if state == "ended":
            self.end_of_input = True
            return False
        self._publish_camera_state(state, detail)
        if frame is None or frame.seq == self._last_seq:
            return False
        self._last_seq = frame.seq
        grabbed = self.clock()
        gray = frame.gray
        box = self.parts.detector.detect(gray)
        detected = self.clock()
        probabilities = self.parts.classifier.classify(gray, box) if box is not None else None
        classified = self.clock()
        change = self.parts.stabiliser.update(FaceReading(frame.timestamp, box, probabilities))
        self._account(started, grabbed, detected, classified, box is not None)
        if change is not None:
            self.bus.publish(change)
            if self.parts.notifier is not None:
                self.parts.notifier.status(f"running: mood {change.mood} ({change.confidence:.0%})")
        return True

    def _account(self, started, grabbed, detected, classified, face) -> None:
        t = self.timings
        t.capture.append((grabbed - started) * 1000)
        t.detect.append((detected - grabbed) * 1000)
        if face:
            t.classify.append((classified - detected) * 1000)
            t.faces += 1
        t.frames += 1
        t.ticks.append(classified)
        self.face_present = face

    def stats(self) -> PipelineStats:
        t = self.timings
        smoothed = self.parts.stabiliser.probabilities
        return PipelineStats(
            fps=t.fps(), capture_ms=t.mean(t.capture), detect_ms=t.mean(t.detect),
            classify_ms=t.mean(t.classify), frames=t.frames, faces=t.faces, face_present=self.face_present,
            probabilities=smoothed,
        )

    def run(self) -> int:
        """Loop until stopped (signal, or the end of a non-looping replay). Returns the exit code."""
        period = 1.0 / self.config.pipeline.fps
        stats_every = self.config.pipeline.stats_interval_s
        next_stats = self.clock() + stats_every
        try:
            self.start()
            next_tick = self.clock()
            while not self.stop_event.is_set() and not self.end_of_input:
                processed = self.step()
                if self.parts.notifier is not None:
                    # Progress is a processed frame, or a camera we know is off or lost (its
                    # own backoff handles that): a stuck loop or a silently frozen camera stops
                    # the pings and systemd restarts us.
                    self.parts.notifier.watchdog(progress=processed or self.camera_state in _NO_FRAMES_EXPECTED)
                now = self.clock()
                if now >= next_stats:
                    self.bus.publish(self.stats())
                    next_stats = now + stats_every
                next_tick = max(next_tick + period, now)
                self.stop_event.wait(max(0.0, next_tick - self.clock()))
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        if self.parts.notifier is not None:
            self.parts.notifier.stopping()
        self._close_camera()
        self.bus.publish(Shutdown())
        self.bus.stop(timeout=1.5)

    def stop(self) -> None:
        self.stop_event.set()


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM/SIGINT end the loop; the camera is released on the way out."""

    def handler(signum, _frame):
        log.info("%s received: stopping", signal.Signals(signum).name)
        daemon.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
