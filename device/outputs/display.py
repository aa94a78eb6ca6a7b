"""The display output: events in, OLED frames out, on a thread of its own.

``handle`` only folds the event into the display state and wakes the render
thread, so the bus never waits on I2C. The render thread draws the screen the
rule in :mod:`device.display.state` picks, and sends it only when the picture
changed and no sooner than ``1 / max_fps`` after the previous frame.

Burn-in care: the contrast drops to ``dim_contrast`` after ``dim_after_s``
with nothing new, the panel sleeps between ``night_start`` and
``night_end``, and every ``shift_interval_s`` the picture moves by a pixel.

An I2C error (errno 121, EIO, a missing device) switches the display off,
logs once, reports ``ComponentState("display", "unreachable")`` and retries
with exponential backoff; the rest of the box carries on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from device.config import Config, DisplayConfig
from device.display.device import DEVICE_ERRORS, opener, require
from device.display.glyphs import IconState
from device.display.screens import render, scrolls
from device.display.state import DisplayState, apply, choose_view
from device.events import ComponentState

__all__ = ["SHIFTS", "DisplayOutput", "create", "default_route_up", "in_night"]

log = logging.getLogger(__name__)

#: The picture's offsets, one per shift interval, in turn: each pixel spends a quarter of the time on each.
SHIFTS = ((0, 0), (1, 0), (1, 1), (0, 1))
#: With nothing animating, the picture is re-checked this often (the clock, page turns, dimming), s.
IDLE_S = 1.0
#: While asleep for the night, how often to check whether the night is over, s.
NIGHT_POLL_S = 30.0
#: The network is probed no more often than this, s.
NETWORK_POLL_S = 10.0


def _minutes(hh_mm: str) -> int:
    hours, minutes = hh_mm.split(":")
    return int(hours) * 60 + int(minutes)


def in_night(now: dt.time, start: str, end: str) -> bool:
    """Whether ``now`` lies in the night from ``start`` to ``end`` ("HH:MM"); the night may span midnight."""
    t, a, b = now.hour * 60 + now.minute, _minutes(start), _minutes(end)
    if a == b:
        return False
    return a <= t < b if a < b else t >= a or t < b


def default_route_up(route_table: Path = Path("/proc/net/route")) -> bool:
    """Whether Linux has an IPv4 default route: a cheap "is the network up" that sends nothing."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return False
    return any(len(fields) > 1 and fields[1] == "00000000" for fields in (line.split() for line in lines))


def _hint(exc: BaseException, cfg: DisplayConfig) -> str:
    """What to try, for the errors a Pi's I2C bus gives."""
    if cfg.driver not in ("ssd1306", "sh1106"):
        return f"Check [display] driver = {cfg.driver!r} and emulator_dir."
    if isinstance(exc, PermissionError):
        return f"The service user needs access to /dev/i2c-{cfg.i2c_port} (the i2c group)."
    if isinstance(exc, FileNotFoundError):
        return "Turn I2C on: sudo raspi-config nonint do_i2c 0, then reboot."
    return (f"Nothing answers at {cfg.address:#04x} on I2C bus {cfg.i2c_port}: check the wiring "
            f"and `i2cdetect -y {cfg.i2c_port}`, or set [display] enabled = false.")


class DisplayOutput:
    """Draws the screens on a luma device returned by ``open_device``, retrying it after errors."""

    name = "display"
    commands: frozenset[str] = frozenset()

    def __init__(
        self,
        config: DisplayConfig,
        open_device: Callable[[], Any],
        *,
        version: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = dt.datetime.now,
        network: Callable[[], bool] = default_route_up,
        retry_s: float = 5.0,
        retry_max_s: float = 300.0,
    ) -> None:
        self.config = config
        self._open_device = open_device
        self._version = version
        self._clock = clock
        self._wall_clock = wall_clock
        self._network = network
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._bus: Any = None
        self._state = DisplayState(activity=clock())
        # Render-thread state below: only step() and stop() (after the thread ended) touch it.
        self.device: Any = None
        self.frames = 0  # frames sent to the device
        self.failures = 0  # consecutive failed attempts to reach the device
        self._retry_at = 0.0
        self._last_frame: bytes | None = None
        self._last_sent = float("-inf")
        self._dimmed = False
        self._asleep = False
        self._network_state: IconState = "hidden"
        self._network_at = float("-inf")
        self._last_bug = ""

    # -- the Output protocol -----------------------------------------------

    def start(self, bus: Any) -> None:
        self._bus = bus
        self._thread = threading.Thread(target=self._run, name="display", daemon=True)
        self._thread.start()

    def handle(self, event: object) -> None:
        now = self._clock()
        with self._lock:
            new = apply(self._state, event, now)
            changed = new is not self._state
            self._state = new
        if changed:
            self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():
                log.warning("display thread did not stop (stuck in an I2C call?); leaving the panel as it is")
                return
        if self.device is not None:
            with contextlib.suppress(*DEVICE_ERRORS):
                self.device.cleanup()  # blank and switch off, so a stopped box burns nothing in
            self.device = None

    # -- the render thread ---------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                delay = self.step()
            except Exception as exc:  # a drawing bug must not end the thread
                if str(exc) != self._last_bug:
                    log.exception("display: drawing failed")
                    self._last_bug = str(exc)
                delay = self._retry_s
            self._wake.wait(delay)

    def step(self) -> float:
        """Bring the panel up to date; returns the seconds until the next step is due."""
        now = self._clock()
        if self.device is None:
            if now < self._retry_at:
                return self._retry_at - now
            try:
                self.device = self._open_device()
            except DEVICE_ERRORS as exc:
                return self._failed(exc, now)
            self._opened()
        try:
            return self._draw(now)
        except DEVICE_ERRORS as exc:
            self.device = None
            return self._failed(exc, now)

    def _draw(self, now: float) -> float:
        cfg = self.config
        wall = self._wall_clock()
        if in_night(wall.time(), cfg.night_start, cfg.night_end):
            if not self._asleep:
                self.device.hide()
                self._asleep = True
                log.info("display: asleep until %s", cfg.night_end)
            return NIGHT_POLL_S
        if self._asleep:
            self.device.show()
            self._asleep = False
            self._last_frame = None  # what the panel holds is no longer known
        since_sent = now - self._last_sent
        min_interval = 1.0 / cfg.max_fps
        if since_sent < min_interval:
            return min_interval - since_sent
        with self._lock:
            state = self._state
        view = choose_view(state, now, wall.strftime("%H:%M"), self._network_icon(now), self._version)
        image = self._shifted(render(view), now)
        dim = cfg.dim_after_s > 0 and now - state.activity >= cfg.dim_after_s
        if dim != self._dimmed:
            self.device.contrast(cfg.dim_contrast if dim else cfg.contrast)
            self._dimmed = dim
        data = image.tobytes()
        if data != self._last_frame:
            self.device.display(image)
            self._last_frame = data
            self._last_sent = now
            self.frames += 1
        return min_interval if scrolls(view) else IDLE_S

    def _shifted(self, image: Image.Image, now: float) -> Image.Image:
        interval = self.config.shift_interval_s
        if interval <= 0:
            return image
        offset = SHIFTS[int(now // interval) % len(SHIFTS)]
        if offset == (0, 0):
            return image
        moved = Image.new(image.mode, image.size)
        moved.paste(image, offset)
        return moved

    def _network_icon(self, now: float) -> IconState:
        if now - self._network_at >= NETWORK_POLL_S:
            self._network_state = "ok" if self._network() else "error"
            self._network_at = now
        return self._network_state

    def _opened(self) -> None:
        if self.failures:
            log.info("display: working again after %d failed attempt(s)", self.failures)
            self._publish(ComponentState("display", "ok"))
        self.failures = 0
        self._last_frame = None
        self._last_sent = float("-inf")
        self._dimmed = False
        self._asleep = False

    def _failed(self, exc: BaseException, now: float) -> float:
        self.failures += 1
        delay = min(self._retry_max_s, self._retry_s * 2 ** (self.failures - 1))
        self._retry_at = now + delay
        if self.failures == 1:
            log.warning("display: %s: switched off, retrying with backoff; the box carries on. %s",
                        exc, _hint(exc, self.config))
            self._publish(ComponentState("display", "unreachable", str(exc), error=True))
        else:
            log.debug("display: still unreachable (%s); next try in %.0f s", exc, delay)
        return delay

    def _publish(self, event: object) -> None:
        if self._bus is not None:
            self._bus.publish(event)


def create(config: Config, context: Any) -> DisplayOutput | None:
    """The display output, or None when ``[display] enabled`` is false.

    In demo mode the display is always the emulator, writing PNG frames to
    ``[display] emulator_dir`` (resolved against the config file's folder),
    and never sleeps for the night.
    """
    cfg = config.display
    if not cfg.enabled:
        return None
    if context.demo:
        # A demo shows every screen whatever the hour: no night.
        cfg = cfg.model_copy(update={"driver": "emulator", "night_end": cfg.night_start})
    require(cfg)
    return DisplayOutput(cfg, opener(cfg, config.resolve(cfg.emulator_dir)), version=context.version)
